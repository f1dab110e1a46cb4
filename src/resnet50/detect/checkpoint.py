"""Detector weights on disk: ours (safetensors with the detector's name, its config and class names as metadata)
and torchvision's state dicts (``.pth``) of ``retinanet_resnet50_fpn`` / ``_v2`` and ``fasterrcnn_resnet50_fpn`` /
``_v2`` (their COCO checkpoints among them), loaded strictly. Which detector a torchvision file holds is read from
its keys (``head.*``: RetinaNet; ``rpn.*`` and ``roi_heads.*``: Faster R-CNN).

torchvision checkpoints saved before 0.13 (its COCO v1 files among them) name the FPN, head and RPN convolutions
without the Conv2dNormActivation level (``fpn.inner_blocks.0.weight``, ``head.*.conv.2.weight`` for the second
conv, ``rpn.head.conv.weight``); ``upgrade_torchvision_keys`` renames them to today's layout, which is ours, as
torchvision's own loading hooks do.

Class names: a RetinaNet's K classes are its K sigmoid outputs; a Faster R-CNN's box head has K + 1 (the
background first), and its class names are the K others (torchvision's COCO files: its 91 names less
``__background__``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..model import ARCHS
from ..weights import read_safetensors, write_safetensors
from . import detectors
from .detectors import Detector
from .fasterrcnn import FasterRCNNConfig
from .retinanet import DetectorConfig

FORMAT = "resnet50-toolkit/detector/1"

# torchvision's COCO detection classes by category id (its _COCO_CATEGORIES): index = COCO category id, "N/A" for
# the 11 ids COCO 2017 leaves unused, "__background__" for 0 (never predicted by RetinaNet's sigmoid head)
COCO_CLASSES = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]


@dataclass
class DetectorCheckpoint:
    model: Detector
    classes: list[str]  # one name per label the detector returns (0..num_labels-1)
    source: str = ""

    @property
    def config(self) -> DetectorConfig | FasterRCNNConfig:
        return self.model.cfg

    @property
    def detector(self) -> str:
        return self.model.name


def save_detector(path: str | os.PathLike, model: Detector, classes: list[str], source: str = "") -> None:
    """Write ``model`` as safetensors with the metadata that rebuilds it (atomically)."""

    if len(classes) != model.cfg.num_labels:
        raise UserError(f"{len(classes)} class names given for a detector with {model.cfg.num_labels} classes")
    meta = {"format": FORMAT, "detector": model.name, "config": json.dumps(model.cfg.to_dict()),
            "classes": json.dumps(list(classes)), "source": source}
    write_safetensors(path, model, meta)


# config fields that fix the weights' shapes: an override of one is refused
SHAPE_FIELDS = {"version", "arch", "in_chans", "num_classes", "norm", "fpn_channels", "anchor_scales", "aspect_ratios"}


def load_detector(path: str | os.PathLike, detector: str | None = None, **overrides) -> DetectorCheckpoint:
    """Our detector file (or a run folder: its best.safetensors, else final.safetensors), or a torchvision
    RetinaNet or Faster R-CNN state dict. ``detector`` ("retinanet" | "fasterrcnn"): refuse a file holding the
    other. ``overrides``: config fields that do not change the weights' shapes (score_thresh, nms_thresh,
    image_size, ...; a Faster R-CNN's box_score_thresh, rpn_*); for torchvision files also ``bn_eps`` (0.0 for
    their COCO v1). ``score_thresh`` means box_score_thresh for a Faster R-CNN."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "final.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path} holds no best.safetensors or final.safetensors; give a detector weights file")
    if not path.is_file():
        raise UserError(f"detector weights {path} do not exist; check the path")
    meta, sd = _read(path)
    if meta.get("format") == FORMAT:
        try:
            cfg = json.loads(meta["config"])
            classes = json.loads(meta["classes"])
        except (KeyError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: damaged metadata ({e}); re-export the checkpoint") from None
        name = meta.get("detector", "retinanet")  # files written before Faster R-CNN hold RetinaNets
        source = meta.get("source", "")
    elif any(k.startswith("backbone.body.") for k in sd):
        sd = upgrade_torchvision_keys(sd)
        name = "fasterrcnn" if any(k.startswith("rpn.") for k in sd) else "retinanet"
        cfg = (infer_torchvision_rcnn_config if name == "fasterrcnn" else infer_torchvision_config)(sd, path)
        k = detectors.config_class(name)(**cfg).num_labels
        coco = COCO_CLASSES if name == "retinanet" else COCO_CLASSES[1:]
        classes = list(coco) if k == len(coco) else [str(i) for i in range(k)]
        source = f"torchvision state dict {path.name}"
    else:
        raise UserError(f"{path} is not a detector checkpoint (no detector metadata, no backbone.body.* keys); "
                        "for a classification checkpoint use --init-weights")
    if detector is not None and detector != name:
        raise UserError(f"{path} holds a {detectors.TITLES.get(name, name)}, not a {detectors.TITLES[detector]}: "
                        f"drop --detector {detector} or give {detector} weights")
    if name == "fasterrcnn" and "score_thresh" in overrides:
        overrides["box_score_thresh"] = overrides.pop("score_thresh")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in SHAPE_FIELDS and value != cfg.get(key):
            raise UserError(f"{path} holds a detector with {key}={cfg.get(key)!r}; {key}={value!r} would change its "
                            "shapes (drop the option)")
        cfg[key] = value
    model = detectors.build(name, cfg)
    load_strict(model, sd, path.name)
    return DetectorCheckpoint(model.eval(), classes, source)


def _read(path: Path) -> tuple[dict, dict[str, Tensor]]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises many types on foreign bytes; weights_only refuses code
        raise UserError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}); a file that carries code "
                        "is refused (weights_only=True)") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not isinstance(obj.get(key), Tensor):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    return {}, dict(obj)


def upgrade_torchvision_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pre-0.13 torchvision names -> today's: ``fpn.{inner,layer}_blocks.i.{weight,bias}`` gain ``.0``, and the head
    towers' ``conv.{0,2,4,6}`` (conv, ReLU, conv, ...) become ``conv.{0,1,2,3}.0``. Other keys pass unchanged."""
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)", k)
        if m:
            k = f"{m.group(1)}.0.{m.group(2)}"
        m = re.fullmatch(r"(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)", k)
        if m:
            k = f"{m.group(1)}.{int(m.group(2)) // 2}.0.{m.group(3)}"
        m = re.fullmatch(r"rpn\.head\.conv\.(weight|bias)", k)  # v1's RPN: one conv, before Conv2dNormActivation
        if m:
            k = f"rpn.head.conv.0.0.{m.group(1)}"
        out[k] = v
    return out


def _torchvision_backbone(sd: dict[str, Tensor], path: Path | str) -> dict:
    """arch, in_chans, mean and std of a torchvision detector's ``backbone.body.*`` (a ResNet of ours by its
    block kind and counts). Raises KeyError where a key is missing."""
    body = {k[len("backbone.body."):]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    blocks: dict[int, set[int]] = {}
    for k in body:
        m = re.match(r"layer(\d)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(max(blocks[s]) + 1 for s in sorted(blocks))
    kind = "bottleneck" if "layer1.0.conv3.weight" in body else "basic"
    arch = next((n for n, s in ARCHS.items() if (s.block, s.layers) == (kind, layers) and not s.defaults), None)
    if arch is None:
        raise UserError(f"{path}: the backbone ({kind} blocks {list(layers)}) is not a ResNet of this toolkit")
    in_chans = int(body["conv1.weight"].shape[1])
    return {"arch": arch, "in_chans": in_chans,
            "mean": list(DetectorConfig.mean) if in_chans == 3 else [0.5] * in_chans,
            "std": list(DetectorConfig.std) if in_chans == 3 else [0.5] * in_chans}


def infer_torchvision_config(sd: dict[str, Tensor], path: Path | str = "checkpoint") -> dict:
    """The DetectorConfig fields a torchvision RetinaNet state dict determines: version, arch, in_chans, classes."""
    try:
        backbone = _torchvision_backbone(sd, path)
        anchors = sd["head.regression_head.bbox_reg.weight"].shape[0] // 4
        if anchors != 9:
            raise UserError(f"{path}: the head predicts {anchors} anchors per location; this loader knows "
                            "torchvision's 9 (3 scales x 3 aspect ratios)")
        return {**backbone, "version": "v2" if "head.classification_head.conv.0.1.weight" in sd else "v1",
                "norm": "frozen",
                "num_classes": int(sd["head.classification_head.cls_logits.weight"].shape[0]) // anchors}
    except KeyError as e:
        raise UserError(f"{path} is not a torchvision RetinaNet state dict (no {e})") from None


def infer_torchvision_rcnn_config(sd: dict[str, Tensor], path: Path | str = "checkpoint") -> dict:
    """The FasterRCNNConfig fields a torchvision Faster R-CNN state dict determines: version (v2 has a second RPN
    conv and the conv box head), arch, in_chans, num_classes (with the background), the body's norm."""
    try:
        backbone = _torchvision_backbone(sd, path)
        anchors = sd["rpn.head.cls_logits.weight"].shape[0]
        if anchors != 3:
            raise UserError(f"{path}: the RPN predicts {anchors} anchors per location; this loader knows "
                            "torchvision's 3 (one size per level x 3 aspect ratios)")
        v2 = "rpn.head.conv.1.0.weight" in sd
        return {**backbone, "version": "v2" if v2 else "v1",
                "norm": "frozen" if "backbone.body.bn1.num_batches_tracked" not in sd else "batch",
                "num_classes": int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0])}
    except KeyError as e:
        raise UserError(f"{path} is not a torchvision Faster R-CNN state dict (no {e})") from None


def load_strict(model: Detector, sd: dict[str, Tensor], source: str) -> None:
    """Load ``sd`` into ``model`` with every key and shape matching; a mismatch is one line naming the first few."""
    own = model.state_dict()
    frozen_extra = {k for k in sd if k.endswith("num_batches_tracked") and k not in own}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own and k not in frozen_extra]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]} ({len(missing)})" if missing else "",
                 f"unexpected {unexpected[:3]} ({len(unexpected)})" if unexpected else "",
                 f"shapes differ: {shapes[:2]}" if shapes else ""]
        raise UserError(f"{source} does not fit the detector: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v for k, v in sd.items() if k not in frozen_extra}, strict=True)
