"""Formats on disk: folders, ImageNet-style roots, IDX, CIFAR pickles; detection, splits and clear errors."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from resnet50.data import (
    FASHION_MNIST_CLASSES,
    CifarDataset,
    IdxDataset,
    ImageFolder,
    build_dataset,
    detect_format,
    holdout_split,
    load_pickle,
    read_idx,
)
from resnet50.data.stats import (
    CIFAR10_MEAN,
    FASHION_MNIST_MEAN,
    IMAGENET_MEAN,
    MNIST_MEAN,
)
from resnet50.errors import UserError

DIGITS = [str(d) for d in range(10)]


# ---------------------------------------------------------------------------------------------------- folders


def test_image_folder_reads_jpeg_png_webp_with_sorted_classes(tmp_path, make_folder):
    make_folder(tmp_path, {"dog": ["a.jpg", "b.png"], "cat": ["c.webp", "d.JPEG"], "ant": ["e.png"]})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = build_dataset(tmp_path, "test")
    assert detect_format(tmp_path) == "imagefolder"
    assert isinstance(ds, ImageFolder)
    assert ds.classes == ["ant", "cat", "dog"]
    assert [os.path.basename(p) for p, _ in ds.samples] == ["e.png", "c.webp", "d.JPEG", "a.jpg", "b.png"]
    assert ds.targets == [0, 1, 1, 2, 2]
    img, label = ds[3]  # dog/a.jpg, the first file: pixel value 10
    assert label == 2 and img.mode == "RGB" and img.size == (12, 10)
    assert abs(int(np.asarray(img)[5, 5, 0]) - 10) <= 3
    assert ds.mean == IMAGENET_MEAN and ds.in_chans == 3
    gray = build_dataset(tmp_path, "test", in_chans=1)
    assert gray[0][0].mode == "L" and len(gray.mean) == 1


def test_image_folder_holds_out_a_stratified_val_split(tmp_path, make_folder):
    make_folder(tmp_path, {"a": [f"{i}.png" for i in range(20)], "b": [f"{i}.png" for i in range(10)]})
    train, val, test = (build_dataset(tmp_path, s, val_fraction=0.2, seed=3) for s in ("train", "val", "test"))
    assert len(test) == 30 and len(val) == 6 and len(train) == 24
    assert sorted(val.targets) == [0, 0, 0, 0, 1, 1]
    assert set(p for p, _ in train.samples).isdisjoint(p for p, _ in val.samples)
    assert set(p for p, _ in train.samples) | set(p for p, _ in val.samples) == set(p for p, _ in test.samples)
    again = build_dataset(tmp_path, "val", val_fraction=0.2, seed=3)
    assert again.samples == val.samples


def test_imagenet_style_root_selects_the_split_folder_with_train_labels(tmp_path, make_folder):
    make_folder(tmp_path / "train", {"n01": ["a.jpg", "b.jpg"], "n02": ["c.jpg"], "n03": ["d.png"]})
    make_folder(tmp_path / "val", {"n01": ["e.jpg"], "n03": ["f.png"]})  # no n02 in val
    assert detect_format(tmp_path) == "imagenet"
    train, val = build_dataset(tmp_path, "train"), build_dataset(tmp_path, "val")
    assert len(train) == 4 and len(val) == 2
    assert val.classes == train.classes == ["n01", "n02", "n03"]
    assert val.targets == [0, 2]  # n03 keeps label 2 although val has only two folders
    with pytest.raises(UserError, match="no test/ folder.*split='val'"):
        build_dataset(tmp_path, "test")


def test_a_class_list_fixes_folder_labels(tmp_path, make_folder, make_cifar):
    make_folder(tmp_path / "f", {"a": ["1.png"], "b": ["2.png"]})
    assert build_dataset(tmp_path / "f", "test", classes=["b", "a", "c"]).targets == [1, 0]
    make_cifar(tmp_path / "c", 10, per_batch=2)
    with pytest.raises(UserError, match="name their own classes"):
        build_dataset(tmp_path / "c", "test", classes=["x"])


def test_val_class_unknown_to_train_is_an_error(tmp_path, make_folder):
    make_folder(tmp_path / "train", {"a": ["1.png"]})
    make_folder(tmp_path / "val", {"a": ["1.png"], "zebra": ["2.png"]})
    with pytest.raises(UserError, match="not in the training classes: zebra"):
        build_dataset(tmp_path, "val")


def test_folder_errors_are_clear(tmp_path, make_folder):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(tmp_path / "nowhere", "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty is empty; put the dataset there"):
        build_dataset(empty, "train")
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="unknown dataset layout.*readme.txt"):
        build_dataset(empty, "train")
    flat = tmp_path / "flat"
    make_folder(tmp_path, {"flat": ["a.png"]})
    with pytest.raises(UserError, match="holds images but no class folders"):
        build_dataset(flat, "train")
    make_folder(tmp_path / "withempty", {"full": ["a.png"]})
    (tmp_path / "withempty" / "hollow").mkdir()
    with pytest.raises(UserError, match="class folder .*hollow has no images"):
        build_dataset(tmp_path / "withempty", "train")
    with pytest.raises(UserError, match="unknown split 'dev'"):
        build_dataset(tmp_path / "withempty", "dev")
    with pytest.raises(UserError, match="is a file"):
        build_dataset(flat / "a.png", "train")


# ---------------------------------------------------------------------------------------------------- IDX


def idx_data(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gzipped(tmp_path, make_idx, gz):
    root = tmp_path / "mnist"
    images, labels = idx_data(50)
    test_images, test_labels = idx_data(20, seed=1)
    make_idx(root, "train", images, labels, gz=gz)
    make_idx(root, "t10k", test_images, test_labels, gz=gz)
    assert detect_format(root) == "idx"
    test = build_dataset(root, "test")
    assert isinstance(test, IdxDataset) and len(test) == 20
    img, label = test[7]
    assert img.mode == "L" and img.size == (28, 28) and label == 7
    np.testing.assert_array_equal(np.asarray(img), test_images[7])
    assert test.classes == DIGITS and test.mean == MNIST_MEAN and test.image_size == 28
    rgb = build_dataset(root, "test", in_chans=3)
    assert rgb[7][0].mode == "RGB" and np.asarray(rgb[7][0])[3, 4].tolist() == [test_images[7, 3, 4]] * 3
    assert len(rgb.mean) == 3


def test_idx_val_is_held_out_of_train_never_test(tmp_path, make_idx):
    root = tmp_path / "mnist"
    images, labels = idx_data(100)
    images[:, 0, 0] = np.arange(100)  # a sample's index, readable back from its pixels
    make_idx(root, "train", images, labels)
    make_idx(root, "t10k", *idx_data(20, seed=1))
    train, val = build_dataset(root, "train"), build_dataset(root, "val")
    assert len(train) == 90 and len(val) == 10
    assert sorted(val.targets) == list(range(10))  # stratified: one per class
    ids = lambda ds: {int(ds.images[i, 0, 0]) for i in range(len(ds))}  # noqa: E731
    assert ids(train).isdisjoint(ids(val)) and ids(train) | ids(val) == set(range(100))
    assert ids(build_dataset(root, "val")) == ids(val)  # deterministic
    assert ids(build_dataset(root, "val", seed=1)) != ids(val)
    assert len(build_dataset(root, "val", val_fraction=0.3)) == 30
    with pytest.raises(UserError, match="holds out no images"):
        build_dataset(root, "val", val_fraction=0.0)
    assert len(build_dataset(root, "train", val_fraction=0.0)) == 100


def test_idx_class_names_by_folder_name_or_override(tmp_path, make_idx):
    make_idx(tmp_path / "Fashion-MNIST", "train", *idx_data(20))
    fashion = build_dataset(tmp_path / "Fashion-MNIST", "train")
    assert fashion.classes == list(FASHION_MNIST_CLASSES) and fashion.mean == FASHION_MNIST_MEAN
    make_idx(tmp_path / "digits", "train", *idx_data(20))
    assert build_dataset(tmp_path / "digits", "train").classes == DIGITS
    make_idx(tmp_path / "four", "train", idx_data(20)[0], np.arange(20) % 4)
    assert build_dataset(tmp_path / "four", "val").classes == ["0", "1", "2", "3"]  # from all of train, not val
    names = [f"k{i}" for i in range(10)]
    assert build_dataset(tmp_path / "digits", "train", classes=names).classes == names
    with pytest.raises(UserError, match="label 9 but only 3 class names"):
        build_dataset(tmp_path / "digits", "train", classes=["a", "b", "c"])
    with pytest.raises(UserError, match="no test files.*t10k-images-idx3-ubyte"):
        build_dataset(tmp_path / "digits", "test")


def test_read_idx_parses_header_types_and_big_endian(tmp_path, idx_bytes):
    values = np.array([[1, -2, 300], [-32768, 32767, 0]], dtype=np.int16)
    (tmp_path / "x.idx").write_bytes(idx_bytes(values, 0x0B))
    out = read_idx(tmp_path / "x.idx")
    assert out.shape == (2, 3) and out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    floats = np.array([0.5, -1.25], dtype=np.float64)
    (tmp_path / "f.idx.gz").write_bytes(gzip.compress(idx_bytes(floats, 0x0E)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx.gz"), floats)


def test_idx_corruption_is_reported(tmp_path, make_idx, idx_bytes):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "truncated": (good[:-5], "truncated: header says 3x4x4 uint8 = 48 bytes of data, the file has 43"),
        "padded": (good + b"xx", "longer than its header says"),
        "magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "type": (good[:2] + b"\x07" + good[3:], "unknown IDX data type 0x07"),
        "header": (good[:9], "truncated in its IDX header"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            read_idx(tmp_path / name)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    root = tmp_path / "mismatch"
    make_idx(root, "train", *idx_data(5))
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(UserError, match="expected 5 integer labels"):
        build_dataset(root, "train")
    (root / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="no train-labels-idx1-ubyte"):
        build_dataset(root, "train")


# ---------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_pickles(tmp_path, make_cifar, nested):
    root = tmp_path / "cifar-10-batches-py" if nested else tmp_path / "c10"
    written = make_cifar(root, 10, per_batch=20)
    where = tmp_path if nested else root
    assert detect_format(where) == "cifar10"
    test = build_dataset(where, "test")
    assert isinstance(test, CifarDataset) and len(test) == 20 and test.classes == [f"c{i}" for i in range(10)]
    data, labels = written["test_batch"]
    img, label = test[3]
    assert img.mode == "RGB" and img.size == (32, 32) and label == labels[3]
    # Row layout: 1024 red, 1024 green, 1024 blue, each 32 x 32 row-major; pixel (row 1, col 2) is offset 34.
    assert np.asarray(img)[1, 2].tolist() == [data[3, 34], data[3, 1024 + 34], data[3, 2048 + 34]]
    train, val = build_dataset(where, "train"), build_dataset(where, "val")
    assert len(train) == 90 and len(val) == 10 and sorted(val.targets) == list(range(10))
    assert test.mean == CIFAR10_MEAN
    assert build_dataset(where, "test", in_chans=1)[0][0].mode == "L"


def test_cifar100_uses_fine_labels(tmp_path, make_cifar):
    written = make_cifar(tmp_path / "cifar-100-python", 100, per_batch=1000)
    assert detect_format(tmp_path) == "cifar100"
    test = build_dataset(tmp_path, "test")
    assert len(test.classes) == 100 and test.classes[7] == "f7"
    assert test.targets == written["test"][1]
    val = build_dataset(tmp_path, "val")
    assert len(val) == 100 and sorted(val.targets) == list(range(100))  # 10 per class: 1 held out of each
    assert len(build_dataset(tmp_path, "train")) == 900


def test_malicious_pickle_is_refused_without_running_code(tmp_path, make_cifar):
    root = tmp_path / "c10"
    make_cifar(root, 10, per_batch=4)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(UserError, match="refused to load (posix|os).system"):
        build_dataset(root, "train")
    assert not marker.exists()
    with pytest.raises(UserError, match="not a plain CIFAR pickle: refused to load (__builtin__|builtins).eval"):
        (root / "evil").write_bytes(pickle.dumps(eval, protocol=2))
        load_pickle(root / "evil")


def test_cifar_damage_is_reported(tmp_path, make_cifar):
    root = tmp_path / "c10"
    make_cifar(root, 10, per_batch=4)
    (root / "data_batch_3").write_bytes((root / "data_batch_3").read_bytes()[:100])
    with pytest.raises(UserError, match="data_batch_3 is not a valid CIFAR pickle"):
        build_dataset(root, "train")
    (root / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 is missing"):
        build_dataset(root, "train")
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match=r"expected uint8 \(N, 3072\)"):
        build_dataset(root, "test")


# ---------------------------------------------------------------------------------------------------- splits


def test_holdout_split_is_deterministic_disjoint_and_stratified():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7)
    train, val = holdout_split(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [5, 3, 1]  # round(0.1 * n) per class; 0.7 rounds to 1
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    train2, val2 = holdout_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)
    assert not np.array_equal(holdout_split(labels, 0.1, seed=1)[1], val)
    with pytest.raises(UserError, match="val_fraction"):
        holdout_split(labels, 1.0)
