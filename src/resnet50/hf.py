"""Hugging Face Hub layout: ``save_pretrained`` / ``from_pretrained`` through ``huggingface_hub``'s
``PyTorchModelHubMixin`` (the optional extra ``hf``: ``pip install 'resnet50[hf]'``).

A folder in the Hub layout holds ``config.json`` (the ResNetConfig fields plus ``arch``, ``classes``,
``preprocessing`` and ``source``), ``model.safetensors`` (our checkpoint: ``format`` "pt" as Hugging Face's loaders
require, and our metadata, so ``resnet50.weights.load`` and every ``--weights`` read the folder or the file) and a
model card ``README.md``. ``from_pretrained`` takes such a folder or a Hub repo id (``huggingface_hub`` downloads and
caches it; with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` only its cache is used, and what the cache lacks is
one error naming the repo, the files and offline mode) and loads strictly (the mixin's default is not strict).

``read_folder`` is the one reader of Hub-layout folders, and it also reads the folders others write, as far as
they hold a ResNet: transformers' ``ResNetForImageClassification`` / ``ResNetModel`` (its config.json and key
names, its ``id2label`` and ``preprocessor_config.json``), timm's (``architecture`` and ``pretrained_cfg``), and
a bare weights file without config (``pytorch_model.bin``, the Hub's layout before safetensors, or a torchvision-
layout ``model.safetensors``). Anything else is refused in one line that says what the folder holds.

    from resnet50.hf import ResNetHub, save_pretrained
    save_pretrained("tv:resnet50.v2", "my-resnet50")          # any weights load() reads -> a Hub folder
    model = ResNetHub.from_pretrained("my-resnet50")          # a ResNet with .classes and .preprocessing
    model = ResNetHub.from_pretrained("microsoft/resnet-18", num_classes=10)  # a new 10-class head (untrained)
    ckpt = model.checkpoint()                                 # the record every command works from
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from torch import Tensor

from .data.transforms import Preprocessing
from .errors import UserError, require
from .model import ResNet, ResNetConfig, arch_name
from .weights import (HUB_WEIGHTS, Checkpoint, check_options, from_state_dict, is_ours, load, load_strict,
                      read_safetensors, read_torch, save)

try:
    from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
except ImportError:  # the optional extra; the names below say which one to install
    PyTorchModelHubMixin = hf_hub_download = None

__all__ = ["ResNetHub", "from_pretrained", "read_folder", "save_pretrained"]

_RECORD_KEYS = ("arch", "classes", "preprocessing", "source")  # config.json keys beside the ResNetConfig fields
CONFIG = "config.json"
WEIGHT_FILES = (HUB_WEIGHTS, "pytorch_model.bin")  # in the order they are looked for (the Hub's own)
PREPROCESSOR = "preprocessor_config.json"  # transformers' image processor settings


def _need_hub() -> None:
    if PyTorchModelHubMixin is None:
        require("huggingface_hub", "the Hugging Face Hub layout")  # raises the one-line error naming the extra
        raise UserError("the Hugging Face Hub layout needs huggingface_hub with PyTorchModelHubMixin (0.22 or "
                        "later): pip install -U huggingface_hub (or: pip install 'resnet50[hf]')")


if PyTorchModelHubMixin is not None:
    class ResNetHub(ResNet, PyTorchModelHubMixin, library_name="resnet50", pipeline_tag="image-classification",
                    tags=["resnet", "image-classification"], paper_url="https://arxiv.org/abs/1512.03385"):
        """A :class:`resnet50.model.ResNet` that saves to and loads from the Hub layout.

        ``config`` holds the ResNetConfig fields (config.json holds them flat, with the keys below; the mixin passes
        that whole dict back as ``config``); ``classes`` are the class names in output order, ``preprocessing`` the
        evaluation contract as a dict (:class:`resnet50.data.Preprocessing`)."""

        def __init__(self, config: dict, arch: str | None = None, classes: list[str] | None = None,
                     preprocessing: dict | None = None, source: str = "") -> None:
            super().__init__(ResNetConfig.from_dict({k: v for k, v in config.items() if k not in _RECORD_KEYS}))
            self.arch = arch or arch_name(self.cfg) or "custom"
            self.classes = classes
            self.preprocessing = Preprocessing.from_dict(preprocessing or {})
            self.source = source

        def checkpoint(self) -> Checkpoint:
            """This model as the loaded-model record the commands use."""
            return Checkpoint(self, self.arch, self.classes, self.preprocessing, self.source)

        def _save_pretrained(self, save_directory: Path) -> None:
            save(Path(save_directory) / HUB_WEIGHTS, self, self.classes, self.preprocessing, self.source)

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, force_download: bool = False,
                            token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                            local_files_only: bool = False, revision: str | None = None,
                            map_location: str = "cpu", **overrides) -> "ResNetHub":
            """The model in a Hub-layout folder or Hub repo (``read_folder``: ours, transformers', timm's or a bare
            weights file), in eval mode. ``overrides`` are ResNetConfig fields: ``num_classes`` other than the
            folder's replaces the classifier by a new, untrained one (timm's and ``create_model``'s rule; the
            class names are dropped and ``source`` says so); any other field must agree with the folder.
            The mixin's own loader is not used: it passes config.json to ``__init__`` as it is, so a folder it did
            not write, or an override, was a TypeError."""
            model_id = str(pretrained_model_name_or_path)
            folder = Path(model_id) if os.path.isdir(model_id) else _download(
                model_id, revision=revision, cache_dir=cache_dir, force_download=force_download, token=token,
                local_files_only=local_files_only)
            return cls.of(read_folder(folder, **overrides)).to(map_location).eval()

        @classmethod
        def of(cls, ckpt: Checkpoint) -> "ResNetHub":
            """A ResNetHub holding the weights of ``ckpt`` (a loaded checkpoint with a PyTorch model)."""
            if ckpt.model is None:
                raise UserError("an ONNX model cannot be saved in the Hub layout; give the PyTorch checkpoint")
            model = cls(ckpt.model.cfg.to_dict(), ckpt.arch, ckpt.classes, ckpt.preprocessing.to_dict(), ckpt.source)
            model.load_state_dict(ckpt.model.state_dict())
            return model


def __getattr__(name: str):
    if name == "ResNetHub":  # only reached when huggingface_hub is missing
        _need_hub()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_pretrained(weights: str | os.PathLike | Checkpoint, folder: str | os.PathLike, **kwargs) -> Path:
    """Write ``weights`` (a Checkpoint, or anything :func:`resnet50.weights.load` reads: a file, a published name)
    as a Hub-layout folder; ``kwargs`` go to the mixin's ``save_pretrained`` (``repo_id``, ``push_to_hub``...)."""
    _need_hub()
    ckpt = weights if isinstance(weights, Checkpoint) else load(weights)
    ResNetHub.of(ckpt).save_pretrained(folder, **kwargs)
    return Path(folder)


def from_pretrained(folder_or_repo: str | os.PathLike, **kwargs) -> Checkpoint:
    """The checkpoint in a Hub-layout folder or Hub repo (``kwargs`` as ``ResNetHub.from_pretrained``: ``revision``,
    ``local_files_only``, ResNetConfig overrides...)."""
    _need_hub()
    return ResNetHub.from_pretrained(folder_or_repo, **kwargs).checkpoint()


# --- reading a folder --------------------------------------------------------------------------------------------

def _holds(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()) if folder.is_dir() else []
    return f"{', '.join(names[:8])}{f' (+{len(names) - 8} more)' if len(names) > 8 else ''}" if names else "nothing"


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); copy the folder again") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object; copy the folder again")
    return doc


def read_folder(folder: str | os.PathLike, arch: str | None = None, **overrides) -> Checkpoint:
    """The checkpoint a Hub-layout ``folder`` holds, whoever wrote it (no huggingface_hub needed):

    ours           config.json with the ResNetConfig fields and ``arch``/``classes``/``preprocessing``
    transformers   config.json of ``model_type`` "resnet" (ResNetForImageClassification, ResNetModel): the
                   architecture from ``depths``/``hidden_sizes``/``layer_type``, the keys renamed to ours, classes
                   from ``id2label``, preprocessing from ``preprocessor_config.json`` (ImageNet's without it)
    timm           config.json with ``architecture`` and ``pretrained_cfg`` (timm's keys are ours)
    weights only   no config.json: the weights file read as ``resnet50.weights.load`` reads it (ours, or a
                   torchvision-layout state dict whose architecture the tensors give)

    The weights are ``model.safetensors``, else ``pytorch_model.bin``, loaded strictly. ``arch`` and
    ``overrides`` (ResNetConfig fields) as ``ResNetHub.from_pretrained``. Errors: one-line ``UserError`` naming
    what the folder holds when it holds no weights, sharded weights, another model type, or weights that do not
    fit its config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    file = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if file is None:
        sharded = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if (folder / n).exists()]
        what = f"sharded weights ({sharded[0]}), which a ResNet never needs" if sharded else "no weights file"
        raise UserError(f"{folder} holds {_holds(folder)}: {what}; a Hub-layout folder needs "
                        f"{' or '.join(WEIGHT_FILES)} (write one with 'resnet50 convert' or save_pretrained)")
    config = _read_json(folder / CONFIG) if (folder / CONFIG).is_file() else None
    num_classes = overrides.pop("num_classes", None)
    unknown = sorted(set(overrides) - set(ResNetConfig.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for {folder}; give ResNetConfig fields "
                        f"({', '.join(ResNetConfig.__dataclass_fields__)})")
    if config is None:
        ckpt = load(file, arch, **overrides)
    elif config.get("model_type") == "resnet" or any(str(a).startswith("ResNet") for a in config.get("architectures", [])):
        ckpt = _from_transformers(folder, config, _tensors(file), file)
    elif config.get("model_type") is not None or "architectures" in config:
        raise UserError(f"{folder} holds a transformers {'/'.join(config.get('architectures') or ['model'])} "
                        f"(model_type {config.get('model_type')!r}), not a ResNet; only ResNets load here")
    elif "architecture" in config and "pretrained_cfg" in config:
        ckpt = _from_timm(folder, config, _tensors(file), file)
    elif "arch" in config or "layers" in config:
        ckpt = _from_ours(folder, config, _tensors(file), file)
    else:
        raise UserError(f"{folder}/{CONFIG} is neither this toolkit's, transformers' nor timm's (its keys: "
                        f"{', '.join(sorted(config)[:8])}); delete it to load {file.name} by its tensors alone")
    check_options(ckpt, folder, arch, overrides)
    if num_classes is not None and num_classes != ckpt.model.cfg.num_classes:
        ckpt.model.reset_classifier(num_classes)
        ckpt.classes = None
        ckpt.source = (f"{ckpt.source}; classifier replaced by a new, untrained {num_classes}-class one"
                       if num_classes else f"{ckpt.source}; classifier removed (num_classes=0)")
    return ckpt


def _tensors(file: Path) -> dict[str, Tensor]:
    return read_safetensors(file)[1] if file.suffix == ".safetensors" else read_torch(file)


def _from_ours(folder: Path, config: dict, sd: dict[str, Tensor], file: Path) -> Checkpoint:
    model = ResNet(ResNetConfig.from_dict({k: v for k, v in config.items() if k not in _RECORD_KEYS}))
    load_strict(model, sd, str(file))
    return Checkpoint(model, config.get("arch") or arch_name(model.cfg) or "custom", config.get("classes"),
                      Preprocessing.from_dict(config.get("preprocessing") or {}), config.get("source", ""))


_TRANSFORMERS_KEYS = [  # transformers' ResNet names -> torchvision's (modeling_resnet.py)
    (r"embedder\.embedder\.convolution\.", "conv1."),
    (r"embedder\.embedder\.normalization\.", "bn1."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    (r"classifier\.1\.", "fc."),
]


def _from_transformers(folder: Path, config: dict, sd: dict[str, Tensor], file: Path) -> Checkpoint:
    """transformers' ResNet is torchvision's network under other names: a 7x7/2 stem and max pool, stages of basic
    or bottleneck layers (``reduction`` 4), 1x1 projection shortcuts where the shape changes, BatchNorm eps 1e-5,
    a linear classifier. Its bottleneck strides in the 3x3 (v1.5) unless ``downsample_in_bottleneck``."""
    what = "/".join(config.get("architectures") or ["ResNet"])
    if config.get("hidden_act", "relu") != "relu" or config.get("downsample_in_first_stage"):
        raise UserError(f"{folder} holds a transformers {what} with hidden_act {config.get('hidden_act')!r} and "
                        f"downsample_in_first_stage {config.get('downsample_in_first_stage')!r}; only the standard "
                        "ResNet (relu, no downsampling in the first stage) loads here")
    renamed, left = {}, []
    for key, value in sd.items():
        short = key.removeprefix("resnet.")
        for pattern, to in _TRANSFORMERS_KEYS:
            new, n = re.subn("^" + pattern, to, short)
            if n:
                renamed[new] = value
                break
        else:
            left.append(key)
    if left:
        raise UserError(f"{file} holds transformers keys that a ResNet does not have: {', '.join(left[:5])}")
    variant = "v1" if config.get("downsample_in_bottleneck") else "v1.5"
    ckpt = from_state_dict(renamed, None, source=f"transformers {what} {folder.name}", variant=variant)
    depths, block = config.get("depths"), {"basic": "basic", "bottleneck": "bottleneck"}.get(config.get("layer_type"))
    if (depths is not None and list(ckpt.model.cfg.layers) != list(depths)) or \
            (block is not None and block != ckpt.model.cfg.block):
        raise UserError(f"{file} does not fit its {CONFIG}: the tensors are {ckpt.model.cfg.block} stages of "
                        f"{list(ckpt.model.cfg.layers)}, the config says {config.get('layer_type')} {depths}")
    labels = config.get("id2label") or {}
    classes = [str(labels.get(str(i), labels.get(i, i))) for i in range(ckpt.model.cfg.num_classes)]
    default = [f"LABEL_{i}" for i in range(len(classes))]
    ckpt.classes = classes if labels and classes != default else None
    ckpt.preprocessing = _transformers_preprocessing(folder)
    return ckpt


def _transformers_preprocessing(folder: Path) -> Preprocessing:
    """transformers' ConvNext-style image processor (what microsoft/resnet-* ship): resize the short side to
    ``size / crop_pct``, centre-crop ``size``, normalise; without ``preprocessor_config.json``, ImageNet's."""
    if not (folder / PREPROCESSOR).is_file():
        return Preprocessing()
    d = _read_json(folder / PREPROCESSOR)
    size = d.get("size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height") or 224
    crop_pct = d.get("crop_pct") or 0.875
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(d.get("resample", 2), "bilinear")
    default = Preprocessing()
    return Preprocessing(int(size / crop_pct), int(size), tuple(d.get("image_mean") or default.mean),
                         tuple(d.get("image_std") or default.std), interpolation)


def _from_timm(folder: Path, config: dict, sd: dict[str, Tensor], file: Path) -> Checkpoint:
    ckpt = from_state_dict(sd, None, source=f"timm {config['architecture']} {folder.name}")
    pre = config.get("pretrained_cfg") or {}
    crop = int((pre.get("test_input_size") or pre.get("input_size") or [3, 224, 224])[-1])
    default = Preprocessing()
    ckpt.preprocessing = Preprocessing(math.floor(crop / (pre.get("test_crop_pct") or pre.get("crop_pct") or 0.875)),
                                       crop, tuple(pre.get("mean") or default.mean), tuple(pre.get("std") or default.std),
                                       pre.get("interpolation") or "bicubic")
    names = config.get("label_names")
    ckpt.classes = list(names) if names and len(names) == ckpt.model.cfg.num_classes else None
    return ckpt


# --- a Hub repo -------------------------------------------------------------------------------------------------

def _download(repo_id: str, **kwargs) -> Path:
    """The folder (huggingface_hub's snapshot of the revision) holding the repo's config.json, its first weights
    file of ``WEIGHT_FILES`` and its preprocessor config, downloaded or taken from the cache. Offline
    (``HF_HUB_OFFLINE=1`` or ``local_files_only``), what the cache lacks is one error naming the repo."""
    _need_hub()
    from huggingface_hub import constants
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    offline = bool(kwargs.get("local_files_only")) or bool(constants.HF_HUB_OFFLINE)
    mode = "local_files_only=True" if kwargs.get("local_files_only") else "offline mode (HF_HUB_OFFLINE=1)"
    found: dict[str, Path] = {}
    not_cached: list[str] = []
    for name in (CONFIG, *WEIGHT_FILES, PREPROCESSOR):
        if name in WEIGHT_FILES and any(n in found for n in WEIGHT_FILES):
            continue
        try:
            found[name] = Path(hf_hub_download(repo_id=repo_id, filename=name, **kwargs))
        except GatedRepoError:
            raise UserError(f"Hub repo {repo_id} is gated: accept its terms on huggingface.co and log in "
                            "(hf auth login) or pass token=") from None
        except RepositoryNotFoundError:
            raise UserError(f"Hub repo {repo_id} does not exist or is private: check the name, or log in "
                            "(hf auth login) or pass token=") from None
        except RevisionNotFoundError:
            raise UserError(f"Hub repo {repo_id} has no revision {kwargs.get('revision')!r}") from None
        except LocalEntryNotFoundError as e:  # not in the cache, and offline or the Hub unreachable
            offline = offline or type(e.__cause__).__name__ == "OfflineModeIsEnabled"
            not_cached.append(name)
        except EntryNotFoundError:  # online: the repo has no such file
            continue
        except HfHubHTTPError as e:
            raise UserError(f"could not download {name} of Hub repo {repo_id}: {str(e).splitlines()[0]}") from None
    if not any(n in found for n in WEIGHT_FILES):
        cached = f"the cache holds only {', '.join(found)}" if found else "it is not in the local cache"
        if not_cached and offline:
            raise UserError(f"Hub repo {repo_id}: {cached} and {mode} forbids downloading "
                            f"{' / '.join(n for n in not_cached if n in WEIGHT_FILES)}; fetch it once online "
                            f"(hf download {repo_id}) or unset HF_HUB_OFFLINE")
        if not_cached:
            raise UserError(f"Hub repo {repo_id}: the Hub could not be reached and {cached}; check the network, "
                            f"or fetch it where there is one (hf download {repo_id})")
        raise UserError(f"Hub repo {repo_id} holds {', '.join(found) or 'none of the files looked for'} but no "
                        f"{' or '.join(WEIGHT_FILES)}")
    folder = next(iter(found.values())).parent
    if any(p.parent != folder for p in found.values()):
        raise UserError(f"Hub repo {repo_id}: its files came from different revisions of the cache; pass revision=")
    return folder
