"""WebDataset tar shards, read with the standard library's ``tarfile`` (no dependency on the webdataset package).

A shard is a plain tar whose members are grouped into samples by key: the member's path up to the first dot of its
file name, so ``n01440764/img_0001.jpg`` and ``n01440764/img_0001.cls`` form one sample. A sample needs one image
(``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``tif``, ``tiff``) and an integer label: ``cls`` (ASCII text), or
else the ``label`` field of ``json``. Other members are ignored.

Shards are named by a brace pattern (``shard-{000000..000009}.tar``, ``{a,b}``), a glob, a list, or a folder of
``.tar`` files, each a local path or a URL (the webdataset package's spellings):

    pipe:CMD            the standard output of a shell command (``pipe:curl -s https://host/shard-000.tar``); a
                        non-zero exit status is a read error
    http://, https://   streamed by fsspec (aiohttp) when aiohttp is installed, else by urllib; a body shorter than
                        its Content-Length is a read error
    s3://, gs://, ...   any fsspec protocol whose package is installed (s3fs, gcsfs, ...); globs are expanded there

Every shard named must exist, whatever its source: ``expand_urls`` checks each one before anything is read (a
local file; an fsspec URL by the filesystem's ``exists``; http(s) by a HEAD request; a ``pipe:`` command by running
it until its first tar block arrives) and refuses the set, in one line naming the first missing shard, when any is
missing: a missing shard is never half of a test set read quietly. Shards a glob found exist by construction.

A remote shard (any URL) that fails while being read is opened again, up to ``READ_RETRIES`` times, and its
samples already given are skipped on the new pass (a shard's order is fixed), so a dropped connection neither loses
nor repeats a sample; when every attempt fails the shard ends with one ``Skipped`` record naming the error and the
count of samples read. Local shards are not retried.

Each epoch the shard list is shuffled by (seed, epoch) (training only), then split across distributed ranks and
then across DataLoader workers, so every sample is read exactly once per epoch over all of them; samples are then
shuffled through a buffer of ``shuffle_buffer`` samples seeded by (seed, epoch, rank, worker). Give it at least ranks x workers shards, or some workers sit idle. Ranks may see a few samples more or
fewer than each other (shards differ in size); the training loop must not assume equal step counts per rank.

Class names come from ``classes``, else a ``classes.txt`` (one per line) beside the shards, else a scan of every
shard's labels (reads only tar headers and the small ``cls`` members, and also counts ``num_samples``; for URL
shards the scan downloads every shard once: pass ``classes`` or serve a classes.txt to avoid it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import importlib.util
import json
import os
import posixpath
import re
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
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
READ_RETRIES = 3  # a remote shard is opened at most 1 + READ_RETRIES times
RETRY_DELAY_S = 0.5  # doubled after each failed attempt
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


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


def is_url(spec: str) -> bool:
    """A ``pipe:`` command or a ``scheme://`` URL (not a local path)."""
    return spec.startswith("pipe:") or bool(URL_RE.match(spec))


def _fsspec_filesystem(url: str):
    """The fsspec filesystem class for ``url``'s protocol; a one-line UserError when its package is missing."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise UserError(f"cannot read {scheme}:// shards: {str(e).splitlines()[0]}") from None


def _expand_remote(spec: str) -> tuple[list[str], list[str]]:
    """The shards of a URL spec, and those of them that no glob found (their existence is still to be checked)."""
    shards, named = [], []
    for name in expand_braces(spec):
        if name.startswith("pipe:") or name.split("://", 1)[0] in ("http", "https"):
            shards.append(name)
            named.append(name)
            continue
        fs_class = _fsspec_filesystem(name)
        if any(c in name for c in "*?["):
            fs = fs_class()
            protocol = name.split("://", 1)[0]
            found = sorted(p if "://" in p else f"{protocol}://{p}" for p in fs.glob(name))
            if not found:
                raise UserError(f"no shard matches {name}")
            shards.extend(found)
        else:
            shards.append(name)
            named.append(name)
    return shards, named


PROBE_TIMEOUT_S = 60.0
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: tarfile's "r|*" reads them


def _looks_like_tar(head: bytes) -> bool:
    if head.startswith(_COMPRESSED_MAGIC):
        return True
    try:
        tarfile.TarInfo.frombuf(head[:512].ljust(512, b"\0"), tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _probe_once(shard: str) -> str | None:
    """Why ``shard`` (a URL or a ``pipe:`` command) cannot be read, or None when it exists."""
    scheme = shard.split("://", 1)[0] if URL_RE.match(shard) else None
    try:
        if scheme in ("http", "https"):
            request = urllib.request.Request(shard, method="HEAD")
            try:
                urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()  # noqa: S310 (http and https only)
            except urllib.error.HTTPError as e:
                if e.code in (404, 410):
                    return f"not found (HTTP {e.code})"
                if e.code not in (403, 405, 501):  # HEAD refused or not allowed: the GET will tell
                    return f"HTTP {e.code} {e.reason}"
            return None
        if scheme is not None:
            fs = _fsspec_filesystem(shard)(skip_instance_cache=True)
            return None if fs.exists(shard) else "not found"
        stream = ShardStream(shard)  # a pipe: command, run until its first tar block arrives
        try:
            head = b""
            while len(head) < 512:
                chunk = stream.read(512 - len(head))
                if not chunk:
                    break
                head += chunk
            if not head:
                error = stream.exit_error(PROBE_TIMEOUT_S)
                return str(error) if error is not None else "the command wrote nothing"
            if not _looks_like_tar(head):
                return f"the command's output is not a tar shard (it starts with {head[:24]!r})"
            return None
        finally:
            stream.close()
    except UserError:
        raise
    except Exception as e:  # connection refused, DNS, a filesystem's own errors
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _probe(shard: str) -> str | None:
    """``_probe_once`` with the read retries: "not found" is final, a transport failure is tried again."""
    for attempt in range(READ_RETRIES + 1):
        if attempt:
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        reason = _probe_once(shard)
        if reason is None or "not found" in reason:
            return reason
    return reason


def check_shards(shards: Sequence[str], spec: str, total: int | None = None) -> None:
    """Refuse, in one line naming the first, a set of shards of which any is missing or cannot be opened
    (``total``: the number of shards of ``spec``, when only some of them need checking)."""
    local = [s for s in shards if not is_url(s)]
    missing = [(s, "does not exist") for s in local if not Path(s).is_file()]
    remote = [s for s in shards if is_url(s)]
    if remote:
        with concurrent.futures.ThreadPoolExecutor(min(16, len(remote))) as pool:
            missing += [(s, r) for s, r in zip(remote, pool.map(_probe, remote)) if r is not None]
    if missing:
        shard, reason = missing[0]
        raise UserError(f"{len(missing)} of {total or len(shards)} shards do not exist or cannot be read, e.g. {shard} "
                        f"({reason}); check the pattern {spec!r}")


def expand_urls(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard paths or URLs from a pattern, glob, folder or list; every one must exist (``check_shards``: one rule
    for local paths, URLs and ``pipe:`` commands)."""
    if not isinstance(urls, (str, os.PathLike)):
        return [s for u in urls for s in expand_urls(u)]
    spec = os.fspath(urls)
    if is_url(spec):
        shards, named = _expand_remote(spec)
        check_shards(named, spec, len(shards))
        return shards
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



def _http_via_fsspec() -> bool:
    """fsspec reads http(s) through aiohttp; without it, urllib streams the shard."""
    return importlib.util.find_spec("aiohttp") is not None


class ShardStream:
    """A shard's bytes, read front to back: a local file, a ``pipe:`` command's output, or a URL (see the module
    docstring). Any failure of the transport is raised as ``OSError``; the last ``TAIL`` bytes read are kept, so that
    the tar end marker can be checked without seeking."""

    TAIL = 1 << 16

    def __init__(self, shard: str) -> None:
        self.shard, self.pos, self.proc = shard, 0, None
        self.tail: collections.deque = collections.deque()  # (offset, bytes) of the last chunks read
        self.tail_bytes = 0
        try:
            self.raw = self._open(shard)
        except OSError:
            raise
        except Exception as e:  # aiohttp / botocore errors are not OSErrors
            raise OSError(f"cannot open {shard}: {type(e).__name__}: {e}") from e

    def _open(self, shard: str):
        if shard.startswith("pipe:"):
            self.stderr = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(shard[5:], shell=True, stdout=subprocess.PIPE, stderr=self.stderr)
            return self.proc.stdout
        if not URL_RE.match(shard):
            return open(shard, "rb")
        if shard.split("://", 1)[0] in ("http", "https") and not _http_via_fsspec():
            return urllib.request.urlopen(shard, timeout=60)  # noqa: S310 (http and https only)
        import fsspec

        # block_size=0: a streaming response; a filesystem of our own, not fsspec's cached one (it is not fork-safe)
        try:
            return fsspec.open(shard, "rb", block_size=0, skip_instance_cache=True).open()
        except FileNotFoundError:
            raise FileNotFoundError(f"not found (HTTP 404 or no such object): {shard}") from None

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(n)
        except OSError:
            raise
        except Exception as e:  # aiohttp.ClientPayloadError, http.client.IncompleteRead: not OSErrors
            raise OSError(f"{type(e).__name__}: {e}") from e
        if data:
            self.tail.append((self.pos, data))
            self.pos += len(data)
            self.tail_bytes += len(data)
            while self.tail_bytes - len(self.tail[0][1]) >= self.TAIL:
                self.tail_bytes -= len(self.tail.popleft()[1])
        return data

    def finish(self) -> None:
        """Read to the end (record padding) and check the transport's own verdict (a pipe's exit status)."""
        while self.read(1 << 16):
            pass
        if self.proc is not None:
            self.proc.stdout.close()
            error = self.exit_error(None)
            if error is not None:
                raise error

    def exit_error(self, wait_s: float | None) -> OSError | None:
        """A ``pipe:`` command's failure (non-zero exit status, its last error output), waiting up to ``wait_s``
        for it to end; None for a success, a command still running, or a URL."""
        if self.proc is None:
            return None
        try:
            status = self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None
        if status == 0:
            return None
        self.stderr.seek(0)
        message = self.stderr.read()[-300:].decode("utf-8", "replace").strip().replace("\n", " ")
        return OSError(f"the command exited with status {status}" + (f": {message}" if message else ""))

    def zeros_at(self, offset: int, n: int) -> bool | None:
        """Whether the ``n`` bytes at ``offset`` were all zero, or None when they are no longer in the tail."""
        got = b"".join(chunk[max(0, offset - at):offset + n - at] for at, chunk in self.tail
                       if at < offset + n and at + len(chunk) > offset)
        if self.tail and self.tail[0][0] > offset:
            return None
        return got == bytes(n)

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:  # closing a broken connection may fail again; the error was reported when reading
            pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.stderr.close()


def _read_once(shard: str) -> Iterator[RawSample]:
    """The samples of one shard in tar order, each yielded once complete; raises on any read or format error."""
    stream = ShardStream(shard)
    key, files = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
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
                    key, files = member_key, {}
                files[ext.lower()] = data
            end, plain = tar.offset, getattr(tar.fileobj, "comptype", "tar") == "tar"
        stream.finish()
        # tarfile takes a file cut at a 512-byte boundary for a finished archive; a whole one has an end marker of
        # two zero blocks there. (A cut compressed shard fails in its decompressor instead.)
        if plain and stream.zeros_at(end, 1024) is False:
            raise tarfile.ReadError("it ends without the tar end marker (truncated)")
        if files:
            yield RawSample(shard, key, files)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        failed = stream.exit_error(1.0)  # a command that failed explains a short or empty tar better
        if failed is not None and failed is not e:
            raise failed from e
        raise
    finally:
        stream.close()


def read_shard(shard: str, retries: int | None = None) -> Iterator[RawSample | Skipped]:
    """The samples of one shard, in tar order. A remote shard that fails is read again up to ``retries`` times
    (default ``READ_RETRIES``; local shards 0), skipping the samples already given; a shard that stays unreadable or
    truncated ends with one ``Skipped`` record for it (the sample being read when it broke is lost with it)."""
    retries = (READ_RETRIES if is_url(shard) else 0) if retries is None else retries
    given, error = 0, None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        try:
            for i, sample in enumerate(_read_once(shard)):
                if i >= given:  # on a new pass, the samples before the failure were given already
                    given += 1
                    yield sample
            return
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            error = e
    tries = f" in {retries + 1} attempts" if retries else ""
    yield Skipped(shard, f"unreadable tar shard after {given} samples{tries}: {error}")


def _classes_txt(first_shard: str) -> str | None:
    """The text of the ``classes.txt`` beside the shards (local folder or URL folder), or None."""
    if first_shard.startswith("pipe:"):
        return None
    if not URL_RE.match(first_shard):
        path = Path(first_shard).parent / "classes.txt"
        return path.read_text() if path.is_file() else None
    try:
        stream = ShardStream(first_shard.rsplit("/", 1)[0] + "/classes.txt")
        try:
            return b"".join(iter(lambda: stream.read(1 << 16), b"")).decode("utf-8")
        finally:
            stream.close()
    except (OSError, UnicodeDecodeError):  # absent (404) or unreadable: scan the shards instead
        return None


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
        if classes is None:
            text = _classes_txt(self.shards[0])
            classes = None if text is None else [line.strip() for line in text.splitlines() if line.strip()]
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
                stream = ShardStream(shard) if is_url(shard) else None  # URLs: one streaming pass
                with tarfile.open(shard, "r:*") if stream is None else tarfile.open(fileobj=stream, mode="r|*") as tar:
                    images, labels = set(), []
                    for member in tar:
                        folder, name = posixpath.split(member.name)
                        stem, _, ext = name.partition(".")
                        if ext.lower() in IMAGE_KEYS:
                            images.add(posixpath.join(folder, stem))
                        elif ext.lower() == "cls":
                            text = tar.extractfile(member).read().strip()
                            if text.isdigit():
                                labels.append(int(text))
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # it exists (checked) but is broken
                warnings.warn(f"{shard} is unreadable ({e}); its samples will be skipped", stacklevel=3)
                continue
            finally:
                if stream is not None:
                    stream.close()
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
