"""COCO-format detection data: read and check an instances JSON with its images, letterbox, batch, and measure
detections with pycocotools (mAP@[.5:.95], mAP@.5, per-class AP). The measure is pycocotools' own; nothing here
computes a second mAP.

A dataset is a folder with one instances JSON (``instances.json``, ``annotations.json``, or the only ``*.json``;
``annotations/instances_*.json`` as COCO ships it) or the JSON file itself. ``file_name`` is looked up relative to
the JSON's folder, then under ``images/`` beside it, then beside an ``annotations/`` folder's parent. Our scenes
(``resnet50.scenes.write_scenes``) are such a folder.

What is checked, and what happens (a bad entry is named with its file and its id; never a traceback):

- not JSON, or no ``images`` / ``annotations`` / ``categories`` lists: an error;
- an image entry without an integer ``id``, a ``file_name``, or positive ``width`` / ``height``; a duplicate id;
  a category without an ``id`` or ``name``, or a duplicate: an error;
- an annotation with an unknown ``image_id`` or ``category_id``, or a ``bbox`` that is not 4 numbers: an error;
- a box of zero or negative width or height, or one wholly outside its image: skipped and counted;
- a box partly outside its image: clipped to the image and counted;
- crowd annotations (``iscrowd`` 1): not trained on, counted (pycocotools ignores detections on them);
- a ``file_name`` written with backslashes (Windows exports) is read with them as folder separators; one that names
  a path of the exporting machine (Label Studio's ``/data/upload/1/x.png``) is found by its base name inside the
  folder when exactly one file there has it (counted as ``found_by_name``, each named in the stats);
- an image file that does not exist: the image is skipped with its boxes, counted and named (``missing``); if
  none is left, an error; ``detect evaluate`` says how many it lost, and ``--strict`` refuses;
- an image with no boxes: kept (a negative example: every anchor background) and counted;
- an image file that does not decode: skipped when it is read, counted in the epoch's report.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..data import build_loader
from ..data.decode import MAX_PIXELS, ImageDecodeError, Skipped, decode_image
from ..errors import UserError

JSON_NAMES = ("instances.json", "annotations.json")


def require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError("COCO evaluation needs pycocotools: pip install 'resnet50[detect]'") from None
    return COCO, COCOeval


@dataclass
class CocoImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (G, 4) float32 xyxy in the image's pixels
    labels: np.ndarray  # (G,) int64 class indices (position in ``categories``)


@dataclass
class CocoStats:
    """What loading found: counts of each kind of skip or repair, with an example of each."""

    images: int = 0
    boxes: int = 0
    missing_images: int = 0
    images_without_boxes: int = 0
    zero_area_boxes: int = 0
    outside_boxes: int = 0
    clipped_boxes: int = 0
    crowd_boxes: int = 0
    found_by_name: int = 0  # file_names resolved by their base name inside the folder (exported paths)
    examples: dict[str, str] = field(default_factory=dict)

    def note(self, kind: str, example: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.examples.setdefault(kind, example)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        parts = [f"{self.images} images, {self.boxes} boxes"]
        for kind in ("missing_images", "found_by_name", "images_without_boxes", "zero_area_boxes", "outside_boxes", "clipped_boxes",
                     "crowd_boxes"):
            n = getattr(self, kind)
            if n:
                parts.append(f"{n} {kind.replace('_', ' ')} (e.g. {self.examples[kind]})")
        return "; ".join(parts)


def find_instances_json(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise UserError(f"COCO data {p} does not exist; give a folder with an instances JSON and its images")
    for name in JSON_NAMES:
        if (p / name).is_file():
            return p / name
    candidates = sorted(p.glob("*.json")) or sorted((p / "annotations").glob("instances_*.json"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UserError(f"{p} holds no instances JSON (looked for {', '.join(JSON_NAMES)}, *.json, "
                        "annotations/instances_*.json)")
    raise UserError(f"{p} holds {len(candidates)} JSON files ({', '.join(c.name for c in candidates[:4])}); "
                    "give the instances JSON itself")


def _roots(json_path: Path) -> list[Path]:
    base = json_path.parent
    return [base, base / "images"] + ([base.parent] if base.name == "annotations" else [])


def _image_path(json_path: Path, file_name: str) -> Path:
    """Where ``file_name`` is, as written (backslashes read as folder separators), under the JSON's folder, its
    ``images/``, or an ``annotations/`` folder's parent; else the first of those (which does not exist)."""
    name = file_name.replace("\\", "/")
    for root in _roots(json_path):
        if (root / name).is_file():
            return root / name
    return json_path.parent / name


class _ByName:
    """The image files under a dataset's folders by base name, listed once, on first use: how a ``file_name`` that
    names a path of the exporting machine (Label Studio's ``/data/upload/1/x.png``, ``..\\media\\upload\\4\\x.png``)
    is found inside the folder when exactly one file there has its base name."""

    def __init__(self, json_path: Path) -> None:
        self.json_path, self._index = json_path, None

    def find(self, file_name: str) -> tuple[Path | None, int]:
        """(the one file with this base name, or None; how many files have it)."""
        if self._index is None:
            self._index = {}
            seen = set()
            for root in _roots(self.json_path):
                for path in root.rglob("*") if root.is_dir() else ():
                    if path.is_file() and path.resolve() not in seen:
                        seen.add(path.resolve())
                        self._index.setdefault(path.name, []).append(path)
        found = self._index.get(file_name.replace("\\", "/").rsplit("/", 1)[-1], [])
        return (found[0] if len(found) == 1 else None), len(found)


class CocoDataset:
    """The checked contents of one instances JSON. ``classes``: category names in the JSON's order (class index i
    is ``category_ids[i]``); ``images``: the usable images; ``stats``: what was skipped or repaired.
    ``ground_truth()`` is the checked annotation set as a COCO dict, the reference the evaluation measures against."""

    def __init__(self, path: str | os.PathLike, in_chans: int = 1, max_pixels: int = MAX_PIXELS) -> None:
        self.json_path = find_instances_json(path)
        self.in_chans, self.max_pixels = in_chans, max_pixels
        self.stats = CocoStats()
        self.missing: list[str] = []  # the file_names of dropped images, with why
        self._load()

    def _load(self) -> None:
        raw = self._read_json()
        self._categories(raw["categories"])
        entries = self._image_entries(raw["images"])
        boxes, labels, gt_anns = self._annotations(raw["annotations"], entries)
        self._kept_images(entries, boxes, labels)
        kept = {im.id for im in self.images}
        self._gt = {
            "images": [{"id": i, "width": entries[i]["width"], "height": entries[i]["height"],
                        "file_name": entries[i]["file_name"]} for i in entries if i in kept],
            "annotations": [dict(a, id=n + 1) for n, a in enumerate(x for x in gt_anns if x["image_id"] in kept)],
            "categories": [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.classes)],
        }
        self.stats.images = len(self.images)
        self.stats.boxes = sum(len(im.boxes) for im in self.images)

    def _read_json(self) -> dict:
        f = self.json_path
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{f} is not a COCO instances JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{f} is not a COCO instances JSON (not JSON: {e.msg} at line {e.lineno})") from None
        except OSError as e:
            raise UserError(f"cannot read {f}: {e.strerror or e}") from None
        need = ("images", "annotations", "categories")
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in need):
            missing = [k for k in need if not isinstance(raw, dict) or not isinstance(raw.get(k), list)]
            raise UserError(f"{f} is not a COCO instances JSON: it needs 'images', 'annotations' and 'categories' "
                            f"lists (no {', '.join(repr(k) for k in missing)})")
        return raw

    def _categories(self, categories: list) -> None:
        f = self.json_path
        self.category_ids, self.classes = [], []
        for k, c in enumerate(categories):
            if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
                raise UserError(f"{f}: categories[{k}] needs an integer 'id' and a 'name', got {_short(c)}")
            if c["id"] in self.category_ids:
                raise UserError(f"{f}: category id {c['id']} appears twice (categories[{k}])")
            self.category_ids.append(c["id"])
            self.classes.append(c["name"])
        if not self.classes:
            raise UserError(f"{f}: 'categories' is empty; a detector needs at least one class")

    def _image_entries(self, images: list) -> dict[int, dict]:
        f = self.json_path
        entries: dict[int, dict] = {}
        for k, im in enumerate(images):
            ok = isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str) and \
                _is_int(im.get("width")) and _is_int(im.get("height")) and im["width"] > 0 and im["height"] > 0
            if not ok:
                raise UserError(f"{f}: images[{k}] needs an integer 'id', a 'file_name' and positive integer "
                                f"'width' and 'height', got {_short(im)}")
            if im["id"] in entries:
                raise UserError(f"{f}: image id {im['id']} appears twice (images[{k}])")
            entries[im["id"]] = im
        return entries

    def _annotations(self, anns: list, entries: dict[int, dict]) -> tuple[dict, dict, list]:
        """Per image its usable boxes (clipped, xyxy) and class indices, and the ground truth for pycocotools."""
        f = self.json_path
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        boxes: dict[int, list] = {i: [] for i in entries}
        labels: dict[int, list] = {i: [] for i in entries}
        gt_anns = []
        for k, a in enumerate(anns):
            name = f"annotation {a.get('id', f'[{k}]')}" if isinstance(a, dict) else f"annotations[{k}]"
            if not isinstance(a, dict):
                raise UserError(f"{f}: {name} is not an object")
            if a.get("image_id") not in entries:
                raise UserError(f"{f}: {name} has image_id {a.get('image_id')!r}, which is not in 'images'")
            if a.get("category_id") not in cat_index:
                raise UserError(f"{f}: {name} has category_id {a.get('category_id')!r}, which is not in "
                                f"'categories' (ids {_few(self.category_ids)})")
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise UserError(f"{f}: {name} needs 'bbox' as 4 numbers [x, y, width, height], got {bbox!r}")
            im = entries[a["image_id"]]
            x, y, w, h = (float(v) for v in bbox)
            where = f"{name} of image {im['id']} ({im['file_name']}), bbox {bbox}"
            if not (w > 0 and h > 0):
                self.stats.note("zero_area_boxes", where)
                continue
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(im["width"])), min(y + h, float(im["height"]))
            if x2 <= x1 or y2 <= y1:
                self.stats.note("outside_boxes", where)
                continue
            clipped = (x1, y1, x2, y2) != (x, y, x + w, y + h)
            if clipped:
                self.stats.note("clipped_boxes", where)
            crowd = bool(a.get("iscrowd", 0))
            if crowd:
                self.stats.note("crowd_boxes", where)
            else:
                boxes[im["id"]].append((x1, y1, x2, y2))
                labels[im["id"]].append(cat_index[a["category_id"]])
            # pycocotools sorts boxes into small / medium / large by 'area' (the mask's, in COCO): keep the file's
            # unless the box was clipped or it has none
            area = float(a["area"]) if _is_number(a.get("area")) and not clipped else (x2 - x1) * (y2 - y1)
            gt_anns.append({"image_id": im["id"], "category_id": a["category_id"], "iscrowd": int(crowd),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area})
        return boxes, labels, gt_anns

    def _kept_images(self, entries: dict[int, dict], boxes: dict, labels: dict) -> None:
        """The images whose files exist (as written, or found by base name inside the folder when exactly one file
        has it); the others are dropped, counted and named."""
        f = self.json_path
        by_name = _ByName(f)
        self.images: list[CocoImage] = []
        for image_id, im in entries.items():
            path = _image_path(f, im["file_name"])
            if not path.is_file():
                found, count = by_name.find(im["file_name"])
                if found is None:
                    why = f"{count} files named so in the folder" if count else "not in the folder"
                    self.stats.note("missing_images", f"image {image_id}: {im['file_name']} ({why})")
                    self.missing.append(f"{im['file_name']} ({why})")
                    continue
                self.stats.note("found_by_name", f"image {image_id}: {im['file_name']} -> {found}")
                path = found
            if not boxes[image_id]:
                self.stats.note("images_without_boxes", f"image {image_id} ({im['file_name']})")
            self.images.append(CocoImage(image_id, path, im["width"], im["height"],
                                         np.asarray(boxes[image_id], np.float32).reshape(-1, 4),
                                         np.asarray(labels[image_id], np.int64)))
        if not self.images:
            raise UserError(f"{f}: none of its {len(entries)} image files exist (e.g. "
                            f"{self.missing[0] if self.missing else 'none listed'}); check the folder")

    def __len__(self) -> int:
        return len(self.images)

    def ground_truth(self) -> dict:
        return self._gt

    def pixels(self, index: int, draft_size: int | None = None) -> np.ndarray:
        """The image's pixels, uint8 (H, W) for 1 channel or (H, W, 3), in the frame the JSON's width and height
        describe: EXIF-upright, or as stored when the JSON gives the stored size of a turned photo (the
        annotations then refer to the stored pixels). ``draft_size``: JPEGs may be decoded at a reduced DCT scale
        whose shorter side is still at least this (the caller resizes by the JSON's size). Nothing is kept in
        memory. Raises ImageDecodeError (the loader's skip) for a file that does not decode or whose size fits
        neither frame."""
        im = self.images[index]
        img = decode_image(im.path, in_chans=self.in_chans, max_pixels=self.max_pixels, draft_size=draft_size)
        w, h = img.size
        if (w, h) != (im.width, im.height) and (h, w) == (im.width, im.height):
            img = decode_image(im.path, in_chans=self.in_chans, max_pixels=self.max_pixels, draft_size=draft_size,
                               exif_upright=False)
            w, h = img.size
        k = max(1, round(im.width / w))  # a draft decode is a whole DCT factor smaller on both sides
        if (w, h) != (im.width, im.height) and (draft_size is None or abs(w - im.width / k) > 1
                                                 or abs(h - im.height / k) > 1):
            raise ImageDecodeError(str(im.path), f"is {w}x{h} px, but the JSON says {im.width}x{im.height}; fix "
                                                 "the image entry's width and height")
        return np.asarray(img)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 120 else s[:117] + "..."


def _few(ids: list, n: int = 12) -> str:
    return ", ".join(str(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


# --- letterboxing and batches -------------------------------------------------------------------------------------

def letterbox(pixels: np.ndarray, size: int, frame: tuple[int, int] | None = None) -> tuple[Tensor, float]:
    """Resize (bilinear) so the longer side is ``size`` and pad with zeros right and below to size x size.
    ``frame``: the (height, width) the scale refers to (the JSON's, when the pixels were decoded at a reduced
    scale); default the pixels' own. Returns the (C, size, size) float tensor in 0..1 and the scale (input pixels
    per original pixel)."""
    h, w = frame or pixels.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = Image.fromarray(pixels)
    if (nh, nw) != pixels.shape[:2]:
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    out = torch.zeros(arr.shape[2], size, size)
    out[:, :nh, :nw] = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    return out, scale


class Sample(NamedTuple):
    """One letterboxed image: (C, S, S) in 0..1, its boxes (B, 4 xyxy, input pixels) and labels (B,), its COCO
    id, scale (input pixels per original pixel) and unpadded (h, w) in input pixels."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    image_id: int
    scale: float
    valid_hw: tuple[float, float]


def load_sample(ds: CocoDataset, index: int, size: int, flip: bool = False) -> Sample:
    """Read and letterbox image ``index`` of ``ds`` (mirrored with its boxes when ``flip``); raises
    ImageDecodeError for an unreadable file."""
    im = ds.images[index]
    scale = size / max(im.height, im.width)
    pixels = ds.pixels(index, draft_size=max(1, round(min(im.height, im.width) * scale)))
    x, scale = letterbox(pixels, size, frame=(im.height, im.width))
    b = torch.from_numpy(im.boxes) * scale
    vh, vw = im.height * scale, im.width * scale
    if flip:
        x[:, :round(vh), :round(vw)] = x[:, :round(vh), :round(vw)].flip(-1)
        b = torch.stack([vw - b[:, 2], b[:, 1], vw - b[:, 0], b[:, 3]], dim=1)
    return Sample(x, b, torch.from_numpy(im.labels), im.id, scale, (vh, vw))


class DetectionSamples(Dataset):
    """``ds``'s images as training samples for ``resnet50.data.Loader``: letterboxed to ``size`` and mirrored with
    probability ``hflip``, drawn from torch's generator, which the loader seeds per (seed, epoch, index), so the
    flips are the same with any number of workers and after a resume."""

    def __init__(self, ds: CocoDataset, size: int, hflip: float = 0.0) -> None:
        self.ds, self.size, self.hflip = ds, size, hflip

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Sample:
        flip = bool(self.hflip) and bool(torch.rand(()) < self.hflip)
        return load_sample(self.ds, index, self.size, flip)


def training_loader(ds: CocoDataset, size: int, hflip: float, batch_size: int, world: int, workers: int,
                    seed: int):
    """The engine's loader over ``ds`` for a box task (detection, localisation): letterboxed to ``size``, mirrored
    with probability ``hflip``, ``batch_size`` images a step split over ``world`` processes, decoded in ``workers``.
    Raises UserError when the batch does not split or does not fit the images."""
    if batch_size % world:
        raise UserError(f"batch_size {batch_size} does not split over {world} processes; use a multiple")
    if len(ds) < batch_size:
        raise UserError(f"the training set ({len(ds)} images) is smaller than one batch of {batch_size}; lower "
                        "--batch-size")
    return build_loader(DetectionSamples(ds, size, hflip), batch_size // world, train=True, workers=workers,
                        pin_memory=torch.cuda.is_available(), seed=seed, drop_last=True, collate=collate_detection)


@dataclass
class Batch:
    """Images (N, C, S, S) in 0..1; ground truth padded to G >= 1 boxes per image: boxes (N, G, 4 xyxy, input
    pixels), labels (N, G), valid (N, G); per image its COCO id, scale and unpadded (h, w) in input pixels; skipped
    files."""

    images: Tensor
    boxes: Tensor
    labels: Tensor
    valid: Tensor
    image_ids: list[int]
    scales: list[float]
    valid_hw: list[tuple[float, float]]
    skipped: list[Skipped]


def collate_detection(items: list[Sample | Skipped], in_chans: int | None = None, size: int | None = None) -> Batch:
    """Stack samples into a :class:`Batch`, ground truth padded to the batch's most boxes (at least one slot, so
    a batch of negatives, images without boxes, trains every anchor as background); ``Skipped`` records carried."""
    good = [x for x in items if not isinstance(x, Skipped)]
    skipped = [x for x in items if isinstance(x, Skipped)]
    g = max([1] + [len(x.boxes) for x in good])
    n = len(good)
    pb, pl, pv = torch.zeros(n, g, 4), torch.zeros(n, g, dtype=torch.int64), torch.zeros(n, g, dtype=torch.bool)
    for k, x in enumerate(good):
        m = len(x.boxes)
        pb[k, :m], pl[k, :m], pv[k, :m] = x.boxes, x.labels, True
    images = torch.stack([x.image for x in good]) if good else torch.zeros(0, in_chans or 1, size or 1, size or 1)
    return Batch(images, pb, pl, pv, [x.image_id for x in good], [x.scale for x in good],
                 [x.valid_hw for x in good], skipped)


def make_batch(ds: CocoDataset, indices: list[int], size: int, flips: list[bool] | None = None) -> Batch:
    """Read, letterbox and (where ``flips[i]``) mirror the images at ``indices``; undecodable files are skipped."""
    items: list[Sample | Skipped] = []
    for j, i in enumerate(indices):
        try:
            items.append(load_sample(ds, i, size, bool(flips is not None and flips[j])))
        except ImageDecodeError as e:
            items.append(Skipped(str(ds.images[i].path), e.reason))
    return collate_detection(items, ds.in_chans, size)


# --- evaluation ---------------------------------------------------------------------------------------------------

def detections_to_coco(ds: CocoDataset, image_ids: list[int], detections: list[dict[str, Tensor]],
                       scales: list[float]) -> list[dict]:
    """Model detections (boxes in input pixels, class indices) -> COCO results (original pixels, category ids)."""
    out = []
    for image_id, det, scale in zip(image_ids, detections, scales):
        boxes = det["boxes"].float().cpu() / scale
        for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            out.append({"image_id": image_id, "category_id": ds.category_ids[lab],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    return out


def coco_evaluate(ground_truth: dict, results: list[dict], classes: list[str] | None = None,
                  use_cats: bool = True) -> dict:
    """pycocotools' bbox evaluation of ``results`` (COCO result dicts) against ``ground_truth`` (a COCO dict).
    Returns map (AP@[.5:.95], area all, 100 detections), map50, map75, the small/medium/large APs, ar100 and
    per_class (AP@[.5:.95] by category name; None for a category without ground truth), and the counts.
    ``use_cats=False`` is pycocotools' class-agnostic evaluation (``params.useCats = 0``): a detection matches any
    ground-truth box whatever the two labels, so it measures finding and placing the objects, not naming them (two
    detections of one object under two labels: one true and one false positive); per_class is then empty."""
    COCO, COCOeval = require_pycocotools()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(ground_truth))
        gt.createIndex()
        cats = [c["id"] for c in ground_truth["categories"]]
        names = classes or [c["name"] for c in ground_truth["categories"]]
        keys = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "ar100")
        if not any(not a.get("iscrowd") for a in ground_truth["annotations"]):
            # no ground-truth box: precision and recall are undefined (pycocotools reports -1), not 0
            return {**dict.fromkeys(keys), "per_class": dict.fromkeys(names) if use_cats else {},
                    "images": len(ground_truth["images"]), "detections": len(results),
                    "undefined": "no ground-truth boxes: AP is undefined (pycocotools' -1)"}
        if not results:  # pycocotools cannot load an empty result list: nothing detected is AP 0 everywhere
            return {**dict.fromkeys(keys, 0.0), "per_class": {n: 0.0 for n in names} if use_cats else {},
                    "images": len(ground_truth["images"]), "detections": 0}
        dt = gt.loadRes([dict(r) for r in results])  # loadRes adds area, id, ... to the dicts it is given
        ev = COCOeval(gt, dt, "bbox")
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); -1 = no ground truth
    precision = ev.eval["precision"]
    per_class = {}
    for k, (cid, name) in enumerate(zip(cats, names) if use_cats else ()):
        p = precision[:, :, ev.params.catIds.index(cid), 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    return {"map": max(stats[0], 0.0), "map50": max(stats[1], 0.0), "map75": max(stats[2], 0.0),
            "map_small": stats[3], "map_medium": stats[4], "map_large": stats[5], "ar100": stats[8],
            "per_class": per_class, "images": len(ground_truth["images"]), "detections": len(results)}
