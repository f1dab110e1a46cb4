"""The learning-rate range test: which peak learning rate to train a recipe with, on the user's own data.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2015, sec. 3.3), as fastai's ``Learner.lr_find``
and Lightning's ``Tuner.lr_find`` run it: train from the recipe's start (its ``--init-weights``, its frozen
stages of epoch 0) while the learning rate grows geometrically from ``start`` to ``end`` over ``steps`` optimiser
steps, record the loss (smoothed by an exponential moving average with bias correction, beta 0.98, as fastai), and
stop once it passes 4x its minimum (diverged). The weights it trains are thrown away. Suggestions follow fastai's
four rules (``fastai.callback.schedule``), each applied, as fastai does, to the curve without its first tenth of the
requested steps and its last five points (the start's noise, the divergence):

    valley   the longest stretch over which the smoothed loss keeps falling, a point 1/2 of the way into its middle
             third (fastai's default since 2.5)
    minimum  a tenth of the rate at the smoothed loss's minimum (fastai 1's suggestion)
    quarter-min  a quarter of that rate: ours, for recipes whose peak rate is warmed up to and annealed (cosine),
             calibrated on three 5-point sweeps where the best peak lay 2.2-6.0x under the minimum's rate (two
             later sweeps: 2.0x under and 1.1x over it)
    steep    the rate where the smoothed loss falls fastest per decade
    slide    Chang's interval slide rule (from the end, the first rate whose slope stops changing)

``DEFAULT_RULE`` is the one ``train --lr auto`` and ``lr-find`` report, chosen by the 5-point sweeps of
docs/benchmarks.md ("lr-find against a 5-point sweep"); every rule's suggestion is kept in ``lr_find.json``.

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
SKIP_END = 5  # points dropped at the end before a rule is applied (fastai's lr_find: [num_it // 10:-5])


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


def minimum(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``minimum``: a tenth of the rate at the lowest smoothed loss."""
    return lrs[losses.index(min(losses))] / 10


def steep(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``steep``: the rate starting the segment where the loss falls fastest against log(rate)."""
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return lrs[slopes.index(min(slopes))]


def slide(lrs: list[float], losses: list[float], lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's ``slide`` (Chang's interval slide rule): walking back from the end, the rate ``lr_diff`` points
    before the first pair of points whose loss slopes (per point, ``numpy.gradient``) differ by at most
    ``thresh``."""
    import numpy as np

    grad = np.gradient(np.asarray(losses, dtype=float)) if len(losses) > 1 else np.zeros(len(losses))
    r, left = -1, -1 - lr_diff
    lr = lrs[max(left, -len(lrs))]
    while left >= -len(losses) and abs(grad[r] - grad[left]) > thresh:
        lr = lrs[left]
        r, left = r - 1, left - 1
    return lr


def quarter_min(lrs: list[float], losses: list[float]) -> float:
    """A quarter of the rate at the lowest smoothed loss (``minimum`` without its tenth: ``minimum * 2.5``)."""
    return minimum(lrs, losses) * 2.5


RULES = {"valley": lambda lrs, losses: lrs[valley(losses)], "minimum": minimum, "steep": steep, "slide": slide,
         "quarter-min": quarter_min}
# chosen on the sweeps of docs/benchmarks.md (finetune k = 50 and 250, scratch k = 50): the only rule within 2x of
# the best rate on all three (0.56-1.5x); valley, fastai's default, was 0.07-0.10x, minimum 0.22-0.60x. Of two
# sweeps run after the choice it was 0.50x on one and 0.22x on the other.
DEFAULT_RULE = "quarter-min"


def suggest(lrs: list[float], losses: list[float], requested: int) -> dict[str, float]:
    """Every rule's suggested rate (actual) for a recorded curve of a test asked for ``requested`` steps, on fastai's
    trimmed curve ([requested // 10 : -5]); the whole curve where trimming would leave fewer than 5 points."""
    lo, hi = requested // 10, len(lrs) - SKIP_END
    if hi - lo < 5:
        lo, hi = 0, len(lrs)
    lrs, losses = lrs[lo:hi], losses[lo:hi]
    valley(losses)  # the one-line error for a curve too short for any rule
    return {name: float(rule(lrs, losses)) for name, rule in RULES.items()}


def range_test(cfg: TrainConfig, start: float = 1e-7, end: float = 10.0, steps: int = 100, progress: bool = True,
               log=print, rule: str = DEFAULT_RULE) -> dict:
    """Run the range test for ``cfg`` (a resolved TrainConfig; its run folder gets ``-lr-find`` appended to the
    name). Returns lrs (actual, per step), losses (smoothed), raw losses, the suggestion of ``rule`` (``lr``:
    actual, and ``lr_per_256``: for --lr), every rule's (``suggestions``, per 256 images), the minimum's rate, and
    the paths of the plot and JSON. Raises UserError for data too small for the test, bad bounds or an unknown
    rule."""
    if not 0 < start < end or steps < 10:
        raise UserError(f"the range test needs 0 < --start < --end and at least 10 steps, not {start}, {end}, {steps}")
    if rule not in RULES:
        raise UserError(f"unknown suggestion rule {rule!r}; choose one of {', '.join(RULES)}")
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
    rates = suggest(lrs, smooth, steps)
    scale = 256 / (cfg.data.batch_size * cfg.optim.accum_steps)
    result = {"lr": rates[rule], "lr_per_256": rates[rule] * scale, "rule": rule,
              "suggestions": {name: lr * scale for name, lr in rates.items()},
              "min_loss_lr": lrs[smooth.index(min(smooth))],
              "steps": len(lrs), "start": start, "end": end, "batch_size": cfg.data.batch_size,
              "recipe": cfg.recipe, "lrs": lrs, "losses": smooth, "raw_losses": raw,
              "plot": str(run.run_dir / "lr_find.png"), "json": str(run.run_dir / "lr_find.json")}
    plot(result, Path(result["plot"]))
    write_json(result["json"], result, indent=2)
    log(f"lr range test: {len(lrs)} steps from {start:g} to {lrs[-1]:.3g}; suggested lr ({rule}) {rates[rule]:.3g} "
        f"(--lr {result['lr_per_256']:.3g} per 256 images); plot {result['plot']}")
    return result


def plot(result: dict, path: Path) -> None:
    """Loss against learning rate (log scale), the chosen rule's suggestion marked large, the others small."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result["lrs"], result["raw_losses"], color="0.8", lw=1, label="loss")
    ax.plot(result["lrs"], result["losses"], color="C0", lw=2, label="smoothed loss")
    log_lrs = np.log(result["lrs"])
    scale = result["lr_per_256"] / result["lr"]
    for i, (name, per_256) in enumerate(result["suggestions"].items()):
        lr, chosen = per_256 / scale, name == result["rule"]
        y = float(np.interp(math.log(lr), log_lrs, result["losses"]))
        if chosen:
            ax.axvline(lr, color="C3", ls="--", lw=1)
        ax.plot([lr], [y], "o" if chosen else "D", color="C3" if chosen else f"C{i + 4}", ms=9 if chosen else 6,
                label=f"{name}{' (suggested)' if chosen else ''}: {lr:.2g} (--lr {per_256:.2g})")
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



