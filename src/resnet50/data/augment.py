"""Automatic augmentation policies on PIL images, without torchvision, and random erasing on tensors.

    ta_wide                    TrivialAugmentWide (Müller and Hutter 2021; torchvision's ``TrivialAugmentWide``, the
                               one the torchvision-v2 ResNet-50 recipe uses): one op drawn uniformly from 14, at a
                               magnitude drawn uniformly from 31 bins, with a random sign for the signed ops.
    rand-mM[-mstdS][-nN][-inc1]  RandAugment as timm spells it (Cubuk et al. 2020; ``rand-m6-mstd0.5-inc1`` in
                               "ResNet strikes back" A3): N ops (default 2) drawn from the list, each applied with
                               probability 0.5 at magnitude M of 10 plus Gaussian noise of std S; ``inc1`` picks the
                               op set whose strength grows with the magnitude (timm's "increasing" transforms).
    RandomErasing(p)           Zhong et al. 2020, as torchvision applies it after normalisation: with probability p
                               one rectangle of 2-33 % of the image, aspect 0.3-3.3 (log-uniform), set to 0.

Randomness comes from a ``torch.Generator`` (or torch's global one), like every transform of this package, so a
seeded sample is augmented the same way on every run and in any worker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

from ..errors import UserError

_NEAREST = Image.Resampling.NEAREST


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _choice(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def _affine(img: Image.Image, matrix: tuple[float, ...], resample, fill) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _fill(img: Image.Image, value: int | tuple[int, ...]) -> int | tuple[int, ...]:
    bands = len(img.getbands())
    if isinstance(value, int):
        return value if bands == 1 else (value,) * bands
    return value[0] if bands == 1 else tuple(value[:bands])


# One function per op: (image, magnitude as the op's own quantity, resample, fill) -> image.
def _shear_x(img, v, resample, fill):
    return _affine(img, (1, v, 0, 0, 1, 0), resample, fill)


def _shear_y(img, v, resample, fill):
    return _affine(img, (1, 0, 0, v, 1, 0), resample, fill)


def _translate_x(img, v, resample, fill):  # v in pixels
    return _affine(img, (1, 0, v, 0, 1, 0), resample, fill)


def _translate_y(img, v, resample, fill):
    return _affine(img, (1, 0, 0, 0, 1, v), resample, fill)


def _rotate(img, v, resample, fill):  # v in degrees
    return img.rotate(v, resample=resample, fillcolor=fill)


def _enhance(kind):
    def op(img, v, resample, fill):  # v: the enhancement factor (1 = unchanged)
        return kind(img).enhance(v)
    return op


def _posterize(img, v, resample, fill):  # v: bits kept (0 keeps none: black, as older Pillow gave)
    bits = int(v)
    if bits >= 8:
        return img
    return ImageOps.posterize(img, bits) if bits > 0 else img.point([0] * 256 * len(img.getbands()))


def _solarize(img, v, resample, fill):  # v: threshold (pixels at or above it are inverted; may be fractional)
    return ImageOps.solarize(img, v)


def _solarize_add(img, v, resample, fill, threshold=128):  # v: added to pixels below the threshold
    lut = [min(255, i + int(v)) if i < threshold else i for i in range(256)] * len(img.getbands())
    return img.point(lut)


def _autocontrast(img, v, resample, fill):
    return ImageOps.autocontrast(img)


def _equalize(img, v, resample, fill):
    return ImageOps.equalize(img)


def _invert(img, v, resample, fill):
    return ImageOps.invert(img)


def _identity(img, v, resample, fill):
    return img


_Op = Callable[..., Image.Image]


class TrivialAugmentWide:
    """torchvision's TrivialAugmentWide: the op table and the 31 magnitude bins of its ``_augmentation_space``
    (shear up to 0.99, translation up to 32 px, rotation up to 135 degrees, enhancement factors 1 +- 0.99,
    posterize 8 -> 2 bits, solarize threshold 255 -> 0); nearest-neighbour resampling, black fill."""

    BINS = 31

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        lin = lambda hi: [hi * i / (bins - 1) for i in range(bins)]  # noqa: E731
        self.ops: list[tuple[str, _Op, list[float] | None, bool]] = [
            ("Identity", _identity, None, False),
            ("ShearX", _shear_x, lin(0.99), True), ("ShearY", _shear_y, lin(0.99), True),
            ("TranslateX", _translate_x, lin(32.0), True), ("TranslateY", _translate_y, lin(32.0), True),
            ("Rotate", _rotate, lin(135.0), True),
            ("Brightness", _enhance(ImageEnhance.Brightness), lin(0.99), True),
            ("Color", _enhance(ImageEnhance.Color), lin(0.99), True),
            ("Contrast", _enhance(ImageEnhance.Contrast), lin(0.99), True),
            ("Sharpness", _enhance(ImageEnhance.Sharpness), lin(0.99), True),
            ("Posterize", _posterize, [8 - round(i / ((bins - 1) / 6)) for i in range(bins)], False),
            ("Solarize", _solarize, [255.0 * (1 - i / (bins - 1)) for i in range(bins)], False),
            ("AutoContrast", _autocontrast, None, False),
            ("Equalize", _equalize, None, False),
        ]

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        name, op, mags, signed = self.ops[_choice(len(self.ops), generator)]
        v = 0.0
        if mags is not None:
            v = mags[_choice(self.bins, generator)]
            if signed and _rand(generator) < 0.5:
                v = -v
        if name in ("Brightness", "Color", "Contrast", "Sharpness"):
            v = 1.0 + v
        elif name in ("TranslateX", "TranslateY"):
            v = int(v)  # whole pixels, as torchvision's _apply_op
        return op(img, v, _NEAREST, _fill(img, 0))

    def __repr__(self) -> str:
        return f"TrivialAugmentWide(bins={self.bins})"


# RandAugment as in timm's auto_augment.py: magnitude m in [0, 10] -> the op's quantity.
def _signed(v: float, generator) -> float:
    return -v if _rand(generator) < 0.5 else v


_RAND_LEVELS: dict[str, tuple[_Op, Callable[[float, torch.Generator | None, int], float]]] = {
    "AutoContrast": (_autocontrast, lambda m, g, w: 0.0),
    "Equalize": (_equalize, lambda m, g, w: 0.0),
    "Invert": (_invert, lambda m, g, w: 0.0),
    "Rotate": (_rotate, lambda m, g, w: _signed(m / 10 * 30.0, g)),
    "Posterize": (_posterize, lambda m, g, w: int(m / 10 * 4)),  # timm's original (decreasing) posterize
    "PosterizeIncreasing": (_posterize, lambda m, g, w: 4 - int(m / 10 * 4)),
    "Solarize": (_solarize, lambda m, g, w: min(256, int(m / 10 * 256))),
    "SolarizeIncreasing": (_solarize, lambda m, g, w: 256 - int(m / 10 * 256)),
    "SolarizeAdd": (_solarize_add, lambda m, g, w: int(m / 10 * 110)),
    "Color": (_enhance(ImageEnhance.Color), lambda m, g, w: m / 10 * 1.8 + 0.1),
    "ColorIncreasing": (_enhance(ImageEnhance.Color), lambda m, g, w: 1.0 + _signed(m / 10 * 0.9, g)),
    "Contrast": (_enhance(ImageEnhance.Contrast), lambda m, g, w: m / 10 * 1.8 + 0.1),
    "ContrastIncreasing": (_enhance(ImageEnhance.Contrast), lambda m, g, w: 1.0 + _signed(m / 10 * 0.9, g)),
    "Brightness": (_enhance(ImageEnhance.Brightness), lambda m, g, w: m / 10 * 1.8 + 0.1),
    "BrightnessIncreasing": (_enhance(ImageEnhance.Brightness), lambda m, g, w: 1.0 + _signed(m / 10 * 0.9, g)),
    "Sharpness": (_enhance(ImageEnhance.Sharpness), lambda m, g, w: m / 10 * 1.8 + 0.1),
    "SharpnessIncreasing": (_enhance(ImageEnhance.Sharpness), lambda m, g, w: 1.0 + _signed(m / 10 * 0.9, g)),
    "ShearX": (_shear_x, lambda m, g, w: _signed(m / 10 * 0.3, g)),
    "ShearY": (_shear_y, lambda m, g, w: _signed(m / 10 * 0.3, g)),
    "TranslateXRel": (_translate_x, lambda m, g, w: _signed(m / 10 * 0.45, g) * w),
    "TranslateYRel": (_translate_y, lambda m, g, w: _signed(m / 10 * 0.45, g) * w),
}
_RAND_TRANSFORMS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
_RAND_INCREASING = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


class RandAugment:
    """timm's RandAugment: ``num_ops`` ops drawn with replacement, each applied with probability ``prob`` at
    magnitude ``magnitude`` (of 10) plus N(0, ``magnitude_std``) noise clipped to [0, 10]; the training
    interpolation for the geometric ops and the ImageNet mean colour as fill, as timm does for ImageNet."""

    def __init__(self, magnitude: float = 9, num_ops: int = 2, magnitude_std: float = 0.0, increasing: bool = False,
                 prob: float = 0.5, fill: tuple[int, int, int] = (124, 116, 104),
                 interpolation: str = "bilinear") -> None:
        self.magnitude, self.num_ops, self.magnitude_std = magnitude, num_ops, magnitude_std
        self.increasing, self.prob, self.fill = increasing, prob, fill
        self.resample = getattr(Image.Resampling, interpolation.upper())
        self.names = _RAND_INCREASING if increasing else _RAND_TRANSFORMS

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for _ in range(self.num_ops):
            name = self.names[_choice(len(self.names), generator)]
            if _rand(generator) >= self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m += self.magnitude_std * float(torch.randn((), generator=generator))
            m = min(10.0, max(0.0, m))
            op, level = _RAND_LEVELS[name]
            img = op(img, level(m, generator, img.size[0] if name == "TranslateXRel" else img.size[1]), self.resample,
                     _fill(img, self.fill))
        return img

    def __repr__(self) -> str:
        return (f"RandAugment(m={self.magnitude}, n={self.num_ops}, mstd={self.magnitude_std}, "
                f"increasing={self.increasing}, p={self.prob})")


def build_auto_augment(spec: str, interpolation: str = "bilinear") -> TrivialAugmentWide | RandAugment | None:
    """'' (none), 'ta_wide', or a timm-style RandAugment string such as 'rand-m9-mstd0.5-inc1' or 'rand-m6-n3'
    (whose geometric ops resample with ``interpolation``; TrivialAugmentWide uses nearest, as torchvision)."""
    if not spec:
        return None
    if spec == "ta_wide":
        return TrivialAugmentWide()
    m = re.fullmatch(r"rand((?:-(?:m|n|mstd|inc)[0-9.]+)*)", spec)
    if m:
        kw = {"magnitude": 9.0, "num_ops": 2, "magnitude_std": 0.0, "increasing": False}
        for part in filter(None, m.group(1).split("-")):
            key, value = re.fullmatch(r"(mstd|m|n|inc)([0-9.]+)", part).groups()
            try:
                if key == "m":
                    kw["magnitude"] = float(value)
                elif key == "n":
                    kw["num_ops"] = int(value)
                elif key == "mstd":
                    kw["magnitude_std"] = float(value)
                else:
                    kw["increasing"] = bool(int(value))
            except ValueError:
                break
        else:
            if 0 <= kw["magnitude"] <= 10 and kw["num_ops"] >= 1:
                return RandAugment(**kw, interpolation=interpolation)
    raise UserError(f"unknown auto_augment {spec!r}; use '' (none), 'ta_wide' (TrivialAugmentWide) or a RandAugment "
                    "string such as 'rand-m9-mstd0.5-inc1' (magnitude 0-10, n >= 1)")


class RandomErasing:
    """With probability ``p``, one rectangle of ``scale`` of the area and aspect in ``ratio`` (log-uniform), set to
    ``value`` on a normalised (C, H, W) tensor; up to 10 tries for a rectangle that fits, else nothing."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> None:
        if not 0 <= p <= 1:
            raise UserError(f"random_erasing is a probability in [0, 1], not {p}")
        self.p, self.scale, self.ratio, self.value = p, scale, ratio, value

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.p == 0 or _rand(generator) >= self.p:
            return x
        h, w = x.shape[-2:]
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * _rand(generator))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * _rand(generator))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = int(torch.randint(h - eh + 1, (), generator=generator))
                left = int(torch.randint(w - ew + 1, (), generator=generator))
                x[..., top:top + eh, left:left + ew] = self.value
                return x
        return x

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"
