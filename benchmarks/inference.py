"""Inference benchmark of ResNet-50 v1.5 on this machine: every backend at batch 1 (SingleStream) and 16 (Offline).

    python benchmarks/inference.py [--runs 15] [--backends eager,compile,onnx,openvino,onnx-int8,openvino-int8]

Writes benchmarks/results/inference.json (the full report of ``resnet50.bench.benchmark``) and prints the Markdown
table kept in docs/benchmarks-inference.md. Random weights: speed does not depend on the weights' values (the INT8
models are calibrated on random inputs for the same reason). Takes several minutes on 2 cores (torch.compile
compiles once per batch size).
"""

import argparse
import json
import sys
from pathlib import Path

from resnet50.bench import benchmark, format_report
from resnet50.infer import available_backends
from resnet50.weights import atomic_path


def markdown(r: dict) -> str:
    lines = ["| backend | precision | scenario | batch | img/s (median) | % of limit | img/s (best run) | p50 ms "
             "| p99 ms | runs |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["results"]:
        lines.append(f"| {x['backend']} | {x['precision']} | {x['scenario']} | {x['batch']} | "
                     f"{x['throughput_img_s']:.1f} | {x['pct_of_limit']:.0f} % | {x['best_img_s']:.1f} | "
                     f"{x['latency_ms']['p50']:.1f} | "
                     f"{x['latency_ms']['p99']:.1f} | {x['runs']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--backends", default=",".join(available_backends()))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    args = ap.parse_args()
    report = benchmark(arch=args.arch, backends=args.backends.split(","),
                       batches=[int(b) for b in args.batches.split(",")], warmup=args.warmup, runs=args.runs,
                       progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print()
    print(markdown(report))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
