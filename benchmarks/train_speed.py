"""Training throughput of ResNet-50 v1.5 on this machine: channels_last (our default) against a plain NCHW eager
loop, side by side in one run, at several resolutions; plus the demo's data pipeline. Medians of timed steps,
the two layouts stepped alternately.

    python benchmarks/train_speed.py [--sizes 224,128,64] [--batch 32] [--steps 5] [--bf16] [--json out.json]
    python benchmarks/train_speed.py --sizes 32,40,48 --batch 128 --in-chans 1 --num-classes 10 --bf16   # the demo
    python benchmarks/train_speed.py --sizes 48,224 --batch 128 --in-chans 1 --num-classes 10 --gemm-share --compile

``--optimizer adamw`` steps AdamW (the demo's) instead of SGD with momentum; ``--fused`` adds a channels_last row
whose optimiser is torch's fused implementation (one kernel over all parameters instead of a loop over them; what
``resnet50.optim.build_optimizer`` uses).

``--gemm-share`` measures the machine's fp32 GEMM rate (``resnet50.bench.matmul_peak``: torch.mm and ONNX Runtime
on a square product and on ResNet-50's own im2col shapes, the fastest) and gives each fp32 row's share of it: a
training step costs 3 forward passes (forward, and a backward of twice its work), so its rate is
``batch * 3 * 2 * MACs / step time`` with the MACs counted on the model (``resnet50.summary``). ``--compile`` adds
torch.compile's CPU path (Inductor) for the whole training step's model, with its compile time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from resnet50 import create_model
from resnet50.bench import matmul_peak
from resnet50.files import write_json
from resnet50.summary import summarize


def step_fn(model, x, y, amp: bool = False, optimizer: str = "sgd", fused: bool | None = None):
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=fused)

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loader_rate(batches: int = 30) -> float:
    """img/s of the demo's training pipeline (decode, pad-crop, flip, normalise, collate) in the main process."""
    from resnet50.data import build_dataset, build_loader, build_transform, default_transform_config

    ds = build_dataset("embedded", "train")
    ds.transform = build_transform(default_transform_config(ds, 32), train=True)
    loader = build_loader(ds, 128, train=True, workers=0, seed=0)
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it).labels.numel()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224,128,64")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--bf16", action="store_true", help="also time channels_last with bf16 autocast (--amp bf16)")
    ap.add_argument("--in-chans", type=int, default=3, help="1 for the demo's gray images")
    ap.add_argument("--num-classes", type=int, default=1000, help="10 for the demo")
    ap.add_argument("--gemm-share", action="store_true", help="each fp32 row's share of the measured fp32 GEMM rate")
    ap.add_argument("--compile", action="store_true", help="also time channels_last under torch.compile (fp32)")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    ap.add_argument("--fused", action="store_true", help="also time channels_last with the fused optimiser")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak() if args.gemm_share else None
    if peak:
        print(f"fp32 GEMM rate: {peak['gflops']:.0f} GFLOP/s ({peak['engine']})", flush=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        # Both layouts are built first and then stepped alternately, so drift in the machine's load hits both alike.
        steps = {}
        formats = ("nchw", "channels_last") + (("channels_last+fused",) if args.fused else ()) + \
            (("channels_last+compile",) if args.compile else ()) + (("channels_last+bf16",) if args.bf16 else ())
        compile_s = {}
        for fmt in formats:
            mf = torch.contiguous_format if fmt == "nchw" else torch.channels_last
            model = create_model("resnet50", in_chans=args.in_chans, num_classes=args.num_classes)
            model = model.to(memory_format=mf).train()
            macs = summarize(model, size)["macs"]
            if fmt.endswith("compile"):
                model = torch.compile(model)
            x = torch.randn(args.batch, args.in_chans, size, size).contiguous(memory_format=mf)
            y = torch.randint(0, args.num_classes, (args.batch,))
            steps[fmt] = step_fn(model, x, y, amp=fmt.endswith("bf16"), optimizer=args.optimizer,
                                 fused=True if fmt.endswith("fused") else None)
            t = time.perf_counter()
            steps[fmt]()  # warm-up (and, compiled, the compilation)
            steps[fmt]()
            compile_s[fmt] = time.perf_counter() - t
        times = {fmt: [] for fmt in steps}
        for _ in range(args.steps):
            for fmt, step in steps.items():
                times[fmt].append(step())
        for fmt, ts in times.items():
            med = statistics.median(ts)
            row = {"size": size, "format": fmt, "optimizer": args.optimizer, "batch": args.batch, "steps": len(ts),
                   "median_step_s": med,
                   "img_s": args.batch / med, "train_gflop_per_image": 6 * macs / 1e9}
            if fmt.endswith("compile"):
                row["compile_and_first_steps_s"] = round(compile_s[fmt], 1)
            share = ""
            if peak and not fmt.endswith("bf16"):
                row["gflop_s"] = args.batch * 6 * macs / med / 1e9
                row["gemm_share"] = row["gflop_s"] / peak["gflops"]
                share = f"  {row['gflop_s']:.0f} GFLOP/s = {row['gemm_share']:.0%} of the GEMM rate"
            rows.append(row)
            print(f"{size:>4} px  {fmt:<22} {args.batch / med:7.2f} img/s{share}  (median of {len(ts)} steps)",
                  flush=True)
    for size in sorted({r["size"] for r in rows}):
        a = next(r for r in rows if r["size"] == size and r["format"] == "nchw")
        for r in rows:
            if r["size"] == size and r["format"] != "nchw":
                print(f"{size:>4} px  {r['format']} / NCHW = {r['img_s'] / a['img_s']:.2f}x")
    pipe = loader_rate()
    print(f"demo data pipeline: {pipe:.0f} img/s in one process")
    result = {"rows": rows, "demo_pipeline_img_s": pipe, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
              "in_chans": args.in_chans, "num_classes": args.num_classes, "gemm": peak,
              "load_average": os.getloadavg()}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
