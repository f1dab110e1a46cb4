"""Writing files: atomic writes, output folders, figures. Every writer of the toolkit goes through here, so a full
or read-only disk, or an output path that is a file, is one clear error wherever it happens.

- ``atomic_path(path)``: a temporary file beside ``path``; on success it is fsynced and renamed over ``path``, on
  failure removed. A crash or a full disk mid-write never leaves a half-written file under the final name, and
  the previous file of that name stays whole.
- ``output_dir(path, flag)``: create a folder to write into, or say in one line why it cannot be.
- ``figure(...)`` / ``save_figure(fig, path)``: matplotlib on its file-only (Agg) backend, written atomically.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# Writers that fail on a full disk without an OSError say so in their own words: safetensors ("No space left on
# device (os error 28)"), torch.save's zip writer ("unexpected pos", "file write failed"), ONNX's protobuf writer.
_DISK_FULL_WORDS = ("no space left", "unexpected pos", "file write failed", "disk quota", "errno 28", "os error 28")
_LOW_SPACE = 1 << 20  # bytes: below this much free space a failed write is taken as a full disk


def _why(e: BaseException, folder: Path) -> str | None:
    """A one-line reason when ``e`` is an environment fault of the disk (full, read-only, no permission)."""
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on the device; free some space or write elsewhere"
        if e.errno == errno.EROFS:
            return "the file system is read-only; write elsewhere"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "permission denied; write elsewhere or fix the folder's permissions"
        return f"{e.strerror or e}; check free space and permissions"
    text = str(e).lower()
    try:
        low = shutil.disk_usage(folder).free < _LOW_SPACE
    except OSError:
        low = False
    if low or any(w in text for w in _DISK_FULL_WORDS):
        return "no space left on the device; free some space or write elsewhere"
    return None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` for a writer; on success fsync it and rename it over ``path``.

    Errors: ``UserError`` when the folder is missing or is a file, and when the disk is full, read-only or not
    writable (whatever the writer raised); the temporary file is removed in every case."""
    path = Path(path)
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise UserError(f"cannot write {path}: {path.parent} {what}; choose another output path")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; choose a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"could not write {path}: {_why(e, path.parent)}") from e
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and some writers (safetensors) replace the file: set the usual permissions last
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except UserError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        why = _why(e, path.parent)
        if why is None:
            raise
        raise UserError(f"could not write {path}: {why}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) to write into; ``flag`` names the option that chose it.

    Errors: ``UserError`` when ``path`` or a parent is an existing file, or the folder cannot be created."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {path}: {p} is a file, not a folder; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({_why(e, path)})") from e
    return path


def output_file(path: str | os.PathLike, flag: str = "--out", create_parent: bool = False) -> Path:
    """Check before any work that ``path`` can be written: its folder exists and is a folder (``create_parent``:
    create it as :func:`output_dir` does), and it is not one.

    Errors: ``UserError`` naming ``flag``, the option that chose the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if create_parent:
        output_dir(path.parent, flag)
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: {parent} {what}; choose another {flag}")
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return Path(path)
