"""Inference throughput and latency of each backend, as a percentage of what the machine's matmul rate allows.

Scenarios follow MLPerf Inference's names: SingleStream (batch 1: one query at a time, latency per query) and
Offline (batch N: throughput). Each (backend, batch) is timed ``runs`` times after ``warmup`` untimed calls on the
same random input; latency percentiles are over those runs and throughput is ``batch / median latency``. The runs
are interleaved (one call of every backend and batch, then the next round), so that load from other jobs on a
shared machine falls on all backends alike.

The ceiling: the fp32 matmul rate measured here (a 2048 x 2048 x 2048 product and the im2col GEMMs of ResNet-50's
3x3 convolutions, median of ``repeats`` each, with torch.mm and, when installed, ONNX Runtime's MatMul; the fastest
shape and engine count, since each library's GEMM is what its convolutions run on) divided by the model's FLOPs per
image (``resnet50.summary``: 2 x the conv and fc MACs).
That is the img/s a backend would reach if every FLOP ran at the GEMM rate; INT8 backends can exceed it, since
integer dot products (VNNI) do 4x the multiply-adds of fp32 FMA per instruction.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backends import (
    BACKENDS,
    BF16_BACKENDS,
    FP32_BACKENDS,
    INT8_BACKENDS,
    available_backends,
    compile_problem,
    physical_cores,
)
from .cpu import cpu_info
from .errors import UserError
from .infer import create_backend, load_model, resolve_backend
from .quantize import quantize_random
from .summary import count_params, summarize
from .weights import Checkpoint

SCHEMA = "resnet50-benchmark/1"


def _median_rate(fn, flops: float, repeats: int) -> float:
    fn()  # warm-up: first call allocates and packs
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / float(np.median(times)) / 1e9


# im2col GEMMs (M = output pixels, K = in-channels x kernel area, N = out-channels) of ResNet-50's 3x3 convolutions
# at 224 px, batch 1: stages 1, 2 and 3. They fit in the caches, and on some CPUs they run faster than a large square
# GEMM (measured on the project's Zen 5 machine: 410-440 vs 260-300 GFLOP/s for 2048^3 through ONNX Runtime), so a
# peak taken from the square product alone would put the convolutions above 100 % of it.
RESNET_GEMMS = ((3136, 576, 64), (784, 1152, 128), (196, 2304, 256))


def matmul_peak(n: int = 2048, repeats: int = 7, threads: int | None = None,
                shapes: tuple[tuple[int, int, int], ...] = RESNET_GEMMS) -> dict:
    """Measured fp32 GEMM rate (GFLOP/s): torch.mm and ONNX Runtime's MatMul on an n x n x n product and on
    ``shapes`` (M, K, N), the median of ``repeats`` timed runs each; an engine's rate is its fastest shape, and
    ``gflops`` is the faster engine."""
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    shapes = ((n, n, n), *shapes)
    out = {"n": n, "repeats": repeats, "threads": threads, "shapes": [list(x) for x in shapes],
           "torch_mm_gflops": None, "onnxruntime_matmul_gflops": None, "per_shape": {}}
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        ort = None
    for m, k, nn in shapes:
        flops = 2.0 * m * k * nn
        a, b = torch.randn(m, k), torch.randn(k, nn)
        rates = {"torch_mm_gflops": round(_median_rate(lambda: torch.mm(a, b), flops, repeats), 1)}
        if ort is not None:
            spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
                    for name, dims in (("a", [m, k]), ("b", [k, nn]), ("c", [m, nn]))]
            graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec[:2], spec[2:])
            proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            proto.ir_version = min(proto.ir_version, 9)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            feeds = {"a": a.numpy(), "b": b.numpy()}
            rates["onnxruntime_matmul_gflops"] = round(_median_rate(lambda: sess.run(None, feeds), flops, repeats), 1)
        out["per_shape"][f"{m}x{k}x{nn}"] = rates
        for key, v in rates.items():
            out[key] = max(out[key] or 0.0, v)
    rates = {k: v for k, v in out.items() if k.endswith("_gflops") and v}
    out["engine"] = max(rates, key=rates.get).removesuffix("_gflops")
    out["gflops"] = rates[out["engine"] + "_gflops"]
    return out


def hardware() -> dict:
    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    # The load average says whether other work shared the CPU during the run (it does on shared machines).
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "isa": isa, "os": platform.platform(), "load_average_1_5_15m": load}


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("onnxruntime", "onnx", "openvino", "numpy", "resnet50"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min()),
            "max": float(ms.max())}


def time_backend(backend, x: np.ndarray, warmup: int, runs: int, bar=None) -> list[float]:
    for _ in range(warmup):
        backend(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t)
        if bar is not None:
            bar.update(1)
    return times


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(s.strip()) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--{what} takes a comma-separated list, e.g. 1,16; got {text!r}") from None
    if not items:
        raise UserError(f"--{what} is empty")
    return items


def benchmark(weights: str | None = None, arch: str | None = None, backends: list[str] | None = None,
              batches: list[int] = (1, 16), warmup: int = 3, runs: int = 20, size: int | None = None,
              threads: int | None = None, int8: str | None = None, progress: bool = False, peak_n: int = 2048,
              **options) -> dict:
    """Time each backend at each batch size on one model; see the module docstring for the method."""
    if warmup < 0 or runs < 1:
        raise UserError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    if any(b < 1 for b in batches):
        raise UserError(f"batch sizes must be >= 1, got {list(batches)}")
    notes = [f"compile left out: {compile_problem()}"] if not backends and compile_problem() else []
    backends = list(backends) if backends else available_backends()
    for b in backends:
        if b not in BACKENDS:
            raise UserError(f"unknown backend {b!r}; choose from: {', '.join(BACKENDS)}")
    threads = threads or physical_cores()
    load_at_start = hardware()["load_average_1_5_15m"]
    loaded = load_model(weights, arch, size, **options)
    if loaded.model is None:
        raise UserError("benchmark takes PyTorch weights or --arch (it exports and quantises them itself); "
                        "pass an INT8 .onnx model with --int8")
    flops = summarize(loaded.model, loaded.size)["flops"]
    peak = matmul_peak(peak_n, threads=threads)
    limit = peak["gflops"] * 1e9 / flops
    default = resolve_backend("auto", loaded)
    times, setup = time_backends(loaded, backends, batches, warmup, runs, threads, int8, progress)
    results = []
    for name in backends:
        for b in batches:
            lat = latency_stats(times[(name, b)])
            thr = b * 1e3 / lat["p50"]
            results.append({
                "backend": name, "precision": precision(name),
                "scenario": "SingleStream" if b == 1 else "Offline", "batch": b, "runs": runs, "warmup": warmup,
                "latency_ms": lat, "throughput_img_s": thr, "pct_of_limit": 100.0 * thr / limit,
                # the fastest run: the closest figure to an idle machine when other jobs share the CPU
                "best_img_s": b * 1e3 / lat["min"], "setup_s": setup[name],
            })
    hw = {**hardware(), "load_average_at_start": load_at_start}
    model = {"arch": loaded.arch, "size": loaded.size, "params": count_params(loaded.model),
             "flops_per_image": flops, "source": loaded.source}
    return {"schema": SCHEMA, "hardware": hw, "versions": versions(), "model": model, "peak": peak,
            "limit_img_s": limit, "threads": threads, "default_backend": default, "results": results,
            "comparisons": comparisons(results, default), "notes": notes}


def time_backends(loaded: Checkpoint, backends: list[str], batches: list[int], warmup: int, runs: int, threads: int,
                  int8: str | None, progress: bool) -> tuple[dict, dict]:
    """Per (backend, batch) the seconds of each timed call, and per backend its set-up times.

    Interleaved: run r times every (backend, batch) once, then run r + 1. On a machine shared with other jobs the
    load drifts over minutes; interleaving spreads that drift over every backend alike, so their ratios stay fair
    even when the absolute figures move."""
    shape = (loaded.in_chans, loaded.size, loaded.size)
    inputs = {b: np.random.default_rng(b).standard_normal((b, *shape), dtype=np.float32) for b in batches}
    runners, setup, int8_model = {}, {}, None
    with tempfile.TemporaryDirectory(prefix="resnet50-bench-") as tmp, \
            tqdm(total=len(backends) * len(batches) * runs, unit="run", desc="benchmark", disable=not progress,
                 leave=False) as bar:
        for name in backends:
            t0 = time.perf_counter()
            if name in INT8_BACKENDS and int8_model is None:
                int8_model = load_model(int8) if int8 else _random_int8(loaded, Path(tmp))
            runners[name] = create_backend(name, int8_model if name in INT8_BACKENDS else loaded, threads)
            setup[name] = {"create": round(time.perf_counter() - t0, 2)}
            for b, x in inputs.items():
                first = time.perf_counter()
                runners[name](x)  # the first call of a shape may compile (torch.compile) or allocate: setup
                setup[name][f"first_call_batch{b}"] = round(time.perf_counter() - first, 2)
                for _ in range(warmup):
                    runners[name](x)
        times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in backends for b in batches}
        for _ in range(runs):
            for name in backends:
                for b, x in inputs.items():
                    times[(name, b)] += time_backend(runners[name], x, 0, 1)
                    bar.update(1)
    return times, setup


def _random_int8(loaded: Checkpoint, folder: Path) -> Checkpoint:

    path = folder / f"{loaded.arch}.int8.onnx"
    quantize_random(loaded, path)
    return load_model(path)


def precision(backend: str) -> str:
    return "int8" if backend in INT8_BACKENDS else "bf16" if backend in BF16_BACKENDS else "fp32"


def comparisons(results: list[dict], default: str) -> dict:
    """Per batch: the default backend / ONNX Runtime, and the best INT8 (and bf16) / the best fp32 backend
    (throughput)."""
    out = {}
    for batch in sorted({r["batch"] for r in results}):
        rows = {r["backend"]: r["throughput_img_s"] for r in results if r["batch"] == batch}
        fp32 = {k: v for k, v in rows.items() if k in FP32_BACKENDS}
        int8 = {k: v for k, v in rows.items() if k in INT8_BACKENDS}
        bf16 = {k: v for k, v in rows.items() if k in BF16_BACKENDS}
        c = {}
        if default in rows and "onnx" in rows:
            c["default_vs_onnx"] = rows[default] / rows["onnx"]
        if fp32:
            c["best_fp32"] = max(fp32, key=fp32.get)
        if int8 and fp32:
            c["best_int8"] = max(int8, key=int8.get)
            c["int8_vs_best_fp32"] = int8[c["best_int8"]] / fp32[c["best_fp32"]]
        if bf16 and fp32:
            c["best_bf16"] = max(bf16, key=bf16.get)
            c["bf16_vs_best_fp32"] = bf16[c["best_bf16"]] / fp32[c["best_fp32"]]
        out[str(batch)] = c
    return out


def format_report(r: dict) -> str:
    hw, v, m, p = r["hardware"], r["versions"], r["model"], r["peak"]
    lines = [
        f"{hw['cpu']}, {hw['physical_cores']} physical cores ({', '.join(hw['isa'])}); torch {v['torch']}, "
        f"onnxruntime {v['onnxruntime']}, openvino {v['openvino']}",
        f"{m['arch']} at {m['size']} px: {m['flops_per_image'] / 1e9:.2f} GFLOP/image; fp32 matmul peak "
        f"{p['gflops']:.0f} GFLOP/s ({p['engine']}; torch.mm {p['torch_mm_gflops']}) -> limit "
        f"{r['limit_img_s']:.1f} img/s",
        f"{'backend':<14}{'scenario':<13}{'batch':>5}{'img/s':>9}{'% limit':>9}{'p50 ms':>9}{'p99 ms':>9}{'runs':>6}",
    ]
    for x in r["results"]:
        lines.append(f"{x['backend']:<14}{x['scenario']:<13}{x['batch']:>5}{x['throughput_img_s']:>9.1f}"
                     f"{x['pct_of_limit']:>8.0f}%{x['latency_ms']['p50']:>9.1f}{x['latency_ms']['p99']:>9.1f}"
                     f"{x['runs']:>6}")
    for batch, c in r["comparisons"].items():
        parts = []
        if "default_vs_onnx" in c:
            parts.append(f"default ({r['default_backend']}) / onnx = {c['default_vs_onnx']:.2f}x")
        if "int8_vs_best_fp32" in c:
            parts.append(f"{c['best_int8']} / {c['best_fp32']} = {c['int8_vs_best_fp32']:.2f}x")
        if "bf16_vs_best_fp32" in c:
            parts.append(f"{c['best_bf16']} / {c['best_fp32']} = {c['bf16_vs_best_fp32']:.2f}x")
        if parts:
            lines.append(f"batch {batch}: " + "; ".join(parts))
    lines += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)
