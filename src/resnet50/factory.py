"""``create_model`` in timm's call forms: a named architecture with weights.

    create_model("resnet50")                                   random weights
    create_model("resnet50", pretrained=True)                  the default published weights (tv:resnet50.v2)
    create_model("resnet50", pretrained="timm:resnet50.a1_in1k")   a published name (resnet50.published)
    create_model("resnet50", pretrained="w.safetensors")       a local file (any format weights.load reads)
    create_model("resnet50", num_classes=10, pretrained=True)  pretrained body, new classifier (as timm)
    create_model("resnet50", checkpoint_path="w.pth")          then load this file, strictly (timm's meaning)
    create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))   a list of feature maps

This is ``resnet50.create_model``. It builds through ``resnet50.model.create_model`` (architecture only: model.py
knows nothing of files) and loads through ``resnet50.weights.load``, the one loader every command uses. A model
made with weights carries timm's ``pretrained_cfg`` (input size, crop_pct, interpolation, mean, std, source) so that
timm's ``resolve_data_config(model=...)`` and ported code find the preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from . import model as models
from . import weights
from .errors import UserError
from .published import default_for

__all__ = ["create_model"]


def create_model(name: str = "resnet50", pretrained: bool | str | os.PathLike = False, *,
                 checkpoint_path: str | os.PathLike | None = None, features_only: bool = False,
                 out_indices: int | Sequence[int] | None = None,
                 **options) -> models.ResNet | models.FeatureListNet:
    """Build architecture ``name`` (``resnet50.list_models()``) with ``options`` (ResNetConfig fields).

    ``pretrained``: False / None / "" for random weights, True for the architecture's default published weights,
    a published name or a local weights file. With weights, ``num_classes`` may differ from the file's: the
    classifier is then replaced by a new one (0 removes it), as timm does; any other option must agree with the file.
    ``checkpoint_path``: a weights file loaded strictly into the model after it is built (timm's meaning; it wins
    over ``pretrained``). ``features_only``/``out_indices``: see :class:`resnet50.model.FeatureListNet`; weights
    are loaded before the classifier is dropped.

    Errors: UserError for an unknown name or option, a file that does not fit, or an option it contradicts."""
    if out_indices is not None and not features_only:
        raise UserError("out_indices selects feature maps: pass features_only=True with it")
    source = _source(name, pretrained)
    if source is None:
        model = models.create_model(name, **options)
        ckpt = None
    else:
        num_classes = options.pop("num_classes", None)
        ckpt = weights.load(source, name, **options)
        model = ckpt.model
        if num_classes is not None and num_classes != model.cfg.num_classes:
            model.reset_classifier(num_classes)
    if checkpoint_path is not None:
        file = weights.load(checkpoint_path)
        weights.load_strict(model, file.model.state_dict(), f"checkpoint_path {checkpoint_path}")
        ckpt = file
    out = models.FeatureListNet(model, out_indices) if features_only else model
    if ckpt is not None:
        out.pretrained_cfg = pretrained_cfg(ckpt, model)
    return out


def _source(name: str, pretrained) -> str | os.PathLike | None:
    if pretrained is True:
        return default_for(name).name
    if pretrained is False or pretrained is None or pretrained == "":
        return None
    if isinstance(pretrained, (str, os.PathLike)):
        return pretrained
    raise UserError(f"pretrained must be True/False, a published name or a weights file, not {pretrained!r}")


def pretrained_cfg(ckpt: weights.Checkpoint, model: models.ResNet) -> dict:
    """timm's ``pretrained_cfg`` keys for a loaded checkpoint (its evaluation preprocessing and source)."""
    pre = ckpt.preprocessing
    return {"input_size": (model.cfg.in_chans, pre.crop, pre.crop), "crop_pct": pre.crop / pre.resize,
            "interpolation": pre.interpolation, "mean": pre.mean, "std": pre.std,
            "num_classes": model.cfg.num_classes, "classifier": "fc", "first_conv": "conv1",
            "source": ckpt.source, "classes": ckpt.classes}
