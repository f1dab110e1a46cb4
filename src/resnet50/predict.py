"""Classify image files: decode, preprocess as the checkpoint says, run a backend in batches, report top-k.

Preprocessing is the checkpoint's own (``Preprocessing``: resize the shorter side, centre crop, scale to 0..1,
normalise) through the data package's ``decode_image`` and transforms, so prediction sees exactly what evaluation
sees. Images become mode L for ``in_chans=1`` models and RGB otherwise (alpha composited on white; rules in
``resnet50.data.decode``). Class names: ``Checkpoint.class_names()`` (the checkpoint's list; for 1000-class
weights without one the bundled ImageNet-1k names, ``imagenet_classes.txt``; else indices).

A file that cannot be decoded (not an image, truncated, a decompression bomb) is reported with its reason and the
rest of its batch still runs. Decoding runs on a thread pool, overlapping the backend's work on the previous batch.
"""

from __future__ import annotations

import csv
import io
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backends import Backend
from .cam import cam, draw_overlay
from .data.decode import MAX_PIXELS, ImageDecodeError, decode_image
from .data.transforms import eval_transform, preprocess
from .errors import UserError
from .files import atomic_path, output_dir
from .infer import label_rows
from .weights import Checkpoint

# --- prediction ---------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    file: str
    top: list[dict] | None = None  # [{"rank", "index", "label", "probability"}], highest first
    error: str | None = None
    cam: dict | None = None  # with --cam: the class activation map's box and overlay (add_cams)

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "predictions": self.top, **({"cam": self.cam} if self.cam else {})}


def predict_files(files: Sequence[Path], loaded: Checkpoint, backend: Backend, k: int = 5, batch_size: int = 16,
                  max_pixels: int = MAX_PIXELS, progress: bool = False, workers: int = 2) -> list[Prediction]:
    """Top-``k`` predictions for each file, in the order given; failures are Predictions with ``error`` set."""
    if k < 1:
        raise UserError(f"--topk must be >= 1, got {k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    names = loaded.class_names()
    transform = eval_transform(loaded.preprocessing, loaded.in_chans)

    def load(path: Path):
        try:
            return preprocess(path, loaded, transform, max_pixels)
        except ImageDecodeError as e:
            return e.reason

    out: list[Prediction] = []
    bar = tqdm(total=len(files), unit="img", disable=not progress or len(files) < 2, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        # Decode at most two batches ahead of the backend: memory stays bounded however many files there are.
        pending: deque = deque()
        next_file = 0
        for start in range(0, len(files), batch_size):
            while next_file < min(len(files), start + 2 * batch_size):
                pending.append(pool.submit(load, files[next_file]))
                next_file += 1
            chunk = files[start:start + batch_size]
            arrays = [pending.popleft().result() for _ in chunk]
            good = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray)]
            rows = label_rows(backend(np.stack([arrays[i] for i in good])), k, names) if good else []
            by_index = dict(zip(good, rows))
            for i, path in enumerate(chunk):
                out.append(Prediction(str(path), top=by_index[i]) if i in by_index else
                           Prediction(str(path), error=str(arrays[i])))
            bar.update(len(chunk))
    return out


def crop_to_image(box: Sequence[float], size: tuple[int, int], pre) -> list[float]:
    """A box ``[x, y, w, h]`` in the model's input (the centre crop of the resized image) in the original image's
    pixels: undo the centre crop, then the resize of the shorter side to ``pre.resize``."""
    w, h = size
    scale = pre.resize / min(w, h)
    rw, rh = round(w * scale), round(h * scale)
    left, top = (rw - pre.crop) // 2, (rh - pre.crop) // 2
    x, y, bw, bh = box
    return [round((x + left) / scale, 1), round((y + top) / scale, 1), round(bw / scale, 1), round(bh / scale, 1)]


def check_cam(loaded: Checkpoint, out_dir: str | os.PathLike) -> Path:
    """Before any work: CAM needs the PyTorch network, and a folder for its pictures."""
    if loaded.model is None:
        raise UserError("--cam needs PyTorch weights (the maps are computed from the network's last stage and "
                        "classifier); pass the .safetensors checkpoint, not an ONNX model")
    return output_dir(out_dir, "--cam")


def add_cams(results: list[Prediction], loaded: Checkpoint, out_dir: str | os.PathLike, batch_size: int = 16,
             max_pixels: int = MAX_PIXELS) -> Path:
    """Class activation maps (Zhou et al. 2016; ``resnet50.cam``) of the predicted class of every readable file:
    an overlay PNG each in ``out_dir`` (heatmap, box, label and score, on the image as the model saw it) and, in
    each result's ``cam``, the box by the CAM paper's rule in input pixels and in the original image's pixels."""
    out = check_cam(loaded, out_dir)
    names = loaded.class_names()
    transform = eval_transform(loaded.preprocessing, loaded.in_chans)
    mean = torch.tensor(loaded.preprocessing.mean)[:, None, None]
    std = torch.tensor(loaded.preprocessing.std)[:, None, None]
    good = [r for r in results if r.error is None]
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        images = [decode_image(r.file, loaded.in_chans, max_pixels=max_pixels) for r in chunk]
        x = torch.stack([transform(img) for img in images])
        res = cam(loaded.model.eval(), x)
        for i, (r, img) in enumerate(zip(chunk, images)):
            k = int(res.classes[i])
            label = names[k] if names else str(k)
            box = [int(v) for v in res.boxes[i]]
            path = out / f"{start + i:05d}_{Path(r.file).stem}.png"
            seen = (x[i] * std + mean).clamp(0, 1)  # the input as the model saw it, back on the 0..1 scale
            picture = draw_overlay(seen, res.heatmaps[i], box, label, float(res.scores[i]))
            with atomic_path(path) as tmp:
                picture.save(tmp, format="PNG")
            r.cam = {"class": label, "index": k, "score": float(res.scores[i]), "box_input": box,
                     "box": crop_to_image(box, img.size, loaded.preprocessing), "overlay": str(path)}
    return out


def to_csv(results: Sequence[Prediction]) -> str:
    """One row per (file, rank); a failed file is one row with the error and empty prediction fields."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "rank", "index", "label", "probability", "error"])
    for r in results:
        if r.error is not None:
            w.writerow([r.file, "", "", "", "", r.error])
        else:
            for p in r.top:
                w.writerow([r.file, p["rank"], p["index"], p["label"], f"{p['probability']:.6f}", ""])
    return buf.getvalue()


def to_text(results: Sequence[Prediction]) -> str:
    lines = []
    for r in results:
        if r.error is not None:
            lines.append(f"{r.file}: ERROR {r.error}")
        else:
            cam_txt = f"  [CAM box {r.cam['box']} -> {r.cam['overlay']}]" if r.cam else ""
            lines.append(f"{r.file}: " + ", ".join(f"{p['label']} {p['probability']:.1%}" for p in r.top) + cam_txt)
    return "\n".join(lines)
