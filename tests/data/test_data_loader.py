"""Loaders: DistributedSampler order, per-sample seeding, exact mid-epoch resume, skipped files with workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from resnet50.data import (
    FASHION_MNIST,
    Batch,
    ResumableSampler,
    build_dataset,
    build_loader,
    build_transform,
    collate,
)
from resnet50.data.decode import Skipped
from resnet50.errors import UserError


class Numbers(Dataset):
    """Sample i: (tensor [i, u], i % 4) where u is drawn from torch's global generator, an augmentation stand-in."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i), float(torch.rand(()))]), i % 4


def run(loader) -> list[list[list[float]]]:
    return [batch.images.tolist() for batch in loader]


@pytest.mark.parametrize("replicas,shuffle", [(1, True), (3, True), (3, False)])
def test_sampler_matches_torch_distributed_sampler(replicas, shuffle):
    ds = Numbers(10)
    for rank in range(replicas):
        ours = ResumableSampler(10, shuffle=shuffle, seed=5, num_replicas=replicas, rank=rank, pad=True)
        theirs = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert [i for _, i in ours] == list(theirs) and len(ours) == len(theirs)


@pytest.mark.parametrize("replicas", [1, 3])
def test_repeated_augmentation_follows_torchvisions_ra_sampler(replicas):
    n, reps = 10, 4
    for rank in range(replicas):
        ours = ResumableSampler(n, shuffle=True, seed=5, num_replicas=replicas, rank=rank, repeats=reps)
        ours.set_epoch(2)
        # torchvision references/classification/sampler.py RASampler, before its cut to a multiple of 256
        g = torch.Generator()
        g.manual_seed(5 + 2)
        theirs = [i for i in torch.randperm(n, generator=g).tolist() for _ in range(reps)]
        total = -(-n * reps // replicas) * replicas
        theirs = (theirs + theirs[: total - len(theirs)])[rank:total:replicas]
        got = list(ours)
        assert len(got) == len(ours) == -(-n // replicas)  # the epoch keeps its length
        assert [k[1] for k in got] == theirs[: len(got)]
        copies = [0 if len(k) == 2 else k[2] for k in got]
        assert copies == [(rank + replicas * j) % reps for j in range(len(got))]  # global position mod reps


def test_repeated_copies_get_their_own_augmentation_and_resume_exactly():
    def make():
        return build_loader(Numbers(12), 6, train=True, seed=3, repeats=3)

    epoch0 = run(make())
    rows = [row for batch in epoch0 for row in batch]
    assert len(rows) == 12 and [r[0] for r in rows[::3]] == [r[0] for r in rows[1::3]] == [r[0] for r in rows[2::3]]
    assert all(len({r[1] for r in rows[i:i + 3]}) == 3 for i in range(0, 12, 3))  # three different draws of u
    first = make()
    it = iter(first)
    next(it)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert run(resumed) == epoch0[1:]
    other = build_loader(Numbers(12), 6, train=True, seed=3, repeats=2)
    with pytest.raises(UserError, match="repeats=2"):
        other.load_state_dict(first.state_dict())
    with pytest.raises(UserError, match="repeated augmentation"):
        ResumableSampler(5, shuffle=False, pad=False, repeats=2)


def test_evaluation_sampler_reads_each_sample_once_across_ranks():
    parts = [list(ResumableSampler(5, shuffle=False, num_replicas=2, rank=r, pad=False)) for r in range(2)]
    assert [[i for _, i in p] for p in parts] == [[0, 2, 4], [1, 3]]


def test_order_and_augmentation_do_not_depend_on_workers():
    a = run(build_loader(Numbers(23), 4, train=True, workers=0, seed=7))
    b = run(build_loader(Numbers(23), 4, train=True, workers=2, seed=7))
    assert a == b and len(a) == 5  # drop_last for training: 23 // 4
    ids = [row[0] for batch in a for row in batch]
    assert sorted(ids) != ids and len(set(ids)) == 20
    assert run(build_loader(Numbers(23), 4, train=True, seed=8)) != a


def test_loading_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    run(build_loader(Numbers(8), 4, train=True))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(workers):
    def make():
        return build_loader(Numbers(30), 4, train=True, workers=workers, seed=3)

    reference = make()
    epoch0, epoch1 = run(reference), run(reference)
    assert epoch0 != epoch1 and len(epoch0) == 7
    for k in (1, 4, 6):
        first = make()
        it = iter(first)
        seen = [next(it).images.tolist() for _ in range(k)]
        state = first.state_dict()
        assert seen == epoch0[:k] and state["epoch"] == 0 and state["consumed"] == 4 * k
        resumed = make()
        resumed.load_state_dict(state)
        assert len(resumed) == 7 - k
        assert run(resumed) == epoch0[k:]  # same samples, same order, same augmentation
        assert run(resumed) == epoch1  # and the next epoch is the uninterrupted run's


def test_state_after_the_last_batch_points_at_the_next_epoch():
    loader = build_loader(Numbers(8), 4, train=True)
    for _ in loader:
        state = loader.state_dict()
    assert (state["epoch"], state["consumed"]) == (1, 0)
    assert (loader.state_dict()["epoch"], loader.state_dict()["consumed"]) == (1, 0)
    loader.set_epoch(5)
    assert loader.epoch == 5 and len(loader) == 2


def test_resume_with_another_batch_size_is_refused():
    loader = build_loader(Numbers(20), 4, train=True)
    next(iter(loader))
    other = build_loader(Numbers(20), 5, train=True)
    with pytest.raises(UserError, match="batch_size=5.*made with batch_size=4"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(UserError, match="not a loader state"):
        other.load_state_dict({"step": 3})


def test_lengths_with_and_without_drop_last():
    assert len(build_loader(Numbers(10), 4, train=True)) == 2
    assert len(build_loader(Numbers(10), 4, train=False)) == 3
    assert [len(b.labels) for b in build_loader(Numbers(10), 4, train=False)] == [4, 4, 2]


def write_folder(root, bad: dict[str, bytes]) -> None:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 40 * i).save(root / cls / f"{i}.png")
    for name, data in bad.items():
        (root / name).write_bytes(data)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_files_are_skipped_and_counted(tmp_path, workers):
    good = (tmp_path / "ok.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    write_folder(tmp_path / "d", {"a/cut.jpg": good.read_bytes()[:300], "b/junk.png": b"not a png",
                                  "b/zz_empty.png": b""})
    ds = build_dataset(tmp_path / "d", "test", build_transform(FASHION_MNIST, train=False), in_chans=1)
    assert len(ds) == 9
    loader = build_loader(ds, 2, train=False, workers=workers)
    batches = list(loader)
    # Sorted: a/0 a/1 | a/2 a/cut.jpg | b/0 b/1 | b/2 b/junk.png | b/zz_empty.png (a batch with nothing readable).
    assert [len(b.labels) for b in batches] == [2, 1, 2, 1, 0]
    assert [[s.path.rsplit("/", 1)[1] for s in b.skipped] for b in batches] == [[], ["cut.jpg"], [], ["junk.png"],
                                                                                 ["zz_empty.png"]]
    assert [s for b in batches for s in b.skipped] == loader.skipped and len(loader.skipped) == 3
    reasons = [s.reason for s in loader.skipped]
    assert "runcated" in reasons[0] and all("cannot identify image file" in r for r in reasons[1:])
    assert all(b.images.shape[1:] == (1, 32, 32) for b in batches[:4]) and batches[4].images.numel() == 0
    list(loader)
    assert len(loader.skipped) == 3  # per epoch, not accumulated


def test_collate_and_batch_format():
    batch = collate([(torch.zeros(3, 2, 2), 1), Skipped("x.jpg", "truncated"), (torch.ones(3, 2, 2), 2)])
    assert isinstance(batch, Batch) and batch.images.shape == (2, 3, 2, 2) and batch.labels.tolist() == [1, 2]
    assert batch.labels.dtype == torch.int64 and batch.skipped == (Skipped("x.jpg", "truncated"),)
    images, labels, skipped = batch
    assert skipped[0].path == "x.jpg"
    with pytest.raises(UserError, match="not tensors; set the dataset's transform"):
        collate([(Image.new("L", (2, 2)), 0)])


def test_loader_argument_errors():
    with pytest.raises(UserError, match="torch.distributed is not initialised"):
        build_loader(Numbers(4), 2, train=True, distributed=True)
    with pytest.raises(UserError, match="no samples"):
        build_loader(Numbers(0), 2, train=True)
    with pytest.raises(UserError, match="batch_size"):
        build_loader(Numbers(4), 0, train=True)


def test_ten_crop_batches_have_a_crop_axis(tmp_path):
    write_folder(tmp_path / "d", {})
    import dataclasses

    from resnet50.data import IMAGENET

    cfg = dataclasses.replace(IMAGENET, image_size=16, crop_pct=16 / 24, mean=(0.5,), std=(0.5,), in_chans=1)
    ds = build_dataset(tmp_path / "d", "test", build_transform(cfg, train=False, ten_crop=True), in_chans=1)
    batch = next(iter(build_loader(ds, 4, train=False)))
    assert batch.images.shape == (4, 10, 1, 16, 16)
    assert np.allclose(batch.images[0].numpy(), -1.0)  # image a/0.png is black: (0 - 0.5) / 0.5
