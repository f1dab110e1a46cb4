"""TensorBoard events of train, evaluate and the experiment, read back with TensorBoard's own reader
(EventAccumulator) and compared with metrics.jsonl / metrics.json."""

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnet50.cli import main
from resnet50.errors import UserError
from resnet50.experiments import degradation
from resnet50.tensorboard import TRAIN_SCALARS, Board
from resnet50.train import train

from .helpers import make_idx_dataset, tiny_cfg


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=64, n_test=24)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    res = train(tiny_cfg(data, tmp_path_factory.mktemp("runs"), "tb", epochs=2), progress=False, log=lambda *a: None,
                tensorboard=True)
    return Path(res["run_dir"])


def test_train_scalars_equal_metrics_jsonl(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    acc = events(run_dir / "tensorboard")
    assert sorted(acc.Tags()["scalars"]) == sorted(TRAIN_SCALARS.values())
    for key, tag in TRAIN_SCALARS.items():
        logged = acc.Scalars(tag)
        assert [e.step for e in logged] == [r["epoch"] for r in rows] == [1, 2], tag
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
    assert {"train/loss": "train_loss", "val/top5": "val_top5", "speed/data_share": "data_share"}.items() <= \
        {v: k for k, v in TRAIN_SCALARS.items()}.items()


def test_train_curves_image(run_dir):
    acc = events(run_dir / "tensorboard")
    assert acc.Tags()["images"] == ["curves"]
    shots = acc.Images("curves")
    assert [s.step for s in shots] == [1, 2]
    png = Image.open(run_dir / "curves.png")
    assert (shots[-1].width, shots[-1].height) == png.size
    assert Image.open(io.BytesIO(shots[-1].encoded_image_string)).size == png.size


def test_a_resumed_epoch_replaces_its_events(tmp_path):
    first = Board(tmp_path)
    for epoch, loss in ((1, 2.0), (2, 1.5)):
        first.epoch({"epoch": epoch, "train_loss": loss})
    first.close()
    again = Board(tmp_path, purge_step=2)  # as train() opens it when resuming in epoch 2
    again.epoch({"epoch": 2, "train_loss": 1.25})
    again.close()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("train/loss")] == [(1, 2.0), (2, 1.25)]


def test_evaluate_writes_scalars_and_the_confusion_matrix(run_dir, data, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--weights", str(run_dir), "--data", str(data), "--out", str(out), "--tensorboard",
               "--no-progress", "--json"])
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())
    acc = events(out / "tensorboard")
    for key in ("top1", "top5", "loss"):
        (e,) = acc.Scalars(f"eval/{key}")
        assert e.step == 0 and e.value == pytest.approx(result[key], rel=1e-6)
    (shot,) = acc.Images("confusion_matrix")
    assert (shot.width, shot.height) == Image.open(out / "confusion.png").size


def test_flag_errors_are_one_line(run_dir, data, capsys, monkeypatch):
    rc = main(["evaluate", "--weights", str(run_dir), "--data", str(data), "--tensorboard", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "give --out FOLDER" in err
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'resnet50\[tensorboard\]'") as e:
        Board(run_dir / "never")
    assert "\n" not in str(e.value)


def test_experiment_runs_log_each_net(data, tmp_path):
    out = tmp_path / "exp"
    result = degradation(str(data), [20], epochs=1, batch_size=16, out=str(out), max_steps=2, progress=False,
                         tensorboard=True, overrides={"workers": 0})
    for r in result["runs"]:
        acc = events(out / r["arch"] / "tensorboard")
        (e,) = acc.Scalars("val/top1")
        assert e.step == 1 and e.value == pytest.approx(1 - r["val_error"], rel=1e-6)
    assert events(out / "tensorboard").Tags()["images"] == ["degradation"]
