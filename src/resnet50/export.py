"""Export a model to ONNX, TorchScript or torch.export, with a dynamic batch dimension and a parity check.

Each export is traced on a batch of ``TRACE_BATCH`` images and then checked against eager PyTorch on a batch of
``CHECK_BATCH`` (a different size, so a batch dimension frozen into the graph is caught): the largest absolute
difference of the logits must be at most ``TOLERANCE`` (1e-4) times the largest |logit|, when that exceeds 1.
fp32 rounding differences (another summation order, folded batch norm) grow with the values: a trained ResNet-50
(logits within a few units) differs by about 1e-6, a randomly initialised one, whose logits reach about 100
because nothing damps the residual stages, by up to about 1e-4 (relative 1e-6).

ONNX goes through ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (needs ``onnxscript``).
It is the default since PyTorch 2.9, and the TorchScript-based one (``dynamo=False``) warns on every call in
torch 2.13 that it is deprecated and will be removed; the dynamo exporter also declares the batch dimension from a
``torch.export.Dim`` instead of trusting a trace. Opset 18. The model's classes, preprocessing, architecture and
config are stored in the ONNX ``metadata_props`` (``weights.Checkpoint.metadata``, the one schema); TorchScript and
torch.export files keep the same keys as extra files (``metadata.json``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .backends import OnnxRuntimeBackend
from .errors import UserError, require
from .files import atomic_path, output_file
from .weights import Checkpoint

FORMATS = ("onnx", "torchscript", "torch.export")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "torch.export": ".pt2"}
TRACE_BATCH, CHECK_BATCH = 2, 3
TOLERANCE = 1e-4
OPSET = 18
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"
MAX_BATCH = 4096  # the upper bound declared for the dynamic batch dimension


def _example(loaded: Checkpoint, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, loaded.in_chans, loaded.size, loaded.size, generator=g)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines on stdout and warnings (deprecations, missing torchvision ops) that say
    nothing about the user's model; keep stdout clean for --json."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def _torch_model(loaded: Checkpoint) -> torch.nn.Module:
    if loaded.model is None:
        raise UserError(f"{loaded.onnx_path} is already ONNX; export needs PyTorch weights (.safetensors/.pth/.h5) "
                        "or --arch")
    return loaded.model.eval()


def export_onnx(loaded: Checkpoint, path: Path, opset: int = OPSET) -> Path:
    """Write ``loaded`` as ONNX (dynamic batch, metadata_props) to ``path``, atomically."""
    require("onnxscript", "ONNX export")
    onnx = require("onnx", "ONNX export")
    model = _torch_model(loaded)
    try:
        with _quiet():
            program = torch.onnx.export(model, (_example(loaded, TRACE_BATCH),), dynamo=True, opset_version=opset,
                                        input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                        dynamic_shapes=({0: _batch_dim()},), verbose=False)
    except Exception as e:
        raise UserError(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from e
    proto = program.model_proto
    del proto.metadata_props[:]
    for k, v in loaded.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def export_torchscript(loaded: Checkpoint, path: Path) -> Path:
    model = _torch_model(loaded)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, _example(loaded, TRACE_BATCH), check_trace=False)  # parity() checks
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={"metadata.json": json.dumps(loaded.metadata())})
    return path


def export_torch_export(loaded: Checkpoint, path: Path) -> Path:
    model = _torch_model(loaded)
    with _quiet():
        program = torch.export.export(model, (_example(loaded, TRACE_BATCH),), dynamic_shapes=({0: _batch_dim()},))
    buf = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer; the temporary file has neither
    torch.export.save(program, buf, extra_files={"metadata.json": json.dumps(loaded.metadata())})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_exported(fmt: str, path: Path):
    """A callable on a float32 NCHW numpy batch for an exported file (what a deployment would load)."""
    if fmt == "onnx":
        return OnnxRuntimeBackend(path, "onnx")
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
    else:
        with _quiet():
            module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    return run


def parity(loaded: Checkpoint, run, batch: int = CHECK_BATCH) -> dict:
    """Largest |logit difference| between eager and ``run`` on a random batch of ``batch`` images."""
    x = _example(loaded, batch, seed=1)
    with torch.inference_mode():
        want = _torch_model(loaded)(x).numpy()
    got = run(x.numpy())
    if got.shape != want.shape:
        return {"batch": batch, "max_abs_diff": None, "tolerance": TOLERANCE, "passed": False,
                "error": f"output shape {got.shape}, eager {want.shape}"}
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    tol = TOLERANCE * max(1.0, scale)
    return {"batch": batch, "max_abs_diff": diff, "max_abs_logit": scale, "tolerance": tol, "passed": diff <= tol}


def export(loaded: Checkpoint, fmt: str, out: str | Path | None = None, check: bool = True) -> dict:
    """Export ``loaded`` to ``fmt`` and check parity with eager; returns the report (``parity.passed`` is the verdict)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    path = output_file(out if out is not None else f"{loaded.arch}{SUFFIXES[fmt]}")
    writer = {"onnx": export_onnx, "torchscript": export_torchscript, "torch.export": export_torch_export}[fmt]
    writer(loaded, path)
    report = {"format": fmt, "path": str(path), "bytes": path.stat().st_size, "arch": loaded.arch,
              "input": [None, loaded.in_chans, loaded.size, loaded.size], "dynamic_batch": True, "trace_batch": TRACE_BATCH,
              "metadata": loaded.metadata()}
    if check:
        report["parity"] = parity(loaded, load_exported(fmt, path))
    return report
