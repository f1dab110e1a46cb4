"""Inference backends behind one interface: a batch of preprocessed images in, logits out.

Every backend is a callable ``backend(x) -> logits`` on a float32 NCHW numpy array, with ``.name``. They are:

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

``AUTO_ORDER`` is the order ``auto`` tries (fastest first, measured on the 2-core development machine, see
docs/benchmarks-inference.md); it takes the first whose dependency is installed. An INT8 model runs on
``onnx-int8`` by default. A model passed as a ``.onnx`` file (our export, or the INT8 model) runs only on the
ONNX Runtime and OpenVINO backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cpu import has_native_bf16
from .errors import UserError
from .model import ResNet, create_model
from .weights import FORMAT, Preprocessing

FP32_BACKENDS = ("onnx", "openvino", "compile", "eager")
INT8_BACKENDS = ("onnx-int8", "openvino-int8")
BF16_BACKENDS = ("eager-bf16", "openvino-bf16")
BACKENDS = FP32_BACKENDS + INT8_BACKENDS + BF16_BACKENDS
# fp32 backends in the order ``auto`` picks them (docs/benchmarks-inference.md, ResNet-50, 2 cores): ONNX Runtime
# was fastest at batch 1 (14.7 img/s; OpenVINO fp32 10.6, eager 8.5) and 11 % behind OpenVINO at batch 16
# (20.1 vs 22.6), and it needs no optional extra beyond .[onnx]; eager is always there.
AUTO_ORDER = ("onnx", "eager")
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"

_INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "onnx": "pip install onnx",
    "onnxscript": "pip install onnxscript",
    "openvino": "pip install openvino",
}


def require(module: str, purpose: str):
    """Import an optional dependency, or raise a UserError that names the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        install = _INSTALL.get(module, f"pip install {module}")
        raise UserError(f"{purpose} needs the optional dependency {module!r}: {install}") from None


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


# --- the model to run ----------------------------------------------------------------------------------------

@dataclass
class InferenceModel:
    """What a backend needs: a PyTorch model (from a checkpoint or an architecture) or an ONNX file, plus the
    metadata that makes its outputs meaningful. ``weights_id`` keys the exported-ONNX cache (None: no caching)."""

    arch: str
    num_classes: int
    in_chans: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    classes: list[str] | None = None
    source: str = ""
    model: ResNet | None = None
    onnx_path: Path | None = None
    quantization: str | None = None  # set for INT8 models made by resnet50.quantize (quantize.QUANTIZATION)
    weights_id: str | None = None
    exported: Path | None = field(default=None, repr=False)  # the temporary ONNX export of random weights

    @property
    def size(self) -> int:
        return self.preprocessing.crop

    def metadata(self) -> dict[str, str]:
        """The metadata stored in exported files (ONNX metadata_props, TorchScript/torch.export extra files)."""
        meta = {
            "format": FORMAT,
            "arch": self.arch,
            "num_classes": str(self.num_classes),
            "in_chans": str(self.in_chans),
            "classes": json.dumps(self.classes),
            "preprocessing": json.dumps(asdict(self.preprocessing)),
            "source": self.source,
        }
        if self.model is not None:
            meta["config"] = json.dumps(self.model.cfg.to_dict())
        if self.quantization:
            meta["quantization"] = self.quantization
        return meta


def load_model(weights: str | os.PathLike | None = None, arch: str | None = None, size: int | None = None,
               **options) -> InferenceModel:
    """A checkpoint (any format ``resnet50.weights.load`` reads), an ONNX file made by ``export``/``quantize``,
    or, without ``weights``, the architecture ``arch`` with random weights (for benchmarks and exports)."""
    if weights is not None and Path(weights).suffix == ".onnx":
        if options:
            raise UserError(f"{weights} is an ONNX model; model options ({', '.join(options)}) do not apply to it")
        return _from_onnx(Path(weights), size)
    if weights is not None:
        from . import weights as W

        path = Path(weights)
        ckpt = W.load(path, arch, **options)
        st = path.stat()
        wid = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        model, pre, classes, source, name = ckpt.model, ckpt.preprocessing, ckpt.classes, ckpt.source, ckpt.arch
    else:
        arch = arch or "resnet50"
        model = create_model(arch, **options)
        pre, classes, source, name, wid = Preprocessing(), None, f"random init ({arch})", arch, None
    if size is not None:
        pre = Preprocessing(resize=round(size * pre.resize / pre.crop), crop=size, mean=pre.mean, std=pre.std,
                            interpolation=pre.interpolation)
    if model.cfg.in_chans != len(pre.mean):
        # e.g. a gray model saved with the default (RGB ImageNet) statistics: the data package's rule converts them
        from .data.stats import stats_for

        try:
            mean, std = stats_for(pre.mean, pre.std, model.cfg.in_chans)
        except ValueError as e:
            raise UserError(f"{weights}: {e}; save the checkpoint with {model.cfg.in_chans}-channel mean/std") from None
        pre = Preprocessing(pre.resize, pre.crop, mean, std, pre.interpolation)
    model.eval()
    return InferenceModel(name, model.cfg.num_classes, model.cfg.in_chans, pre, classes, source, model,
                          weights_id=wid)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    onnx = require("onnx", "reading an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for damaged files
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable ONNX model ({why}); "
                        "re-export it with 'resnet50 export --format onnx'") from e
    return {p.key: p.value for p in proto.metadata_props}


def _from_onnx(path: Path, size: int | None) -> InferenceModel:
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; check the path")
    meta = read_onnx_metadata(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is an ONNX model without our metadata (classes, preprocessing); export it with "
                        "'resnet50 export --format onnx' or pass the .safetensors checkpoint")
    pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
    if size is not None and size != pre.crop:
        raise UserError(f"{path} was exported for {pre.crop} px input; --size {size} cannot change it (re-export)")
    return InferenceModel(meta.get("arch", "custom"), int(meta["num_classes"]), int(meta["in_chans"]), pre,
                          json.loads(meta.get("classes", "null")), meta.get("source", ""), None, path,
                          meta.get("quantization") or None)


# --- ONNX files for the ONNX backends ------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where exported ONNX files of checkpoints are kept between runs: $RESNET50_CACHE, else
    $XDG_CACHE_HOME/resnet50, else ~/.cache/resnet50."""
    if os.environ.get("RESNET50_CACHE"):
        return Path(os.environ["RESNET50_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet50"


def onnx_file(im: InferenceModel) -> Path:
    """The fp32 ONNX file of ``im``: its own when it came as ONNX, else exported once per checkpoint and size and
    cached (an export of ResNet-50 takes several seconds), or exported to a temporary file for random weights."""
    if im.onnx_path is not None:
        return im.onnx_path
    from . import export

    if im.weights_id is None:  # random weights: one export per InferenceModel, removed with it
        if im.exported is None or not im.exported.exists():
            tmp = tempfile.mkdtemp(prefix="resnet50-onnx-")
            weakref.finalize(im, shutil.rmtree, tmp, True)
            im.exported = Path(tmp) / f"{im.arch}.onnx"
            export.export_onnx(im, im.exported)
        return im.exported
    key = f"{im.weights_id}-{im.size}-torch{torch.__version__}"
    path = cache_dir() / "onnx" / f"{im.arch}-{key}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export.export_onnx(im, path)
    return path


# --- backends ------------------------------------------------------------------------------------------------

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
    with bf16 instructions, where they are fast."""
    import importlib.util

    have = {m: importlib.util.find_spec(m) is not None for m in ("onnxruntime", "openvino", "onnx")}
    out = []
    for b in BACKENDS:
        if b in BF16_BACKENDS and not has_native_bf16():
            continue
        if b.startswith("onnx") and not (have["onnxruntime"] and have["onnx"]):
            continue
        if b.startswith("openvino") and not have["openvino"]:
            continue
        out.append(b)
    return out


def resolve_backend(name: str, im: InferenceModel) -> str:
    """Check ``name`` against the choices and the model; ``auto`` becomes the fastest available."""
    if name == "auto":
        if im.quantization:
            return "onnx-int8" if "onnx-int8" in available_backends() else _missing("onnx-int8")
        if im.onnx_path is not None:
            return "onnx"
        have = available_backends()
        return next(b for b in AUTO_ORDER if b in have or b == "eager")
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from: auto, {', '.join(BACKENDS)}")
    if name == "openvino-bf16" and not has_native_bf16():
        raise UserError("openvino-bf16 computes in bf16 only on CPUs with bf16 instructions (AVX512-BF16, AMX), and "
                        "this one has none: use --backend openvino (fp32)")
    if name in INT8_BACKENDS and not im.quantization:
        raise UserError(f"the {name} backend runs an INT8 model: make one with 'resnet50 quantize --weights W "
                        "--calib DIR --out model.int8.onnx' and pass --weights model.int8.onnx")
    if im.quantization and name not in INT8_BACKENDS:
        raise UserError(f"{im.onnx_path} is an INT8 model; run it with --backend onnx-int8 or openvino-int8")
    if im.model is None and name in ("eager", "compile", "eager-bf16"):
        raise UserError(f"the {name} backend needs PyTorch weights; {im.onnx_path} is ONNX: use --backend onnx "
                        "or openvino, or pass the .safetensors checkpoint")
    return name


def _missing(name: str):
    raise UserError(f"the {name} backend needs onnxruntime and onnx: pip install onnxruntime onnx")


def create_backend(name: str, im: InferenceModel, threads: int | None = None) -> Backend:
    """The backend ``name`` (or ``auto``) for ``im``. fp32 ONNX backends export the PyTorch model first (cached)."""
    name = resolve_backend(name, im)
    if name == "eager":
        return EagerBackend(im.model, threads)
    if name == "compile":
        return CompileBackend(im.model, threads)
    if name == "eager-bf16":
        return EagerBf16Backend(im.model, threads)
    if name.startswith("onnx"):
        require("onnxruntime", f"the {name} backend")
        return OnnxRuntimeBackend(onnx_file(im), name, threads)
    require("openvino", f"the {name} backend")
    return OpenVinoBackend(onnx_file(im), name, threads)


# --- outputs ------------------------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities), each N x k, highest first; ties broken by the lower index."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, probs.shape[1])
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)
