"""Boxes for image files: letterbox, run the localiser, give each image its class, score and box (in input pixels
and in the original image's pixels), draw them into a PNG; and the ONNX export with its parity check."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..cam import PRED_COLOR, label_font, upscale_factor
from ..data.decode import ImageDecodeError, decode_image
from ..detect.coco import letterbox
from ..errors import UserError
from ..files import atomic_path, output_dir
from .evaluate import LocalizerCheckpoint
from .model import Localizer, to_xyxy


@dataclass
class Located:
    """One image's answer: the class and its probability, the box for it as [x1, y1, x2, y2] in the letterboxed
    input's pixels (``box_input``) and in the original image's (``box``), the picture written, or the error."""

    file: str
    label: str = ""
    class_index: int = -1
    score: float = 0.0
    box: list[float] = field(default_factory=list)
    box_input: list[float] = field(default_factory=list)
    picture: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def locate_files(files: list[str], ckpt: LocalizerCheckpoint, batch_size: int = 16, out: str | None = None,
                 max_pixels: int | None = None) -> list[Located]:
    """The localiser's class and box for each file (an unreadable file gets ``error``, the rest go on); with
    ``out``, a PNG per image with the box, label and score drawn."""
    model, size = ckpt.model.eval(), ckpt.config.image_size
    if out:
        output_dir(Path(out), "--out")
    found: list[Located] = []
    for s in range(0, len(files), batch_size):
        chunk, images, scales, pixels = files[s:s + batch_size], [], [], []
        done = []
        for f in chunk:
            try:
                kw = {"max_pixels": max_pixels} if max_pixels else {}
                arr = np.asarray(decode_image(f, in_chans=ckpt.config.in_chans, **kw))
            except ImageDecodeError as e:
                found.append(Located(str(f), error=e.reason))
                continue
            x, scale = letterbox(arr, size)
            images.append(x)
            scales.append(scale)
            pixels.append(arr)
            done.append(f)
        if not images:
            continue
        logits, boxes = model(torch.stack(images))
        probs = logits.float().softmax(1)
        for f, p, b, scale, arr in zip(done, probs, boxes, scales, pixels):
            c = int(p.argmax())
            box_in = to_xyxy(b[c].float(), size).tolist()
            h, w = arr.shape[:2]
            box = [min(max(v / scale, 0.0), lim) for v, lim in zip(box_in, (w, h, w, h))]
            item = Located(str(f), ckpt.classes[c], c, float(p[c]), [round(v, 2) for v in box],
                           [round(v, 2) for v in box_in])
            if out:
                item.picture = str(Path(out) / f"{Path(f).stem}.png")
                with atomic_path(item.picture) as tmp:
                    draw_box(arr, item).save(tmp, format="PNG")
            found.append(item)
    order = {str(f): k for k, f in enumerate(files)}
    return sorted(found, key=lambda x: order.get(x.file, 0))


def draw_box(pixels: np.ndarray, item: Located, truth: list[float] | None = None) -> Image.Image:
    """The image (enlarged for small ones, bounded: ``cam.upscale_factor``) with its box, label and score; the
    ground-truth box in green when given (xyxy, original pixels)."""
    img = Image.fromarray(pixels).convert("RGB")
    k = upscale_factor(*img.size)
    img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    if truth is not None:
        draw.rectangle([v * k for v in truth], outline=(57, 255, 20), width=max(1, k // 2))
    draw.rectangle([v * k for v in item.box], outline=PRED_COLOR, width=max(2, k // 2))
    font = label_font(max(10, 4 * k))
    text = f"{item.label} {item.score:.2f}"
    x, y = item.box[0] * k, max(0.0, item.box[1] * k - font.size - 4)
    draw.rectangle(draw.textbbox((x, y), text, font=font), fill=(0, 0, 0))
    draw.text((x, y), text, fill=PRED_COLOR, font=font)
    return img


def export_onnx(model: Localizer, path: str | os.PathLike, batch: int = 2) -> dict:
    """ONNX export of the localiser (inputs ``images`` (N, C, S, S) in 0..1, outputs ``logits`` (N, K) and
    ``boxes`` (N, K, 4) fractions; the batch is dynamic), checked against eager on random inputs with ONNX
    Runtime when it is installed (max abs differences in the result). Raises UserError when the check fails."""
    model = model.eval()
    cfg = model.cfg
    x = torch.rand(batch, cfg.in_chans, cfg.image_size, cfg.image_size)
    try:  # the torch.export-based exporter, opset 18, as the detector's (detect.export)
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["images"],
                                    output_names=["logits", "boxes"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    except Exception as e:  # the exporter raises many types; its first line says what failed
        raise UserError(f"ONNX export of the localiser failed: {str(e).splitlines()[0][:200]}") from e
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    try:
        import onnxruntime as ort
    except ImportError:
        return {"path": str(path), "parity": None}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(batch + 1, cfg.in_chans, cfg.image_size, cfg.image_size)
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    if max(diffs) > 1e-3:
        raise UserError(f"the ONNX localiser differs from eager by {max(diffs):.2g}; report it with the model's config")
    return {"path": str(path), "parity": {"logits_max_abs": diffs[0], "boxes_max_abs": diffs[1]}}
