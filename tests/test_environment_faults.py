"""Files, disks, pipes and compilers at their edges (issue 16's cases), each rebuilt here.

1 training on WebDataset shards, 2 hidden files in folders, 3 output paths that are files, 4 full disks,
5 closed pipes, 6 no C++ compiler, 7 messages naming the sample and the size, 8 links in dataset folders,
9 a run folder resumed from elsewhere with its data moved."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet50 import UserError
from resnet50.data import build_dataset, decode_image, read_idx
from resnet50.data.discover import find_images

from .helpers import make_idx_dataset

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def cli(*args, cwd=None, env=None, check=None):
    out = subprocess.run([sys.executable, "-m", "resnet50", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, env=env)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if check is not None:
        assert out.returncode == check, (out.returncode, out.stderr[-2000:])
    return out


def _png(rgb, rng, size=40) -> Image.Image:
    return Image.fromarray(np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255)
                           .astype(np.uint8))


def rgb_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, rgb in zip(("red", "green", "blue"), COLOURS):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _png(rgb, rng).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ckpt(rgb_checkpoint):
    return rgb_checkpoint


TINY = ["--arch", "resnet18", "--image-size", 32, "--crop-pct", 1.0, "--workers", 0, "--no-progress", "--lr", 0.01]


# --- 1: WebDataset shards -------------------------------------------------------------------------------------

def write_shards(root: Path, shards: int = 2, per_shard: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(per_shard):
                label = (s * per_shard + i) % 3
                buf = io.BytesIO()
                _png(COLOURS[label], rng).save(buf, "JPEG")
                data = b"" if (s, i) == (0, 5) else buf.getvalue()  # one empty image: skipped and counted
                for name, payload in ((f"s{s}_{i:04d}.jpg", data), (f"s{s}_{i:04d}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def test_training_on_shards_runs_resumes_and_evaluates(tmp_path):
    shards = write_shards(tmp_path / "wds")
    (shards / "classes.txt").write_text("red\ngreen\nblue\n")  # names known, sample count not: counted from tars
    pattern = str(shards / "shard-{000000..000001}.tar")
    common = ["--data", pattern, "--batch-size", 4, "--epochs", 2, "--out", tmp_path, "--name", "w", *TINY]
    out = cli("train", *common, "--max-steps", 3, check=0)
    assert "24 train" in out.stdout
    cli("train", "--resume", tmp_path / "w", "--no-progress", check=0)
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 12  # 24 samples / batch 4 = 6 steps
    assert rows[0]["skipped_files"] >= 1 and rows[0]["train_images"] <= 23
    res = json.loads(cli("evaluate", "--weights", tmp_path / "w", "--data", shards / "shard-000000.tar",
                         "--split", "test", "--json", "--no-progress", check=0).stdout)
    assert res["samples"] == 11 and "shard-000000.tar:s0_0005" in res["skipped"][0]["path"]


def test_ddp_training_on_shards(tmp_path):
    shards = write_shards(tmp_path / "wds", shards=4, per_shard=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "resnet50", "train", "--data", str(shards), "--batch-size", "4", "--epochs", "1",
                          "--out", str(tmp_path), "--name", "d", *map(str, TINY)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 6 and 0 < row["train_images"] <= 24


# --- 2: hidden files --------------------------------------------------------------------------------------------

def test_every_command_skips_hidden_files_the_same_way(ckpt, tmp_path):
    root = rgb_folder(tmp_path / "junk", per_class=4)
    apple = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64
    for c in ("red", "green", "blue"):
        (root / c / "._0.png").write_bytes(apple)
        (root / c / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / c / "notes.txt").write_text("not an image")
        (root / c / ".ipynb_checkpoints").mkdir()
        shutil.copy(root / c / "0.png", root / c / ".ipynb_checkpoints" / "0-checkpoint.png")
    out = json.loads(cli("predict", root, "--weights", ckpt, "--backend", "eager", "--json", check=0).stdout)
    assert out["files"] == 12 and out["failed"] == 0
    assert len(build_dataset(root, "test")) == 12
    res = json.loads(cli("evaluate", "--weights", ckpt, "--data", root, "--split", "test", "--json",
                         "--no-progress", check=0).stdout)
    assert res["samples"] == 12 and not res["skipped"]


# --- 3: output paths that are files -----------------------------------------------------------------------------

def test_an_output_path_that_is_a_file_is_one_line(ckpt, tmp_path):
    data = rgb_folder(tmp_path / "rgb")
    afile = tmp_path / "afile"
    afile.write_text("hi")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "taken").write_text("x")
    for args in (("train", "--data", data, "--batch-size", 4, "--max-steps", 1, "--out", afile, "--name", "c",
                  *TINY),
                 ("train", "--data", data, "--batch-size", 4, "--max-steps", 1, "--out", tmp_path / "runs",
                  "--name", "taken", *TINY),
                 ("evaluate", "--weights", ckpt, "--data", data, "--split", "test", "--out", afile,
                  "--no-progress"),
                 ("export", "--weights", ckpt, "--out", afile / "x.onnx", "--no-check"),
                 ("convert", ckpt, afile / "x.safetensors")):
        out = cli(*args, check=2)
        assert "is a file" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert afile.read_text() == "hi"


# --- 4: full disks ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "onnx", "json", "png"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_file(writer, tmp_path, monkeypatch):
    """Each writer's own way of failing on a full disk (simulated) becomes one UserError; the old file stays."""
    import resnet50.files as files

    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    failures = {
        "safetensors": RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                    "message: \"No space left on device\" })"),
        "torch.save": RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                                   "writing file data/12: file write failed"),
        "onnx": OSError(errno.ENOSPC, "No space left on device"),
        "json": OSError(errno.ENOSPC, "No space left on device"),
        "png": OSError(errno.EDQUOT, "Disk quota exceeded"),
    }
    with pytest.raises(UserError, match="no space left on the device") as e:
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise failures[writer]
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    import resnet50.files as files

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="read-only"):
        with files.atomic_path(tmp_path / "x.json"):
            pass


def test_training_on_a_really_full_disk(tmp_path):
    """On a 30 MB tmpfs a ResNet-18 run cannot write its checkpoints: one line, exit 2, nothing half-written."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated writers above cover the messages")
    try:
        data = rgb_folder(tmp_path / "rgb")
        out = cli("train", "--data", data, "--batch-size", 4, "--epochs", 1, "--out", disk, "--name", "a", *TINY,
                  check=2)
        assert "no space left" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert not [p for p in disk.rglob(".*.tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --- 5: closed pipes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["models", "--json"], ["summary", "--arch", "resnet50", "--json"]])
def test_json_into_a_closed_pipe_exits_quietly(command):
    proc = subprocess.run(f"{sys.executable} -m resnet50 {' '.join(command)} | head -1", shell=True,
                          capture_output=True, text=True, executable="/bin/bash")
    assert proc.stdout.strip() in ("[", "{") and proc.stderr == "", proc.stderr


# --- 6: no C++ compiler -------------------------------------------------------------------------------------------

def test_compile_is_offered_only_with_a_compiler(ckpt, tmp_path):
    env = {**os.environ, "CXX": "/nonexistent/g++"}
    code = "from resnet50.backends import available_backends; print(available_backends())"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert "'compile'" not in listed and "'eager'" in listed
    img = tmp_path / "x.png"
    _png(COLOURS[0], np.random.default_rng(0)).save(img)
    out = cli("predict", img, "--weights", ckpt, "--backend", "compile", env=env, check=2)
    assert "C++ compiler" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli("benchmark", "--arch", "resnet18", "--size", 32, "--batch", 1, "--runs", 1, "--warmup", 0,
              "--peak-size", 128, "--json", env=env, check=0)
    report = json.loads(out.stdout)
    assert "compile" not in {r["backend"] for r in report["results"]} and "compile left out" in report["notes"][0]


# --- 7: messages name the sample and the size ---------------------------------------------------------------------

def test_messages_name_the_sample_and_the_real_size(tmp_path):
    with pytest.raises(UserError, match=r"shard\.tar:k\.jpg: .*empty \(0 bytes\)"):
        decode_image(b"", name="shard.tar:k.jpg")
    with pytest.raises(UserError) as e:
        decode_image(b"not an image at all", name="shard.tar:k.jpg")
    assert "BytesIO" not in str(e.value)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "little") for d in (60000, 28, 28))  # byte-swapped
    (tmp_path / "swapped-idx3-ubyte").write_bytes(header + b"\x00" * 100)
    with pytest.raises(UserError) as e:
        read_idx(tmp_path / "swapped-idx3-ubyte")
    assert "= 0 bytes" not in str(e.value) and "truncated" in str(e.value)


# --- 8: links in dataset folders ----------------------------------------------------------------------------------

def test_links_never_loop_or_count_twice(tmp_path):
    root = rgb_folder(tmp_path / "d", per_class=2)
    os.symlink(root, root / "red" / "loop")                      # a link back up: a loop
    os.symlink(root / "green", root / "blue" / "again")          # a folder reached twice
    os.symlink(root / "red" / "0.png", root / "red" / "same.png")  # a file reached twice
    os.symlink(tmp_path / "gone.png", root / "red" / "broken.png")  # a broken link
    files, skipped = find_images(root)
    assert len(files) == 6 and len({os.path.realpath(f) for f in files}) == 6
    reasons = " ".join(s.reason for s in skipped)
    assert len(skipped) == 4 and "already walked" in reasons and "same file" in reasons and "broken" in reasons
    assert len(build_dataset(root, "test")) == 6


# --- 9: a portable run folder -------------------------------------------------------------------------------------

def test_a_run_folder_resumes_from_anywhere_and_its_data_can_move(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_idx_dataset(a / "data", n_train=40)
    common = ["--arch", "resnet20_cifar", "--image-size", 32, "--crop-pct", 0, "--batch-size", 8, "--workers", 0,
              "--no-progress", "--epochs", 2, "--lr", 0.03]
    cli("train", "--data", "data", "--out", "runs", "--name", "r", "--max-steps", 2, *common, cwd=a, check=0)
    shutil.move(a / "data", tmp_path / "moved")
    out = cli("train", "--resume", "../a/runs/r", cwd=b)
    assert out.returncode == 2 and "--data" in out.stderr  # the data is gone: say how to point to it
    cli("train", "--resume", "../a/runs/r", "--data", tmp_path / "moved", "--no-progress", cwd=b, check=0)
    assert not (b / "runs").exists()
    rows = [json.loads(x) for x in (a / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and (a / "runs" / "r" / "final.safetensors").exists()
