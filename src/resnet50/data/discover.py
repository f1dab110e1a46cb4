"""Finding image files in folders: the one rule that training, evaluation, prediction and quantisation share.

- Hidden entries are skipped, files and folders alike: names starting with ``.`` (macOS AppleDouble ``._x.png``
  files, ``.DS_Store``, ``.ipynb_checkpoints/``, ``.git/``).
- A folder contributes the files whose extension (any case) is an image extension (``IMAGE_EXTENSIONS``).
- Links are followed, but each real file is taken once and each real folder entered once: a link back to a parent
  (a loop) or a second link to the same file is skipped and reported, never walked forever or counted twice.
- Results are sorted by path, so every command sees the same files in the same order.

``expand_inputs`` applies the rule to a command's inputs: files, folders and glob patterns.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .decode import IMAGE_EXTENSIONS, Skipped


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike, recursive: bool = True,
                seen: tuple[set[str], set[str]] | None = None) -> tuple[list[Path], list[Skipped]]:
    """The image files below ``folder`` (by the rules above), sorted, and the links skipped with their reason.

    ``seen``: (real folders, real files) already taken, shared between walks of one dataset (a class folder
    linked into another class is then walked once); give the dataset root among the folders."""
    folder = Path(folder)
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen_dirs, seen_files = seen if seen is not None else (set(), set())
    seen_dirs.add(os.path.realpath(folder))
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(str(current), f"cannot list the folder: {e.strerror or e}"))
            continue
        for entry in entries:
            if is_hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                if not recursive:
                    continue
                real = os.path.realpath(path)
                if real in seen_dirs:
                    skipped.append(Skipped(str(path), f"a link to {real}, a folder already walked (a loop or a "
                                                      "duplicate); skipped"))
                    continue
                seen_dirs.add(real)
                stack.append(path)
            elif is_image_name(entry.name):
                real = os.path.realpath(path)
                if not os.path.exists(real):
                    skipped.append(Skipped(str(path), "a broken link; skipped"))
                    continue
                if real in seen_files:
                    skipped.append(Skipped(str(path), f"the same file as {real}, already taken; skipped"))
                    continue
                seen_files.add(real)
                files.append(path)
    return sorted(files), skipped


def expand_inputs(specs: Sequence[str | os.PathLike], skipped: list | None = None) -> list[Path]:
    """Files, folders and glob patterns (a command's inputs) -> a list of files. A named file is kept whatever its
    extension (it is reported if it does not decode); a folder contributes its image files by :func:`find_images`'s
    rule; links it skips are appended to ``skipped``. A pattern's matches are filtered by the same rule."""
    files: list[Path] = []
    for spec in specs:
        s = str(spec)
        p = Path(s)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found, links = find_images(p)
            if skipped is not None:
                skipped.extend(links)
            if not found:
                raise UserError(f"folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif any(c in s for c in "*?["):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True)
                           if Path(q).is_file() and not is_hidden(Path(q).name))
            if not found:
                raise UserError(f"pattern {s!r} matches no files; check it (quote it so the shell leaves it to us)")
            files += found
        else:
            raise UserError(f"{s} does not exist; give image files, folders or glob patterns")
    if not files:
        raise UserError("no input images given")
    return files
