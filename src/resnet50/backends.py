"""Inference runners: a batch of preprocessed images in, logits out. They know a PyTorch module or an ONNX file,
nothing of checkpoints, export or preprocessing (``resnet50.infer`` wires them to a loaded model).

Every backend is a callable ``backend(x) -> logits`` on a float32 NCHW numpy array, with ``.name``:
    eager          PyTorch eager, channels_last memory format, under ``torch.inference_mode``. The reference:
                   every other backend is checked against it (export parity, tests).
    compile        ``torch.compile`` (Inductor) of the eager model; the first call of each batch size compiles
                   (seconds with a warm Inductor cache, longer cold).
    onnx           ONNX Runtime, CPU execution provider, graph optimisation level ALL (conv+BN folding, NCHWc
                   layouts), intra-op threads = physical cores, inter-op 1.
    onnx-int8      ONNX Runtime on an INT8 QDQ model made by ``resnet50.quantize`` (the same session settings).
    openvino       OpenVINO on CPU (optional: ``pip install openvino``), fp32 precision forced: on CPUs with
                   AVX512-BF16 OpenVINO would otherwise run in bf16 by default, which is not an fp32 result.
    openvino-int8  OpenVINO running the same INT8 QDQ model.
    eager-bf16     PyTorch eager (channels_last) under bf16 autocast: convolutions and the classifier in bf16,
                   logits returned as float32. Fast only on CPUs with bf16 instructions (AVX512-BF16, AMX).
    openvino-bf16  OpenVINO with its inference precision set to bf16 (its own default on such CPUs).

The bf16 backends do not give an fp32 result (bf16 keeps 8 bits of mantissa): ``auto`` never picks them, and
they are listed as available only on CPUs with bf16 instructions; their accuracy is checked against eager
(docs/benchmarks-inference.md).

``compile`` needs a working C++ compiler (Inductor builds its kernels with one): it is offered only where
:func:`compile_problem` finds one, checked once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from .cpu import has_native_bf16
from .errors import UserError, require

FP32_BACKENDS = ("onnx", "openvino", "compile", "eager")
INT8_BACKENDS = ("onnx-int8", "openvino-int8")
BF16_BACKENDS = ("eager-bf16", "openvino-bf16")
BACKENDS = FP32_BACKENDS + INT8_BACKENDS + BF16_BACKENDS


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once); falls back to the logical count."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


@functools.cache
def compile_problem() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here (no working C++ compiler: Inductor's own search,
    honouring $CXX), or None when it can. Cheap (no compilation), checked once per process."""
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or an Inductor that cannot be imported at all
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return f"torch.compile needs a working C++ compiler ({line}); install g++ or set CXX"
    return None


class Backend:
    """A batch of preprocessed images (float32, N x C x H x W) in, logits (N x classes, float32) out."""

    name = "?"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        torch.set_num_threads(threads or physical_cores())
        self.model = model.eval().to(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(t).float().numpy()


class EagerBf16Backend(EagerBackend):
    name = "eager-bf16"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().__call__(x)


class CompileBackend(EagerBackend):
    name = "compile"

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        problem = compile_problem()
        if problem:
            raise UserError(f"{problem}; or use --backend eager")
        super().__init__(model, threads)
        # dynamic=False: one specialised graph per batch size (a new batch size recompiles once).
        self.model = torch.compile(self.model, dynamic=False)


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: Path, name: str = "onnx", threads: int | None = None) -> None:
        ort = require("onnxruntime", f"the {name} backend")
        self.name = name
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UserError(f"ONNX Runtime cannot load {path} ({str(e).splitlines()[0][:160]}); re-export it") from e
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OpenVinoBackend(Backend):
    def __init__(self, path: Path, name: str = "openvino", threads: int | None = None) -> None:
        ov = require("openvino", f"the {name} backend")
        self.name = name
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or physical_cores(),
                  # fp32 means fp32: without this OpenVINO runs bf16 on CPUs that have it (AVX512-BF16, AMX).
                  "INFERENCE_PRECISION_HINT": "bf16" if name == "openvino-bf16" else "f32"}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[self.compiled.output(0)])


def available_backends() -> list[str]:
    """The backends whose dependencies are installed (INT8 ones also need an INT8 model); bf16 ones only on CPUs
    with bf16 instructions, where they are fast; ``compile`` only with a working C++ compiler."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("onnxruntime", "openvino", "onnx")}
    out = []
    for b in BACKENDS:
        if b in BF16_BACKENDS and not has_native_bf16():
            continue
        if b.startswith("onnx") and not (have["onnxruntime"] and have["onnx"]):
            continue
        if b.startswith("openvino") and not have["openvino"]:
            continue
        if b == "compile" and compile_problem() is not None:
            continue
        out.append(b)
    return out


