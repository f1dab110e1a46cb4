"""Localiser weights on disk, the ILSVRC localisation measure, evaluation and prediction.

The measure (ILSVRC 2012-2017 classification + localisation; Russakovsky et al. 2015, sec. 4.1; the WSOL papers'
"top-1 / top-5 localisation" and "GT-known"), per image with one object, IoU threshold 0.5 *inclusive*:

    top-1 loc   the top class is the label and its box has IoU >= 0.5 with the ground truth
    top-5 loc   the label is among the top 5 classes and the box for the label has IoU >= 0.5
    GT-known    the box for the true class has IoU >= 0.5, whatever was predicted
    mean IoU    of the boxes for the true class
    top-1 cls   the classification alone

errors are 1 - these. Weights files are safetensors whose metadata carries ``task: localizer``, the
LocalizerConfig and the class names; a detector's or a classifier's file is refused in one line naming the
command that reads it.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..detect.coco import CocoDataset, make_batch
from ..detect.nms import box_iou
from ..errors import UserError
from ..weights import read_safetensors, write_safetensors
from .model import Localizer, LocalizerConfig, to_xyxy

FORMAT = "resnet50-toolkit/localizer/1"


@dataclass
class LocalizerCheckpoint:
    model: Localizer
    classes: list[str]
    source: str = ""

    @property
    def config(self) -> LocalizerConfig:
        return self.model.cfg


def save_localizer(path: str | os.PathLike, model: Localizer, classes: list[str], source: str = "") -> None:
    """Write ``model`` as safetensors with the metadata that rebuilds it (atomically)."""
    if len(classes) != model.cfg.num_classes:
        raise UserError(f"{len(classes)} class names given for a localiser of {model.cfg.num_classes} classes")
    meta = {"format": FORMAT, "task": "localizer", "config": json.dumps(model.cfg.to_dict()),
            "classes": json.dumps(list(classes)), "source": source}
    write_safetensors(path, model, meta)


def load_localizer(path: str | os.PathLike) -> LocalizerCheckpoint:
    """A localiser file (or a run folder: its best.safetensors, else final.safetensors). Errors are one line,
    naming the file and what reads it when it holds a classifier or a detector."""
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("best.safetensors", "final.safetensors") if (p / n).is_file()),
                 p / "final.safetensors")
    if not p.is_file():
        raise UserError(f"no localiser at {p}; give a localiser's .safetensors or its run folder")
    meta, tensors = read_safetensors(p)
    if meta.get("task") != "localizer":
        kind = meta.get("format", "") + " " + meta.get("schema", "")
        what = "a detector's" if "detector" in kind else \
            "a classifier's" if "resnet50-toolkit" in kind or tensors.keys() >= {"conv1.weight", "fc.weight"} \
            else "not a localiser's"
        fix = {"a detector's": "; it is read by 'resnet50 detect predict'",
               "a classifier's": "; it is read by 'resnet50 predict', or start a localiser from it with "
                                 "'resnet50 localize train --init-weights'"}.get(what, "")
        raise UserError(f"{p} holds {what} weights, not a localiser{fix}" if what != "not a localiser's" else
                        f"{p} holds no localiser's weights (no task: localizer in its metadata); give the "
                        ".safetensors a localize run wrote")
    model = Localizer(LocalizerConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(tensors)
    return LocalizerCheckpoint(model.eval(), json.loads(meta["classes"]), meta.get("source", ""))


def ilsvrc_metrics(logits: Tensor, boxes: Tensor, labels: Tensor, gt: Tensor, k: int = 5) -> dict[str, float]:
    """The module docstring's figures for N images: ``logits`` (N, K), ``boxes`` (N, K, 4) and ``gt`` (N, 4) as
    xyxy pixels, ``labels`` (N,). Accuracies in [0, 1]; ``*_err`` = 1 - accuracy."""
    n = len(labels)
    if n == 0:
        raise UserError("localisation metrics need at least one image")
    rows = torch.arange(n)
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    iou_top1 = box_iou(boxes[rows, top[:, 0]], gt).diagonal()
    iou_true = box_iou(boxes[rows, labels], gt).diagonal()
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=1)
    out = {"top1_cls": hit1.float().mean(), "top5_cls": hit5.float().mean(),
           "top1_loc": (hit1 & (iou_top1 >= 0.5)).float().mean(),
           "top5_loc": (hit5 & (iou_true >= 0.5)).float().mean(),
           "gt_known_loc": (iou_true >= 0.5).float().mean(), "mean_iou": iou_true.mean()}
    out = {key: float(v) for key, v in out.items()}
    out.update({f"{key}_err": 1 - out[key] for key in ("top1_loc", "top5_loc", "gt_known_loc")})
    out["images"] = n
    return out


@torch.no_grad()
def localize_dataset(model: Localizer, ds: CocoDataset, batch_size: int = 64, device=torch.device("cpu"),
                     amp: torch.dtype | None = None, progress: bool = False) -> dict:
    """Run ``model`` over every image of ``ds`` (one box each): logits (N, K), boxes (N, K, 4) and the ground
    truth (labels, gt boxes) in input pixels, and the files skipped."""
    model.eval()
    size = model.cfg.image_size
    logits, boxes, labels, gts, skipped = [], [], [], [], []
    for s in tqdm(range(0, len(ds), batch_size), desc="localize", unit="batch", disable=not progress, leave=False):
        batch = make_batch(ds, list(range(s, min(s + batch_size, len(ds)))), size)
        skipped += batch.skipped
        if not batch.image_ids:
            continue
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            lg, bx = model(batch.images.to(device))
        logits.append(lg.float().cpu())
        boxes.append(to_xyxy(bx.float().cpu(), size))
        labels.append(batch.labels[:, 0])
        gts.append(batch.boxes[:, 0])
    if not logits:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
    return {"logits": torch.cat(logits), "boxes": torch.cat(boxes), "labels": torch.cat(labels),
            "gt": torch.cat(gts), "skipped": skipped}


def evaluate(model: Localizer, ds: CocoDataset, batch_size: int = 64, device=torch.device("cpu"),
             amp: torch.dtype | None = None, progress: bool = False) -> dict:
    """The ILSVRC figures of ``model`` on ``ds`` (:func:`ilsvrc_metrics`), with the skipped files."""
    r = localize_dataset(model, ds, batch_size, device, amp, progress)
    metrics = ilsvrc_metrics(r["logits"], r["boxes"], r["labels"], r["gt"])
    metrics["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in r["skipped"]]
    return metrics
