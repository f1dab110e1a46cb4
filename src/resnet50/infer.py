"""A loaded model wired to a backend: ``load_model`` (a checkpoint, an ONNX file from export/quantize, or random
weights of a named architecture) and ``create_backend`` (by name, or ``auto``). The runners themselves are in
``resnet50.backends``; the record of a loaded model is ``resnet50.weights.Checkpoint``.

``AUTO_ORDER`` is the order ``auto`` tries, fastest first as measured (docs/benchmarks-inference.md); it takes the
first whose dependency is installed. An INT8 model runs on ``onnx-int8`` by default. A model passed as a ``.onnx``
file (our export, or the INT8 model) runs only on the ONNX Runtime and OpenVINO backends. The bf16 backends do not
give an fp32 result, so ``auto`` never picks them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from . import export
from .backends import (
    BACKENDS,
    BF16_BACKENDS,
    FP32_BACKENDS,
    INT8_BACKENDS,
    Backend,
    CompileBackend,
    EagerBackend,
    EagerBf16Backend,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    available_backends,
    physical_cores,
)
from .cpu import has_native_bf16
from .data.transforms import Preprocessing
from .errors import UserError, require
from .model import create_model
from .weights import Checkpoint, is_ours, load

__all__ = ["AUTO_ORDER", "BACKENDS", "BF16_BACKENDS", "FP32_BACKENDS", "INT8_BACKENDS", "Backend",
           "available_backends", "create_backend", "label_rows", "load_model", "physical_cores", "resolve_backend",
           "softmax", "top_indices", "topk"]

# ONNX Runtime first, eager always there (docs/benchmarks-inference.md gives the measured order).
AUTO_ORDER = ("onnx", "eager")
ONNX_INPUT, ONNX_OUTPUT = export.ONNX_INPUT, export.ONNX_OUTPUT


# --- the model to run ----------------------------------------------------------------------------------------

def load_model(weights: str | os.PathLike | None = None, arch: str | None = None, size: int | None = None,
               **options) -> Checkpoint:
    """A checkpoint (any format ``resnet50.weights.load`` reads), an ONNX file made by ``export``/``quantize``,
    or, without ``weights``, the architecture ``arch`` with random weights (for benchmarks and exports).

    ``size`` sets the input crop (the resize scales with it). Options that contradict the file are refused."""
    if weights is not None and Path(weights).suffix == ".onnx":
        return _from_onnx(Path(weights), arch, size, options)
    if weights is not None:  # a file, a Hub-layout folder or a published name; load sets weights_id
        ckpt = load(weights, arch, **options)
    else:
        arch = arch or "resnet50"
        ckpt = Checkpoint(create_model(arch, **options), arch, None, Preprocessing(), f"random init ({arch})")
    if size is not None:
        ckpt.preprocessing = ckpt.preprocessing.resized(size)
    # e.g. a gray model saved with the default (RGB ImageNet) statistics: the data package's rule converts them
    ckpt.preprocessing = ckpt.preprocessing.for_channels(ckpt.in_chans)
    ckpt.model.eval()
    return ckpt


def read_onnx_metadata(path: Path) -> dict[str, str]:
    onnx = require("onnx", "reading an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for damaged files
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable ONNX model ({why}); "
                        "re-export it with 'resnet50 export --format onnx'") from e
    return {p.key: p.value for p in proto.metadata_props}


def _from_onnx(path: Path, arch: str | None, size: int | None, options: dict) -> Checkpoint:
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; check the path")
    meta = read_onnx_metadata(path)
    if not is_ours(meta):
        raise UserError(f"{path} is an ONNX model without our metadata (classes, preprocessing); export it with "
                        "'resnet50 export --format onnx' or pass the .safetensors checkpoint")
    pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
    ckpt = Checkpoint(None, meta.get("arch", "custom"), json.loads(meta.get("classes", "null")), pre,
                      meta.get("source", ""), path, meta.get("quantization") or None,
                      num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]))
    fixed = {"size": pre.crop, "num_classes": ckpt.num_classes, "in_chans": ckpt.in_chans,
             **json.loads(meta.get("config", "{}"))}
    given = {k: v for k, v in {**options, "size": size}.items() if v is not None}
    if arch is not None and arch != ckpt.arch:
        given["arch"], fixed["arch"] = arch, ckpt.arch
    for k, v in given.items():
        if k not in fixed or fixed[k] != v:
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{path} is an exported ONNX model with {k}={fixed.get(k, 'fixed')}; {flag} {v} "
                            "cannot change it (drop the option, or export again from the checkpoint)")
    return ckpt


# --- ONNX files for the ONNX backends ------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where exported ONNX files of checkpoints are kept between runs: $RESNET50_CACHE, else
    $XDG_CACHE_HOME/resnet50, else ~/.cache/resnet50."""
    if os.environ.get("RESNET50_CACHE"):
        return Path(os.environ["RESNET50_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet50"


def onnx_file(loaded: Checkpoint) -> Path:
    """The fp32 ONNX file of ``loaded``: its own when it came as ONNX, else exported once per checkpoint and size and
    cached (an export of ResNet-50 takes several seconds), or exported to a temporary file for random weights."""
    if loaded.onnx_path is not None:
        return loaded.onnx_path
    if loaded.weights_id is None:  # random weights: one export per Checkpoint, removed with it
        if loaded.exported is None or not loaded.exported.exists():
            tmp = tempfile.mkdtemp(prefix="resnet50-onnx-")
            weakref.finalize(loaded, shutil.rmtree, tmp, True)
            loaded.exported = Path(tmp) / f"{loaded.arch}.onnx"
            export.export_onnx(loaded, loaded.exported)
        return loaded.exported
    key = f"{loaded.weights_id}-{loaded.size}-torch{torch.__version__}"
    path = cache_dir() / "onnx" / f"{loaded.arch}-{key}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export.export_onnx(loaded, path)
    return path


# --- backends ------------------------------------------------------------------------------------------------

def resolve_backend(name: str, loaded: Checkpoint) -> str:
    """Check ``name`` against the choices and the model; ``auto`` becomes the fastest available."""
    if name == "auto":
        if loaded.quantization or loaded.onnx_path is not None:
            name = "onnx-int8" if loaded.quantization else "onnx"
        else:
            return "onnx" if "onnx" in available_backends() else "eager"
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from: auto, {', '.join(BACKENDS)}")
    if name == "openvino-bf16" and not has_native_bf16():
        raise UserError("openvino-bf16 computes in bf16 only on CPUs with bf16 instructions (AVX512-BF16, AMX), and "
                        "this one has none: use --backend openvino (fp32)")
    if name.startswith(("onnx", "openvino")) and name not in available_backends():
        extra = "openvino" if name.startswith("openvino") else "onnx"
        raise UserError(f"the {name} backend needs the optional dependency {extra!r}: pip install "
                        f"{'openvino' if extra == 'openvino' else 'onnxruntime onnx'} "
                        f"(or the extra: pip install 'resnet50[{extra}]')")
    if name in INT8_BACKENDS and not loaded.quantization:
        raise UserError(f"the {name} backend runs an INT8 model: make one with 'resnet50 quantize --weights W "
                        "--calib DIR --out model.int8.onnx' and pass --weights model.int8.onnx")
    if loaded.quantization and name not in INT8_BACKENDS:
        raise UserError(f"{loaded.onnx_path} is an INT8 model; run it with --backend onnx-int8 or openvino-int8")
    if loaded.model is None and name in ("eager", "compile", "eager-bf16"):
        raise UserError(f"the {name} backend needs PyTorch weights; {loaded.onnx_path} is ONNX: use --backend onnx "
                        "or openvino, or pass the .safetensors checkpoint")
    return name


def create_backend(name: str, loaded: Checkpoint, threads: int | None = None) -> Backend:
    """The backend ``name`` (or ``auto``) for ``loaded``; fp32 ONNX backends export the PyTorch model first
    (cached). Its dependency was checked by :func:`resolve_backend` (installed, not yet imported)."""
    name = resolve_backend(name, loaded)
    if name == "eager":
        return EagerBackend(loaded.model, threads)
    if name == "compile":
        return CompileBackend(loaded.model, threads)
    if name == "eager-bf16":
        return EagerBf16Backend(loaded.model, threads)
    if name.startswith("onnx"):
        return OnnxRuntimeBackend(onnx_file(loaded), name, threads)
    return OpenVinoBackend(onnx_file(loaded), name, threads)


# --- outputs ------------------------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The one top-k ordering: the indices (N x k) of each row's ``k`` highest scores, highest first; ties broken
    by the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]


def topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities), each N x k, highest first (:func:`top_indices` of the softmax, in float64)."""
    probs = softmax(logits.astype(np.float64))
    idx = top_indices(probs, k)
    return idx, np.take_along_axis(probs, idx, axis=1)


def label_rows(logits: np.ndarray, k: int, names: list[str] | None) -> list[list[dict]]:
    """:func:`topk` as rows of ``{"rank", "index", "label", "probability"}``, highest first; the label is the class
    name (``Checkpoint.class_names()``) or, without names, the index."""
    idx, probs = topk(logits, k)
    return [[{"rank": r + 1, "index": int(i), "label": names[i] if names else str(int(i)), "probability": float(p)}
             for r, (i, p) in enumerate(zip(row_i, row_p))] for row_i, row_p in zip(idx, probs)]
