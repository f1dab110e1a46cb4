"""Published ResNet weights by name: where each file lives, how to check it, and what it was measured at.

Names are ``<source>:<arch>.<tag>`` and work wherever a weights file does (``--weights tv:resnet50.v2``,
``weights.load``, ``create_model(..., pretrained=...)``)::

    tv:resnet18.v1 ... tv:resnet152.v1   torchvision IMAGENET1K_V1 (the paper's recipe, 256 -> 224 px)
    tv:resnet50.v2, .101.v2, .152.v2     torchvision IMAGENET1K_V2 (the new recipe, 232 -> 224 px)
    keras:resnet50, :resnet101, :152     keras.applications ResNet50/101/152 (v1, Caffe preprocessing)
    timm:resnet50.a1_in1k, .a1h_in1k     timm's "ResNet strikes back" A1 / A1h (bicubic)

A file is downloaded once, with a progress bar, into the torch hub cache (``torch.hub.get_dir()/checkpoints``:
``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), the folder torchvision and timm
use, so a file either of them fetched is reused. The download goes to a temporary file in that folder and is
renamed to its final name only after its hash matches; an interrupted or wrong download leaves nothing behind.
The cached file is checked again on every use (0.1 s per 100 MB of SHA-256 here).

Hashes: torchvision and timm publish no full SHA-256, only its first 8 hex digits in the file name (torch.hub's
convention; ``torch.hub.load_state_dict_from_url(check_hash=True)`` checks exactly that prefix, and timm's
``clean_checkpoint.py`` names its files the same way). Those entries are checked by that prefix, as torchvision
does. Keras publishes the MD5 of each file (``keras/src/applications/resnet.py``, ``WEIGHTS_HASHES``), checked
in full.

``RESNET50_WEIGHTS_MIRROR`` (a base URL) fetches every file from ``<mirror>/<file name>`` instead, e.g. a local
server on a machine without internet. Offline, a cached file is used; a missing one is a one-line error that
names the URL to fetch and the path to put it at.

Accuracies are the sources' own ImageNet-1k validation figures (single centre crop at the preprocessing given).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .data.stats import IMAGENET_MEAN, IMAGENET_STD
from .data.transforms import Preprocessing
from .errors import UserError

MIRROR_ENV = "RESNET50_WEIGHTS_MIRROR"
TIMEOUT_S = 30  # per network operation (connect, each read), not for the whole file
_CHUNK = 1 << 20

# Keras applications' "caffe" preprocessing as the importer folds it (weights.import_keras): RGB means on the 0..1
# scale and std 1/255, i.e. pixel - mean on the 0..255 scale, no scaling.
_CAFFE = dict(mean=(123.68 / 255, 116.779 / 255, 103.939 / 255), std=(1 / 255, 1 / 255, 1 / 255))


@dataclass(frozen=True)
class Published:
    """One published weights file.

    ``digest`` is ``"<algorithm>:<hex>"``: the full digest, or (torchvision, timm) the prefix the publisher put in
    the file name, which is what its own loader checks. ``top1``/``top5`` are the source's ImageNet-1k validation
    accuracies in percent at ``preprocessing``; ``origin`` says where the figures and the file come from."""

    name: str
    arch: str
    url: str
    digest: str
    preprocessing: Preprocessing
    top1: float
    top5: float
    license: str
    origin: str
    variant: str = "v1.5"  # the stride placement the weights were trained with (Keras: v1)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def describe(self) -> str:
        """The ``source`` a loaded checkpoint records."""
        return f"{self.name}: {self.origin} ({self.url}; {self.license})"


def _tv(arch: str, tag: str, file: str, top1: float, top5: float) -> Published:
    v2 = tag == "v2"
    pre = Preprocessing(232 if v2 else 256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    enum = f"{arch.replace('resnet', 'ResNet')}_Weights.IMAGENET1K_{tag.upper()}"
    return Published(f"tv:{arch}.{tag}", arch, f"https://download.pytorch.org/models/{file}",
                     "sha256:" + file.rsplit("-", 1)[1].split(".")[0], pre, top1, top5, "BSD-3-Clause",
                     f"torchvision {enum}")


def _keras(arch: str, md5: str, top1: float, top5: float) -> Published:
    file = f"{arch}_weights_tf_dim_ordering_tf_kernels.h5"
    url = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{file}"
    return Published(f"keras:{arch}", arch, url,
                     f"md5:{md5}", Preprocessing(256, 224, interpolation="bilinear", **_CAFFE), top1, top5,
                     "MIT (Kaiming He's Caffe models, converted by Keras)",
                     f"keras.applications {arch.replace('resnet', 'ResNet')} weights='imagenet' (figures: keras.io)",
                     variant="v1")


def _timm(tag: str, url: str, resize: int, top1: float, top5: float) -> Published:
    pre = Preprocessing(resize, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    return Published(f"timm:resnet50.{tag}", "resnet50", url,
                     "sha256:" + url.rsplit("-", 1)[1].split(".")[0], pre, top1, top5, "Apache-2.0",
                     f"timm resnet50.{tag} (figures: timm results-imagenet.csv at 224 px)")


# torchvision's models/resnet.py (file names, ``_metrics``: acc@1 / acc@5, ``transforms``: resize 256 for V1 and
# 232 for V2, crop 224, bilinear). Keras: keras/src/applications/resnet.py (URL, WEIGHTS_HASHES[...][0] = MD5 of
# the file with the classifier). timm: timm/models/resnet.py default_cfgs (_rcfg: bicubic, crop_pct 0.95;
# a1h: test size 224 at crop_pct 1.0) and results/results-imagenet.csv.
PUBLISHED: dict[str, Published] = {p.name: p for p in (
    _tv("resnet18", "v1", "resnet18-f37072fd.pth", 69.758, 89.078),
    _tv("resnet34", "v1", "resnet34-b627a593.pth", 73.314, 91.420),
    _tv("resnet50", "v1", "resnet50-0676ba61.pth", 76.130, 92.862),
    _tv("resnet50", "v2", "resnet50-11ad3fa6.pth", 80.858, 95.434),
    _tv("resnet101", "v1", "resnet101-63fe2227.pth", 77.374, 93.546),
    _tv("resnet101", "v2", "resnet101-cd907fc2.pth", 81.886, 95.780),
    _tv("resnet152", "v1", "resnet152-394f9c45.pth", 78.312, 94.046),
    _tv("resnet152", "v2", "resnet152-f82ba261.pth", 82.284, 96.002),
    _keras("resnet50", "2cb95161c43110f7111970584f804107", 74.9, 92.1),
    _keras("resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5", 76.4, 92.8),
    _keras("resnet152", "100835be76be38e30d865e96f2aaae62", 76.6, 93.1),
    _timm("a1_in1k", "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
          "resnet50_a1_0-14fe96d1.pth", 235, 80.382, 94.598),  # resize 224 / 0.95, floored as timm does
    _timm("a1h_in1k", "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
          "resnet50_a1h2_176-001a1197.pth", 224, 80.654, 95.312),
)}

# What ``pretrained=True`` means for each architecture: torchvision's DEFAULT (V2 where it exists).
DEFAULTS = {"resnet18": "tv:resnet18.v1", "resnet34": "tv:resnet34.v1", "resnet50": "tv:resnet50.v2",
            "resnet101": "tv:resnet101.v2", "resnet152": "tv:resnet152.v2"}

_NAME = re.compile(r"[a-z]+:[A-Za-z0-9_.\-]+")


def is_published_name(value: str | os.PathLike) -> bool:
    """Whether ``value`` is spelt like a published name (``source:arch.tag``) and is not an existing path."""
    s = os.fspath(value)
    return bool(_NAME.fullmatch(s)) and not Path(s).exists()


def get(name: str) -> Published:
    """The entry called ``name``; UserError naming the closest one and the choices otherwise."""
    entry = PUBLISHED.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, PUBLISHED, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown published weights {name!r}{hint}; choose from: {', '.join(PUBLISHED)}")
    return entry


def default_for(arch: str) -> Published:
    """The entry ``pretrained=True`` loads for ``arch``."""
    if arch not in DEFAULTS:
        raise UserError(f"no published weights for {arch!r}; pretrained=True works for {', '.join(DEFAULTS)} "
                        "(or give a weights file)")
    return PUBLISHED[DEFAULTS[arch]]


def cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: torchvision's and timm's download folder (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_url(entry: Published) -> str:
    """The entry's URL, or ``$RESNET50_WEIGHTS_MIRROR/<file name>`` when that variable is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def fetch(name: str | Published, progress: bool = True) -> Path:
    """The verified local file of a published entry: the cached one, else downloaded into the cache.

    Errors (UserError, one line): an unknown name; a cached file or a download whose hash differs (nothing is
    left in the cache); no network, an HTTP error or an interrupted download (what to fetch and where to put it)."""
    entry = name if isinstance(name, Published) else get(name)
    path = cache_dir() / entry.filename
    if path.is_file():
        if not _matches(path, entry.digest):
            raise UserError(f"cached file {path} does not match the published {_what(entry.digest)} of "
                            f"{entry.name}; delete it to download it again")
        return path
    _download(entry, path, progress)
    return path


def _what(digest: str) -> str:
    algo, hexa = digest.split(":", 1)
    return f"{algo.upper()}{' prefix' if len(hexa) < hashlib.new(algo).digest_size * 2 else ''} {hexa}"


def _matches(path: Path, digest: str) -> bool:
    algo, want = digest.split(":", 1)
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest().startswith(want)


def _download(entry: Published, path: Path, progress: bool) -> None:
    url = download_url(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write the weights cache {path.parent} ({e.strerror or e}); set TORCH_HOME to a "
                        "writable folder") from e
    print(f'Downloading "{url}" to {path}', file=sys.stderr)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, entry.digest.split(":", 1)[0], entry.filename, progress)
        if not digest.startswith(entry.digest.split(":", 1)[1]):
            raise UserError(f"the download of {entry.name} from {url} does not match its published "
                            f"{_what(entry.digest)} (got {digest[:16]}...), so it was not kept; try again")
        os.replace(tmp, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise UserError(f"could not download {entry.name} from {url} ({_reason(e)}); without network, fetch "
                        f"{entry.url} elsewhere and put it at {path}") from e
    finally:
        Path(tmp).unlink(missing_ok=True)  # after a failure; after os.replace there is nothing left to remove


def _stream(url: str, out, algo: str, desc: str, progress: bool) -> str:
    """Copy ``url`` into the open file ``out`` with a progress bar; the hex digest of what was received.
    A body shorter than its Content-Length (the connection closed early) raises IncompleteRead."""
    h, got = hashlib.new(algo), 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                  disable=None if progress else True) as bar:  # None: shown on a terminal only
            while chunk := r.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise http.client.IncompleteRead(b"", total - got)
    return h.hexdigest()


def _reason(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return f"the connection closed {e.expected or 'some'} bytes before the end"
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:160]
