"""lr-find's suggestion against a 5-point learning-rate sweep of the same recipe on the same data.

    python benchmarks/lr_sweep.py --pretrained runs/transfer/pretrain/best.safetensors --out benchmarks/results/lr_sweep
    python benchmarks/lr_sweep.py --method scratch --k 50 --out benchmarks/results/lr_sweep/scratch-k50

Data: the transfer experiment's k-shot set (``resnet50.transfer.write_split``: the five new classes, ``--k`` images
each, ``--seed``, written as the experiment writes it for training), scored on those classes of the embedded
validation split. Recipe: the transfer experiment's run of ``--method`` (``finetune`` from ``--pretrained``, or
``scratch``: the ``demo`` recipe from random weights) with the experiment's shapes and ``--steps`` steps. The range
test (``resnet50.lr_find.range_test``, every rule's suggestion) runs first; then the recipe trains at five rates,
log-spaced by 3x around the recipe's default, each scored by its one validation at the end. The target: the
suggestion within 2x of the sweep's best rate. Writes ``lr_sweep.json`` (hardware, versions, every run, each rule's
ratio to the best) and ``lr_sweep.png``.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.files import output_dir, pyplot, save_figure, write_json
from resnet50.lr_find import range_test
from resnet50.recipes import resolve
from resnet50.train import train
from resnet50.transfer import SHARED, STEPS_PER_EPOCH, TARGET, write_split

GRID = (1 / 9, 1 / 3, 1.0, 3.0, 9.0)
RECIPE = {"finetune": "finetune", "scratch": "demo"}  # the transfer experiment's recipe of each method


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=list(RECIPE), default="finetune")
    p.add_argument("--pretrained", help="the source weights (finetune)")
    p.add_argument("--out", default="benchmarks/results/lr_sweep")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.method == "finetune" and not a.pretrained:
        p.error("--method finetune needs --pretrained (the transfer experiment's source weights)")
    if a.threads:
        torch.set_num_threads(a.threads)
    root = output_dir(Path(a.out))
    t0 = time.perf_counter()
    n = 5 * a.k
    batch = min(32, max(2, n // 2))
    repeats = max(1, math.ceil(STEPS_PER_EPOCH * batch / n))
    data = root / "data"
    write_split(data / "train", "train", TARGET, per_class=a.k, seed=a.seed, repeats=repeats)
    write_split(data / "val", "val", TARGET)
    epochs = max(1, math.ceil(a.steps / (n * repeats // batch)))
    base = {**SHARED, "data": str(data), "out": str(root / "runs"), "batch_size": batch, "epochs": epochs,
            "max_steps": a.steps, "seed": a.seed, "warmup_epochs": min(0.3 * epochs, 2.0), "eval_every": epochs}
    if a.method == "finetune":
        base.update(init_weights=a.pretrained, freeze_epochs=max(1, epochs // 8))
    recipe = RECIPE[a.method]
    default_lr = resolve(recipe, base).optim.lr
    found = range_test(resolve(recipe, {**base, "name": "find"}), progress=True)
    runs = []
    for f in GRID:
        lr = default_lr * f
        res = train(resolve(recipe, {**base, "lr": lr, "name": f"lr{lr:.2e}"}), progress=True,
                    log=lambda *x: None)
        runs.append({"lr_per_256": lr, "val_top1": res["val_top1"]})
        print(f"lr {lr:.2e} per 256: val top-1 {res['val_top1']:.2%}", flush=True)
    best = max(runs, key=lambda r: r["val_top1"])
    ratio = found["lr_per_256"] / best["lr_per_256"]
    ratios = {name: lr / best["lr_per_256"] for name, lr in found["suggestions"].items()}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["lr_per_256"] for r in runs], [100 * r["val_top1"] for r in runs], "o-", lw=2, label="sweep")
    for i, (name, lr) in enumerate(found["suggestions"].items()):
        ax.axvline(lr, color=f"C{i + 1}", ls="--", label=f"lr-find {name} {lr:.2e}")
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate per 256 images", ylabel="val top-1 (%)",
           title=f"{recipe} recipe ({a.method}), k = {a.k} per class, {a.steps} steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, root / "lr_sweep.png")
    result = {"method": a.method, "recipe": recipe, "k": a.k, "seed": a.seed, "steps": a.steps, "batch": batch,
              "rule": found["rule"], "suggestion_per_256": found["lr_per_256"], "suggestions_per_256":
              found["suggestions"], "sweep": runs, "best_per_256": best["lr_per_256"], "suggestion_over_best": ratio,
              "within_2x": 0.5 <= ratio <= 2.0, "rules_over_best": ratios,
              "rules_within_2x": {name: 0.5 <= r <= 2.0 for name, r in ratios.items()},
              "seconds": round(time.perf_counter() - t0, 1),
              "cpu": cpu_info()[0] or platform.processor(), "python": sys.version.split()[0],
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": 1}
    write_json(root / "lr_sweep.json", result, indent=2)
    print(f"suggestion ({found['rule']}) {found['lr_per_256']:.2e}, sweep best {best['lr_per_256']:.2e} (ratio "
          f"{ratio:.2f}); every rule: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) +
          f"; wrote {root / 'lr_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
