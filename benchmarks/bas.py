"""BAS (Wu et al., CVPR 2022) on single scenes, boxes never read in training, then PSOL's box regressor on its
pseudo boxes: each step a command a user can run (printed as it runs).

    python benchmarks/bas.py --weights CLASSIFIER --scenes DIR --out DIR [--steps 400] [--area-weight 1.0] \\
        [--regressor-minutes 6]

``--scenes`` holds ``train`` (mixed single scenes), ``held`` (<= 100 boxed scenes) and ``val/plain``,
``val/clutter`` (the layout benchmarks/psol.py writes; its step 1 makes the classifier, trained on ``train`` with
class labels only). Steps:
1. ``resnet50 localize bas``: the generator trained on the fixed classifier (labels only), the threshold chosen on
   ``held`` (Choe et al.'s protocol), BAS's own boxes scored on both validation kinds, pseudo boxes written;
2. (``--regressor-minutes`` > 0) ``resnet50 localize train --train OUT/bas/pseudo --regression scr`` from the
   classifier, no validation set, final weights; ``resnet50 localize evaluate`` on both validation kinds.
Writes ``bas_psol.json`` (hardware, versions, each step's seconds and figures; one run).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.files import output_dir, write_json


def run(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), flush=True)
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a classifier trained on the scenes with labels only")
    p.add_argument("--scenes", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--area-weight", type=float, default=1.0)
    p.add_argument("--regressor-minutes", type=float, default=0.0)
    a = p.parse_args()
    root, data = output_dir(Path(a.out)).resolve(), Path(a.scenes).resolve()
    vals = [str(data / "val" / k) for k in ("plain", "clutter")]
    t = time.perf_counter()
    bas = run(["resnet50", "localize", "bas", "--weights", a.weights, "--train", str(data / "train"), "--held-out",
               str(data / "held"), "--val", *vals, "--out", str(root / "bas"), "--steps", str(a.steps),
               "--area-weight", str(a.area_weight), "--no-progress", "--json"])
    steps: dict = {"bas_seconds": time.perf_counter() - t}
    psol = {}
    if a.regressor_minutes > 0:
        t = time.perf_counter()
        r = run(["resnet50", "localize", "train", "--train", bas["pseudo_boxes"], "--regression", "scr",
                 "--init-weights", a.weights, "--time-budget", str(a.regressor_minutes), "--name", "bas-psol",
                 "--out", str(root / "runs"), "--no-progress", "--json"])
        steps["regressor"] = {"seconds": time.perf_counter() - t, "epochs": r.get("epoch"), "steps": r.get("step")}
        for kind, path in zip(("plain", "clutter"), vals):
            psol[kind] = run(["resnet50", "localize", "evaluate", "--weights",
                              str(root / "runs" / "bas-psol" / "final.safetensors"), "--data", path, "--json",
                              "--no-progress"])
    model, flags = cpu_info()
    write_json(root / "bas_psol.json", {
        "bas": {k: v for k, v in bas.items()}, "psol": psol, "steps": steps, "cpu": model,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "threads": torch.get_num_threads(), "runs": 1, "weights": a.weights,
        "boxes_seen": "training scenes: none (generator: labels only; regressor: BAS pseudo boxes); held-out 100: "
                      "the threshold; validation: scoring only"}, indent=2)
    for kind, path in zip(("plain", "clutter"), vals):
        f = bas["val"][path]
        print(f"BAS {kind}: top-1 loc {f['top1_loc']:.2%} ({f['loc_over_cls']:.2f} of cls), GT-known "
              f"{f['gt_known_loc']:.2%}")
        if kind in psol:
            g = psol[kind]
            print(f"BAS + PSOL regressor {kind}: top-1 loc {g['top1_loc']:.2%} (cls {g['top1_cls']:.2%}), GT-known "
                  f"{g['gt_known_loc']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
