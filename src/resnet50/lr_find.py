"""The learning-rate range test: which peak learning rate to train a recipe with, on the user's own data.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2015, sec. 3.3), as fastai's ``Learner.lr_find``
and Lightning's ``Tuner.lr_find`` run it: train from the recipe's start (its ``--init-weights``, its frozen
stages of epoch 0) while the learning rate grows geometrically from ``start`` to ``end`` over ``steps`` optimiser
steps, record the loss (smoothed by an exponential moving average with bias correction, beta 0.98, as fastai), and
stop once it passes 4x its minimum (diverged). The suggestion is fastai's "valley" rule (its default since 2.5):
the longest stretch over which the smoothed loss keeps falling, and a point 1/2 of the way into its middle third,
which sits before the loss turns up. The weights it trains are thrown away.

Runs on the training engine (``engine.setup``: the same data, model, optimiser, AMP and discriminative rates as
the recipe's training would use). Writes ``lr_find.png`` (loss against learning rate, log scale, the suggestion
marked) and ``lr_find.json`` into the run folder. Learning rates are reported as the step's actual rate and per
256 images (the config's ``--lr``, which training scales by batch / 256).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from tqdm import tqdm

from . import engine
from .errors import UserError
from .files import pyplot, save_figure, write_json
from .recipes import TrainConfig
from .train import Classification

MIN_BATCHES = 4  # distinct batches an epoch must give: fewer, and the curve measures memorisation, not the rate
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum (fastai's stop_div)
BETA = 0.98  # the loss's moving average (fastai, Lightning)


def valley(losses: list[float]) -> int:
    """fastai's valley suggestion (``fastai.callback.schedule.valley``): the index a third plus a sixth into the
    longest run of decreasing losses (the longest decreasing subsequence, by dynamic programming, O(n^2)), with
    fastai's arithmetic (the run counted from the point before its first)."""
    n = len(losses)
    if n < 3:
        raise UserError(f"the range test recorded {n} losses before diverging; start it lower (--start)")
    runs, best_end = [1] * n, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and runs[i] < runs[j] + 1:
                runs[i] = runs[j] + 1
        if runs[i] > runs[best_end]:
            best_end = i
    start = best_end - runs[best_end]  # fastai's own arithmetic: one before the run's first point
    sections = (best_end - start) / 3
    return max(0, min(n - 1, start + int(sections) + int(sections / 2)))


def range_test(cfg: TrainConfig, start: float = 1e-7, end: float = 10.0, steps: int = 100, progress: bool = True,
               log=print) -> dict:
    """Run the range test for ``cfg`` (a resolved TrainConfig; its run folder gets ``-lr-find`` appended to the
    name). Returns lrs (actual, per step), losses (smoothed), raw losses, the suggestion (``lr``: actual, and
    ``lr_per_256``: for --lr), the minimum's rate, and the paths of the plot and JSON. Raises UserError for data too
    small for the test or bad bounds."""
    if not 0 < start < end or steps < 10:
        raise UserError(f"the range test needs 0 < --start < --end and at least 10 steps, not {start}, {end}, {steps}")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=(cfg.run.name or
                              f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}") + "-lr-find", ema_decay=0.0,
                              time_budget=0.0, budget_steps=0))
    run = engine.setup(Classification, cfg, None, log)
    loader = run.task.train_loader
    if loader.num_batches() < MIN_BATCHES:
        raise UserError(f"the training set gives {loader.num_batches()} batch(es) of {cfg.data.batch_size} an epoch; "
                        f"a range test needs at least {MIN_BATCHES}: lower --batch-size or add images")
    per_step = [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]
    lrs, raw, smooth, avg, best = [], [], [], 0.0, math.inf
    run.task.train_mode(run, 0)
    bar = tqdm(total=steps, desc="lr range test", unit="step", disable=not progress, leave=False)
    epoch = 0
    while len(lrs) < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            if batch.images.shape[0] < 2:
                continue
            lr = per_step[len(lrs)]
            for g in run.optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            losses, _ = run.task.losses(run, run.net, batch, epoch)
            loss = sum(losses.values())
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            avg = BETA * avg + (1 - BETA) * value
            s = avg / (1 - BETA ** (len(lrs) + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(s)
            bar.update(1)
            best = min(best, s)
            if not math.isfinite(s) or s > DIVERGED * best or len(lrs) >= steps:
                break
        if not math.isfinite(smooth[-1]) or smooth[-1] > DIVERGED * best:
            break
        epoch += 1
    bar.close()
    finite = [i for i, s in enumerate(smooth) if math.isfinite(s)]
    lrs, raw, smooth = [lrs[i] for i in finite], [raw[i] for i in finite], [smooth[i] for i in finite]
    k = valley(smooth)
    scale = 256 / (cfg.data.batch_size * cfg.optim.accum_steps)
    result = {"lr": lrs[k], "lr_per_256": lrs[k] * scale, "min_loss_lr": lrs[smooth.index(min(smooth))],
              "steps": len(lrs), "start": start, "end": end, "batch_size": cfg.data.batch_size,
              "recipe": cfg.recipe, "lrs": lrs, "losses": smooth, "raw_losses": raw,
              "plot": str(run.run_dir / "lr_find.png"), "json": str(run.run_dir / "lr_find.json")}
    plot(result, Path(result["plot"]))
    write_json(result["json"], result, indent=2)
    log(f"lr range test: {len(lrs)} steps from {start:g} to {lrs[-1]:.3g}; suggested lr {lrs[k]:.3g} "
        f"(--lr {result['lr_per_256']:.3g} per 256 images); plot {result['plot']}")
    return result


def plot(result: dict, path: Path) -> None:
    """Loss against learning rate (log scale) with the suggestion marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result["lrs"], result["raw_losses"], color="0.8", lw=1, label="loss")
    ax.plot(result["lrs"], result["losses"], color="C0", lw=2, label="smoothed loss")
    k = result["lrs"].index(result["lr"])
    ax.axvline(result["lr"], color="C3", ls="--", lw=1)
    ax.plot([result["lr"]], [result["losses"][k]], "o", color="C3", ms=9,
            label=f"suggestion {result['lr']:.2g} (--lr {result['lr_per_256']:.2g})")
    ax.set_xscale("log")
    lo, hi = min(result["losses"]), result["losses"][0]
    ax.set_ylim(lo - 0.1 * abs(hi - lo) - 1e-3, max(hi, lo) + 0.6 * abs(hi - lo) + 1e-3)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"learning-rate range test: {result['recipe']} recipe, batch {result['batch_size']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def auto_lr(cfg: TrainConfig, progress: bool = True, log=print) -> float:
    """``train --lr auto``: the range test's suggestion for ``cfg``, per 256 images (what --lr means)."""
    return range_test(cfg, progress=progress, log=log)["lr_per_256"]



