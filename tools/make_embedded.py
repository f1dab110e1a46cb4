"""Rebuild the embedded default dataset: a stratified subset of Fashion-MNIST's training split.

    apt-get install dataset-fashion-mnist       # the official files, in /usr/share/datasets/fashion-mnist
    python tools/make_embedded.py               # writes src/resnet50/data/embedded/

Per class, the 6,000 training images are ordered by an integer hash of (seed, index) (resnet50.data.seeding, the
same on every machine); the first --val-per-class go to val, the next --train-per-class to train, each split kept in
the source's order. The t10k test files are never read. Output: gzipped IDX files (the format of the source) plus
README.md (how it was made, counts, checksums) and LICENSE (MIT, Zalando SE).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

from resnet50.data.formats import FASHION_MNIST_CLASSES, read_idx
from resnet50.data.seeding import hash64

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "src" / "resnet50" / "data" / "embedded"

LICENSE = """The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 00 00 08 ndim, big-endian uint32 sizes, the data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def select(labels: np.ndarray, train_per_class: int, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    keys = hash64(seed, np.arange(len(labels)))
    train, val = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < train_per_class + val_per_class:
            raise SystemExit(f"class {c} has {len(members)} images, fewer than {train_per_class + val_per_class}")
        ordered = members[np.argsort(keys[members], kind="stable")]
        val.append(ordered[:val_per_class])
        train.append(ordered[val_per_class:val_per_class + train_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(source: Path, out: Path, train_per_class: int, val_per_class: int, seed: int) -> dict[str, bytes]:
    """Write the subset to ``out``; return the uncompressed IDX payloads by file name (for checks)."""
    sources = {name: source / f"train-{name}-idx{3 if name == 'images' else 1}-ubyte.gz" for name in ("images", "labels")}
    images, labels = read_idx(sources["images"]), read_idx(sources["labels"])
    if images.shape != (60000, 28, 28) or labels.shape != (60000,):
        raise SystemExit(f"{source} does not hold Fashion-MNIST's training split: {images.shape} {labels.shape}")
    train, val = select(labels, train_per_class, val_per_class, seed)
    out.mkdir(parents=True, exist_ok=True)
    payloads = {}
    for split, idx in (("train", train), ("val", val)):
        payloads[f"{split}-images-idx3-ubyte.gz"] = idx_bytes(images[idx])
        payloads[f"{split}-labels-idx1-ubyte.gz"] = idx_bytes(labels[idx].astype(np.uint8))
    rows = []
    for name, payload in payloads.items():
        # mtime=0 and no file name in the header, so the bytes depend only on the data (and zlib's version).
        packed = gzip.compress(payload, compresslevel=9, mtime=0)
        (out / name).write_bytes(packed)
        rows.append(f"| {name} | {len(packed):,} | {len(payload):,} | `{sha256(payload)[:16]}` |")
    counts = {split: np.bincount(labels[idx], minlength=10).tolist() for split, idx in (("train", train), ("val", val))}
    source_sums = "\n".join(f"- `{p.name}`: sha256 `{sha256(p.read_bytes())}`" for p in sources.values())
    (out / "LICENSE").write_text(LICENSE)
    (out / "README.md").write_text(f"""# Embedded default dataset: a Fashion-MNIST training subset

`build_dataset("embedded", split)` reads these files: {len(train):,} training and {len(val):,} validation images,
28 x 28 gray (uint8), 10 classes ({", ".join(FASHION_MNIST_CLASSES)}), stratified:
{train_per_class} training and {val_per_class} validation images per class (train {counts["train"]},
val {counts["val"]}).

Source: Fashion-MNIST by Zalando Research (Xiao, Rasul and Vollgraf, 2017, arXiv:1708.07747),
https://github.com/zalandoresearch/fashion-mnist, MIT licence (LICENSE beside this file), as packaged by Debian
(`dataset-fashion-mnist`). Only the 60,000-image training split was read:

{source_sums}

The 10,000-image t10k test split is not in the package, so it stays untouched for final figures: pass its
directory (`/usr/share/datasets/fashion-mnist`) with `split="test"`.

How it was made (`python tools/make_embedded.py --seed {seed}`): per class, the training images are ordered by
`hash64(seed, index)` (splitmix64, `resnet50.data.seeding`); the first {val_per_class} go to val and the next
{train_per_class} to train; each split keeps the source's order. Files are IDX (as the source) gzipped at level 9
with no timestamp.

| file | bytes | uncompressed | sha256 of uncompressed (first 16) |
| --- | ---: | ---: | --- |
{chr(10).join(rows)}
""")
    return payloads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with train-*-ubyte.gz (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: the package's embedded/)")
    parser.add_argument("--train-per-class", type=int, default=1200)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.source, args.out, args.train_per_class, args.val_per_class, args.seed)
    for p in sorted(args.out.iterdir()):
        print(f"{p.stat().st_size:>10,}  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
