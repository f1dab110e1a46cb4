"""The localiser: a ResNet classifier with a bounding-box regression head on its last feature map.

He et al. 2015 (appendix, "ImageNet Localization") localise with a classifier plus box regression on the ResNet
features, either one class-agnostic box ("single-class regression", SCR) or one box per class ("per-class
regression", PCR, whose box for the predicted class is used). Ours regresses from the C5 map (stride 32) kept
spatial: a 1x1 convolution to ``head_channels``, average-pooled to a fixed ``grid`` x ``grid`` (4 x 4 for a 128 px
input: where on the image each cell's evidence is), flattened, then a two-layer MLP to 4 or 4K numbers; a global
average pool would discard the position a box needs.

Box parametrisation: each box is (cx, cy, w, h) as fractions of the square input (a letterboxed image of
``image_size`` px), each the sigmoid of the head's output, so every box lies inside the image and has a positive
size. :func:`to_xyxy` / :func:`from_xyxy` convert to and from corner pixels.

Shapes: ``Localizer(images (N, C, S, S)) -> (logits (N, K), boxes (N, K, 4) in fractions)``; for SCR the one box
is repeated for every class, so both modes are read the same way (``boxes[n, c]``: the box for class c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..configs import DictConfig
from ..data.stats import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..errors import UserError
from ..model import ARCHS, ResNet, create_model


@dataclass(frozen=True)
class LocalizerConfig(DictConfig):
    """Everything that fixes a localiser's shape; saved in every weights file. Unknown keys are errors."""

    KIND: ClassVar[str] = "localiser"

    arch: str = "resnet50"
    variant: str = "v1.5"
    num_classes: int = 10
    in_chans: int = 1
    image_size: int = 128  # the letterbox side the localiser reads
    regression: Literal["pcr", "scr"] = "pcr"  # per-class boxes, or one class-agnostic box (the paper's two)
    head_channels: int = 256
    grid: int = 4  # the C5 map is pooled to grid x grid cells before the MLP
    hidden: int = 512
    mean: tuple[float, ...] = FASHION_MNIST_MEAN
    std: tuple[float, ...] = FASHION_MNIST_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        checks = [
            (self.arch in ARCHS and ARCHS[self.arch].defaults.get("stem", "imagenet") == "imagenet",
             f"arch {self.arch!r} is not an ImageNet-stem ResNet; use one of resnet18/34/50/101/152"),
            (self.regression in ("pcr", "scr"), f"regression must be pcr (per class) or scr (one box), not "
                                                f"{self.regression!r}"),
            (self.num_classes >= 1, "num_classes must be >= 1"),
            (self.image_size >= 32 and self.grid >= 1, "image_size must be >= 32 and grid >= 1"),
            (len(self.mean) == len(self.std) == self.in_chans,
             f"mean and std need {self.in_chans} value(s), one per input channel"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


class Localizer(nn.Module):
    """``body`` (a ResNet classifier: its ``fc`` gives the class) + ``box_head`` (see the module docstring).
    ``images``: (N, C, S, S) floats in 0..1 (normalised inside, as the detector)."""

    def __init__(self, cfg: LocalizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body: ResNet = create_model(cfg.arch, variant=cfg.variant, num_classes=cfg.num_classes,
                                         in_chans=cfg.in_chans)
        outputs = 4 * (cfg.num_classes if cfg.regression == "pcr" else 1)
        self.box_head = nn.Sequential(
            nn.Conv2d(self.body.num_features, cfg.head_channels, 1, bias=False), nn.BatchNorm2d(cfg.head_channels),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(cfg.grid), nn.Flatten(),
            nn.Linear(cfg.head_channels * cfg.grid ** 2, cfg.hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, outputs))
        nn.init.zeros_(self.box_head[-1].weight)  # every box starts as the centred half-size box (sigmoid(0))
        nn.init.zeros_(self.box_head[-1].bias)
        self.register_buffer("mean", torch.tensor(cfg.mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        c5 = self.body.forward_features(x)
        logits = self.body.forward_head(c5)
        boxes = torch.sigmoid(self.box_head(c5).float()).reshape(images.shape[0], -1, 4)
        return logits, boxes.expand(-1, self.cfg.num_classes, -1)


def to_xyxy(boxes: Tensor, size: float) -> Tensor:
    """(..., 4) (cx, cy, w, h) fractions of a ``size``-px square -> (x1, y1, x2, y2) pixels."""
    cx, cy, w, h = (boxes * size).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def from_xyxy(boxes: Tensor, size: float) -> Tensor:
    """The inverse of :func:`to_xyxy`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1) / size
