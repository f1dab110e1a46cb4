"""WebDataset shards: patterns, grouping by key, shard splitting over workers and ranks, shuffling, broken data."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import resnet50.data.webdataset as wds
from resnet50.data import (
    WebDataset,
    build_dataset,
    build_loader,
    detect_format,
    expand_braces,
    expand_urls,
)
from resnet50.errors import UserError


class PixelId:
    """Transform: the sample's number (every pixel of sample k is k) as a tensor, so batches name their samples."""

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.tensor(int(np.asarray(img)[0, 0]))


def ids(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch.images]


def test_expand_braces_and_urls(tmp_path, make_shards):
    assert expand_braces("a-{08..11}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]
    assert expand_braces("{x,y}/{0..1}") == ["x/0", "x/1", "y/0", "y/1"]
    pattern = make_shards(tmp_path, 3, 2)
    assert [p.rsplit("/", 1)[1] for p in expand_urls(pattern)] == [f"shard-00000{i}.tar" for i in range(3)]
    assert expand_urls(str(tmp_path)) == expand_urls(pattern) == expand_urls(str(tmp_path / "shard-*.tar"))
    assert detect_format(pattern) == "webdataset" and detect_format(tmp_path) == "webdataset"
    with pytest.raises(UserError, match="1 of 4 shards do not exist"):
        expand_urls(str(tmp_path / "shard-{000000..000003}.tar"))
    with pytest.raises(UserError, match="no shard matches"):
        expand_urls(str(tmp_path / "nope-*.tar"))


def test_reads_every_sample_grouped_by_key(tmp_path, make_shards):
    pattern = make_shards(tmp_path, 4, 5)
    ds = build_dataset(pattern, "val", PixelId(), in_chans=1)
    assert isinstance(ds, WebDataset) and not ds.shuffle
    assert ds.classes == ["0", "1", "2"] and ds.num_samples == 20  # from a scan of the labels
    samples = [(int(x), y) for x, y in ds]
    assert samples == [(k, k % 3) for k in range(20)]
    img, label = next(iter(build_dataset(pattern, "val")))
    assert img.mode == "RGB" and img.size == (8, 8) and label == 0


def test_class_names_from_classes_txt_or_argument(tmp_path, make_shards):
    pattern = make_shards(tmp_path, 1, 3)
    assert WebDataset(pattern, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    (tmp_path / "classes.txt").write_text("cat\ndog\nemu\n")
    ds = WebDataset(pattern)
    assert ds.classes == ["cat", "dog", "emu"] and ds.num_samples is None


def test_json_label_and_jpeg(tmp_path, add_tar_member):
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (0, 250, 0)).save(buf, "JPEG")
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        add_tar_member(tar, "dir/a.jpg", buf.getvalue())
        add_tar_member(tar, "dir/a.json", json.dumps({"label": 4}).encode())
    img, label = next(iter(WebDataset(str(tmp_path / "one.tar"), classes=[str(i) for i in range(5)])))
    assert label == 4 and abs(int(np.asarray(img)[3, 3, 1]) - 250) <= 3


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_workers_read_each_sample_exactly_once(tmp_path, make_shards, shuffle):
    pattern = make_shards(tmp_path, 4, 5)
    ds = WebDataset(pattern, PixelId(), in_chans=1, shuffle=shuffle, shuffle_buffer=4, seed=1)
    loader = build_loader(ds, 3, train=shuffle, workers=2, drop_last=False)
    first = ids(loader)
    assert sorted(first) == list(range(20))  # no duplicates, no losses
    second = ids(loader)  # the next epoch
    assert sorted(second) == list(range(20))
    assert (first != second) == shuffle and loader.epoch == 2


def test_shuffle_depends_on_seed_and_epoch_only(tmp_path, make_shards):
    pattern = make_shards(tmp_path, 4, 5)

    def order(seed: int, epoch: int) -> list[int]:
        ds = WebDataset(pattern, PixelId(), in_chans=1, shuffle=True, shuffle_buffer=6, seed=seed)
        ds.set_epoch(epoch)
        return [int(x) for x, _ in ds]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == list(range(20)) and order(0, 0) != list(range(20))


def test_ranks_split_the_shards(tmp_path, make_shards, monkeypatch):
    pattern = make_shards(tmp_path, 4, 5)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(wds, "_rank_world", lambda rank=rank: (rank, 2))
        seen.append([int(x) for x, _ in WebDataset(pattern, PixelId(), in_chans=1, shuffle=True, seed=3)])
    assert len(seen[0]) == len(seen[1]) == 10
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(20))


@pytest.mark.parametrize("workers", [0, 2])
def test_broken_samples_and_shards_are_skipped_and_counted(tmp_path, make_shards, add_tar_member, workers):
    make_shards(tmp_path, 2, 4)
    with tarfile.open(tmp_path / "shard-000002.tar", "w") as tar:
        add_tar_member(tar, "bad.png", b"\x89PNG garbage")
        add_tar_member(tar, "bad.cls", b"1")
        buf = io.BytesIO()
        Image.new("L", (8, 8), 100).save(buf, "PNG")
        add_tar_member(tar, "nolabel.png", buf.getvalue())
        add_tar_member(tar, "good.png", buf.getvalue())
        add_tar_member(tar, "good.cls", b"2")
    data = (tmp_path / "shard-000001.tar").read_bytes()
    (tmp_path / "shard-000001.tar").write_bytes(data[: len(data) // 2])  # cut mid-way: its tail is lost
    ds = WebDataset(str(tmp_path / "shard-{000000..000002}.tar"), PixelId(), in_chans=1, classes=["0", "1", "2"])
    loader = build_loader(ds, 2, train=False, workers=workers)
    got = ids(loader)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in loader.skipped}
    assert sorted(reasons) == ["shard-000001.tar", "shard-000002.tar:bad.png", "shard-000002.tar:nolabel"]
    assert "unreadable tar shard after 2 samples" in reasons["shard-000001.tar"]
    assert "no .cls label" in reasons["shard-000002.tar:nolabel"]
    # Shard 1 is cut at byte 5120, inside its third sample: samples 4 and 5 survive, 6 and 7 are lost with it.
    assert sorted(got) == [0, 1, 2, 3, 4, 5, 100]
    with pytest.raises(UserError, match="cannot decode"):
        list(ds)  # read directly, without a loader, a broken file is an error


@pytest.mark.parametrize("cut", [5120, 5120 + 700])
def test_a_cut_shard_ends_in_one_skipped_record(tmp_path, make_shards, cut):
    make_shards(tmp_path, 1, 4)  # 8 members of 1024 bytes (512 header + 512 data) and the end marker
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:cut])  # at a header boundary (tarfile alone sees no error), or mid-member
    records = list(wds.read_shard(str(shard)))
    assert [r.key for r in records[:-1]] == ["s00000", "s00001"]  # whole samples before the cut; the cut one is lost
    assert isinstance(records[-1], wds.Skipped) and "unreadable tar shard after 2 samples" in records[-1].reason


def test_resume_mid_epoch_replays_to_the_same_position(tmp_path, make_shards):
    pattern = make_shards(tmp_path, 4, 5)

    def loader():
        ds = WebDataset(pattern, PixelId(), in_chans=1, shuffle=True, shuffle_buffer=5, seed=2)
        return build_loader(ds, 3, train=True, seed=2)

    full = [b.images.tolist() for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it).images.tolist() for _ in range(2)]
    state = first.state_dict()
    assert state["consumed"] == 6 and head == full[:2]
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.images.tolist() for b in resumed] == full[2:]


def test_empty_or_unlabelled_shards_are_errors(tmp_path, add_tar_member):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(UserError, match="no samples"):
        WebDataset(str(tmp_path / "empty.tar"))
    with tarfile.open(tmp_path / "nolabels.tar", "w") as tar:
        add_tar_member(tar, "a.png", b"x")
    with pytest.raises(UserError, match="no .cls labels"):
        WebDataset(str(tmp_path / "nolabels.tar"))
