"""Detect objects in image files: letterbox as the detector's config says, run it, post-process, report boxes in the
file's own pixels, and draw them (box, class name, score) into PNGs.

Drawing is separate from detecting: ``detect_files`` returns plain records, ``draw_detections`` turns one image
and its records into a picture. A file that cannot be decoded is a record with ``error`` set; the rest still run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..cam import upscale_factor
from ..data.decode import ImageDecodeError, decode_image
from ..errors import UserError
from ..files import atomic_path, output_dir
from .checkpoint import DetectorCheckpoint
from .coco import letterbox

# matplotlib's tab10: distinct on white and on black
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


@dataclass
class FileDetections:
    file: str
    width: int = 0
    height: int = 0
    detections: list[dict] = field(default_factory=list)  # label, class_index, score, box [x1, y1, x2, y2]
    picture: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def detect_files(files: Sequence[Path], ckpt: DetectorCheckpoint, min_score: float = 0.3, batch_size: int = 8,
                 out: str | os.PathLike | None = None) -> list[FileDetections]:
    """Detections scoring at least ``min_score`` for each file, in the order given; with ``out``, each file's
    picture is written there as ``<stem>.png`` (``<stem>-2.png`` ... where stems repeat)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    model, cfg = ckpt.model.eval(), ckpt.config
    device = next(model.parameters()).device
    out_dir = output_dir(out) if out is not None else None
    results, used_names = [], set()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        recs, pixels, inputs, scales = [], [], [], []
        for path in chunk:
            rec = FileDetections(str(path))
            recs.append(rec)
            try:
                arr = np.asarray(decode_image(path, in_chans=cfg.in_chans))
            except ImageDecodeError as e:
                rec.error = e.reason
                pixels.append(None)
                continue
            rec.height, rec.width = arr.shape[:2]
            x, scale = letterbox(arr, cfg.image_size)
            pixels.append(arr)
            inputs.append(x)
            scales.append(scale)
        if inputs:
            outputs = model(torch.stack(inputs).to(device))
            valid = [(r.height * s, r.width * s) for r, s in zip([r for r in recs if r.error is None], scales)]
            dets = iter(model.postprocess(outputs, (cfg.image_size, cfg.image_size), valid))
            scale_iter = iter(scales)
        for rec, arr in zip(recs, pixels):
            if rec.error is not None:
                continue
            det, scale = next(dets), next(scale_iter)
            keep = det["scores"] >= min_score
            boxes = (det["boxes"][keep].cpu() / scale).tolist()
            for box, score, label in zip(boxes, det["scores"][keep].tolist(), det["labels"][keep].tolist()):
                rec.detections.append({"label": ckpt.classes[label], "class_index": int(label),
                                       "score": round(float(score), 4), "box": [round(v, 2) for v in box]})
            if out_dir is not None:
                stem = Path(rec.file).stem
                name, k = f"{stem}.png", 1
                while name in used_names:
                    k += 1
                    name = f"{stem}-{k}.png"
                used_names.add(name)
                picture = draw_detections(arr, rec.detections)
                with atomic_path(out_dir / name) as tmp:
                    picture.save(tmp, format="PNG")
                rec.picture = str(out_dir / name)
        results.extend(recs)
    return results


def to_coco(found: Sequence[FileDetections], classes: list[str]) -> dict:
    """The detections as a COCO instances document that this toolkit's data readers take back (``detect train``,
    ``detect evaluate``, ``CocoDataset``): ``images`` (absolute ``file_name``, width, height; files that did not
    decode are left out), ``annotations`` (``bbox`` [x, y, w, h] in the file's pixels, ``area``, ``iscrowd`` 0, and
    the detector's ``score``, which readers ignore), ``categories`` (id = class index + 1, the detector's names).
    Pseudo labels to check and correct, or ground truth for another model."""
    images, annotations = [], []
    for f in found:
        if f.error is not None:
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(Path(f.file).resolve()), "width": f.width,
                       "height": f.height})
        for d in f.detections:
            x1, y1, x2, y2 = d["box"]
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": d["class_index"] + 1,
                                "bbox": [x1, y1, w, h], "area": round(w * h, 2), "iscrowd": 0, "score": d["score"]})
    return {"info": {"description": "resnet50 detect predict --coco"}, "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)]}


def draw_detections(pixels: np.ndarray, detections: list[dict], min_side: int = 384) -> Image.Image:
    """An RGB picture of ``pixels`` (uint8 (H, W) or (H, W, 3)) with each detection's box and "label score",
    upscaled (nearest) so its shorter side is at least ``min_side`` px, so labels stay legible on small images,
    within ``cam.upscale_factor``'s bound on the longer side (a 1500 x 3 strip is drawn 3000 x 6)."""
    img = Image.fromarray(pixels).convert("RGB")
    k = upscale_factor(img.width, img.height, min_side)
    if k > 1:
        img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(11, min(img.size) // 28))
    for det in detections:
        color = PALETTE[det["class_index"] % len(PALETTE)]
        x1, y1, x2, y2 = (v * k for v in det["box"])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=max(2, k))
        text = f"{det['label']} {det['score']:.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx2 - tx1, ty2 - ty1
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=color)
        draw.text((x1 + 2 - tx1, ty + 2 - ty1), text, fill="white", font=font)
    return img
