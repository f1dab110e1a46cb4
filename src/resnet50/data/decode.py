"""Image decoding: bytes or a path in, a PIL image in mode ``RGB`` (``in_chans=3``) or ``L`` (``in_chans=1``) out.

Every image a dataset returns goes through :func:`decode_image`, so every format sees the same rules:

- JPEG, PNG, WebP, BMP and TIFF are read by Pillow. When the caller knows the size it will resize to, JPEGs are
  decoded with ``Image.draft`` at the smallest DCT scale (1/2, 1/4, 1/8) that still covers that size, which skips
  most of the decoder's work (figures in docs/benchmarks-data.md).
- Modes are converted, not reinterpreted:
    L, 1, I;16, I, F -> gray; replicated to RGB for ``in_chans=3``.
    16-bit (I;16*, I) is scaled 0..65535 -> 0..255 (x / 257, rounded); Pillow's own ``convert("L")`` clips at 255,
    which turns every 16-bit image nearly white. Mode I (32-bit int) is read as 16-bit, since that is what 16-bit
    PNG and TIFF files become. F (float) is clipped to 0..255 as Pillow does.
    CMYK, YCbCr, LAB, HSV -> RGB by Pillow (Adobe's inverted CMYK JPEGs are handled by its JPEG reader).
    P (palette) -> RGB through the palette; with a transparency entry it is treated as RGBA.
    LA, PA, RGBA, La, RGBa (alpha) -> composited on white. Dropping the alpha instead shows whatever colour the
    encoder left under fully transparent pixels (often black, sometimes garbage), so a product photo on a transparent
    background would look different from the same photo on white; white is what a browser shows.
    RGB -> gray uses Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B).
- EXIF orientation (tag 0x0112, all eight values) is applied, so a phone photo stored sideways with
  "Orientation = 6" comes out upright, as every viewer shows it (``ImageOps.exif_transpose``). Training,
  evaluation, prediction and serving all decode here, so all of them see it upright.
- Decompression bombs: an image whose header claims more than ``max_pixels`` (default 64 Mpx, e.g. 8192 x 8192) is
  refused before its pixels are decoded. That limit is the only one: Pillow's own (about 179 Mpx) is lifted while
  the header is read, so a genuine larger image decodes when ``max_pixels`` admits it.
- Every failure (unreadable file, truncated or corrupt data, bomb) raises :class:`ImageDecodeError`, a
  :class:`~resnet50.errors.UserError` that carries the file's name; the loader skips and counts such files.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import UserError

MAX_PIXELS = 64 * 1024 * 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_ALPHA_MODES = ("LA", "PA", "RGBA", "La", "RGBa")
_GRAY_MODES = ("L", "1")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()  # Pillow's limit is a module global: lift it for one header read at a time


def _open(source: bytes | str | os.PathLike) -> Image.Image:
    """Image.open with Pillow's decompression-bomb limit lifted (our ``max_pixels`` is checked by the caller)."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF Orientation tag says (one of 8 values: mirrorings and quarter turns)."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: keep the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if orientation in range(2, 9) else img


class ImageDecodeError(UserError):
    """One file could not be decoded. ``path`` names it; the loader skips it and reports it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason}")
        self.path = path
        self.reason = reason


class ImageTooLarge(ImageDecodeError):
    """The header claims more pixels than ``max_pixels`` allows (checked before any pixel is decoded)."""

    def __init__(self, path: str, pixels: int, width: int, height: int, max_pixels: int) -> None:
        super().__init__(path, f"{width}x{height} = {pixels} pixels exceeds max_pixels={max_pixels} (a decompression "
                               "bomb guard); raise the limit (--max-pixels) if the image is genuine")
        self.pixels = pixels


class Skipped(NamedTuple):
    """A sample that could not be read: where it was (a file, or ``shard.tar:key``) and why. Loaders carry these
    in place of the sample instead of raising, so one bad file never stops a long run."""

    path: str
    reason: str


def decode_image(
    source: bytes | str | os.PathLike,
    in_chans: int = 3,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
    exif_upright: bool = True,
) -> Image.Image:
    """Decode ``source`` (encoded bytes or a file path) to a loaded PIL image in mode RGB or L.

    ``draft_size``: the shorter side the caller will resize to; a JPEG is decoded at the smallest DCT scale whose
    shorter side is still at least this (never smaller). ``name`` is used in error messages for bytes sources.
    ``exif_upright``: turn the image as its EXIF Orientation says (False: the pixels as stored).
    """
    if in_chans not in (1, 3):
        raise UserError(f"in_chans must be 1 (gray) or 3 (RGB), not {in_chans}")
    label = name if name is not None else (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        img = _open(source)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLarge(label, width * height, width, height, max_pixels)
        if draft_size is not None and img.format == "JPEG":
            scale = min(width, height) / draft_size
            # draft() keeps both sides >= the requested size, so ask for the image's aspect at the target scale.
            if scale > 1:
                img.draft(img.mode, (round(width / scale), round(height / scale)))
        img.load()
        return to_mode(upright(img) if exif_upright else img, in_chans)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(label, f"{e} (a decompression bomb guard)") from None
    except Image.UnidentifiedImageError:
        # Pillow's message names the file object it read from (<_io.BytesIO object at 0x...>): say it ourselves
        size = len(source) if isinstance(source, bytes) else _size_of(source)
        what = "empty (0 bytes)" if size == 0 else "not an image format Pillow reads"
        raise ImageDecodeError(label, f"cannot identify image file: {what}") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as e:
        # OSError covers a missing or unreadable file, "image file is truncated" and unknown formats.
        raise ImageDecodeError(label, str(e) or type(e).__name__) from None


def _size_of(path: str | os.PathLike) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """Convert a loaded image of any Pillow mode to RGB (``in_chans=3``) or L (``in_chans=1``); rules above."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in _ALPHA_MODES:
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("RGB")
    elif mode in _WIDE_GRAY_MODES:
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    elif mode in _GRAY_MODES:
        img = img.convert("L")
    elif mode != "RGB":
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    want = "RGB" if in_chans == 3 else "L"
    return img if img.mode == want else img.convert(want)
