"""lr-find's suggestion against a 5-point learning-rate sweep of the same recipe on the same data.

    python benchmarks/lr_sweep.py --pretrained runs/transfer/pretrain/best.safetensors --out benchmarks/results/lr_sweep

Data: the transfer experiment's k-shot set (``resnet50.transfer.write_split``: the five new classes, ``--k`` images
each, seed 0, written as the experiment writes it for training), scored on those classes of the embedded
validation split. Recipe: ``finetune`` from ``--pretrained`` with the experiment's shapes and ``--steps`` steps.
The range test (``resnet50.lr_find.range_test``, fastai's valley rule) runs first; then the recipe trains at five
rates, log-spaced by 3x around the recipe's default (8e-3 per 256 images), each scored by its last validation. The
target: the suggestion within 2x of the sweep's best rate. Writes ``lr_sweep.json`` (hardware, versions, every
run) and ``lr_sweep.png``.
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
DEFAULT_LR = 0.008  # the finetune recipe's, per 256 images


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", required=True)
    p.add_argument("--out", default="benchmarks/results/lr_sweep")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    root = output_dir(Path(a.out))
    t0 = time.perf_counter()
    n = 5 * a.k
    batch = min(32, max(2, n // 2))
    repeats = max(1, math.ceil(STEPS_PER_EPOCH * batch / n))
    data = root / "data"
    write_split(data / "train", "train", TARGET, per_class=a.k, seed=0, repeats=repeats)
    write_split(data / "val", "val", TARGET)
    epochs = max(1, math.ceil(a.steps / (n * repeats // batch)))
    base = {**SHARED, "data": str(data), "out": str(root / "runs"), "batch_size": batch, "epochs": epochs,
            "max_steps": a.steps, "init_weights": a.pretrained, "freeze_epochs": max(1, epochs // 8),
            "warmup_epochs": min(0.3 * epochs, 2.0)}
    found = range_test(resolve("finetune", {**base, "name": "find"}), progress=True)
    runs = []
    for f in GRID:
        lr = DEFAULT_LR * f
        res = train(resolve("finetune", {**base, "lr": lr, "name": f"lr{lr:.2e}"}), progress=True,
                    log=lambda *x: None)
        runs.append({"lr_per_256": lr, "val_top1": res["val_top1"]})
        print(f"lr {lr:.2e} per 256: val top-1 {res['val_top1']:.2%}", flush=True)
    best = max(runs, key=lambda r: r["val_top1"])
    ratio = found["lr_per_256"] / best["lr_per_256"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["lr_per_256"] for r in runs], [100 * r["val_top1"] for r in runs], "o-", lw=2, label="sweep")
    ax.axvline(found["lr_per_256"], color="C3", ls="--", label=f"lr-find suggestion {found['lr_per_256']:.2e}")
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate per 256 images", ylabel="val top-1 (%)",
           title=f"finetune recipe, k = {a.k} per class, {a.steps} steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, root / "lr_sweep.png")
    result = {"k": a.k, "steps": a.steps, "batch": batch, "suggestion_per_256": found["lr_per_256"],
              "sweep": runs, "best_per_256": best["lr_per_256"], "suggestion_over_best": ratio,
              "within_2x": 0.5 <= ratio <= 2.0, "seconds": round(time.perf_counter() - t0, 1),
              "cpu": cpu_info()[0] or platform.processor(), "python": sys.version.split()[0],
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": 1}
    write_json(root / "lr_sweep.json", result, indent=2)
    print(f"suggestion {found['lr_per_256']:.2e}, sweep best {best['lr_per_256']:.2e} (ratio {ratio:.2f}); wrote "
          f"{root / 'lr_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
