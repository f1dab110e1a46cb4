"""Tiny datasets, configs and images the tests make for themselves, shared so test modules never import each other."""

import gzip
import io
import json
import os
import re
import signal
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from resnet50.recipes import resolve

# lr is per 256 images and the demo recipe is AdamW: 0.064 is 0.004 at batch 16 (a rate of 0.2 made the runs chaotic,
# so two runs that differ only in BN batch statistics drifted apart by 9 % in loss)
# crop_pct 0: the 28 px images centred on a 32 px canvas (the demo upsamples them to 48 px)
TINY = dict(arch="resnet20_cifar", image_size=32, crop_pct=0.0, batch_size=16, workers=0, epochs=2, lr=0.064,
            warmup_epochs=0, schedule="cosine", channels_last=False)


def tiny_cfg(data, out, name, **kw):
    """The demo recipe with :data:`TINY` on ``data``, writing the run ``name`` under ``out``."""
    return resolve("demo", {**TINY, "data": str(data), "out": str(out), "name": name, **kw})


def encoded(fmt="PNG", size=(48, 40), seed=0, mode="RGB"):
    """An encoded image of random pixels (``size`` is width x height), as a client would send it."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def metric(text, name):
    """The value of the Prometheus sample ``name`` in ``text`` (0 when absent)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(root: Path, n_train: int = 96, n_test: int = 40, classes: int = 4, seed: int = 0) -> Path:
    """28x28 gray images of four textures (horizontal stripes, vertical stripes, checks, diagonal stripes) at a
    random phase, plus noise: learnable in a few steps by a translation-invariant net, not from single pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:28, 0:28]
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = rng.integers(0, 100, (n, 28, 28))
        for i, y in enumerate(labels):
            py, px = rng.integers(0, 6, 2)
            pattern = [(yy + py) // 3 % 2, (xx + px) // 3 % 2, ((yy + py) // 3 + (xx + px) // 3) % 2,
                       (yy + xx + py) // 3 % 2][int(y) % 4]
            images[i] += 120 * pattern
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories=None, make_files=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for im in images:
        if make_files:
            (root / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((im["height"], im["width"]), np.uint8)).save(root / im["file_name"])
    cats = categories if categories is not None else [{"id": 1, "name": "square"}, {"id": 2, "name": "stripes"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": cats}))
    return root


def shapes_dataset(root: Path, n: int, seed: int, size: int = 64) -> Path:
    """Gray images with 1-2 rectangles each: class "square" filled, class "stripes" striped horizontally."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        canvas = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            w, h = (int(v) for v in rng.integers(12, 28, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            cls = int(rng.integers(1, 3))
            patch = np.full((h, w), 230, np.uint8)
            if cls == 2:
                patch[::4] = 40
            canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], patch)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        Image.fromarray(canvas).save(root / "images" / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"images/{i:03d}.png", "width": size, "height": size})
    return write_coco(root, images, anns, make_files=False)


DETECT_TINY = dict(arch="resnet18", image_size=64, batch_size=8, eval_batch_size=16, epochs=2, amp="off",
            channels_last=False, lr=0.01, warmup_epochs=0, schedule="cosine", grad_clip=10.0, threads=2)


def kill_leftovers(tag: str) -> None:
    """SIGKILL any process of this test still running (its command line names the test's own folder ``tag``):
    torchrun's workers run in sessions of their own, so a failed job could otherwise leave them behind."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and tag.encode() in (d / "cmdline").read_bytes() and int(d.name) != os.getpid():
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
