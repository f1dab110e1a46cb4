"""Inference throughput and latency of each backend, as a percentage of what the machine's matmul rate allows.

Scenarios follow MLPerf Inference's names: SingleStream (batch 1: one query at a time, latency per query) and
Offline (batch N: throughput). Each (backend, batch) is timed ``runs`` times on the same random input; latency
percentiles are over those runs and throughput is ``batch / median latency``. The runs are interleaved in turns, so
that load from other jobs on a shared machine falls on all backends alike: in each round every (backend, batch)
makes ``warmup`` untimed calls and then ``turn`` timed ones. The untimed calls are there because a backend is not
at its own speed for the first calls after another one ran: its thread pool wakes from sleep (and the previous
backend's threads may still spin on the same cores), its weights are refilled into the caches, and on some CPUs the
matrix units change power state. Measured on an Intel Xeon with AMX (benchmarks document): OpenVINO INT8 at batch 1
ran its 1st to 5th call after an ONNX Runtime call at 125, 147, 174, 216, 299 img/s and its 6th onward at 303-316;
timing one call per turn measured that warm-up, not the backend as a server runs it (MLPerf runs one system
under test at a time).

The ceiling: the fp32 matmul rate measured here (a 2048 x 2048 x 2048 product and the im2col GEMMs of ResNet-50's
3x3 convolutions, median of ``repeats`` each, with torch.mm and, when installed, ONNX Runtime's MatMul; the fastest
shape and engine count, since each library's GEMM is what its convolutions run on) divided by the model's FLOPs per
image (``resnet50.summary``: 2 x the conv and fc MACs).
That is the img/s a backend would reach if every FLOP ran at the GEMM rate; INT8 backends can exceed it, since
integer dot products (VNNI) do 4x the multiply-adds of fp32 FMA per instruction.

MLPerf's own rules (:func:`loadgen_benchmark`, optional: ``pip install 'resnet50[loadgen]'``): MLCommons' LoadGen
(``mlperf_loadgen``) drives one backend as the system under test in its SingleStream, Offline or Server scenario,
in performance mode, and judges the run (VALID / INVALID: minimum duration, minimum query count, early stopping,
and for Server the latency bound). The settings are sized from a short calibration of the backend on this machine
(see :func:`loadgen_settings`), written in the report beside LoadGen's verdict and percentiles and ours.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import queue
import re
import tempfile
import threading
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
from .errors import UserError, require
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
              batches: list[int] = (1, 16), warmup: int = 5, runs: int = 20, size: int | None = None,
              threads: int | None = None, int8: str | None = None, progress: bool = False, peak_n: int = 2048,
              turn: int = 5, **options) -> dict:
    """Time each backend at each batch size on one model; see the module docstring for the method."""
    if warmup < 0 or runs < 1 or turn < 1:
        raise UserError(f"--runs and --turn must be >= 1 and --warmup >= 0 (got {runs}, {turn}, {warmup})")
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
    times, setup = time_backends(loaded, backends, batches, warmup, runs, threads, int8, progress, turn)
    results = []
    for name in backends:
        for b in batches:
            lat = latency_stats(times[(name, b)])
            thr = b * 1e3 / lat["p50"]
            results.append({
                "backend": name, "precision": precision(name),
                "scenario": "SingleStream" if b == 1 else "Offline", "batch": b, "runs": runs,
                "warmup": warmup, "turn": turn,
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
                  int8: str | None, progress: bool, turn: int = 5) -> tuple[dict, dict]:
    """Per (backend, batch) the seconds of each timed call, and per backend its set-up times.

    Interleaved in turns: in each round every (backend, batch) makes ``warmup`` untimed calls, then ``turn`` timed
    ones (the last round fewer, to ``runs`` in all). On a machine shared with other jobs the load drifts over
    minutes; interleaving spreads that drift over every backend alike, so their ratios stay fair even when the
    absolute figures move; the untimed calls let each backend reach its own speed after another one ran."""
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
        times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in backends for b in batches}
        for start in range(0, runs, turn):
            for name in backends:
                for b, x in inputs.items():
                    times[(name, b)] += time_backend(runners[name], x, warmup, min(turn, runs - start), bar)
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


# --- MLPerf LoadGen -------------------------------------------------------------------------------------------

LOADGEN_SCENARIOS = ("SingleStream", "Offline", "Server")
LOADGEN_SCHEMA = "resnet50-loadgen/1"
# Fewest queries for which LoadGen's early stopping can pass (loadgen 4.0+, early_stopping.cc): SingleStream's
# 90th-percentile estimate needs 64; Server's 99th-percentile check needs 459 queries with none over the bound.
SINGLE_STREAM_MIN_QUERIES = 64
SERVER_MIN_QUERIES = 500
LOADGEN_MARGIN = 2.0  # expected speed = 2x the fastest calibrated call (see loadgen_settings)


def calibrate(backend, shape: tuple[int, ...], max_batch: int, seconds: float = 1.0, warmup: int = 3) -> dict:
    """A backend's batch-1 latency (median and fastest call) and its best images/s at ``max_batch`` (fastest call),
    each shape timed for ``seconds`` (at least 10 and 3 calls) after ``warmup`` untimed calls. The fastest call is
    the figure that other load on a shared machine disturbs least."""
    def timed(x: np.ndarray, least: int) -> list[float]:
        for _ in range(warmup):
            backend(x)
        times, end = [], time.perf_counter() + seconds
        while len(times) < least or (time.perf_counter() < end and len(times) < 500):
            times += time_backend(backend, x, 0, 1)
        return times
    one = timed(np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32), 10)
    batch = timed(np.random.default_rng(1).standard_normal((max_batch, *shape), dtype=np.float32), 3)
    return {"batch1_latency_ms": float(np.median(one)) * 1e3, "batch1_fastest_ms": min(one) * 1e3,
            "batch_img_s": max_batch / min(batch), "max_batch": max_batch, "calls": [len(one), len(batch)],
            "warmup": warmup}


def loadgen_settings(scenario: str, calibration: dict, duration_s: float, target_latency_ms: float | None = None,
                     target_qps: float | None = None) -> dict:
    """LoadGen settings sized for this machine from ``calibration``: every run lasts at least ``duration_s``.

    LoadGen fixes a run's query count in advance from the expected speed, and a run that ends before the minimum
    duration is INVALID; so the expectations err fast by ``LOADGEN_MARGIN`` (2x the fastest calibrated call), which
    makes a run longer (about 2x the duration on an idle machine), never shorter. SingleStream: expected latency =
    the fastest batch-1 call / 2, at least 64 queries. Offline: expected QPS = 2 x the best batch throughput
    (LoadGen sends 1.1 x QPS x duration samples in one query). Server: Poisson arrivals at ``target_qps``
    (default: half the batch-1 rate, 0.5 / median latency), 99th-percentile latency bound ``target_latency_ms``
    (default: 10 x the median batch-1 latency), at least 500 queries (the run lasts at least 500 / target_qps s)."""
    if scenario not in LOADGEN_SCENARIOS:
        raise UserError(f"unknown LoadGen scenario {scenario!r}; choose one of {', '.join(LOADGEN_SCENARIOS)}")
    if duration_s <= 0:
        raise UserError(f"--loadgen-duration must be > 0 seconds, got {duration_s}")
    latency = calibration["batch1_latency_ms"]
    out = {"scenario": scenario, "mode": "PerformanceOnly", "min_duration_ms": int(duration_s * 1e3)}
    if scenario == "SingleStream":
        out.update(min_query_count=SINGLE_STREAM_MIN_QUERIES,
                   expected_latency_ms=round(calibration["batch1_fastest_ms"] / LOADGEN_MARGIN, 3))
    elif scenario == "Offline":
        out.update(min_query_count=1, expected_qps=round(calibration["batch_img_s"] * LOADGEN_MARGIN, 2))
    else:
        qps = target_qps or 0.5 * 1e3 / latency
        bound = target_latency_ms or 10 * latency
        if qps <= 0 or bound <= 0:
            raise UserError("--loadgen-target-qps and --loadgen-target-latency-ms must be > 0")
        out.update(min_query_count=SERVER_MIN_QUERIES, target_qps=round(qps, 3), target_latency_ms=round(bound, 3),
                   target_latency_percentile=0.99, expected_run_s=round(max(duration_s, SERVER_MIN_QUERIES / qps), 1))
    return out


class _LoadgenSUT:
    """The system under test: LoadGen's issue callback queues (id, sample index, time) and one inference thread
    runs what is queued in batches of up to ``max_batch`` (the serve batcher's rule, without waiting), then
    reports each sample complete. Per-sample latencies (issue to completion) are kept for our own percentiles."""

    def __init__(self, lg, backend, samples: np.ndarray, max_batch: int) -> None:
        self.lg, self.backend, self.samples, self.max_batch = lg, backend, samples, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.latencies: list[float] = []
        self.batches = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="resnet50-loadgen", daemon=True)
        self.thread.start()

    def issue(self, query_samples) -> None:
        now = time.perf_counter()
        for q in query_samples:  # copy out of LoadGen's objects now: they are not ours after the callback
            self.queue.put((q.id, q.index, now))

    def flush(self) -> None:
        pass

    def run_here(self, fn):
        """``fn()`` on the inference thread (calibration: the thread, and so the thread pool state, of the run)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            if len(first) == 2:  # a run_here call
                fn, fut = first
                try:
                    fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)
                continue
            items = [first]
            while len(items) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None or len(item) == 2:
                    self.queue.put(item)  # handled next time round (order does not matter: LoadGen waits)
                    break
                items.append(item)
            try:
                self.backend(self.samples[[index for _, index, _ in items]])
            except BaseException as e:  # reported after the run; LoadGen still needs every sample completed
                self.error = self.error or e
            done = time.perf_counter()
            self.batches += 1
            self.latencies += [done - t for _, _, t in items]
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(qid, 0, 0) for qid, _, _ in items])

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)


def parse_loadgen_log(detail: Path) -> dict:
    """LoadGen's verdict and figures from its ``mlperf_log_detail.txt`` (one ``:::MLLOG {json}`` per line)."""
    values = {}
    for line in detail.read_text(errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            try:
                entry = json.loads(line[len(":::MLLOG "):])
            except ValueError:
                continue
            values[entry["key"]] = entry["value"]
    if "result_validity" not in values:
        raise UserError(f"LoadGen wrote no result into {detail}; the run did not finish")
    latency = {}
    for key, v in values.items():
        m = re.fullmatch(r"result_(\d+\.\d+)_percentile_latency_ns", key)
        if m:
            latency[f"p{float(m.group(1)):g}"] = v / 1e6
    for name in ("min", "mean", "max"):
        if f"result_{name}_latency_ns" in values:
            latency[name] = values[f"result_{name}_latency_ns"] / 1e6
    rate = next((values[k] for k in ("result_samples_per_second", "result_completed_samples_per_sec",
                                     "result_qps_without_loadgen_overhead") if k in values), None)
    return {
        "result": values["result_validity"],
        "checks": {k: values[f"result_{k}_met"] if k != "early_stopping" else values["early_stopping_met"]
                   for k in ("min_duration", "min_queries", "perf_constraints", "early_stopping")
                   if f"result_{k}_met" in values or (k == "early_stopping" and "early_stopping_met" in values)},
        "early_stopping": " ".join(str(values.get("early_stopping_result", "")).split()) or None,
        "latency_ms": dict(sorted(latency.items())), "samples_per_s": rate,
        "query_count": values.get("result_query_count"), "errors": values.get("num_errors"),
        "loadgen_version": values.get("loadgen_version"),
        "effective": {k.removeprefix("effective_"): v for k, v in values.items() if k in (
            "effective_min_duration_ms", "effective_min_query_count", "effective_samples_per_query",
            "effective_target_qps", "effective_target_latency_ns", "effective_target_latency_percentile")},
    }


def loadgen_benchmark(scenario: str, weights: str | None = None, arch: str | None = None, backend: str = "auto",
                      size: int | None = None, threads: int | None = None, max_batch: int = 16,
                      duration_s: float = 10.0, target_latency_ms: float | None = None,
                      target_qps: float | None = None, samples: int = 64, out: str | None = None,
                      **options) -> dict:
    """Run MLPerf LoadGen's ``scenario`` against ``backend`` on one model; see the module docstring.

    ``samples``: the query sample library, that many random float32 inputs of the model's shape held in memory
    (LoadGen's performance sample count). ``out``: keep LoadGen's logs (mlperf_log_summary.txt, _detail.txt)
    there; by default a temporary folder. Raises UserError for a bad setting or a missing ``loadgen`` extra."""
    lg = require("mlperf_loadgen", "resnet50 benchmark --loadgen")
    if max_batch < 1 or samples < 1:
        raise UserError(f"--batch and the sample count must be >= 1 (got {max_batch}, {samples})")
    loaded = load_model(weights, arch, size, **options)
    threads = threads or physical_cores()
    runner = create_backend(backend, loaded, threads)
    shape = (loaded.in_chans, loaded.size, loaded.size)
    max_batch = 1 if scenario == "SingleStream" else max_batch
    data = np.random.default_rng(0).standard_normal((samples, *shape), dtype=np.float32)
    sut_impl = _LoadgenSUT(lg, runner, data, max_batch)
    try:
        calibration = sut_impl.run_here(lambda: calibrate(runner, shape, max_batch))
        settings = loadgen_settings(scenario, calibration, duration_s, target_latency_ms, target_qps)
    except BaseException:
        sut_impl.close()
        raise

    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms, ts.min_query_count = settings["min_duration_ms"], settings["min_query_count"]
    if scenario == "SingleStream":
        ts.single_stream_expected_latency_ns = int(settings["expected_latency_ms"] * 1e6)
    elif scenario == "Offline":
        ts.offline_expected_qps = settings["expected_qps"]
    else:
        ts.server_target_qps = settings["target_qps"]
        ts.server_target_latency_ns = int(settings["target_latency_ms"] * 1e6)
        ts.server_target_latency_percentile = settings["target_latency_percentile"]

    with tempfile.TemporaryDirectory(prefix="resnet50-loadgen-") as tmp:
        logs = Path(out) if out else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        log_settings = lg.LogSettings()
        log_settings.log_output.outdir = str(logs)
        log_settings.log_output.copy_summary_to_stdout = False
        sut = lg.ConstructSUT(sut_impl.issue, sut_impl.flush)
        qsl = lg.ConstructQSL(samples, samples, lambda _: None, lambda _: None)  # the samples stay in memory
        start = time.perf_counter()
        try:
            lg.StartTestWithLogSettings(sut, qsl, ts, log_settings)
        finally:
            wall = time.perf_counter() - start
            sut_impl.close()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        if sut_impl.error is not None:
            raise sut_impl.error
        verdict = parse_loadgen_log(logs / "mlperf_log_detail.txt")
    verdict["logs"] = str(logs) if out else None
    lat = sut_impl.latencies
    ours = {"samples": len(lat), "batches": sut_impl.batches, "wall_s": round(wall, 2),
            "samples_per_s": len(lat) / wall if wall else None, "latency_ms": latency_stats(lat) if lat else None}
    return {"schema": LOADGEN_SCHEMA, "scenario": scenario, "backend": runner.name, "threads": threads,
            "model": {"arch": loaded.arch, "size": loaded.size, "source": loaded.source},
            "hardware": hardware(), "versions": {**versions(), "mlcommons-loadgen": _version("mlcommons-loadgen")},
            "calibration": calibration, "settings": settings, "loadgen": verdict, "ours": ours}


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def format_loadgen(r: dict) -> str:
    s, v, o = r["settings"], r["loadgen"], r["ours"]
    sized = {"SingleStream": f"expected latency {s.get('expected_latency_ms')} ms",
             "Offline": f"expected {s.get('expected_qps')} samples/s",
             "Server": f"target {s.get('target_qps')} queries/s, p99 bound {s.get('target_latency_ms')} ms"}
    lines = [f"MLPerf LoadGen {v['loadgen_version']} {r['scenario']} on {r['model']['arch']} at {r['model']['size']} "
             f"px, backend {r['backend']}, {r['threads']} threads; {r['hardware']['cpu']}",
             f"settings: min duration {s['min_duration_ms'] / 1e3:g} s, min queries {s['min_query_count']}, "
             f"{sized[r['scenario']]} (from calibration: batch-1 {r['calibration']['batch1_latency_ms']:.1f} ms, "
             f"{r['calibration']['batch_img_s']:.1f} img/s at batch {r['calibration']['max_batch']})",
             f"LoadGen: {v['result']} ({', '.join(f'{k} {str(x).lower()}' for k, x in v['checks'].items())}); "
             f"{v['query_count']} queries, {v['samples_per_s']:.1f} samples/s; latency ms "
             + ", ".join(f"{k} {x:.1f}" for k, x in v["latency_ms"].items() if k in ("p50", "p90", "p99"))]
    if o["latency_ms"]:
        lines.append(f"ours:    {o['samples']} samples in {o['batches']} batches, {o['samples_per_s']:.1f} samples/s; "
                     f"latency ms p50 {o['latency_ms']['p50']:.1f}, p90 {o['latency_ms']['p90']:.1f}, "
                     f"p99 {o['latency_ms']['p99']:.1f}")
    if v["early_stopping"]:
        lines.append(f"early stopping: {v['early_stopping']}")
    if v["logs"]:
        lines.append(f"LoadGen logs: {v['logs']}")
    return "\n".join(lines)
