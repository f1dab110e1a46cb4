"""Detector weights on disk: ours (safetensors with the DetectorConfig and class names as metadata) and
torchvision's RetinaNet state dicts (``retinanet_resnet50_fpn`` / ``_v2`` COCO checkpoints, ``.pth``), loaded
strictly.

torchvision checkpoints saved before 0.13 (its COCO v1 file among them) name the FPN and head convolutions without
the Conv2dNormActivation level (``fpn.inner_blocks.0.weight``, ``head.*.conv.2.weight`` for the second conv);
``upgrade_torchvision_keys`` renames them to today's layout, which is ours, as torchvision's own loading hooks do.
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
from .retinanet import DetectorConfig, RetinaNet

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
    model: RetinaNet
    classes: list[str]
    source: str = ""

    @property
    def config(self) -> DetectorConfig:
        return self.model.cfg


def save_detector(path: str | os.PathLike, model: RetinaNet, classes: list[str], source: str = "") -> None:
    """Write ``model`` as safetensors with the metadata that rebuilds it (atomically)."""

    if len(classes) != model.cfg.num_classes:
        raise UserError(f"{len(classes)} class names given for a detector with {model.cfg.num_classes} classes")
    meta = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), "classes": json.dumps(list(classes)),
            "source": source}
    write_safetensors(path, model, meta)


def load_detector(path: str | os.PathLike, **overrides) -> DetectorCheckpoint:
    """Our detector file (or a run folder: its best.safetensors, else final.safetensors), or a torchvision
    RetinaNet state dict. ``overrides``: DetectorConfig fields that do not change the weights' shapes
    (score_thresh, nms_thresh, image_size, ...); for torchvision files also ``bn_eps`` (0.0 for their COCO v1)."""
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
        source = meta.get("source", "")
    elif any(k.startswith("backbone.body.") for k in sd):
        sd = upgrade_torchvision_keys(sd)
        cfg = infer_torchvision_config(sd, path)
        k = cfg["num_classes"]
        classes = list(COCO_CLASSES) if k == len(COCO_CLASSES) else [str(i) for i in range(k)]
        source = f"torchvision state dict {path.name}"
    else:
        raise UserError(f"{path} is not a detector checkpoint (no detector metadata, no backbone.body.* keys); "
                        "for a classification checkpoint use --init-weights")
    shape_fields = {"version", "arch", "in_chans", "num_classes", "norm", "fpn_channels", "anchor_scales",
                    "aspect_ratios"}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in shape_fields and value != cfg.get(key):
            raise UserError(f"{path} holds a detector with {key}={cfg.get(key)!r}; {key}={value!r} would change its "
                            "shapes (drop the option)")
        cfg[key] = value
    model = RetinaNet(DetectorConfig.from_dict(cfg))
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
        out[k] = v
    return out


def infer_torchvision_config(sd: dict[str, Tensor], path: Path | str = "checkpoint") -> dict:
    """The DetectorConfig fields a torchvision RetinaNet state dict determines: version, arch, in_chans, classes."""
    try:
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
        anchors = sd["head.regression_head.bbox_reg.weight"].shape[0] // 4
        if anchors != 9:
            raise UserError(f"{path}: the head predicts {anchors} anchors per location; this loader knows "
                            "torchvision's 9 (3 scales x 3 aspect ratios)")
        in_chans = int(body["conv1.weight"].shape[1])
        return {
            "version": "v2" if "head.classification_head.conv.0.1.weight" in sd else "v1",
            "arch": arch, "in_chans": in_chans, "norm": "frozen",
            "num_classes": int(sd["head.classification_head.cls_logits.weight"].shape[0]) // anchors,
            "mean": list(DetectorConfig.mean) if in_chans == 3 else [0.5] * in_chans,
            "std": list(DetectorConfig.std) if in_chans == 3 else [0.5] * in_chans,
        }
    except KeyError as e:
        raise UserError(f"{path} is not a torchvision RetinaNet state dict (no {e})") from None


def load_strict(model: RetinaNet, sd: dict[str, Tensor], source: str) -> None:
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
