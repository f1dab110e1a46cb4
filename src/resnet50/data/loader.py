"""Loaders: batches of decoded, transformed samples, with unreadable files skipped and an exact mid-epoch resume.

Batch format. Iterating a :class:`Loader` yields :class:`Batch` named tuples::

    images   float32 (B, C, H, W), normalised; (B, 10, C, H, W) with a ten-crop transform
    labels   int64 (B,)
    skipped  tuple of Skipped(path, reason): samples of this batch that could not be read; they are not in
             images / labels, so B = batch_size - len(skipped) (or fewer in an epoch's last batch)

A batch in which every sample failed is still yielded, empty (``labels.numel() == 0``, ``images`` of shape (0,)),
so that its ``skipped`` records reach the caller: skip it. Unpack as ``for images, labels, skipped in loader``.

Skipped files. A file that cannot be read (missing, truncated, corrupt, a decompression bomb, a tar shard that breaks
off) raises ``ImageDecodeError`` in the dataset; the loader catches exactly that error, in the worker, and hands a
``Skipped`` record to the collate function in place of the sample. Records travel with their batch to the main
process, which collects them: ``loader.skipped`` lists every ``Skipped`` of the current epoch (reset when an epoch's
iteration starts), so after an epoch ``len(loader.skipped)`` is its count. Any other exception is a bug and stops
the run.

Order and randomness. Map-style datasets are read through :class:`ResumableSampler`, which produces the same
indices as ``torch.utils.data.DistributedSampler`` for the same seed and epoch (one replica when torch.distributed
is not initialised). Each sample's augmentation is seeded from (seed, epoch, index) (about 5 us a sample), so the
augmented data are the same whatever the number of workers and after a resume, and loading never moves the
caller's global generator. ``loader.state_dict()`` is ``{"epoch", "consumed"}`` (plus
the batch size, world size and seed it is valid for); ``load_state_dict`` makes the next iteration yield exactly the
remaining batches of that epoch. Iterating to the end of an epoch moves to the next (``set_epoch`` also works).

WebDataset shards (an IterableDataset) are split by the dataset itself across ranks and workers; their workers are
restarted each epoch so they see the new epoch, and a mid-epoch resume replays the epoch's first batches (decoding
them again) and drops them, which is exact because the order and the augmentation depend only on seed and epoch.

Typical use::

    loader = build_loader(train_set, 256, train=True, workers=8, seed=0)
    loader.load_state_dict(checkpoint["loader"])            # when resuming
    for epoch in range(loader.epoch, epochs):
        for images, labels, skipped in loader:
            ...                                             # checkpoint["loader"] = loader.state_dict()
        print(f"epoch {epoch}: skipped {len(loader.skipped)} files")
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..errors import UserError
from .decode import ImageDecodeError, Skipped
from .seeding import mix_seed


class Batch(NamedTuple):
    images: Tensor
    labels: Tensor
    skipped: tuple[Skipped, ...]


def collate(items: list[Any]) -> Batch:
    """Stack the readable samples; carry the ``Skipped`` records of the others."""
    good = [item for item in items if not isinstance(item, Skipped)]
    skipped = tuple(item for item in items if isinstance(item, Skipped))
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.int64), skipped)
    if not isinstance(good[0][0], Tensor):
        raise UserError(f"dataset samples are {type(good[0][0]).__name__}, not tensors; set the dataset's transform "
                        "to build_transform(...) before building a loader")
    return Batch(torch.stack([x for x, _ in good]), torch.tensor([int(y) for _, y in good], dtype=torch.int64), skipped)


class ResumableSampler(Sampler):
    """This rank's sample order for one epoch, resumable from any position.

    The order is torch's ``DistributedSampler``'s for the same seed and epoch: a ``randperm`` seeded with
    seed + epoch (or 0..n-1 without shuffling); with ``pad`` (training) the list is extended by repeating its start
    until every rank gets ceil(n / replicas) samples, without it (evaluation) each sample is seen exactly once and
    ranks may differ by one. Yields ``(epoch, index)`` so a worker can seed each sample's augmentation.

    ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; torchvision's ``RASampler``, the torchvision-v2
    recipe's ``ra_reps=4``): every index of the permutation appears ``repeats`` times in a row, so consecutive
    copies go to different ranks (or sit in one batch on a single process), each with its own augmentation; the
    epoch keeps ceil(n / replicas) samples per rank, so it covers about n / repeats distinct images. Copies after
    the first are yielded as ``(epoch, index, copy)``, which gives them their own augmentation seed.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 pad: bool = True, repeats: int = 1) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if repeats < 1 or (repeats > 1 and not pad):
            raise UserError(f"repeated augmentation needs repeats >= 1 and a training sampler, got {repeats}")
        self.size, self.shuffle, self.seed, self.repeats = size, shuffle, seed, repeats
        self.num_replicas, self.rank, self.pad = num_replicas, rank, pad
        self.epoch, self.start = 0, 0

    @property
    def num_samples(self) -> int:
        """Samples this rank reads in a whole epoch."""
        if self.pad:
            return math.ceil(self.size / self.num_replicas)
        return len(range(self.rank, self.size, self.num_replicas))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read ``epoch``'s order, beginning after its first ``start`` samples (of this rank)."""
        self.epoch, self.start = epoch, start

    def keys(self) -> list[tuple[int, int]]:
        """This rank's whole order for the current epoch, as (index, copy); copy is 0 without repeats."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        keys = [(i, c) for i in order for c in range(self.repeats)]
        if self.pad:
            total = self.num_samples * self.num_replicas
            while len(keys) < total:
                keys += keys[: total - len(keys)]
        return keys[self.rank::self.num_replicas][: self.num_samples]

    def indices(self) -> list[int]:
        """This rank's whole order for the current epoch."""
        return [i for i, _ in self.keys()]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        epoch = self.epoch
        return iter([(epoch, i) if c == 0 else (epoch, i, c) for i, c in self.keys()[self.start:]])

    def num_batches(self) -> int | None:
        """Batches the next (or current) iteration yields, or None when the sample count is unknown."""
        return None if self._epoch_samples() is None else len(self)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class _SkipErrors(Dataset):
    """Wraps a map-style dataset: seeds torch's generator per sample, turns ImageDecodeError into Skipped."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def num_batches(self) -> int | None:
        """Batches the next (or current) iteration yields, or None when the sample count is unknown."""
        return None if self._epoch_samples() is None else len(self)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, ...]) -> Any:
        index = key[1]  # key: (epoch, index) or, for a repeated copy, (epoch, index, copy)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, *key))
            try:
                return self.dataset[index]
            except ImageDecodeError as e:
                return Skipped(e.path, e.reason)


class _SkipErrorsIterable(IterableDataset):
    """Wraps a WebDataset: seeds torch's generator per sample, turns ImageDecodeError into Skipped."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        base = (self.seed, self.dataset.epoch, rank, info.id if info is not None else 0)
        for position, raw in enumerate(self.dataset.raw_samples()):
            if isinstance(raw, Skipped):
                yield raw
                continue
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(mix_seed(*base, position))
                try:
                    yield self.dataset.load(raw)
                except ImageDecodeError as e:
                    yield Skipped(e.path, e.reason)


class Loader:
    """A DataLoader with skip reporting, epochs and a resumable position; see the module docstring."""

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, workers: int, pin_memory: bool,
                 seed: int, drop_last: bool, distributed: bool, repeats: int = 1, collate=collate) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        if workers < 0:
            raise UserError(f"workers must be 0 or more, not {workers}")
        self.dataset, self.batch_size, self.seed, self.drop_last = dataset, batch_size, seed, drop_last
        self.repeats = repeats
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.epoch, self._consumed = 0, 0
        self.skipped: list[Skipped] = []
        self.iterable = isinstance(dataset, IterableDataset)
        self.generator = torch.Generator()
        common = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin_memory, collate_fn=collate,
                      drop_last=drop_last, generator=self.generator)
        if self.iterable:
            if repeats > 1:
                raise UserError("repeated augmentation needs an indexable dataset; WebDataset shards stream each "
                                "sample once: set repeated_aug to 1")
            if not hasattr(dataset, "raw_samples"):
                raise UserError(f"{type(dataset).__name__} is an IterableDataset this loader cannot read; use WebDataset")
            self.sampler = None
            # Not persistent: a new worker per epoch is how the dataset's epoch reaches the worker's copy.
            self._loader = DataLoader(_SkipErrorsIterable(dataset, seed), **common)
        else:
            if len(dataset) == 0:
                raise UserError(f"{dataset!r} has no samples")
            self.sampler = ResumableSampler(len(dataset), shuffle=train, seed=seed, num_replicas=self.world_size,
                                            rank=self.rank, pad=train, repeats=repeats)
            self._loader = DataLoader(_SkipErrors(dataset, seed), sampler=self.sampler,
                                      persistent_workers=workers > 0, **common)

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next, from its start (unless it is the epoch a loaded state is in the middle of)."""
        if epoch != self.epoch:
            self.epoch, self._consumed = epoch, 0

    def _epoch_samples(self) -> int | None:
        if self.sampler is not None:
            return self.sampler.num_samples
        total = getattr(self.dataset, "num_samples", None)
        return None if total is None else math.ceil(total / self.world_size)

    def num_batches(self) -> int | None:
        """Batches the next (or current) iteration yields, or None when the sample count is unknown."""
        return None if self._epoch_samples() is None else len(self)

    def __len__(self) -> int:
        """Batches the next (or current) iteration yields; for shards an estimate, and only when the sample count
        is known."""
        total = self._epoch_samples()
        if total is None:
            raise TypeError("the number of batches is unknown for shards without a sample count")
        full, left = total // self.batch_size, total - self._consumed
        if self.drop_last:
            return max(full - self._consumed // self.batch_size, 0)
        return max(math.ceil(left / self.batch_size), 0)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self._consumed
        self.skipped = []
        self.generator.manual_seed(mix_seed(self.seed, epoch))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start)
        else:
            self.dataset.set_epoch(epoch)
        batches = iter(self._loader)
        if self.iterable:
            for _ in range(start // self.batch_size):  # replay up to the saved position (see the docstring)
                next(batches, None)
        total = self._epoch_samples()
        for batch in batches:
            self._consumed += self.batch_size
            if self.sampler is not None:
                self._consumed = min(self._consumed, total)
            self.skipped.extend(batch.skipped)
            yield batch
        self.epoch, self._consumed = epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """The position to resume from: the epoch and the samples of it this rank has already been given."""
        epoch, consumed = self.epoch, self._consumed
        if self.sampler is not None and consumed >= self.sampler.num_samples:
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "consumed": consumed, "batch_size": self.batch_size, "world_size": self.world_size,
                "seed": self.seed, "repeats": self.repeats}

    def load_state_dict(self, state: dict[str, int]) -> None:
        unknown = set(state) - {"epoch", "consumed", "batch_size", "world_size", "seed", "repeats"}
        if unknown or "epoch" not in state or "consumed" not in state:
            raise UserError(f"not a loader state: keys {sorted(state)}; expected epoch and consumed")
        if state["consumed"]:
            for key in ("batch_size", "world_size", "seed", "repeats"):
                if key in state and state[key] != getattr(self, key):
                    raise UserError(f"cannot resume mid-epoch with {key}={getattr(self, key)}: the checkpoint was "
                                    f"made with {key}={state[key]}; use the same {key}, or an end-of-epoch checkpoint")
        self.epoch, self._consumed = int(state["epoch"]), int(state["consumed"])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int = 0,
    pin_memory: bool = True,
    seed: int = 0,
    drop_last: bool | None = None,
    distributed: bool | None = None,
    repeats: int = 1,
    collate=collate,
) -> Loader:
    """A :class:`Loader` over ``dataset``.

    ``train``: shuffle (by seed and epoch) and pad ranks to equal length; evaluation reads every sample once, in
    order. ``workers``: worker processes (persistent between epochs for map-style data). ``pin_memory``: pin
    batches, only when CUDA is available. ``drop_last``: by default True for training, False for evaluation.
    ``distributed``: by default whether torch.distributed is initialised; each rank then reads its own share.
    ``repeats``: repeated augmentation (training only), see :class:`ResumableSampler`. ``collate``: how a list of
    samples (``Skipped`` records among them) becomes a batch with a ``skipped`` field; default :func:`collate`
    (images, labels); detection passes its own (``resnet50.detect.coco.collate_detection``).
    """
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised
    if distributed and not initialised:
        raise UserError("distributed=True but torch.distributed is not initialised; launch with torchrun and call "
                        "init_process_group first")
    return Loader(dataset, batch_size, train=train, workers=workers, pin_memory=pin_memory and torch.cuda.is_available(),
                  seed=seed, drop_last=train if drop_last is None else drop_last, distributed=distributed,
                  repeats=repeats, collate=collate)
