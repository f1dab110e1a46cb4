"""Makers of tiny datasets on disk, for the data package's tests (each test writes its own into tmp_path)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Image.Image:
    """An image whose every pixel is ``value`` (each channel), so it survives lossy encoding to within a few."""
    return Image.new(mode, size, (value,) * len(mode) if mode != "L" else value)


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    return (bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(dtype).tobytes())


@pytest.fixture
def make_folder():
    """make_folder(root, {"cat": ["a.jpg", "b.png"], ...}) writes solid images; pixel value 10 * (file number)."""

    def make(root: Path, layout: dict[str, list[str]], size: tuple[int, int] = (12, 10)) -> list[Path]:
        paths = []
        for cls, names in layout.items():
            (root / cls).mkdir(parents=True, exist_ok=True)
            for n, name in enumerate(names):
                fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP",
                       "tif": "TIFF"}[name.rsplit(".", 1)[1].lower()]
                path = root / cls / name
                path.write_bytes(encode(solid(10 * (n + 1), size), fmt))
                paths.append(path)
        return paths

    return make


@pytest.fixture
def idx_bytes():
    """idx_bytes(array, type_code=0x08) -> the bytes of an IDX file."""
    return _idx_bytes


@pytest.fixture
def make_idx():
    """make_idx(root, prefix, images, labels, gz) writes <prefix>-images-idx3-ubyte[.gz] and the labels file."""

    def make(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx_bytes(np.asarray(array, dtype=np.uint8))
            name = f"{prefix}-{kind}-ubyte" + (".gz" if gz else "")
            (root / name).write_bytes(gzip.compress(data) if gz else data)

    return make


def cifar_arrays(n: int, seed: int, classes: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(i % classes) for i in range(n)]


@pytest.fixture
def make_cifar():
    """make_cifar(root, 10 | 100, per_batch) writes the python pickles (protocol 2, bytes keys, as the originals)."""

    def make(root: Path, kind: int = 10, per_batch: int = 20) -> dict[str, tuple[np.ndarray, list[int]]]:
        root.mkdir(parents=True, exist_ok=True)
        written = {}

        def dump(name: str, obj: dict) -> None:
            (root / name).write_bytes(pickle.dumps(obj, protocol=2))

        if kind == 10:
            for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
                data, labels = cifar_arrays(per_batch, i, 10)
                dump(name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                            b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)]})
                written[name] = (data, labels)
            dump("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
        else:
            for i, name in enumerate(["train", "test"]):
                data, fine = cifar_arrays(per_batch, 10 + i, 100)
                dump(name, {b"data": data, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                            b"filenames": [b"x.png"] * per_batch})
                written[name] = (data, fine)
            dump("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
        return written

    return make


@pytest.fixture
def make_shards():
    """make_shards(root, n_shards, per_shard) writes shard-000000.tar...; sample k (global) is a gray PNG whose
    pixels all equal k and whose label is k % 3. Returns the brace pattern."""

    def make(root: Path, n_shards: int = 4, per_shard: int = 5, fmt: str = "PNG") -> str:
        root.mkdir(parents=True, exist_ok=True)
        k = 0
        for s in range(n_shards):
            with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
                for _ in range(per_shard):
                    ext = "png" if fmt == "PNG" else "jpg"
                    add_member(tar, f"s{k:05d}.{ext}", encode(solid(k, (8, 8), "L"), fmt))
                    add_member(tar, f"s{k:05d}.cls", str(k % 3).encode())
                    k += 1
        return str(root / f"shard-{{000000..{n_shards - 1:06d}}}.tar")

    return make


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def add_tar_member():
    """add_tar_member(tar, name, data) adds one regular file to an open tar."""
    return add_member
