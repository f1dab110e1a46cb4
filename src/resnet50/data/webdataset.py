"""WebDataset tar shards, read with the standard library's ``tarfile`` (no dependency on the webdataset package).

A shard is a plain tar whose members are grouped into samples by key: the member's path up to the first dot of its
file name, so ``n01440764/img_0001.jpg`` and ``n01440764/img_0001.cls`` form one sample. A sample needs one image
(``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``tif``, ``tiff``) and an integer label: ``cls`` (ASCII text), or
else the ``label`` field of ``json``. Other members are ignored.

Shards are named by a brace pattern (``shard-{000000..000009}.tar``, ``{a,b}``), a glob, a list, or a folder of
``.tar`` files. Each epoch the shard list is shuffled by (seed, epoch) (training only), then split across
distributed ranks and then across DataLoader workers, so every sample is read exactly once per epoch over all of
them; samples are then shuffled through a buffer of ``shuffle_buffer`` samples seeded by (seed, epoch, rank,
worker). Give it at least ranks x workers shards, or some workers sit idle. Ranks may see a few samples more or
fewer than each other (shards differ in size); the training loop must not assume equal step counts per rank.

Class names come from ``classes``, else a ``classes.txt`` (one per line) beside the shards, else a scan of every
shard's labels (reads only tar headers and the small ``cls`` members, and also counts ``num_samples``).
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UserError
from . import stats
from .decode import MAX_PIXELS, ImageDecodeError, Skipped, decode_image
from .seeding import mix_seed

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


class RawSample(NamedTuple):
    """One sample's undecoded members, by extension."""

    shard: str
    key: str
    files: dict[str, bytes]


def expand_braces(spec: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar a-001.tar a-002.tar (zero padding kept); ``{x,y}`` -> both; nested in order."""
    m = re.search(r"\{([^{}]*)\}", spec)
    if m is None:
        return [spec]
    head, body, tail = spec[: m.start()], m.group(1), spec[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise UserError(f"empty range {{{body}}} in {spec!r}; write {{low..high}}")
        options = [str(i).zfill(len(r.group(1))) for i in range(lo, hi + 1)]
    else:
        options = body.split(",")
    return [out for option in options for out in expand_braces(head + option + tail)]


def expand_urls(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard paths from a pattern, glob, folder or list; every one must exist."""
    if not isinstance(urls, (str, os.PathLike)):
        return [s for u in urls for s in expand_urls(u)]
    spec = os.fspath(urls)
    if Path(spec).is_dir():
        shards = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not shards:
            raise UserError(f"{spec} has no .tar shards")
        return shards
    shards = []
    for name in expand_braces(spec):
        if any(c in name for c in "*?["):
            found = sorted(glob.glob(name))
            if not found:
                raise UserError(f"no shard matches {name}")
            shards.extend(found)
        else:
            shards.append(name)
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}; check the pattern {spec!r}")
    return shards


def read_shard(shard: str) -> Iterator[RawSample | Skipped]:
    """The samples of one shard, in tar order. A shard that turns out to be unreadable or truncated ends with one
    ``Skipped`` record for it (the sample being read when it broke is lost with it)."""
    key, files, count = None, {}, 0
    try:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = posixpath.split(member.name)
                if name.startswith("."):
                    continue
                stem, _, ext = name.partition(".")
                member_key = posixpath.join(folder, stem)
                data = tar.extractfile(member).read()
                if member_key != key:
                    if files:
                        yield RawSample(shard, key, files)
                        count += 1
                    key, files = member_key, {}
                files[ext.lower()] = data
            end, plain = tar.offset, getattr(tar.fileobj, "comptype", "tar") == "tar"
        # tarfile takes a file cut at a 512-byte boundary for a finished archive; a whole one has an end marker of
        # two zero blocks there. (A cut compressed shard fails in its decompressor instead.)
        if plain and not _has_end_marker(shard, end):
            raise tarfile.ReadError("it ends without the tar end marker (truncated)")
        if files:
            yield RawSample(shard, key, files)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        yield Skipped(shard, f"unreadable tar shard after {count} samples: {e}")


def _has_end_marker(shard: str, offset: int) -> bool:
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(1024) == bytes(1024)


def sample_label(raw: RawSample) -> int:
    if "cls" in raw.files:
        text = raw.files["cls"].decode("utf-8", "replace").strip()
        if not re.fullmatch(r"\d+", text):
            raise ValueError(f"label {text!r} is not a non-negative integer")
        return int(text)
    if "json" in raw.files:
        meta = json.loads(raw.files["json"])
        if isinstance(meta, dict) and isinstance(meta.get("label"), int) and meta["label"] >= 0:
            return meta["label"]
    raise ValueError("no .cls label (nor a json 'label')")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class WebDataset(IterableDataset):
    """Samples ``(image, label)`` from tar shards; see the module docstring for the format and the splitting."""

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str],
        transform: Callable[..., Any] | None = None,
        *,
        in_chans: int | None = None,
        classes: Sequence[str] | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        draft_size: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.shards = expand_urls(urls)
        self.transform = transform
        if in_chans not in (None, 1, 3):
            raise UserError(f"in_chans must be 1 (gray) or 3 (RGB), not {in_chans}")
        self.in_chans = in_chans or 3
        self.mean, self.std = stats.stats_for(stats.IMAGENET_MEAN, stats.IMAGENET_STD, self.in_chans)
        self.image_size = None
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        self.num_samples: int | None = None
        names_file = Path(self.shards[0]).parent / "classes.txt"
        if classes is None and names_file.is_file():
            classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if classes is None:
            self.num_samples, top = self._scan()
            classes = [str(i) for i in range(top + 1)]
        self.classes = list(classes)
        if not self.classes:
            raise UserError(f"no class names for {self.shards[0]}; pass classes or add classes.txt beside the shards")

    def _scan(self) -> tuple[int, int]:
        count, top = 0, -1
        for shard in self.shards:
            try:
                with tarfile.open(shard, "r:*") as tar:
                    images, labels = set(), []
                    for member in tar.getmembers():
                        folder, name = posixpath.split(member.name)
                        stem, _, ext = name.partition(".")
                        if ext.lower() in IMAGE_KEYS:
                            images.add(posixpath.join(folder, stem))
                        elif ext.lower() == "cls":
                            text = tar.extractfile(member).read().strip()
                            if text.isdigit():
                                labels.append(int(text))
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                warnings.warn(f"{shard} is unreadable ({e}); its samples will be skipped", stacklevel=3)
                continue
            count += len(images)
            top = max([top, *labels])
        if count == 0:
            raise UserError(f"no samples in {len(self.shards)} shard(s) starting {self.shards[0]}; a sample is "
                            "<key>.jpg|png|webp plus <key>.cls")
        if top < 0:
            raise UserError(f"no .cls labels in the shards starting {self.shards[0]}; add <key>.cls files")
        return count, top

    def count(self) -> int:
        """The number of samples in the shards (``num_samples``), scanning their tar headers once if unknown."""
        if self.num_samples is None:
            self.num_samples, _ = self._scan()
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``; the loader calls this (its workers are restarted each epoch to see it)."""
        self.epoch = epoch

    def worker_shards(self) -> list[str]:
        """The shards this rank's this worker reads in the current epoch."""
        shards = list(self.shards)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        rank, world = _rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if len(shards) < world * workers and rank == 0 and worker == 0:
            warnings.warn(f"{len(shards)} shards for {world} rank(s) x {workers} worker(s): some read nothing; "
                          "write more, smaller shards", stacklevel=2)
        return shards[rank::world][worker::workers]

    def raw_samples(self) -> Iterator[RawSample | Skipped]:
        """Undecoded samples (and ``Skipped`` records for broken shards) for this rank and worker, shuffled."""
        stream = (s for shard in self.worker_shards() for s in read_shard(shard))
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from stream
            return
        rank, _ = _rank_world()
        info = get_worker_info()
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, rank, info.id if info else 0))
        buffer: list[RawSample | Skipped] = []
        for item in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(torch.randint(len(buffer), (), generator=g))
            buffer[j], item = item, buffer[j]
            yield item
        for j in torch.randperm(len(buffer), generator=g).tolist():
            yield buffer[j]

    def load(self, raw: RawSample) -> tuple[Any, int]:
        """Decode one raw sample; raises ``ImageDecodeError`` (which the loader skips) when it is unusable."""
        where = f"{raw.shard}:{raw.key}"
        ext = next((e for e in IMAGE_KEYS if e in raw.files), None)
        if ext is None:
            raise ImageDecodeError(where, f"no image member ({', '.join(IMAGE_KEYS)}) in this sample")
        try:
            label = sample_label(raw)
        except ValueError as e:
            raise ImageDecodeError(where, str(e)) from None
        if label >= len(self.classes):
            raise ImageDecodeError(where, f"label {label} is out of range for {len(self.classes)} classes")
        img = decode_image(raw.files[ext], self.in_chans, self.draft_size, self.max_pixels, name=f"{where}.{ext}")
        return (self.transform(img) if self.transform is not None else img), label

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for raw in self.raw_samples():
            if isinstance(raw, Skipped):
                raise ImageDecodeError(raw.path, raw.reason)
            yield self.load(raw)

    def __repr__(self) -> str:
        return f"WebDataset({len(self.shards)} shards from {self.shards[0]!r}, {len(self.classes)} classes)"
