"""Scenes: Fashion-MNIST items pasted on a blank canvas, with boxes, for localisation and detection.

The rule (evaluation sets made elsewhere by this rule must equal ours, so it is spelled out to the RNG call):

- Random numbers: one ``numpy.random.Generator(numpy.random.PCG64(seed))`` per ``write_scenes`` call (the same
  stream as ``numpy.random.default_rng(seed)``), consumed by the scenes in order, scene 0 first.
- A scene is an S x S (default 128) one-channel uint8 canvas of zeros. A "single" scene holds one item and draws
  nothing for its count; a "multi" scene first draws its item count ``n = rng.integers(1, 5)`` (1 to 4).
- Each item then draws, in this order:
    1. ``i = rng.integers(0, N)``: a uniform index into the split's N images (the embedded ``train`` split for
       training scenes, ``val`` for validation scenes, in the order ``embedded_dataset(split).images`` holds them);
    2. ``s = rng.uniform(1.0, 3.0)``: the scale; the item's side is ``side = round(28 * s)`` px (Python's
       ``round``), 28 to 84;
    3. ``x = rng.integers(0, S - side + 1)``, then ``y = rng.integers(0, S - side + 1)``: the top-left corner, so
       the resized item lies fully inside the canvas.
  The item is the 28 x 28 uint8 image resized by Pillow, ``Image.fromarray(img).resize((side, side),
  Image.Resampling.BILINEAR)``; its box is the tight box of its own resized pixels whose value is >= 26 (10 % of
  255), as COCO ``[x, y, w, h]`` in integer pixels (the box covers columns ``x .. x + w - 1``). An item with no
  such pixel is drawn again (this never happens on the embedded data: every image there reaches 254).
- In a "multi" scene an item whose box has IoU > 0.3 with the box of an item already placed is discarded and the
  item is drawn again from step 1 (index, scale and position: redrawing the position alone could loop for ever
  beside a large item); after 1,000 discarded draws for one item the rule gives up with an error (never seen).
- Cluttered scenes (``clutter=True``) draw their background first, before the item count: ``grid =
  rng.integers(0, 97, (8, 8))`` (integers uniform in [0, 96]) resized to S x S by ``Image.fromarray(grid.astype(
  uint8)).resize((S, S), Image.Resampling.BILINEAR)``, plus ``noise = rng.integers(0, 25, (S, S))`` (uniform in
  [0, 24]), the sum clipped to [0, 255] as uint8; the items are then drawn and placed on it by the same rule.
  Plain scenes (``clutter=False``) keep a canvas of zeros and draw nothing for it.
- Accepted items are composited onto the canvas in order with ``numpy.maximum``. A box is its item's own, so it
  may cover pixels of other items; boxes are listed in the order the items were placed.

Made with numpy 2.4 and Pillow 13. NumPy does not promise a Generator's stream across versions (NEP 19) and
Pillow's resampling has changed before, so a set made elsewhere is best compared by its ``instances.json``
(``tests/test_scenes.py`` rebuilds scenes from a second implementation of the rule written from this text).

``write_scenes`` writes ``images/000001.png`` ... (8-bit gray PNG) and ``instances.json``, a COCO instances file:
``images`` (id from 1, file_name ``images/000001.png`` relative to the JSON, width, height), ``annotations`` (id from
1, image_id, category_id, bbox, area = w * h of the box, iscrowd 0) and ``categories``: id 1 .. 10 are
Fashion-MNIST's labels 0 .. 9 in its own order (``category_id = label + 1``, as COCO keeps 0 free), named as
``FASHION_MNIST_CLASSES``. Single scenes are also the classification data: ``read_scenes`` gives the arrays and,
for each scene, its labels, so a training script reads the JSON directly and needs no class folders.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from .data import FASHION_MNIST_CLASSES, IdxDataset, embedded_dataset
from .errors import UserError
from .files import atomic_path

Kind = Literal["single", "multi"]
KINDS = ("single", "multi")
ITEM_SIZE = 28  # Fashion-MNIST's side
SCALE_RANGE = (1.0, 3.0)  # items are 28 to 84 px
MIN_CANVAS = round(ITEM_SIZE * SCALE_RANGE[1])  # the largest item must fit
BOX_THRESHOLD = 26  # 10 % of 255: the pixels a box must hold
MAX_ITEMS = 4  # multi scenes hold 1 to 4 items
MAX_IOU = 0.3  # between any two boxes of a multi scene
MAX_REDRAWS = 1000

Box = list  # [x, y, w, h], ints, pixels


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two COCO boxes ``[x, y, w, h]`` (areas as w * h, as pycocotools counts them);
    0 when they do not overlap or a box is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _draw_item(rng: np.random.Generator, images: np.ndarray, size: int) -> tuple[int, np.ndarray, int, int, Box]:
    """One item by the rule's steps 1-3: (index, resized pixels, x, y, box on the canvas). Redraws a blank item."""
    for _ in range(MAX_REDRAWS):
        i = int(rng.integers(0, len(images)))
        side = round(ITEM_SIZE * float(rng.uniform(*SCALE_RANGE)))
        x = int(rng.integers(0, size - side + 1))
        y = int(rng.integers(0, size - side + 1))
        pixels = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.Resampling.BILINEAR))
        ys, xs = np.nonzero(pixels >= BOX_THRESHOLD)
        if len(xs):
            box = [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1]
            return i, pixels, x, y, box
    raise UserError(f"{MAX_REDRAWS} items in a row had no pixel >= {BOX_THRESHOLD}; the images are blank")


CLUTTER_GRID = 8  # cluttered backgrounds: an 8 x 8 grid of levels ...
CLUTTER_LEVEL = 96  # ... uniform in [0, 96], resized bilinearly ...
CLUTTER_NOISE = 24  # ... plus per-pixel noise uniform in [0, 24]


def clutter_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background by the module's rule: uint8 (size, size)."""
    grid = rng.integers(0, CLUTTER_LEVEL + 1, (CLUTTER_GRID, CLUTTER_GRID))
    smooth = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR))
    noise = rng.integers(0, CLUTTER_NOISE + 1, (size, size))
    return np.clip(smooth.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: Sequence[int], kind: Kind = "single",
               size: int = 128, clutter: bool = False) -> tuple[np.ndarray, list[tuple[int, Box]]]:
    """One scene by the module's rule: ``(canvas, items)``, the canvas uint8 (size, size) and, per item in the order
    placed, ``(label, [x, y, w, h])`` with ``label = labels[i]`` of the drawn image (0-based).

    ``images``: uint8 (N, 28, 28); ``rng`` is advanced by exactly the draws the rule lists.
    Errors: ``UserError`` for another image shape, an unknown kind or a canvas below 84 px."""
    if images.ndim != 3 or images.shape[1:] != (ITEM_SIZE, ITEM_SIZE) or images.dtype != np.uint8 or not len(images):
        raise UserError(f"scene items must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if kind not in KINDS:
        raise UserError(f"unknown scene kind {kind!r}; use 'single' or 'multi'")
    if size < MIN_CANVAS:
        raise UserError(f"scene size {size} px is below {MIN_CANVAS} px, the largest item (28 x 3); use a larger size")
    canvas = clutter_background(rng, size) if clutter else np.zeros((size, size), np.uint8)
    count = 1 if kind == "single" else int(rng.integers(1, MAX_ITEMS + 1))
    items: list[tuple[int, Box]] = []
    for _ in range(count):
        for _ in range(MAX_REDRAWS):
            i, pixels, x, y, box = _draw_item(rng, images, size)
            if all(iou(box, other) <= MAX_IOU for _, other in items):
                break
        else:
            raise UserError(f"could not place an item with IoU <= {MAX_IOU} in {MAX_REDRAWS} draws")
        side = pixels.shape[0]
        np.maximum(canvas[y:y + side, x:x + side], pixels, out=canvas[y:y + side, x:x + side])
        items.append((int(labels[i]), box))
    return canvas, items


def generate_scenes(split: str = "train", kind: Kind = "single", count: int = 1000, size: int = 128,
                    seed: int = 0, clutter: bool = False, items_from: str | os.PathLike | None = None,
                    ) -> tuple[np.ndarray, list[list[tuple[int, Box]]]]:
    """``count`` scenes from the embedded ``split`` in memory: uint8 (count, size, size) and each scene's items.
    The same scenes ``write_scenes`` writes for these arguments. ``items_from``: an IDX folder (Fashion-MNIST's
    official files, say) whose ``split`` gives the items instead of the embedded subset ("test": its t10k files,
    items no model of the toolkit trained on, for a hidden set made by the same rule)."""
    if count < 1:
        raise UserError(f"count must be >= 1, got {count}")
    ds = IdxDataset(items_from, split) if items_from else embedded_dataset(split)
    rng = np.random.Generator(np.random.PCG64(seed))
    canvases, items = np.zeros((count, size, size), np.uint8), []
    for k in range(count):
        canvases[k], scene_items = make_scene(rng, ds.images, ds.targets, kind, size, clutter)
        items.append(scene_items)
    return canvases, items


def _source(split: str, items_from) -> str:
    return f"Fashion-MNIST {split} split of {items_from}" if items_from else f"embedded Fashion-MNIST {split} split"


def write_scenes(out_dir: str | os.PathLike, split: str = "train", kind: Kind = "single", count: int = 1000,
                 size: int = 128, seed: int = 0, clutter: bool = False,
                 items_from: str | os.PathLike | None = None) -> Path:
    """Write ``count`` scenes of the embedded ``split`` (or of ``items_from``'s, :func:`generate_scenes`) as PNGs
    under ``out_dir/images/`` and a COCO instances file ``out_dir/instances.json`` (written last: its presence means
    the set is whole); returns the JSON's path. Every file is written atomically. Errors: ``UserError`` for a bad
    argument or an unwritable folder."""
    canvases, items = generate_scenes(split, kind, count, size, seed, clutter, items_from)
    source = _source(split, items_from)
    out = Path(out_dir)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out / 'images'}: {e.strerror or e}") from e
    coco_images, annotations = [], []
    for k, (canvas, scene_items) in enumerate(zip(canvases, items)):
        name = f"images/{k + 1:06d}.png"
        with atomic_path(out / name) as tmp:
            Image.fromarray(canvas, "L").save(tmp, format="PNG")
        coco_images.append({"id": k + 1, "file_name": name, "width": size, "height": size})
        for label, box in scene_items:
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": label + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = {
        "info": {"description": f"resnet50 scenes: {kind}{', cluttered' if clutter else ''}, {source}",
                 "rule": "resnet50.scenes", "split": split, "kind": kind, "count": count, "size": size, "seed": seed,
                 "clutter": clutter, "items_from": str(items_from) if items_from else None},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": name, "supercategory": "fashion"}
                       for c, name in enumerate(FASHION_MNIST_CLASSES)],
    }
    path = out / "instances.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(coco) + "\n")
    return path


CLUTTER_SEED_OFFSET = 7  # the cluttered half of a mixed set draws from seed + 7 (the plain half from seed)


def write_mixed_scenes(root: str | os.PathLike, split: str = "train", kind: Kind = "single", count: int = 1000,
                       seed: int = 0, size: int = 128, items_from: str | os.PathLike | None = None) -> Path:
    """``count`` plain scenes under ``root/plain/`` and ``count`` cluttered ones under ``root/clutter/`` (each a
    COCO folder of :func:`write_scenes`, the cluttered with seed + 7), and ``root/instances.json`` listing both
    (image ids of the cluttered half follow the plain's; file names ``plain/images/...``, ``clutter/images/...``):
    what the localisation and detection demos train and validate on, and score per kind. Returns ``root``."""
    root = Path(root)
    parts = []
    for name, clutter in (("plain", False), ("clutter", True)):
        write_scenes(root / name, split=split, kind=kind, count=count, size=size,
                     seed=seed + (CLUTTER_SEED_OFFSET if clutter else 0), clutter=clutter, items_from=items_from)
        parts.append((name, json.loads((root / name / "instances.json").read_text())))
    images, anns = [], []
    for name, doc in parts:
        offset = len(images)
        images += [dict(im, id=im["id"] + offset, file_name=f"{name}/{im['file_name']}") for im in doc["images"]]
        anns += [dict(a, id=len(anns) + k + 1, image_id=a["image_id"] + offset) for k, a in enumerate(doc["annotations"])]
    doc = dict(parts[0][1], images=images, annotations=anns)
    source = _source(split, items_from)
    doc["info"] = dict(doc["info"], description=f"resnet50 scenes: {kind}, half plain, half cluttered, {source}",
                       clutter="half")
    with atomic_path(root / "instances.json") as tmp:
        tmp.write_text(json.dumps(doc))
    return root


@dataclass
class SceneSet:
    """Scenes read back: ``images`` uint8 (N, S, S); ``labels[k]`` (0-based class indices) and ``boxes[k]``
    ([x, y, w, h] each) of scene k, in the JSON's order; ``classes`` the category names by index."""

    images: np.ndarray
    labels: list[list[int]]
    boxes: list[list[Box]]
    classes: list[str]
    image_ids: list[int]


def read_scenes(root: str | os.PathLike) -> SceneSet:
    """Read ``root/instances.json`` (or a JSON path) and its PNGs, by the layout ``write_scenes`` writes; category
    ids become indices in the order of the JSON's ``categories``. Errors: ``UserError`` naming the missing or bad
    file."""
    path = Path(root)
    if path.suffix != ".json":
        path = path / "instances.json"
    try:
        coco = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}; write the scenes first (write_scenes)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON: {e}") from None
    try:
        cat_index = {c["id"]: k for k, c in enumerate(coco["categories"])}
        classes = [c["name"] for c in coco["categories"]]
        order = {im["id"]: k for k, im in enumerate(coco["images"])}
        labels: list[list[int]] = [[] for _ in coco["images"]]
        boxes: list[list[Box]] = [[] for _ in coco["images"]]
        for a in coco["annotations"]:
            labels[order[a["image_id"]]].append(cat_index[a["category_id"]])
            boxes[order[a["image_id"]]].append([int(v) for v in a["bbox"]])
        arrays = []
        for im in coco["images"]:
            with Image.open(path.parent / im["file_name"]) as img:
                arrays.append(np.asarray(img.convert("L")))
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a COCO instances file (missing {e})") from None
    except OSError as e:
        raise UserError(f"cannot read a scene image listed in {path}: {e}") from None
    return SceneSet(np.stack(arrays), labels, boxes, classes, [im["id"] for im in coco["images"]])
