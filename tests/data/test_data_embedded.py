"""The embedded default: a Fashion-MNIST training subset in the package, with no test images in it."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet50.data import (
    FASHION_MNIST_CLASSES,
    build_dataset,
    build_loader,
    build_transform,
    read_idx,
)
from resnet50.data.formats import EMBEDDED_DIR
from resnet50.data.transforms import FASHION_MNIST, default_transform_config
from resnet50.errors import UserError

OFFICIAL = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
needs_official = pytest.mark.skipif(not (OFFICIAL / "t10k-images-idx3-ubyte.gz").is_file(),
                                    reason="apt-get install dataset-fashion-mnist for the official files")
SHIPPED = ["LICENSE", "README.md", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
           "val-images-idx3-ubyte.gz", "val-labels-idx1-ubyte.gz"]


def test_embedded_splits_have_the_documented_counts():
    train, val = build_dataset("embedded", "train"), build_dataset("embedded", "val")
    assert (len(train), len(val)) == (12_000, 2_000)
    assert np.bincount(train.targets).tolist() == [1200] * 10
    assert np.bincount(val.targets).tolist() == [200] * 10
    assert train.classes == list(FASHION_MNIST_CLASSES) and train.in_chans == 1 and train.image_size == 28
    img, label = val[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label < 10
    assert default_transform_config(train) == FASHION_MNIST


def test_embedded_has_no_test_split_and_says_where_to_find_it():
    with pytest.raises(UserError, match="no test split.*t10k.*/usr/share/datasets/fashion-mnist"):
        build_dataset("embedded", "test")


def test_the_package_ships_only_the_subset():
    assert sorted(p.name for p in EMBEDDED_DIR.iterdir()) == SHIPPED
    total = sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir())
    assert 5_000_000 < total < 7_000_000
    assert "MIT" in (EMBEDDED_DIR / "LICENSE").read_text()


@needs_official
def test_embedded_images_come_from_the_official_train_split_not_t10k():
    rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}  # noqa: E731
    official_train = rows(read_idx(OFFICIAL / "train-images-idx3-ubyte.gz"))
    official_test = rows(read_idx(OFFICIAL / "t10k-images-idx3-ubyte.gz"))
    train = rows(read_idx(EMBEDDED_DIR / "train-images-idx3-ubyte.gz"))
    val = rows(read_idx(EMBEDDED_DIR / "val-images-idx3-ubyte.gz"))
    assert len(train) == 12_000 and len(val) == 2_000  # all distinct
    assert train <= official_train and val <= official_train
    assert not (train | val) & official_test
    assert not train & val


@needs_official
def test_make_embedded_rebuilds_the_same_data(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    try:
        import make_embedded
    finally:
        sys.path.pop(0)
    make_embedded.build(OFFICIAL, tmp_path, 1200, 200, seed=0)
    for name in SHIPPED[2:]:
        assert gzip.decompress((tmp_path / name).read_bytes()) == gzip.decompress((EMBEDDED_DIR / name).read_bytes())
    assert (tmp_path / "README.md").read_text() == (EMBEDDED_DIR / "README.md").read_text()


def test_embedded_batches_are_32px_gray():
    val = build_dataset("embedded", "val", build_transform(FASHION_MNIST, train=False))
    images, labels, skipped = next(iter(build_loader(val, 64, train=False)))
    assert images.shape == (64, 1, 32, 32) and labels.shape == (64,) and skipped == ()
    assert abs(float(images[:, :, 2:30, 2:30].mean())) < 0.2  # normalised with the dataset's own mean / std
