"""A localiser scored on a hidden set: single scenes made by the same rule as the localisation demo's (resnet50.scenes,
250 plain + 250 cluttered, 128 px) from items no model of the toolkit trained on or was chosen on, Fashion-MNIST's
official t10k images, then ``resnet50 localize evaluate`` on each kind (the ILSVRC rule).

    python benchmarks/localize_hidden.py --weights runs/.../run/final.safetensors \\
        [--items /usr/share/datasets/fashion-mnist] [--out benchmarks/results/localize_hidden] [--seed 1]

t10k is the final evaluation's split: run this once per localiser to report, never to choose anything.
Writes ``hidden.json`` (hardware, versions, both kinds' figures; one run) under ``--out``; the scenes go to a
temporary folder unless ``--keep-scenes``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.errors import UserError
from resnet50.files import output_dir, write_json
from resnet50.scenes import write_mixed_scenes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a localiser's .safetensors or its run folder")
    p.add_argument("--items", default="/usr/share/datasets/fashion-mnist", help="an IDX folder with t10k files")
    p.add_argument("--out", default="benchmarks/results/localize_hidden")
    p.add_argument("--scenes", type=int, default=250, help="per kind")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-scenes", action="store_true")
    a = p.parse_args()
    out, t0 = Path(a.out), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = out / "scenes" if a.keep_scenes else Path(tmp)
        write_mixed_scenes(root, "test", "single", a.scenes, a.seed, items_from=a.items)
        figures = {}
        for kind in ("plain", "clutter"):
            r = subprocess.run(["resnet50", "localize", "evaluate", "--weights", a.weights, "--data",
                                str(root / kind), "--json", "--no-progress"], check=True, stdout=subprocess.PIPE,
                               text=True)
            figures[kind] = json.loads(r.stdout)
    model, flags = cpu_info()
    result = {"hidden": figures, "items": f"{a.items} (t10k)", "scenes_per_kind": a.scenes, "seed": a.seed,
              "weights": a.weights, "seconds": time.perf_counter() - t0, "cpu": model,
              "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
              "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
              "runs": 1}
    write_json(output_dir(out) / "hidden.json", result, indent=2)
    for kind, f in figures.items():
        print(f"hidden {kind}: top-1 loc {f['top1_loc']:.2%}, GT-known {f['gt_known_loc']:.2%}, top-1 cls "
              f"{f['top1_cls']:.2%}, top-5 loc {f['top5_loc']:.2%}, mean IoU {f['mean_iou']:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd[:3])} failed (exit {e.returncode}); its message is above")
