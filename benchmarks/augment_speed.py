"""Cost of the automatic augmentation policies in the training transform, on one core.

    python benchmarks/augment_speed.py [--calls 200] [--repeats 5] [--json out.json]

A decoded 500 x 375 RGB image (random pixels; the ops' cost does not depend on the content) through
RandomResizedCrop(224) + flip + the policy + ToTensor + Normalize (+ random erasing where named), single-threaded;
prints the median img/s of ``--repeats`` timings of ``--calls`` calls per policy, policies timed in turn.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from resnet50.data import TransformConfig, build_transform
from resnet50.files import write_json

POLICIES = {
    "none": {},
    "ta_wide": {"auto_augment": "ta_wide"},
    "ta_wide + random erasing 0.1": {"auto_augment": "ta_wide", "random_erasing": 0.1},
    "rand-m6-mstd0.5-inc1": {"auto_augment": "rand-m6-mstd0.5-inc1"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    transforms = {k: build_transform(TransformConfig(**v), train=True) for k, v in POLICIES.items()}
    rates: dict[str, list[float]] = {k: [] for k in POLICIES}
    g = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        for name, tf in transforms.items():  # in turn, so drift in the host's load hits every policy alike
            t = time.perf_counter()
            for _ in range(args.calls):
                tf(img, g)
            rates[name].append(args.calls / (time.perf_counter() - t))
    base = statistics.median(rates["none"])
    rows = [{"policy": k, "img_s": statistics.median(v), "vs_none": statistics.median(v) / base} for k, v in rates.items()]
    for r in rows:
        print(f"{r['policy']:<30} {r['img_s']:7.0f} img/s  {r['vs_none']:.2f}x")
    if args.json:
        write_json(args.json, {"rows": rows, "calls": args.calls, "repeats": args.repeats,
                               "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
