"""The evidence behind the demo recipe's optimiser: short complete schedules on the embedded data, compared side by
side. Accuracy does not depend on the machine's load; the times do.

    python benchmarks/demo_recipe.py [--epochs 2] [--out /tmp/demo-recipe]
"""

from __future__ import annotations

import argparse
import json
import time

from resnet50.recipes import resolve
from resnet50.train import train

VARIANTS = {
    # AdamW, as the demo recipe
    "adamw lr 0.004/256 wd 0.05": {"optimizer": "adamw", "lr": "0.004", "weight_decay": "0.05"},
    # SGD with the same warmup and schedule
    "sgd lr 0.1/256 nesterov": {"optimizer": "sgd", "lr": "0.1", "weight_decay": "5e-5", "momentum": "0.9",
                                "nesterov": "true"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="/tmp/demo-recipe")
    args = ap.parse_args()
    rows = []
    for name, over in VARIANTS.items():
        cfg = resolve("demo", {"out": args.out, "name": name.replace(" ", "_").replace("/", "-"),
                               "epochs": args.epochs, "schedule": "cosine", "warmup_epochs": "0.3", **over})
        t = time.time()
        r = train(cfg, progress=False, log=lambda *a: None)
        rows.append({"variant": name, "epochs": args.epochs, "val_top1": r["val_top1"], "train_loss": r["train_loss"],
                     "seconds": time.time() - t})
        print(f"{name:<30} val top-1 {r['val_top1']:.2%}  train loss {r['train_loss']:.3f}  {time.time() - t:.0f} s",
              flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
