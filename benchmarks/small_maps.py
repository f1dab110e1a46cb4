"""Small-map convolutions as matrix products (resnet50.small_maps) against torch's (oneDNN's) convolution: every
distinct convolution of ResNet-50 at the demo's shapes (forward + backward, bf16 autocast, channels-last), then the
whole training step, the two interleaved run by run so that a change in the host's speed hits both alike.

    python benchmarks/small_maps.py [--size 48] [--batch 128] [--runs 7] [--threads 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from resnet50.cpu import cpu_info
from resnet50.factory import create_model
from resnet50.small_maps import use_small_map_convs


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def conv_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """(C_in, C_out, k, stride, padding, H) of each distinct convolution the model runs on ``x``."""
    seen: dict[tuple, None] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.setdefault(
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], a[0].shape[-1]), None))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return list(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    ref = create_model("resnet50", num_classes=10, in_chans=1, zero_init_residual=True).to(memory_format=cl)
    fast = copy.deepcopy(ref)
    switched = use_small_map_convs(fast)
    x = torch.randn(args.batch, 1, args.size, args.size).to(memory_format=cl)
    y = torch.randint(0, 10, (args.batch,))

    rows = []
    for c_in, c_out, k, s, p, h in conv_shapes(ref, x):
        a = nn.Conv2d(c_in, c_out, k, s, p, bias=False).to(memory_format=cl)
        b = copy.deepcopy(a)
        use_small_map_convs(b)
        xi = torch.randn(args.batch, c_in, h, h).to(memory_format=cl).requires_grad_(c_in > 1)
        with torch.no_grad():
            g = torch.randn_like(a(xi), dtype=torch.bfloat16)

        def fwd_bwd(m, xi=xi, g=g):
            with torch.autocast("cpu", torch.bfloat16):
                out = m(xi)
            out.backward(g)
        times = {"onednn": [], "small_maps": []}
        for _ in range(args.runs + 1):
            for name, m in (("onednn", a), ("small_maps", b)):
                times[name] += timed(lambda m=m: fwd_bwd(m), 1)
        med = {n: statistics.median(v[1:]) * 1e3 for n, v in times.items()}
        rows.append({"conv": f"{c_in}->{c_out} {k}x{k}/{s} on {h}x{h}", "onednn_ms": round(med["onednn"], 2),
                     "small_maps_ms": round(med["small_maps"], 2), "speedup": round(med["onednn"] / med["small_maps"], 2)})
        print(f"{rows[-1]['conv']:<28} oneDNN {med['onednn']:7.2f} ms  matrix products {med['small_maps']:7.2f} ms  "
              f"x{rows[-1]['speedup']:.2f}", flush=True)

    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True) for m in (ref, fast)}

    def step(m):
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(m(x), y)
        opt = opts[id(m)]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for m in (ref, fast):
        timed(lambda m=m: step(m), 2)
    steps = {"onednn": [], "small_maps": []}
    for _ in range(args.runs):
        for name, m in (("onednn", ref), ("small_maps", fast)):
            steps[name] += timed(lambda m=m: step(m), 1)
    ips = {n: args.batch / statistics.median(v) for n, v in steps.items()}
    print(f"training step, batch {args.batch} at {args.size} px ({switched} convolutions switched): oneDNN "
          f"{ips['onednn']:.1f} img/s, small maps as matrix products {ips['small_maps']:.1f} img/s, "
          f"x{ips['small_maps'] / ips['onednn']:.2f} (medians of {args.runs}, interleaved)")
    if args.json:
        model, flags = cpu_info()
        with open(args.json, "w") as f:
            json.dump({"cpu": model, "bf16": "avx512_bf16" in flags, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "python": platform.python_version(), "size": args.size,
                       "batch": args.batch, "runs": args.runs, "convs": rows,
                       "step_img_s": {n: round(v, 1) for n, v in ips.items()},
                       "step_speedup": round(ips["small_maps"] / ips["onednn"], 3)}, f, indent=1)


if __name__ == "__main__":
    main()
