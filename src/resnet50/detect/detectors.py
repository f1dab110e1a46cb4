"""The detectors this toolkit builds, by name: what ``--detector``, a checkpoint's ``detector`` metadata and a
training config's ``detector`` field choose between.

    retinanet   one stage: RetinaNet (Lin et al. 2017), dense focal-loss classification over P3..P7 (retinanet.py)
    fasterrcnn  two stages: Faster R-CNN (Ren et al. 2015) with FPN, RPN proposals then RoIAlign box heads
                (fasterrcnn.py)

Both take (N, C, S, S) images in 0..1 and have ``loss(outputs, boxes, labels, valid, image_hw)`` and
``postprocess(outputs, image_hw, valid_hw)`` with labels in our indices 0..num_labels-1, so the training task,
evaluation, prediction and export are written once for both.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from .fasterrcnn import FasterRCNN, FasterRCNNConfig
from .retinanet import DetectorConfig, RetinaNet

DETECTORS: dict[str, tuple[type, type[nn.Module]]] = {
    "retinanet": (DetectorConfig, RetinaNet),
    "fasterrcnn": (FasterRCNNConfig, FasterRCNN),
}
TITLES = {"retinanet": "RetinaNet", "fasterrcnn": "Faster R-CNN"}

Detector = RetinaNet | FasterRCNN


def check_name(name: str) -> str:
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}; choose from: {', '.join(DETECTORS)}")
    return name


def config_class(name: str) -> type:
    """The config dataclass of the detector ``name`` (DetectorConfig or FasterRCNNConfig)."""
    return DETECTORS[check_name(name)][0]


def build(name: str, cfg) -> nn.Module:
    """The detector ``name`` for its config ``cfg`` (a config instance or its ``to_dict()``)."""
    cfg_cls, model_cls = DETECTORS[check_name(name)]
    return model_cls(cfg if isinstance(cfg, cfg_cls) else cfg_cls.from_dict(cfg))


def describe(model: nn.Module) -> str:
    """"Faster R-CNN v2 resnet50", "RetinaNet v1 resnet18": what a log line calls the model."""
    return f"{TITLES[model.name]} {model.cfg.version} {model.cfg.arch}"
