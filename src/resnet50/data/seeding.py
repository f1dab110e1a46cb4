"""Seeds and orders that depend only on integers: the same on every machine, Python, numpy and torch version.

``splitmix64`` (Steele, Lea and Flood 2014) mixes a seed with an index into 64 well-spread bits. The held-out
validation splits, the embedded subset and the per-sample augmentation seeds are all built from it, so they never
change when a library changes its random streams (numpy makes no such promise for ``Generator``).
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, index, ...); order matters."""
    h = 0
    for v in values:
        h = _splitmix64((h ^ (int(v) & _MASK)) & _MASK)
    return h >> 1  # torch.Generator.manual_seed wants a value that fits in int64


def hash64(seed: int, index: np.ndarray) -> np.ndarray:
    """Vectorised ``splitmix64(seed_mix ^ index)`` for an integer array: a per-element sort key."""
    x = np.asarray(index, dtype=np.uint64) ^ np.uint64(_splitmix64(int(seed) & _MASK))
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)
