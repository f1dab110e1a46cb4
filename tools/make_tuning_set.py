"""A larger tuning split for the demo recipe: Fashion-MNIST training images the embedded subset does not hold.

    apt-get install dataset-fashion-mnist       # the official files, in /usr/share/datasets/fashion-mnist
    python tools/make_tuning_set.py --out /tmp/fashion-tune

The embedded validation split has 2,000 images: one accuracy on it moves by about +-0.7 points (the binomial
standard error at 90 %), as large as most recipe changes. This script writes a folder that ``--data`` reads as the
demo's data with a 10,000-image validation split (standard error about 0.3 points): ``train-*`` is the embedded
training split, unchanged, and ``val-*`` the next ``--per-class`` images of each class in the embedded subset's own
order (``tools/make_embedded.py``: per class, the training images sorted by ``hash64(seed, index)``; the first 200 are
the embedded validation split, the next 1,200 its training split). So the tuning images are disjoint from both
embedded splits, and the t10k test split is never read. The folder's name should contain "fashion", so that the
class names are Fashion-MNIST's.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from resnet50.data.formats import read_idx
from resnet50.data.seeding import hash64

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_embedded import OUT as EMBEDDED
from make_embedded import SOURCE, idx_bytes, select

TRAIN_PER_CLASS, VAL_PER_CLASS = 1200, 200  # the embedded subset's sizes (its README)


def tuning_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices into the 60,000 training images: per class, the ``per_class`` after the embedded subset's 1,400."""
    keys = hash64(seed, np.arange(len(labels)))
    start = TRAIN_PER_CLASS + VAL_PER_CLASS
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ordered = members[np.argsort(keys[members], kind="stable")]
        if len(ordered) < start + per_class:
            raise SystemExit(f"class {c} has {len(ordered)} images, fewer than {start + per_class}")
        picked.append(ordered[start:start + per_class])
    return np.sort(np.concatenate(picked))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with train-*-ubyte.gz (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (a name containing 'fashion')")
    parser.add_argument("--per-class", type=int, default=1000, help="tuning images per class (default %(default)s)")
    args = parser.parse_args(argv)
    images = read_idx(args.source / "train-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    if images.shape != (60000, 28, 28):
        raise SystemExit(f"{args.source} does not hold Fashion-MNIST's training split: {images.shape}")
    idx = tuning_indices(labels, args.per_class)
    train, val = select(labels, TRAIN_PER_CLASS, VAL_PER_CLASS, 0)  # the embedded subset's own indices
    if np.intersect1d(idx, np.concatenate([train, val])).size:
        raise SystemExit("the tuning images overlap the embedded subset")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (args.out / name).write_bytes((EMBEDDED / name).read_bytes())
    (args.out / "val-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[idx]), mtime=0))
    (args.out / "val-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[idx].astype(np.uint8)),
                                                                      mtime=0))
    print(f"{args.out}: train = the embedded 12,000; val = {len(idx):,} tuning images "
          f"({np.bincount(labels[idx], minlength=10).tolist()} per class)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
