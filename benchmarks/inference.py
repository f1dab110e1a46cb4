"""Inference benchmark of ResNet-50 v1.5 on this machine: every backend at batch 1 (SingleStream) and 16 (Offline).

    python benchmarks/inference.py [--repeat 3] [--runs 25] [--backends eager,compile,onnx,...]

Runs the whole benchmark ``--repeat`` times in a row (each a fresh ``resnet50.bench.benchmark``: new peak
measurement, new sessions), writes each full report to benchmarks/results/inference-N.json, prints the Markdown
table kept in docs/benchmarks-inference.md for each, and then the spread of every figure over the repeats. Random
weights: speed does not depend on the weights' values (the INT8 models are calibrated on random inputs for the same
reason). Takes several minutes on 2 cores (torch.compile
compiles once per batch size).
"""

import argparse
import statistics
import sys
from pathlib import Path

from resnet50.backends import available_backends
from resnet50.bench import benchmark, format_report
from resnet50.files import write_json


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
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before each turn")
    ap.add_argument("--turn", type=int, default=5, help="timed calls per backend and batch in each round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for inference-N.json")
    args = ap.parse_args()
    reports = []
    for i in range(1, args.repeat + 1):
        report = benchmark(arch=args.arch, backends=args.backends.split(","),
                           batches=[int(b) for b in args.batches.split(",")], warmup=args.warmup, runs=args.runs,
                           turn=args.turn, progress=True)
        out = Path(args.out) / f"inference-{i}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report, indent=2)
        print(f"## repeat {i}\n\n{format_report(report)}\n\n{markdown(report)}\n", flush=True)
        print(f"wrote {out}", file=sys.stderr)
        reports.append(report)
    print(spread(reports))
    return 0


def spread(reports: list[dict]) -> str:
    """Each figure's median and range over the repeats: img/s per (backend, batch), the limit, the ratios."""
    lines = [f"over {len(reports)} repeats: median (min-max)",
             "limit img/s: " + _mmm([r["limit_img_s"] for r in reports])]
    for x in reports[0]["results"]:
        vals = [y["throughput_img_s"] for r in reports for y in r["results"]
                if (y["backend"], y["batch"]) == (x["backend"], x["batch"])]
        lines.append(f"{x['backend']:<14} batch {x['batch']:>3}: {_mmm(vals)} img/s")
    for batch in reports[0]["comparisons"]:
        for key in ("default_vs_onnx", "int8_vs_best_fp32", "bf16_vs_best_fp32"):
            vals = [r["comparisons"][batch][key] for r in reports if key in r["comparisons"].get(batch, {})]
            if vals:
                lines.append(f"batch {batch}: {key} {_mmm(vals, 2)}x")
    return "\n".join(lines)


def _mmm(vals: list[float], digits: int = 1) -> str:
    vals = sorted(vals)
    return f"{statistics.median(vals):.{digits}f} ({vals[0]:.{digits}f}-{vals[-1]:.{digits}f})"


if __name__ == "__main__":
    sys.exit(main())
