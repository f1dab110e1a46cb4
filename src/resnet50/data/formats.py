"""Dataset formats on disk, and ``build_dataset``, which tells them apart.

Each dataset returns ``(image, label)``: the image decoded to a PIL image in mode RGB or L (``in_chans`` 3 or 1)
and passed through ``transform`` when one is set; the label an ``int`` indexing ``.classes``. Each also has
``mean`` / ``std`` (its training images' channel statistics for its ``in_chans``), ``in_chans``, ``image_size``
(the native side for fixed-size data, else None) and ``targets`` (every label, in order; map-style datasets).

    layout on disk                                              class             splits
    root/<class>/*.jpg|png|webp|bmp|tif                         ImageFolder       train/val: held out; test: all
    root/train/<class>/..., root/val/<class>/... [root/test/]   ImageFolder each  the folder of that name
    train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]  IdxDataset        train/val: held out; test: t10k-*
    cifar-10-batches-py/ (data_batch_1..5, test_batch, ...)     CifarDataset      train/val: held out; test: test_batch
    cifar-100-python/ (train, test, meta; fine labels)          CifarDataset      train/val: held out; test: test
    shard-{000000..000009}.tar, a glob, a folder of .tar         WebDataset        one split, used whole
    "embedded"                                                  IdxDataset        train / val (no test: see below)

"Held out": where the files have no validation split, ``val`` is a stratified ``val_fraction`` (default 10 %) of
the training files, chosen by ``seed`` with an integer hash (the same everywhere), and ``train`` is the rest; so
the test files are never used for tuning. A plain folder of classes is taken as training data for the same
reason; ``split="test"`` uses all of it.

The embedded default is 12,000 training and 2,000 validation images of Fashion-MNIST's training split, shipped in
``resnet50/data/embedded`` (see its README). Its test split is not shipped: for test figures pass the official
t10k files' directory, e.g. ``/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist).

Every user mistake found here (a missing path, an unknown layout, no images, an empty class folder, a truncated
IDX file, a pickle that holds code) raises ``UserError`` before any training starts.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from . import stats
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, Skipped, decode_image
from .discover import find_images, is_hidden
from .seeding import hash64
from .webdataset import WebDataset

SPLITS = ("train", "val", "test")
EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

Transform = Callable[..., Any]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _check_in_chans(in_chans: int | None, native: int) -> int:
    if in_chans is None:
        return native
    if in_chans not in (1, 3):
        raise UserError(f"in_chans must be 1 (gray) or 3 (RGB), not {in_chans}")
    return in_chans


def holdout_split(labels: Sequence[int] | np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of a stratified, seeded held-out split: ``round(fraction * n_c)`` of each class.

    Which samples are held out depends only on ``seed``, each sample's index and its label (through an integer
    hash), so the split is the same on every machine and library version, and disjoint by construction.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), not {fraction}")
    labels = np.asarray(labels)
    keys = hash64(seed, np.arange(len(labels)))
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(np.floor(len(members) * fraction + 0.5))
        val.append(members[np.argsort(keys[members], kind="stable")[:take]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def _select(labels: np.ndarray, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Indices of ``split`` ("train" or "val") in a source that has no validation files of its own."""
    train_idx, val_idx = holdout_split(labels, val_fraction, seed)
    if split == "val" and len(val_idx) == 0:
        raise UserError(f"val_fraction={val_fraction} holds out no images; use a fraction such as 0.1")
    return train_idx if split == "train" else val_idx


# ---------------------------------------------------------------------------------------------------- folders


class ImageFolder(Dataset):
    """A folder per class (``root/<class>/**/<image>``); classes sorted by folder name, files sorted by path.

    ``classes``: the class list to label against (for a val folder, the train folder's classes, so labels agree);
    by default the folders found. ``holdout``: None takes every image; "train" / "val" take that side of
    :func:`holdout_split`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        *,
        in_chans: int | None = None,
        classes: Sequence[str] | None = None,
        holdout: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        draft_size: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.in_chans = _check_in_chans(in_chans, 3)
        self.mean, self.std = stats.stats_for(stats.IMAGENET_MEAN, stats.IMAGENET_STD, self.in_chans)
        self.image_size = None
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        found = _class_folders(self.root)
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise UserError(f"{self.root} has class folders not in the training classes: {', '.join(unknown[:5])}; "
                            "give every split the same class folders")
        samples = []
        self.walk_skipped: list[Skipped] = []  # links skipped by the walk (discover.py), reported by the loader
        seen = ({os.path.realpath(self.root)} | {os.path.realpath(self.root / n) for n in found}, set())
        for name in found:
            files, skipped = find_images(self.root / name, seen=seen)
            self.walk_skipped += skipped
            if not files:
                raise UserError(f"class folder {self.root / name} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "add images or remove the folder")
            label = self.classes.index(name)
            samples.extend((str(f), label) for f in files)
        if holdout is not None:
            keep = _select(np.array([label for _, label in samples]), holdout, val_fraction, seed)
            samples = [samples[i] for i in keep]
        self.samples: list[tuple[str, int]] = samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = decode_image(path, self.in_chans, self.draft_size, self.max_pixels)
        return (self.transform(img) if self.transform is not None else img), label

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"


def _class_folders(root: Path) -> list[str]:
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    if not folders:
        if _image_files(root, recursive=False):
            raise UserError(f"{root} holds images but no class folders; put each class's images in a folder named "
                            "after the class (root/<class>/<image>)")
        raise UserError(f"{root} has no class folders and no images; expected root/<class>/<image>")
    return folders


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    return find_images(folder, recursive)[0]


def _is_split_root(root: Path) -> bool:
    return any((root / s).is_dir() and any(d.is_dir() for d in (root / s).iterdir()) for s in SPLITS)


def _split_folder(root: Path, split: str, transform: Transform | None, classes: Sequence[str] | None,
                  **kw: Any) -> ImageFolder:
    folder = root / split
    if not folder.is_dir():
        hint = ("ImageNet's test labels are not public, so its results are reported on split='val'"
                if split == "test" else f"add {folder} or use a split that exists")
        raise UserError(f"{root} has no {split}/ folder; {hint}")
    if classes is None:
        # Labels come from train/'s class list when there is one, so train and val agree even if val lacks a class.
        classes = _class_folders(root / "train" if (root / "train").is_dir() else folder)
    return ImageFolder(folder, transform, classes=classes, **kw)


# ---------------------------------------------------------------------------------------------------- arrays


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) for gray or (N, H, W, 3) for RGB; the IDX and CIFAR base."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        transform: Transform | None,
        in_chans: int | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        source: str,
    ) -> None:
        native = 1 if images.ndim == 3 else 3
        self.images = images
        self.targets = [int(t) for t in labels]
        self.classes = list(classes)
        self.transform = transform
        self.in_chans = _check_in_chans(in_chans, native)
        self.mean, self.std = stats.stats_for(mean, std, self.in_chans)
        self.image_size = images.shape[1]
        self.source = source
        self._mode = "L" if native == 1 else "RGB"
        if len(images) == 0:
            raise UserError(f"{source} has no images")
        if self.targets and max(self.targets) >= len(self.classes):
            raise UserError(f"{source} has label {max(self.targets)} but only {len(self.classes)} class names; "
                            "pass a classes list as long as the largest label + 1")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index], self._mode)
        if img.mode != ("L" if self.in_chans == 1 else "RGB"):
            img = img.convert("L" if self.in_chans == 1 else "RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, {len(self)} images, {len(self.classes)} classes)"


# ---------------------------------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (raw or gzipped): 2 zero bytes, a type byte, a dimension count, big-endian uint32 sizes,
    then the data. Raises ``UserError`` naming the file for a bad magic number, an unknown type, or a size that
    does not match the header (truncated or padded)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path} is a corrupt or truncated gzip file ({e}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}, expected 0000 then a "
                        "type byte and a dimension count)")
    if raw[2] not in _IDX_TYPES:
        raise UserError(f"{path} has unknown IDX data type 0x{raw[2]:02x}; known: 08 (u8) 09 0b 0c 0d 0e")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{path} is truncated in its IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(dims)  # Python integers: a byte-swapped header must not overflow to a small number
    expected, found = count * dtype.itemsize, len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "corrupt (longer than its header says)"
        raise UserError(f"{path} is {what}: header says {'x'.join(map(str, dims))} {dtype.name} = {expected} bytes of "
                        f"data, the file has {found}; download it again")
    return np.frombuffer(raw, dtype, count, header).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _idx_file(root: Path, prefix: str, kind: str) -> Path | None:
    """``prefix``-``kind`` in any of the spellings in use: train-images-idx3-ubyte[.gz], train-images.idx3-ubyte."""
    what, idx = kind.split("-")
    for name in (f"{prefix}-{what}-{idx}-ubyte", f"{prefix}-{what}.{idx}-ubyte"):
        for suffix in ("", ".gz"):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    return None


def _idx_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images_path, labels_path = _idx_file(root, prefix, "images-idx3"), _idx_file(root, prefix, "labels-idx1")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = f"{prefix}-images-idx3-ubyte" if images_path is None else f"{prefix}-labels-idx1-ubyte"
        raise UserError(f"{root} has {prefix} {'labels' if images_path is None else 'images'} but no {missing}[.gz]")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path} holds {images.dtype} {images.shape}, expected uint8 images (N, H, W)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise UserError(f"{labels_path} holds {labels.dtype} {labels.shape}, expected {len(images)} integer labels")
    if len(labels) and labels.min() < 0:
        raise UserError(f"{labels_path} has a negative label {labels.min()}")
    return images, labels.astype(np.int64)


def is_idx_dir(root: Path) -> bool:
    return any(_idx_file(root, p, "images-idx3") is not None for p in ("train", "t10k", "val"))


class IdxDataset(ArrayDataset):
    """MNIST-style IDX files: ``train-*`` / ``t10k-*`` (and ``val-*`` where a source ships one, as the embedded
    subset does). Class names: ``classes``, else Fashion-MNIST's when the folder's (or its parent's) name says
    "fashion", else the numbers 0 .. largest label in the files read (the ten digits for MNIST)."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Transform | None = None,
        *,
        in_chans: int | None = None,
        classes: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        _check_split(split)
        root = Path(root)
        # The folder's name or its parent's (torchvision keeps FashionMNIST/raw/): /usr/share/datasets/fashion-mnist.
        fashion = any("fashion" in part.lower() for part in root.resolve().parts[-2:])
        if split == "test":
            pair = _idx_pair(root, "t10k")
            if pair is None:
                raise UserError(f"{root} has no test files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])")
            images, labels = pair
            top = int(labels.max()) + 1 if len(labels) else 0
            source = f"{root} test"
        else:
            own_val = _idx_pair(root, "val") if split == "val" else None
            if own_val is not None:
                images, labels = own_val
                top = int(labels.max()) + 1 if len(labels) else 0
                source = f"{root} val"
            else:
                pair = _idx_pair(root, "train")
                if pair is None:
                    raise UserError(f"{root} has no training files (train-images-idx3-ubyte[.gz], "
                                    "train-labels-idx1-ubyte[.gz])")
                images, labels = pair
                top = int(labels.max()) + 1 if len(labels) else 0
                if _idx_file(root, "val", "images-idx3") is not None:
                    source = f"{root} train"
                else:
                    keep = _select(labels, split, val_fraction, seed)
                    images, labels = images[keep], labels[keep]
                    source = f"{root} {split} ({val_fraction:.0%} of train held out, seed {seed})"
        if classes is None:
            classes = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(top)]
        mean, std = ((stats.FASHION_MNIST_MEAN, stats.FASHION_MNIST_STD) if fashion or tuple(classes) == FASHION_MNIST_CLASSES
                     else (stats.MNIST_MEAN, stats.MNIST_STD))
        super().__init__(images, labels, classes, transform, in_chans, mean, std, source)


def embedded_dataset(split: str = "train", transform: Transform | None = None, *, in_chans: int | None = None) -> IdxDataset:
    """The Fashion-MNIST subset shipped in the package: train (12,000) and val (2,000); 28x28 gray."""
    _check_split(split)
    if split == "test":
        raise UserError("the embedded dataset ships no test split (Fashion-MNIST's t10k set is kept out of the "
                        "package); for test figures pass the t10k IDX directory instead, e.g. "
                        "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)")
    return IdxDataset(EMBEDDED_DIR, split, transform, in_chans=in_chans, classes=FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------------------------------- CIFAR

# What a CIFAR pickle may construct: numpy arrays, their dtypes and scalars. Anything else (os.system, eval, any
# class's __reduce__) is refused, so a malicious file cannot run code. _codecs.encode is how Python 3 pickles bytes
# at protocol 2.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise _Refused(f"refused to load {module}.{name} (a CIFAR file holds only numpy arrays and lists)")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # numpy 1.x writes numpy.core, numpy 2.x numpy._core: either reads on both
            other = module.replace("numpy._core", "numpy.core") if "_core" in module else module.replace("numpy.core", "numpy._core")
            return getattr(importlib.import_module(other), name)


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a CIFAR-style pickle (Python 2 strings read as bytes) allowing only numpy reconstruction."""
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except _Refused as e:
        raise UserError(f"{path} is not a plain CIFAR pickle: {e}; it may be malicious, use the official files") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"{path} is not a valid CIFAR pickle ({e}); download it again") from None


def _cifar_root(root: Path) -> Path:
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (root / sub).is_dir():
            return root / sub
    return root


def cifar_kind(root: Path) -> str | None:
    root = _cifar_root(root)
    if (root / "batches.meta").is_file() or (root / "data_batch_1").is_file():
        return "cifar10"
    if (root / "meta").is_file() and ((root / "train").is_file() or (root / "test").is_file()):
        return "cifar100"
    return None


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} is missing; a CIFAR folder needs all of its batch files")
    d = load_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise UserError(f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}")
    data, labels = d[b"data"], np.asarray(d[label_key], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: b'data' is {getattr(data, 'dtype', type(data).__name__)} "
                        f"{getattr(data, 'shape', '')}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise UserError(f"{path} has {len(labels)} labels for {len(data)} images")
    # Rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class CifarDataset(ArrayDataset):
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or CIFAR-100 (``train``, ``test``,
    ``meta``; the 100 fine labels), the python pickles, read without running code."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Transform | None = None,
        *,
        in_chans: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        _check_split(split)
        root = _cifar_root(Path(root))
        kind = cifar_kind(root)
        if kind is None:
            raise UserError(f"{root} is not a CIFAR folder (no batches.meta / data_batch_1, nor meta + train)")
        if kind == "cifar10":
            files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
            meta_file, names_key, label_key = "batches.meta", b"label_names", b"labels"
            mean, std = stats.CIFAR10_MEAN, stats.CIFAR10_STD
        else:
            files = ["test"] if split == "test" else ["train"]
            meta_file, names_key, label_key = "meta", b"fine_label_names", b"fine_labels"
            mean, std = stats.CIFAR100_MEAN, stats.CIFAR100_STD
        batches = [_cifar_batch(root / f, label_key) for f in files]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        meta = load_pickle(root / meta_file) if (root / meta_file).is_file() else {}
        names = meta.get(names_key) if isinstance(meta, dict) else None
        if names is None:
            raise UserError(f"{root / meta_file} is missing or has no {names_key!r}; it holds the class names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        source = f"{kind} {root} {split}"
        if split != "test":
            keep = _select(labels, split, val_fraction, seed)
            images, labels = images[keep], labels[keep]
            source += f" ({val_fraction:.0%} of train held out, seed {seed})"
        self.kind = kind
        super().__init__(images, labels, classes, transform, in_chans, mean, std, source)


# ---------------------------------------------------------------------------------------------------- detection


def _is_pattern(spec: str) -> bool:
    return any(c in spec for c in "{*?[")


def detect_format(path_or_name: str | os.PathLike) -> str:
    """What ``build_dataset`` would read: "embedded", "webdataset", "idx", "cifar10", "cifar100", "imagenet"
    (a root with train/ val/ folders) or "imagefolder". Raises ``UserError`` for a missing path or unknown layout."""
    spec = os.fspath(path_or_name)
    if spec == EMBEDDED:
        return EMBEDDED
    if _is_pattern(spec) or spec.endswith(".tar"):
        return "webdataset"
    root = Path(spec)
    if not root.exists():
        raise UserError(f"{spec} does not exist; pass a folder of class folders, an ImageNet-style root (train/, "
                        f"val/), an IDX or CIFAR folder, .tar shards, or {EMBEDDED!r}")
    if not root.is_dir():
        raise UserError(f"{spec} is a file; pass the folder that holds the dataset (or a .tar shard pattern)")
    if is_idx_dir(root):
        return "idx"
    kind = cifar_kind(root)
    if kind is not None:
        return kind
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise UserError(f"{root} is empty; put the dataset there (class folders, train/ and val/, IDX files, CIFAR "
                        "pickles or .tar shards)")
    if any(p.suffix == ".tar" for p in entries) and not any(p.is_dir() for p in entries):
        return "webdataset"
    if _is_split_root(root):
        return "imagenet"
    if any(p.is_dir() for p in entries):
        return "imagefolder"
    if _image_files(root, recursive=False):
        raise UserError(f"{root} holds images but no class folders; put each class's images in a folder named after "
                        "the class (root/<class>/<image>)")
    listing = ", ".join(sorted(p.name for p in entries)[:8])
    raise UserError(f"unknown dataset layout in {root} (found: {listing}); expected class folders, train/ and val/, "
                    "IDX files, CIFAR pickles or .tar shards")


def build_dataset(
    path_or_name: str | os.PathLike,
    split: str = "train",
    transform: Transform | None = None,
    *,
    in_chans: int | None = None,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    shuffle_buffer: int = 1000,
) -> Dataset:
    """The dataset at ``path_or_name`` (or the name "embedded"), for ``split`` "train", "val" or "test".

    ``in_chans``: decode to RGB (3) or gray (1); by default the data's own (1 for IDX, else 3). ``classes``: class
    names for IDX files or WebDataset shards (which carry only numbers), or the list (and order) a folder's class
    folders are labelled by; CIFAR and the embedded data name their own. ``val_fraction`` / ``seed``: the held-out
    validation split where the files have none. ``draft_size``: the shorter side the transform resizes to, for fast
    JPEG decoding (``TransformConfig.draft_size``). ``shuffle_buffer``: samples a WebDataset shuffles across
    (``split="train"`` only; shards are always shuffled by seed and epoch then).
    """
    _check_split(split)
    kind = detect_format(path_or_name)
    image_kw = dict(in_chans=in_chans, draft_size=draft_size, max_pixels=max_pixels)
    if classes is not None and kind in (EMBEDDED, "cifar10", "cifar100"):
        raise UserError(f"{kind} data name their own classes; drop the classes argument")
    if kind == EMBEDDED:
        return embedded_dataset(split, transform, in_chans=in_chans)
    if kind == "webdataset":
        return WebDataset(os.fspath(path_or_name), transform, classes=classes, shuffle=split == "train",
                          shuffle_buffer=shuffle_buffer, seed=seed, **image_kw)
    root = Path(path_or_name)
    if kind == "idx":
        return IdxDataset(root, split, transform, in_chans=in_chans, classes=classes, val_fraction=val_fraction, seed=seed)
    if kind in ("cifar10", "cifar100"):
        return CifarDataset(root, split, transform, in_chans=in_chans, val_fraction=val_fraction, seed=seed)
    if kind == "imagenet":
        return _split_folder(root, split, transform, classes, **image_kw)
    return ImageFolder(root, transform, classes=classes, holdout=None if split == "test" else split,
                       val_fraction=val_fraction, seed=seed, **image_kw)
