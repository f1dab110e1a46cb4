"""Tiny datasets the tests make for themselves."""

import gzip
import struct
from pathlib import Path

import numpy as np


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
