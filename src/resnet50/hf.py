"""Hugging Face Hub layout: ``save_pretrained`` / ``from_pretrained`` through ``huggingface_hub``'s
``PyTorchModelHubMixin`` (the optional extra ``hf``: ``pip install 'resnet50[hf]'``).

A folder in the Hub layout holds ``config.json`` (the ResNetConfig fields plus ``arch``, ``classes``,
``preprocessing`` and ``source``), ``model.safetensors`` (our checkpoint: ``format`` "pt" as Hugging Face's loaders
require, and our metadata, so ``resnet50.weights.load`` and every ``--weights`` read the folder or the file) and a
model card ``README.md``. ``from_pretrained`` takes such a folder or a Hub repo id (``huggingface_hub`` downloads and caches
it; with ``HF_HUB_OFFLINE=1`` only its cache is used) and loads strictly (the mixin's default is not strict).

    from resnet50.hf import ResNetHub, save_pretrained
    save_pretrained("tv:resnet50.v2", "my-resnet50")          # any weights load() reads -> a Hub folder
    model = ResNetHub.from_pretrained("my-resnet50")          # a ResNet with .classes and .preprocessing
    ckpt = model.checkpoint()                                 # the record every command works from
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.transforms import Preprocessing
from .errors import UserError, require
from .model import ResNet, ResNetConfig, arch_name
from .weights import HUB_WEIGHTS, Checkpoint, load, load_strict, read_safetensors, save

try:
    from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
except ImportError:  # the optional extra; the names below say which one to install
    PyTorchModelHubMixin = hf_hub_download = None

__all__ = ["ResNetHub", "from_pretrained", "save_pretrained"]

_RECORD_KEYS = ("arch", "classes", "preprocessing", "source")  # config.json keys beside the ResNetConfig fields


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
        def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                             local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                             **model_kwargs) -> "ResNetHub":
            if os.path.isdir(model_id):
                file = Path(model_id) / HUB_WEIGHTS
            else:
                file = Path(hf_hub_download(repo_id=model_id, filename=HUB_WEIGHTS, revision=revision,
                                            cache_dir=cache_dir, force_download=force_download, token=token,
                                            local_files_only=local_files_only))
            model = cls(**model_kwargs)
            if not file.is_file():
                raise UserError(f"{model_id} has no {HUB_WEIGHTS}; save the folder with save_pretrained")
            _, sd = read_safetensors(file)
            load_strict(model, sd, str(file))
            return model.to(map_location).eval()

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
    """The checkpoint in a Hub-layout folder or Hub repo (``kwargs`` go to the mixin: ``revision``,
    ``local_files_only``...)."""
    _need_hub()
    return ResNetHub.from_pretrained(folder_or_repo, **kwargs).checkpoint()
