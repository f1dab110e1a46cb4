"""The detection demo with each detector, side by side on one machine: RetinaNet and Faster R-CNN, each with its
``scenes`` recipe, the same scenes (half plain, half cluttered), the same start and the same time budget, scored with
pycocotools on the same validation scenes, plain and cluttered apart.

    python benchmarks/detect_demo.py --init-weights runs/demo-.../best.safetensors \\
        --out benchmarks/results/detect_compare [--detectors retinanet,fasterrcnn] [--time-budget 12.5]

Runs ``resnet50.detect.demo.run_detect_demo`` once per detector, one after the other (never at the same time: the
two cores are the measured resource), and writes ``detect_compare.json``: hardware, versions, each demo's summary
(mAP, mAP@.5 per kind, with labels ignored too, training seconds, img/s, epochs), one run each.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.detect.demo import run_detect_demo
from resnet50.files import output_dir, write_json

KEEP = ("detector", "map", "map50", "map75", "class_agnostic", "by_kind", "train_seconds", "img_s", "epochs",
        "steps", "picture", "run_dir")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init-weights", default=None, help="the classification demo's checkpoint (default: scratch)")
    p.add_argument("--out", default="benchmarks/results/detect_compare")
    p.add_argument("--detectors", default="retinanet,fasterrcnn")
    p.add_argument("--time-budget", default="12.5", help="minutes of training per detector")
    a = p.parse_args()
    root = output_dir(Path(a.out))
    model, flags = cpu_info()
    result = {"cpu": model, "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2"))),
              "threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__,
              "platform": platform.platform(), "init_weights": a.init_weights, "time_budget_min": float(a.time_budget),
              "runs": 1, "demos": {}}
    for name in a.detectors.split(","):
        t0 = time.perf_counter()
        s = run_detect_demo(str(root / "runs"), a.init_weights, {"time_budget": a.time_budget, "name": name},
                            progress=False, detector=name)
        result["demos"][name] = {**{k: s[k] for k in KEEP}, "wall_seconds": time.perf_counter() - t0}
        write_json(root / "detect_compare.json", result)  # after each: a stopped run keeps what it measured
        k = s["by_kind"]
        print(f"{name}: mAP {s['map']:.3f} / {s['map50']:.3f}; plain {k['plain']['map']:.3f} / "
              f"{k['plain']['map50']:.3f}; clutter {k['clutter']['map']:.3f} / {k['clutter']['map50']:.3f}; "
              f"{s['img_s']:.1f} img/s, {s['epochs']} epochs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
