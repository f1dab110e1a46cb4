"""Image transforms without torchvision: PIL images in, normalised float tensors (C, H, W) out.

    training (ImageNet)   RandomResizedCrop(image_size, scale, ratio) -> RandomHorizontalFlip(hflip) -> ToTensor
                          -> Normalize                                                 (Szegedy et al. 2015; He et al.)
    training ("pad")      Resize + CenterCrop as for evaluation -> RandomCrop(image_size, pad) -> flip -> ...
                          (the paper's section 4.2 CIFAR augmentation: pad 4, random 32x32 crop, flip)
    evaluation            Resize(eval_size, shorter side) -> CenterCrop(image_size) -> ToTensor -> Normalize;
                          eval_size = image_size / crop_pct, ImageNet's 256 -> 224 at crop_pct 0.875
    10-crop evaluation    Resize(eval_size) -> TenCrop(image_size) -> (10, C, H, W): the paper's 10-crop testing
    options (training)    auto_augment (TrivialAugmentWide or RandAugment) after the flip, random erasing after
                          Normalize: see augment.py

Randomness comes from torch, never Python's ``random``: every random transform takes ``generator`` (a
``torch.Generator``) or, when it is None, uses torch's global generator. Seeding torch therefore fixes the
augmentation, in DataLoader workers too, where torch seeds each worker from the loader's generator (the loader in
this package goes further and seeds each sample from (seed, epoch, index)).

Crops, flips and TenCrop also accept tensors (..., H, W), for test-time augmentation on batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from .augment import RandomErasing, build_auto_augment
from .decode import MAX_PIXELS, decode_image
from .stats import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    stats_for,
)

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ImageLike = Image.Image | Tensor
INTERPOLATIONS = tuple(_RESAMPLE)


@dataclass(frozen=True)
class TransformConfig:
    """Everything that fixes the input pipeline. Saved with every run; unknown keys are errors (a dataclass)."""

    image_size: int = 224
    crop_pct: float = 0.875  # evaluation: resize the shorter side to image_size / crop_pct, then centre crop
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: fraction of the image's area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio range, sampled log-uniformly
    hflip: float = 0.5  # probability of a horizontal flip in training
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"
    in_chans: int = 3
    train_crop: Literal["random_resized", "pad"] = "random_resized"
    pad: int = 4  # train_crop="pad": zero padding on each side before the random crop
    # Decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still covers what the pipeline needs (draft_size
    # below); figures in docs/benchmarks-data.md. Off by default: it changes pixels slightly.
    jpeg_draft: bool = False
    # Training only, after the crop and flip: '' (none), 'ta_wide' (TrivialAugmentWide) or a timm-style RandAugment
    # string ('rand-m6-mstd0.5-inc1'); then, after normalisation, random erasing with this probability.
    auto_augment: str = ""
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.image_size < 1:
            raise UserError(f"image_size must be positive, not {self.image_size}")
        if self.crop_pct <= 0:
            raise UserError(f"crop_pct must be positive, not {self.crop_pct}")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise UserError(f"scale must be (low, high) with 0 < low <= high <= 1, not {self.scale}")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise UserError(f"ratio must be (low, high) with 0 < low <= high, not {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise UserError(f"hflip is a probability in [0, 1], not {self.hflip}")
        if self.interpolation not in _RESAMPLE:
            raise UserError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(_RESAMPLE)}")
        if self.in_chans not in (1, 3):
            raise UserError(f"in_chans must be 1 (gray) or 3 (RGB), not {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise UserError(f"mean and std need {self.in_chans} value(s) for in_chans={self.in_chans}, got "
                            f"{len(self.mean)} and {len(self.std)}; use the dataset's (dataset.mean, dataset.std)")
        if any(s <= 0 for s in self.std):
            raise UserError(f"std values must be positive, not {self.std}")
        if self.train_crop not in ("random_resized", "pad"):
            raise UserError(f"unknown train_crop {self.train_crop!r}; use 'random_resized' or 'pad'")
        build_auto_augment(self.auto_augment)  # raises a UserError for an unknown policy
        if not 0 <= self.random_erasing <= 1:
            raise UserError(f"random_erasing is a probability in [0, 1], not {self.random_erasing}")

    @property
    def eval_size(self) -> int:
        """The shorter side before the evaluation centre crop: floor(image_size / crop_pct), as timm does.
        A crop_pct above 1 makes it smaller than the crop, which CenterCrop fills with zero padding."""
        return max(1, math.floor(self.image_size / self.crop_pct + 1e-6))  # 1e-6: 32 / (32 / 28) must give 28

    def draft_size(self, train: bool) -> int | None:
        """Shorter side to decode JPEGs at (``build_dataset(draft_size=...)``), or None when jpeg_draft is off.

        Evaluation needs eval_size. Training with RandomResizedCrop asks for image_size / sqrt(scale[0]), at which
        a square crop of the smallest area still has image_size pixels a side (792 px at 224 and 0.08: most
        ImageNet photos are decoded whole)."""
        if not self.jpeg_draft:
            return None
        if train and self.train_crop == "random_resized":
            return math.ceil(self.image_size / math.sqrt(self.scale[0]))
        return self.eval_size


IMAGENET = TransformConfig()
CIFAR10 = TransformConfig(image_size=32, crop_pct=1.0, train_crop="pad", mean=CIFAR10_MEAN, std=CIFAR10_STD)
CIFAR100 = TransformConfig(image_size=32, crop_pct=1.0, train_crop="pad", mean=CIFAR100_MEAN, std=CIFAR100_STD)
# 28 x 28 images centred on a 32 x 32 canvas with 2 px of zero padding, as LeNet-5 did for MNIST (the network
# needs at least 32 px), then the CIFAR-style random crop and flip for training.
FASHION_MNIST = TransformConfig(image_size=32, crop_pct=32 / 28, train_crop="pad", mean=FASHION_MNIST_MEAN,
                                std=FASHION_MNIST_STD, in_chans=1)


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation contract a checkpoint carries: decode, resize the shorter side to ``resize`` px, centre-crop
    ``crop`` px, scale to 0..1, normalise with ``mean`` and ``std`` (one value per channel). Every path that feeds a
    trained model (evaluate, predict, serve, quantize, the benchmarks) builds its pipeline from this through
    :func:`eval_transform`, so they all see the same pixels. ImageNet's default is 256 -> 224 (crop_pct 0.875)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown preprocessing key(s) {sorted(unknown)} in checkpoint metadata")
        return cls(**d)

    def to_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def of(cls, cfg: "TransformConfig") -> "Preprocessing":
        """The evaluation half of a TransformConfig (what a run saves with its weights)."""
        return cls(cfg.eval_size, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)

    def transform_config(self, in_chans: int) -> "TransformConfig":
        """The TransformConfig whose evaluation pipeline is this one, for images read with ``in_chans`` channels."""
        pre = self.for_channels(in_chans)
        return TransformConfig(image_size=pre.crop, crop_pct=pre.crop / pre.resize, mean=pre.mean, std=pre.std,
                               interpolation=pre.interpolation, in_chans=in_chans)

    def for_channels(self, in_chans: int) -> "Preprocessing":
        """The same contract with mean/std for ``in_chans`` channels (gray statistics repeated for RGB, luma for
        gray: ``stats.stats_for``). Raises UserError when no rule converts them."""
        try:
            mean, std = stats_for(self.mean, self.std, in_chans)
        except ValueError as e:
            raise UserError(f"preprocessing {e}; save the checkpoint with {in_chans}-channel mean/std") from None
        return Preprocessing(self.resize, self.crop, mean, std, self.interpolation)

    def resized(self, crop: int) -> "Preprocessing":
        """The same contract at another crop size, the resize scaled with it (256 -> 224 becomes 320 -> 280)."""
        return Preprocessing(round(crop * self.resize / self.crop), crop, self.mean, self.std, self.interpolation)


def eval_transform(pre: Preprocessing, in_chans: int, *, ten_crop: bool = False) -> Compose:
    """The one evaluation pipeline: PIL image -> normalised (C, crop, crop) tensor, or (10, C, crop, crop) with
    ``ten_crop`` (the paper's 10-crop testing)."""
    return build_transform(pre.transform_config(in_chans), train=False, ten_crop=ten_crop)


def preprocess(source: bytes | str | os.PathLike, loaded: Any, transform: Compose | None = None,
               max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """One image (bytes or a path) -> float32 C x H x W, as the model ``loaded`` expects (any record with
    ``preprocessing`` and ``in_chans``: ``weights.Checkpoint``); ``transform`` is its :func:`eval_transform`, built
    once by callers with many images. Raises ImageDecodeError."""
    # Full decoding (no reduced-scale JPEG draft): the same pixels evaluation sees, whose default is the same.
    img = decode_image(source, loaded.in_chans, max_pixels=max_pixels, name=name)
    transform = transform or eval_transform(loaded.preprocessing, loaded.in_chans)
    return transform(img).numpy()


def default_transform_config(dataset: Any, image_size: int | None = None) -> TransformConfig:
    """The config that suits a dataset: the pad-and-crop recipe at 32 px (or ``image_size``) for small fixed-size
    images (``dataset.image_size`` <= 64), the ImageNet recipe otherwise; mean, std and in_chans from the dataset."""
    native = getattr(dataset, "image_size", None)
    base = dict(mean=tuple(dataset.mean), std=tuple(dataset.std), in_chans=dataset.in_chans)
    if native is not None and native <= 64:
        size = image_size or max(32, native)
        return TransformConfig(image_size=size, crop_pct=size / max(native, 1) if native < size else 1.0,
                               train_crop="pad", **base)
    return TransformConfig(image_size=image_size or 224, **base)


# ---------------------------------------------------------------------------------------------------- randomness


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, high]."""
    return int(torch.randint(high + 1, (), generator=generator))


def _size(img: ImageLike) -> tuple[int, int]:
    """(width, height)."""
    if isinstance(img, Tensor):
        return img.shape[-1], img.shape[-2]
    return img.size


def _crop(img: ImageLike, left: int, top: int, width: int, height: int) -> ImageLike:
    if isinstance(img, Tensor):
        return img[..., top:top + height, left:left + width]
    return img.crop((left, top, left + width, top + height))


def _flip(img: ImageLike) -> ImageLike:
    return img.flip(-1) if isinstance(img, Tensor) else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def hflip(images: Tensor) -> Tensor:
    """Mirror images left to right (the last axis): flip test-time augmentation averages f(x) and f(hflip(x))."""
    return images.flip(-1)


# ---------------------------------------------------------------------------------------------------- transforms


class Compose:
    """Apply transforms in order, passing the generator to each."""

    def __init__(self, steps: Sequence[Callable[..., Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, x: Any, generator: torch.Generator | None = None) -> Any:
        for step in self.steps:
            x = step(x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"  {s!r}\n" for s in self.steps) + ")"


class RandomResizedCrop:
    """A crop of random area (``scale`` of the image) and aspect ratio (``ratio``, log-uniform), resized to
    ``size`` x ``size``: up to 10 tries for a crop that fits, else the central crop of the closest allowed ratio."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 interpolation: Interpolation = "bilinear") -> None:
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def params(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(left, top, crop width, crop height), always inside the image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return _randint(width - w, generator), _randint(height - h, generator), w, h
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        left, top, w, h = self.params(*img.size, generator)
        # resize(box=...) crops and resizes in one pass, with Pillow's antialiasing when shrinking.
        return img.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=(left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio}, {self.interpolation})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> ImageLike:
        if self.p > 0 and float(torch.rand((), generator=generator)) < self.p:
            return _flip(img)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (the longer side is truncated, as
    torchvision does: 500 x 375 -> 341 x 256)."""

    def __init__(self, size: int, interpolation: Interpolation = "bilinear") -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        w, h = img.size
        if min(w, h) == self.size:
            return img
        new = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        return img.resize(new, _RESAMPLE[self.interpolation])

    def __repr__(self) -> str:
        return f"Resize({self.size}, {self.interpolation})"


def _center_box(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of a centred size x size crop: round((W - size) / 2), as torchvision does."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def _pad(img: ImageLike, left: int, top: int, right: int, bottom: int) -> ImageLike:
    """Zero padding on each side."""
    if isinstance(img, Tensor):
        return torch.nn.functional.pad(img, (left, right, top, bottom))
    w, h = img.size
    canvas = Image.new(img.mode, (w + left + right, h + top + bottom))
    canvas.paste(img, (left, top))
    return canvas


class CenterCrop:
    """The central ``size`` x ``size`` crop; an image smaller than that is first zero-padded around its centre."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> ImageLike:
        w, h = _size(img)
        if w < self.size or h < self.size:
            pw, ph = max(self.size - w, 0), max(self.size - h, 0)
            img = _pad(img, pw // 2, ph // 2, pw - pw // 2, ph - ph // 2)
            w, h = _size(img)
        left, top = _center_box(w, h, self.size)
        return _crop(img, left, top, self.size, self.size)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomCrop:
    """Zero-pad ``padding`` pixels on each side, then take a random ``size`` x ``size`` crop."""

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size, self.padding = size, padding

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> ImageLike:
        if self.padding:
            img = _pad(img, self.padding, self.padding, self.padding, self.padding)
        w, h = _size(img)
        if w < self.size or h < self.size:
            raise UserError(f"RandomCrop({self.size}) got a {w}x{h} image; resize it first")
        return _crop(img, _randint(w - self.size, generator), _randint(h - self.size, generator), self.size, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class TenCrop:
    """The four corner crops and the centre crop, then the same five of the mirrored image (He et al. 2015, sec.
    3.4: the "10-crop testing" of Krizhevsky et al.). Order: top-left, top-right, bottom-left, bottom-right,
    centre, then those five flipped. Returns a list of 10 images or tensors."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> list[ImageLike]:
        w, h = _size(img)
        s = self.size
        if w < s or h < s:
            raise UserError(f"TenCrop({s}) got a {w}x{h} image; resize it to at least {s} px first")
        five = [
            _crop(img, 0, 0, s, s), _crop(img, w - s, 0, s, s), _crop(img, 0, h - s, s, s),
            _crop(img, w - s, h - s, s, s), CenterCrop(s)(img),
        ]
        mirrored = _flip(img)
        return five + [
            _crop(mirrored, 0, 0, s, s), _crop(mirrored, w - s, 0, s, s), _crop(mirrored, 0, h - s, s, s),
            _crop(mirrored, w - s, h - s, s, s), CenterCrop(s)(mirrored),
        ]

    def __repr__(self) -> str:
        return f"TenCrop({self.size})"


class ToTensor:
    """PIL image (mode L or RGB) -> float32 tensor (C, H, W) in [0, 1]."""

    def __init__(self, in_chans: int | None = None) -> None:
        self.in_chans = in_chans

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        array = np.array(img, dtype=np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.in_chans is not None and array.shape[2] != self.in_chans:
            raise UserError(f"image has {array.shape[2]} channel(s) but the transform expects in_chans="
                            f"{self.in_chans}; build the dataset with in_chans={self.in_chans}")
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel, on a float tensor (C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class _Each:
    """Apply a transform to each image of a list and stack the results: (N, C, H, W)."""

    def __init__(self, transform: Callable[..., Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: list[Any], generator: torch.Generator | None = None) -> Tensor:
        return torch.stack([self.transform(img, generator) for img in images])

    def __repr__(self) -> str:
        return f"Each({self.transform!r})"


def build_transform(cfg: TransformConfig, train: bool, *, ten_crop: bool = False) -> Compose:
    """The training or evaluation pipeline for ``cfg`` (see the module docstring). ``ten_crop`` (evaluation only)
    gives a (10, C, H, W) tensor per image, so batches are (B, 10, C, H, W)."""
    resample = cfg.interpolation
    tensor = [ToTensor(cfg.in_chans), Normalize(cfg.mean, cfg.std)]
    fit = [Resize(cfg.eval_size, resample), CenterCrop(cfg.image_size)]
    if ten_crop:
        if train:
            raise UserError("ten_crop is an evaluation transform; use train=False")
        if cfg.eval_size < cfg.image_size:
            raise UserError(f"ten_crop needs eval_size >= image_size, got {cfg.eval_size} < {cfg.image_size}; "
                            "use crop_pct <= 1")
        return Compose([Resize(cfg.eval_size, resample), TenCrop(cfg.image_size), _Each(Compose(tensor))])
    if not train:
        return Compose(fit + tensor)
    steps = fit + [RandomCrop(cfg.image_size, cfg.pad)] if cfg.train_crop == "pad" else \
        [RandomResizedCrop(cfg.image_size, cfg.scale, cfg.ratio, resample)]
    steps.append(RandomHorizontalFlip(cfg.hflip))
    policy = build_auto_augment(cfg.auto_augment, cfg.interpolation)
    if policy is not None:
        steps.append(policy)
    steps += tensor
    if cfg.random_erasing:
        steps.append(RandomErasing(cfg.random_erasing))
    return Compose(steps)
