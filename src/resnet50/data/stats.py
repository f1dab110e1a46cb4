"""Channel mean and std of each dataset's training images, pixel values scaled to 0..1 (what Normalize uses)."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Computed over the 50,000 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Computed over the 60,000 training images (Fashion-MNIST: 0.28604, 0.35302 from the official files).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what Pillow's convert("L") uses


def stats_for(mean: tuple[float, ...], std: tuple[float, ...], in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's mean and std for images read with ``in_chans`` channels.

    Gray data read as RGB has three equal channels, so its statistics are exact copies. RGB data read as gray gets
    the luma of the means (exact) and the luma of the stds, an upper bound that is exact when the channels move
    together (nearly so for natural images).
    """
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if len(mean) == 1 and in_chans == 3:
        return tuple(mean) * 3, tuple(std) * 3
    if len(mean) == 3 and in_chans == 1:
        return (round(sum(w * m for w, m in zip(_LUMA, mean)), 4),), (round(sum(w * s for w, s in zip(_LUMA, std)), 4),)
    raise ValueError(f"no rule for {len(mean)}-channel statistics read with in_chans={in_chans}")
