"""Object localisation: one object per image, its class and its box (the ResNet paper's ILSVRC localisation task).

Modules: ``model`` (the localiser: a ResNet classifier + box regression on its C5 map, per-class or class-agnostic,
the box parametrisation), ``evaluate`` (weights files, the ILSVRC top-1 / top-5 / GT-known measure, evaluation),
``train`` (the task on the training engine, its config and recipe), ``predict`` (boxes for image files, pictures,
ONNX export), ``demo`` (single scenes, plain and cluttered, within 15 minutes on 2 CPU cores).
"""

from .evaluate import ilsvrc_metrics, load_localizer, save_localizer
from .model import Localizer, LocalizerConfig, from_xyxy, to_xyxy

__all__ = ["Localizer", "LocalizerConfig", "from_xyxy", "ilsvrc_metrics", "load_localizer", "save_localizer",
           "to_xyxy"]
