"""Weights on disk: our safetensors checkpoints with metadata, and importers for other layouts.

Our format is a safetensors file whose metadata says how to rebuild and use the model: ``format`` (``pt``,
safetensors' own key, which Hugging Face's loaders require), ``schema`` (``resnet50-toolkit/1``), ``arch``, ``config``
(the ResNetConfig as JSON), ``classes`` (JSON list), ``preprocessing`` (resize, crop, mean, std, interpolation as
JSON) and ``source``. Files written before the ``schema`` key carry ``format: resnet50-toolkit/1`` and still load.

Where weights come from (:func:`load`): a file, a folder in the Hugging Face Hub layout (its ``model.safetensors``),
or a published name such as ``tv:resnet50.v2`` (:mod:`resnet50.published`: downloaded once, hash-checked, cached).

Importers:
- torchvision / timm ResNet state dicts (``.pth``/``.pt``/``.bin`` pickles, loaded with ``weights_only=True``, or
  ``.safetensors``), strict; the architecture is read off the tensors' names and shapes.
- Keras ``ResNet50``/``101``/``152`` (``keras.applications``) weights from ``.h5`` (Keras 2 / legacy layout) or
  ``.weights.h5`` (Keras 3 layout) into our v1 model with Keras' options (a bias in every conv, BN eps 1.001e-5).
  Keras models take BGR input with the Caffe means subtracted and no scaling; the importer folds the BGR order into
  conv1's input channels, so the imported model takes RGB like every other, normalised with mean = Caffe mean / 255
  and std = 1 / 255 (identical arithmetic), and gives the same logits as Keras.

Every write is atomic: a temporary file in the same folder, flushed, then renamed over the target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .data.transforms import Preprocessing
from .errors import UserError
from .files import atomic_path, output_file
from .labels import class_mapping, imagenet_synsets_and_names
from .model import ResNet, ResNetConfig, arch_name, model_config
from .published import fetch, is_published_name
from .published import get as published_entry

# Our schema, stored under its own key. ``format`` is safetensors' own convention ("pt": torch tensors), which Hugging
# Face's loaders check; files written before 0.2 carry the schema in ``format`` and are still read.
SCHEMA = "resnet50-toolkit/1"
FORMAT = SCHEMA
HUB_WEIGHTS = "model.safetensors"  # the weights file of a Hugging Face Hub-layout folder (beside config.json)

# Keras applications' "caffe" preprocessing, as RGB means on the 0..1 scale, with std 1/255 (no scaling).
KERAS_CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
KERAS_CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)


@dataclass
class Checkpoint:
    """A loaded model and everything needed to use it: the one record every command works from.

    ``model`` is the PyTorch network, or None for a model that came as an ONNX file (``onnx_path``; then
    ``quantization`` names an INT8 scheme from ``resnet50.quantize``). ``classes`` are the class names in output
    order, ``preprocessing`` the evaluation contract, ``weights_id`` a key for caches (None: not cacheable)."""

    model: ResNet | None
    arch: str
    classes: list[str] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = ""
    onnx_path: Path | None = None
    quantization: str | None = None
    weights_id: str | None = None
    num_classes: int = 0  # set from the model when there is one
    in_chans: int = 3
    exported: Path | None = field(default=None, repr=False)  # a temporary ONNX export of random weights

    def __post_init__(self) -> None:
        if self.model is not None:
            self.num_classes, self.in_chans = self.model.cfg.num_classes, self.model.cfg.in_chans

    @property
    def config(self) -> ResNetConfig:
        return self.model.cfg

    @property
    def size(self) -> int:
        """The input height and width in pixels (the preprocessing's crop)."""
        return self.preprocessing.crop

    def class_names(self) -> list[str] | None:
        """The names in output order: the checkpoint's list; for 1000-class weights without one (imported
        torchvision/timm/Keras ImageNet weights) the bundled ImageNet-1k names; else None (report indices)."""
        if self.classes:
            return list(self.classes)
        if self.num_classes == 1000:
            return list(imagenet_synsets_and_names()[1])
        return None

    def metadata(self) -> dict[str, str]:
        """The one metadata schema, written into every file we make (safetensors, ONNX metadata_props,
        TorchScript / torch.export extra files) and read back by :func:`load` and ``infer.load_model``."""
        meta = {
            "format": "pt",
            "schema": SCHEMA,
            "arch": self.arch,
            "num_classes": str(self.num_classes),
            "in_chans": str(self.in_chans),
            "classes": json.dumps(self.classes),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "source": self.source,
        }
        if self.model is not None:
            meta["config"] = json.dumps(self.model.cfg.to_dict())
        if self.quantization:
            meta["quantization"] = self.quantization
        return meta


def is_ours(meta: dict) -> bool:
    """Whether file metadata follows our schema (the current key, or the ``format`` key of older files)."""
    return meta.get("schema") == SCHEMA or meta.get("format") == SCHEMA


# --- our checkpoints -----------------------------------------------------------------------------------------

def save(path: str | os.PathLike, model: ResNet, classes: list[str] | None = None,
         preprocessing: Preprocessing | None = None, source: str = "") -> None:
    """Write ``model`` as safetensors with the metadata that rebuilds it (atomically)."""
    if classes is not None and model.cfg.num_classes and len(classes) != model.cfg.num_classes:
        raise UserError(f"{len(classes)} class names given for a model with {model.cfg.num_classes} classes")
    meta = Checkpoint(model, arch_name(model.cfg) or "custom", classes, preprocessing or Preprocessing(),
                      source).metadata()
    write_safetensors(path, model, meta)


def write_safetensors(path: str | os.PathLike, model: nn.Module, meta: dict[str, str]) -> None:
    """``model``'s state dict (contiguous CPU copies) and ``meta`` as one safetensors file, written atomically:
    the one writer of every kind of weights file (classifier, detector, localiser)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load(path: str | os.PathLike, arch: str | None = None, **overrides) -> Checkpoint:
    """Load any supported weights: ours (metadata rebuilds the model), a torchvision/timm state dict or a
    training checkpoint holding one, Keras ``.h5``, a Hugging Face Hub-layout folder (``model.safetensors``), or a
    published name (``tv:resnet50.v2``, :mod:`resnet50.published`), which comes with its preprocessing and source.

    ``arch`` names the architecture expected and ``overrides`` are ResNetConfig fields (``variant``,
    ``num_classes``, ``in_chans``, ...). A file that does not say a field takes it from ``overrides`` (``variant``
    for torchvision files, which cannot be told apart from the tensors: v1 and v1.5 have identical shapes); a
    field the file fixes and an option contradicts is a UserError, never silently ignored."""
    wanted = {k: v for k, v in overrides.items() if v is not None}
    if is_published_name(path):
        return _load_published(str(path), arch, wanted)
    path = _existing(path)
    if path.suffix == ".h5":
        ckpt = import_keras(path)
    elif path.suffix == ".safetensors":
        meta, sd = read_safetensors(path)
        if is_ours(meta):
            ckpt = _from_ours(path, meta, sd)
        else:
            ckpt = from_state_dict(sd, arch, source=f"state dict {path.name}", **wanted)
    else:
        ckpt = from_state_dict(read_torch(path), arch, source=f"state dict {path.name}", **wanted)
    check_options(ckpt, path, arch, wanted)
    ckpt.weights_id = file_id(path)
    return ckpt


def _load_published(name: str, arch: str | None, wanted: dict) -> Checkpoint:
    entry = published_entry(name)
    path = fetch(entry)
    if path.suffix == ".h5":
        ckpt = import_keras(path)
    else:  # the entry, not the caller, fixes the architecture and the stride placement it was trained with
        ckpt = from_state_dict(read_torch(path), entry.arch, variant=entry.variant)
    ckpt.preprocessing, ckpt.source, ckpt.weights_id = entry.preprocessing, entry.describe(), file_id(path)
    check_options(ckpt, Path(name), arch, wanted)
    return ckpt


def file_id(path: Path) -> str:
    """A cache key for a weights file: its resolved path, size and modification time."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def check_options(ckpt: Checkpoint, path: Path, arch: str | None, options: dict) -> None:
    """Refuse options that contradict what the loaded file fixes (its architecture, classes, channels...)."""
    if arch is not None and ckpt.arch not in (arch, "custom"):
        raise UserError(f"{path} holds {ckpt.arch}; --arch {arch} contradicts it (drop --arch)")
    if ckpt.model is None:
        return
    have = ckpt.model.cfg.to_dict()
    for k, v in options.items():
        if k in have and _norm(have[k]) != _norm(v):
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{path} holds a model with {k}={have[k]!r}; {flag} {v} contradicts it (drop {flag}; "
                            "to change the classes, fine-tune with 'resnet50 train --init-weights')")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _from_ours(path: Path, meta: dict, sd: dict[str, Tensor]) -> Checkpoint:
    try:
        cfg = json.loads(meta["config"])
        classes = json.loads(meta.get("classes", "null"))
        pre = Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}")))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged metadata ({e}); re-export the checkpoint") from e
    model = ResNet(ResNetConfig.from_dict(cfg))
    load_strict(model, sd, path.name)
    return Checkpoint(model, meta.get("arch", "custom"), classes, pre, meta.get("source", ""))


def check_source(path: str | os.PathLike) -> None:
    """Refuse, as :func:`load` would, a ``path`` that names no weights (a missing file, a folder without
    ``model.safetensors``) without reading it; a published name passes (its download is checked when loaded)."""
    if not is_published_name(path):
        _existing(path)


def _existing(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: itself, or a Hugging Face Hub-layout folder's ``model.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"weights file {path} does not exist; check the path (published weights are named like "
                        "tv:resnet50.v2: see 'resnet50 models --published')")
    if path.is_dir():
        if (path / HUB_WEIGHTS).is_file():
            return path / HUB_WEIGHTS
        raise UserError(f"{path} is a folder; give the weights file inside it")
    return path


# --- reading tensors -----------------------------------------------------------------------------------------

def read_safetensors(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensors) of a safetensors file: the one reader of every kind of weights file; a truncated or
    foreign file is a one-line UserError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(e)}); it may be truncated: "
                        "copy it again or re-export it") from e


# Wrappers that training code puts around a model: torch.nn.parallel.DistributedDataParallel saves keys under
# "module.", torch.compile under "_orig_mod." (both nested: "module._orig_mod."). Removed only when every key
# carries them.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Training checkpoints (ours, timm's and torchvision's train.py, many scripts) keep the weights under one of these
# keys, beside epoch, arch, optimizer, scheduler, args and accuracies. The plain weights are preferred to the EMA.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")


def _safe_globals() -> list:
    """Plain-data classes that common training scripts pickle beside the weights and that load without running
    code: torchvision's and timm's train.py store their ``args`` as an ``argparse.Namespace``."""
    return [argparse.Namespace]


def read_torch(path: Path) -> dict[str, Tensor]:
    """A state dict from a PyTorch pickle, loaded with ``weights_only=True`` (a file that carries code is refused)."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg:  # the pickle names a Python callable: code would run on load
            raise UserError(f"refusing to load {path}: it carries Python objects or code, not only tensors "
                            "(weights_only=True). Re-save it from trusted code as a state dict or safetensors") from e
        raise UserError(f"{path} is not a readable PyTorch checkpoint (it does not unpickle); give a "
                        ".pth/.safetensors/.h5 weights file") from e
    except Exception as e:  # torch's unpickler raises KeyError, RuntimeError, EOFError... on foreign bytes
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)}); it may be truncated or "
                        "of another format: copy it again or re-export it") from e
    return unwrap_state_dict(obj, path)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values()) and \
        all(isinstance(k, str) for k in obj)


def unwrap_state_dict(obj, path: Path | str = "checkpoint") -> dict[str, Tensor]:
    """The model's state dict inside ``obj``: ``obj`` itself, or the first of ``_CONTAINER_KEYS`` that holds one
    (other entries, numbers or tensors such as ``best_acc1``, are ignored), with wrapper prefixes removed."""
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in _CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = f" (it holds {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, dict) and obj else ""
        raise UserError(f"{path} holds no state dict of tensors{keys}; save one with "
                        "torch.save(model.state_dict(), path)")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
                stripped = True
    return obj


def _first_line(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return "malformed pickle"
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line.split(". ")[0][:200]


# --- torchvision / timm layout ---------------------------------------------------------------------------------

def infer_config(sd: dict[str, Tensor]) -> dict:
    """The ResNetConfig fields that a state dict in the common layout determines (all but ``variant``)."""
    if "conv1.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        raise UserError("the weights are not in the ResNet layout (no conv1.weight / layer1.0.conv1.weight); "
                        "is this a ResNet checkpoint?")
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    bottleneck = "layer1.0.conv3.weight" in sd
    stem = sd["conv1.weight"]
    d = dict(
        block="bottleneck" if bottleneck else "basic",
        layers=[max(blocks[s]) + 1 for s in stages],
        widths=[int(sd[f"layer{s}.0.conv1.weight"].shape[0]) for s in stages],
        stem_width=int(stem.shape[0]),
        in_chans=int(stem.shape[1]),
        num_classes=int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 0,
        conv_bias="conv1.bias" in sd,
    )
    if stem.shape[-1] == 3:
        d["stem"] = "cifar" if d["widths"][0] == 16 else "small"
    has_proj = [k for k in sd if re.match(r"layer\d+\.\d+\.downsample\.0\.weight", k)]
    if any(not re.match(r"layer\d+\.0\.", k) for k in has_proj):
        d["shortcut"] = "C"
    elif not has_proj:
        d["shortcut"] = "A"
    if "bn1.running_var" not in sd and "bn1.weight" not in sd:
        raise UserError("the weights have no bn1 batch norm: not the ResNet layout")
    return d


def from_state_dict(sd: dict[str, Tensor], arch: str | None = None, source: str = "state dict",
                    **overrides) -> Checkpoint:
    """Build the model a torchvision/timm-layout state dict describes and load it strictly.

    With ``arch``, the model is built from that name (plus ``overrides``) and a mismatch is an error that says
    what the file holds instead."""
    inferred = infer_config(sd)
    given = {k: v for k, v in overrides.items() if v is not None}
    if arch is None:
        cfg = ResNetConfig.from_dict({**inferred, **given})
    else:  # the named architecture: a file that differs is an error naming what it holds instead
        cfg = model_config(arch, **given)
    model = ResNet(cfg)
    load_strict(model, sd, source)
    return Checkpoint(model, arch_name(cfg) or "custom", None, Preprocessing(), source)


def load_strict(model: ResNet, sd: dict[str, Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(sd, strict=True)`` with an error that lists what differs and names the likely cause."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {few(unexpected)}")
        if shapes:
            parts.append(f"shapes differ (file vs model) {len(shapes)}: {few(shapes)}")
        raise UserError(f"{source} does not fit the model. {_likely_cause(sd, model.cfg)}. " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def _likely_cause(sd: dict[str, Tensor], cfg: ResNetConfig) -> str:
    try:
        got = infer_config(sd)
    except UserError as e:
        return f"Likely cause: {e}"
    want = cfg.to_dict()
    diffs = []
    if (got["block"], got["layers"]) != (want["block"], want["layers"]):
        name = arch_name(ResNetConfig.from_dict({k: v for k, v in got.items() if k != "shortcut"}))
        diffs.append(f"the file holds {name or 'a ' + got['block'] + ' net with blocks ' + str(got['layers'])}, "
                     f"the model is {arch_name(cfg) or 'custom'} (use --arch {name or '...'})")
    if got["num_classes"] != want["num_classes"]:
        diffs.append(f"the file has {got['num_classes']} classes, the model {want['num_classes']}")
    if got["in_chans"] != want["in_chans"]:
        diffs.append(f"the file takes {got['in_chans']} input channel(s), the model {want['in_chans']}")
    if got["conv_bias"] != want["conv_bias"]:
        diffs.append("conv biases differ (Keras-style weights have them; import .h5 files with the Keras importer)")
    for k in ("stem", "shortcut", "stem_width", "widths"):
        if k in got and got[k] != want[k]:
            diffs.append(f"{k} is {got[k]} in the file, {want[k]} in the model")
    return "Likely cause: " + "; ".join(diffs) if diffs else "Likely cause: a different architecture"


# --- Keras applications ResNet ------------------------------------------------------------------------------

def read_keras_h5(path: Path) -> dict[str, list]:
    """Layer name -> its weight arrays in Keras order, from a Keras 2 (legacy) or Keras 3 ``.h5`` weights file."""
    try:
        import h5py
    except ImportError as e:
        raise UserError("reading Keras .h5 files needs h5py: pip install 'resnet50[keras]'") from e
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({_first_line(e)}); it may be truncated") from e
    with f:
        layers: dict[str, list] = {}
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:  # Keras 2 / legacy: ordered by the weight_names attribute
            for lname in root.attrs["layer_names"]:
                lname = lname.decode() if isinstance(lname, bytes) else lname
                g = root[lname]
                names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
                if names:
                    layers[lname] = [g[n][()] for n in names]
        elif "layers" in root:  # Keras 3: layers/<name>/vars/<index>
            for lname, g in root["layers"].items():
                if "vars" in g and len(g["vars"]):
                    layers[lname] = [g["vars"][str(i)][()] for i in range(len(g["vars"]))]
            if "conv1_conv" not in layers and "conv2d" in layers:
                layers = _name_keras3_layers(layers)
        else:
            raise UserError(f"{path} is HDF5 but holds no Keras weights (no layer_names or layers group)")
    return layers


# Keras 3 names a Functional model's layers in .weights.h5 files by class and position (conv2d, conv2d_1, ...,
# batch_normalization_N, dense), in the order of model.layers. For keras.applications ResNets that order is:
# conv1, then in each block 1, 2, [0: the projection, first block only], 3.
_KERAS_STAGES = {53: (3, 4, 6, 3), 104: (3, 4, 23, 3), 155: (3, 8, 36, 3)}


def _keras_layer_order(stages: tuple[int, ...]) -> list[str]:
    names = ["conv1"]
    for s, n in enumerate(stages):
        for b in range(n):
            names += [f"conv{s + 2}_block{b + 1}_{i}" for i in ((1, 2, 0, 3) if b == 0 else (1, 2, 3))]
    return names


def _name_keras3_layers(layers: dict[str, list]) -> dict[str, list]:
    def ordered(prefix: str) -> list[list]:
        keys = [k for k in layers if re.fullmatch(rf"{prefix}(_\d+)?", k)]
        return [layers[k] for k in sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1]) if k != prefix else 0)]

    convs, bns, dense = ordered("conv2d"), ordered("batch_normalization"), ordered("dense")
    stages = _KERAS_STAGES.get(len(convs))
    if stages is None or len(bns) != len(convs) or len(dense) > 1:
        raise UserError(f"Keras weights with {len(convs)} convolutions: not keras.applications ResNet50/101/152")
    named = {}
    for base, c, b in zip(_keras_layer_order(stages), convs, bns):
        named[f"{base}_conv"], named[f"{base}_bn"] = c, b
    if dense:
        named["predictions"] = dense[0]
    return named


def import_keras(path: str | os.PathLike) -> Checkpoint:
    """Keras applications ResNet50/101/152 weights -> our v1 model with Keras' options, RGB input."""
    path = _existing(path)
    layers = read_keras_h5(path)
    if "conv1_conv" not in layers:
        raise UserError(f"{path} has no layer 'conv1_conv': not keras.applications ResNet weights "
                        f"(found {', '.join(list(layers)[:5])}...)")
    stages = []
    for s in range(2, 6):
        n = sum(1 for k in layers if re.fullmatch(rf"conv{s}_block\d+_1_conv", k))
        if n == 0:
            raise UserError(f"{path}: no conv{s}_block*_1_conv layers; not a Keras ResNet (v1) weights file")
        stages.append(n)
    num_classes = layers["predictions"][0].shape[1] if "predictions" in layers else 0
    cfg = ResNetConfig(block="bottleneck", layers=tuple(stages), variant="v1", conv_bias=True, bn_eps=1.001e-5,
                       num_classes=num_classes)
    sd: dict[str, Tensor] = {}

    def conv(dst: str, src: str):
        kernel, bias = layers[src]
        sd[f"{dst}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        sd[f"{dst}.bias"] = torch.from_numpy(bias)

    def bn(dst: str, src: str):
        gamma, beta, mean, var = layers[src]
        for k, v in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var)):
            sd[f"{dst}.{k}"] = torch.from_numpy(np.asarray(v))
        sd[f"{dst}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", "conv1_conv")
    sd["conv1.weight"] = sd["conv1.weight"].flip(1).contiguous()  # Keras expects BGR: fold the order into conv1
    bn("bn1", "conv1_bn")
    for s, n in enumerate(stages):
        for b in range(n):
            k, t = f"conv{s + 2}_block{b + 1}", f"layer{s + 1}.{b}"
            for i in (1, 2, 3):
                conv(f"{t}.conv{i}", f"{k}_{i}_conv")
                bn(f"{t}.bn{i}", f"{k}_{i}_bn")
            if b == 0:
                conv(f"{t}.downsample.0", f"{k}_0_conv")
                bn(f"{t}.downsample.1", f"{k}_0_bn")
    if num_classes:
        kernel, bias = layers["predictions"]
        sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        sd["fc.bias"] = torch.from_numpy(bias)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model = ResNet(cfg)
    load_strict(model, sd, f"Keras weights {path.name}")
    pre = Preprocessing(resize=256, crop=224, mean=KERAS_CAFFE_MEAN, std=KERAS_CAFFE_STD)
    return Checkpoint(model, arch_name(cfg) or "custom", None, pre, f"keras {path.name}")


# --- conversion ---------------------------------------------------------------------------------------------

def convert(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None,
            classes: list[str] | None = None, **overrides) -> Checkpoint:
    """Read ``src`` (any supported format) and write ``dst``: ``.safetensors`` in our format with metadata, or
    ``.pth`` as a plain state dict in the torchvision layout (loadable by torchvision/timm when the options match)."""
    dst = output_file(dst, "DST")
    if dst.suffix not in (".safetensors", ".pth", ".pt"):
        raise UserError(f"unknown output format {dst.suffix!r}; name the output .safetensors (ours, with metadata) "
                        "or .pth (plain state dict)")
    ckpt = load(src, arch, **overrides)
    if classes is not None:
        ckpt.classes = classes
    if dst.suffix == ".safetensors":
        save(dst, ckpt.model, ckpt.classes, ckpt.preprocessing, ckpt.source)
    else:
        with atomic_path(dst) as tmp:
            torch.save(ckpt.model.state_dict(), tmp)
    return ckpt


# --- starting a network from a classifier's weights ---------------------------------------------------------

def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-convolution kernel (out, c, k, k) for ``in_chans`` inputs, as timm's ``adapt_input_conv`` does:
    RGB -> gray sums over the colour inputs (a gray image is R = G = B, so the response is unchanged); other
    counts repeat the kernel over the new inputs and rescale by c / in_chans to keep the activation scale."""
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = math.ceil(in_chans / c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def init_from(model: ResNet, path: str, classes: list[str] | None = None, log=print) -> Checkpoint:
    """Start ``model`` from a classifier's weights file ``path`` (any source :func:`load` reads: ours,
    torchvision/timm, Keras, published names): the one "start from a classifier" of every task (fine-tuning, a
    detector's backbone, which has no classifier). The first convolution is adapted to the model's channels (any
    count, :func:`adapt_input_conv`); the classifier is kept where the file's class names cover ``classes`` (rows
    taken by name, :mod:`resnet50.labels`), else reset. Returns the file's record. Raises UserError (one line)
    when the file's network is not the model's architecture."""
    src = load(path)
    sd = dict(src.model.state_dict())
    mine = model.state_dict()
    wrong = [k for k, v in sd.items() if k in mine and not k.startswith(("fc.", "conv1.")) and v.shape != mine[k].shape]
    if wrong:
        raise UserError(f"the initial weights {path} hold a {src.arch} ({wrong[0]} is {list(sd[wrong[0]].shape)}, "
                        f"the model's {list(mine[wrong[0]].shape)}); give weights of the same architecture as "
                        f"{arch_name(model.cfg) or 'the model'}")
    if sd["conv1.weight"].shape[1] != model.cfg.in_chans:
        log(f"initial weights: conv1 adapted from {sd['conv1.weight'].shape[1]} to {model.cfg.in_chans} input "
            "channel(s) (summed for gray, repeated and rescaled otherwise)")
        sd["conv1.weight"] = adapt_input_conv(sd["conv1.weight"], model.cfg.in_chans)
    fc = {k: sd.pop(k) for k in list(sd) if k.startswith("fc.")}
    if not model.cfg.num_classes:  # a body without a classifier (a detector's backbone)
        fc = {}
    try:
        rows = class_mapping(classes, src.classes, src.num_classes) if classes and src.classes and fc else None
    except UserError:
        rows = None
    if rows is not None:
        sd.update({k: v[rows] for k, v in fc.items()})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise UserError(f"the initial weights {path} do not fit {arch_name(model.cfg) or 'the model'} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); give weights of the same "
                        "architecture")
    if rows is None and model.cfg.num_classes:
        log(f"initial weights: classifier reset to the data's {model.cfg.num_classes} classes")
    return src
