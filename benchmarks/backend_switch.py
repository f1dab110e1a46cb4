"""How fast a backend runs in the first calls after another backend ran: the reason ``resnet50 benchmark``
interleaves in turns (untimed calls first) rather than one call at a time.

    python benchmarks/backend_switch.py [--backends onnx,openvino-int8,onnx-int8] [--turns 20] [--calls 10]
    python benchmarks/backend_switch.py --alone     # each backend timed alone, no switching, for comparison

ResNet-50 v1.5 at 224 px, random weights (INT8 calibrated on random inputs: speed only), batch 1. In each of
``--turns`` rounds every backend makes ``--calls`` calls in a row; the output is, per backend, the median img/s of
its 1st, 2nd, ... call of a turn over the rounds. One run; prints JSON with the machine.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from resnet50.bench import hardware, versions
from resnet50.infer import create_backend, load_model
from resnet50.quantize import quantize_random


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnx,openvino-int8,onnx-int8")
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--alone", action="store_true", help="time each backend alone (calls x turns in a row)")
    args = ap.parse_args()
    names = args.backends.split(",")
    fp32 = load_model(None, "resnet50")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        int8 = None
        if any(n.endswith("-int8") for n in names):
            quantize_random(fp32, Path(tmp) / "int8.onnx")
            int8 = load_model(Path(tmp) / "int8.onnx")
        runners = {n: create_backend(n, int8 if n.endswith("-int8") else fp32) for n in names}
        for r in runners.values():
            for _ in range(3):
                r(x)
        times = {n: [[] for _ in range(args.calls)] for n in names}
        for _ in range(1 if args.alone else args.turns):
            for n, r in runners.items():
                for i in range(args.calls * (args.turns if args.alone else 1)):
                    t = time.perf_counter()
                    r(x)
                    times[n][i % args.calls].append(time.perf_counter() - t)
    out = {"hardware": hardware(), "versions": versions(), "batch": 1, "turns": args.turns, "alone": args.alone,
           "img_s_by_call_in_turn": {n: [round(1 / statistics.median(t), 1) for t in ts] for n, ts in times.items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
