"""resnet50.detect.train on the engine: a short training run that lowers its loss and resumes exactly, the time budget,
and the engine's features for detection (AMP, EMA, accumulation, DDP, TensorBoard)."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet50 import UserError
from resnet50.cli import main
from resnet50.detect.checkpoint import (
    load_detector,
)
from resnet50.data import build_loader
from resnet50.detect.coco import CocoDataset, collate_detection, make_batch
from resnet50.detect.retinanet import (
    RetinaNet,
    create_detector,
)
from resnet50.detect.train import resolve, train

from ..helpers import DETECT_TINY, kill_leftovers


def batch_loss(model, ds, size=64) -> float:
    """The loss on all of ``ds`` in one batch, with batch statistics (on a copy: BN's running stats stay)."""
    batch = make_batch(ds, list(range(len(ds))), size)
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        losses = model.loss(model(batch.images), batch.boxes, batch.labels, batch.valid, (size, size))
    return float(losses["classification"] + losses["bbox_regression"])


def test_training_lowers_the_loss_and_resumes_exactly(shapes, tmp_path):
    train_dir, val_dir = shapes

    def cfg(name, **kw):
        return resolve("scenes", {**DETECT_TINY, "train": str(train_dir), "out": str(tmp_path), "name": name, **kw})

    full = train(cfg("full", val=str(val_dir)), progress=False, log=lambda *a: None)
    ds = CocoDataset(train_dir)
    torch.manual_seed(0)  # train() seeds the same way before it builds the model: this is its starting point
    start = RetinaNet(dataclasses.replace(cfg("x").model, num_classes=2))
    trained = load_detector(Path(full["run_dir"]) / "final.safetensors")
    before, after = batch_loss(start, ds), batch_loss(trained.model, ds)
    assert after < 0.8 * before, (before, after)  # 2.09 -> 1.18 measured
    run = Path(full["run_dir"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 8
    assert 0 <= rows[-1]["val_map"] <= 1 and (run / "curves.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 2

    # stop mid-epoch 2 (step 6 of 8), resume: the same weights as the uninterrupted run
    cut = train(cfg("cut", max_steps=6), progress=False, log=lambda *a: None)
    assert cut["step"] == 6
    with pytest.raises(UserError, match="resuming a run with lr"):
        train(cfg("cut", lr=0.02), resume=cut["run_dir"], progress=False, log=lambda *a: None)
    resumed = train(cfg("cut"), resume=cut["run_dir"], progress=False, log=lambda *a: None)
    assert resumed["step"] == 8
    a = load_detector(Path(resumed["run_dir"]) / "final.safetensors").model.state_dict()
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, a[k]), k  # exact: the resumed run is the uncut one


def test_a_time_budget_fixes_the_steps_and_resumes_exactly(shapes, tmp_path, monkeypatch):
    import itertools

    import resnet50.engine as classification
    from resnet50.optim import lr_at

    ticks = itertools.count()  # the budget's clock ticks 1 s a reading: start 0, the calibration's two ends at 1, 2
    monkeypatch.setattr(classification, "clock", lambda: float(next(ticks)))
    train_dir, _ = shapes
    quiet = dict(progress=False, log=lambda *a: None)

    def cfg(name, **kw):  # 4 steps an epoch; the warm-up (28 steps) covers the calibration
        return resolve("scenes", {**DETECT_TINY, "train": str(train_dir), "out": str(tmp_path), "name": name, "epochs": 20,
                                  "warmup_epochs": 7.0, "schedule": "linear", **kw})

    first, last = classification.CALIBRATION
    cut = train(cfg("b", time_budget=0.05, max_steps=last + 2), **quiet)  # 3 s: 2 gone, 1 s of 0.05 s steps (+10 %)
    steps = json.loads((Path(cut["run_dir"]) / "config.json").read_text())["run"]["budget_steps"]
    step_s = 1 / (last - first) * classification.BUDGET_MARGIN
    assert steps == classification.plan_budget(3, 2, last, step_s, 0, 4, 1, 80) == 43
    assert torch.load(Path(cut["run_dir"]) / "last.pt", weights_only=True)["config"]["run"]["budget_steps"] == 43
    done = train(cfg("b", time_budget=0.05), resume=cut["run_dir"], **quiet)
    assert done["step"] == 43 and done["epoch"] == 11  # 10 epochs and 3 steps: the budget ends the eleventh
    ref = train(cfg("ref", budget_steps=43), **quiet)
    rows = [json.loads(line) for line in (Path(ref["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    o = cfg("x").optim
    assert rows[-1]["lr"] == pytest.approx(lr_at(42, 4, dataclasses.replace(o, epochs=43 / 4), o.lr * 8 / 256))  # linear to 0 at 43
    a = load_detector(Path(done["run_dir"]) / "final.safetensors").model.state_dict()
    b = load_detector(Path(ref["run_dir"]) / "final.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- the engine's features, for detection ---------------------------------------------------------------------------

QUIET = dict(progress=False, log=lambda *a: None)


def detect_cfg(train_dir, out, name, **kw):
    return resolve("scenes", {**DETECT_TINY, "train": str(train_dir), "out": str(out), "name": name, **kw})


def final_weights(result) -> dict:
    return load_detector(Path(result["run_dir"]) / "final.safetensors").model.state_dict()


def test_cli_max_steps_then_resume_ends_where_an_uncut_run_ends_bit_for_bit(shapes, tmp_path, capsys):
    # the defect: --resume kept the saved --max-steps and stopped after one step. The cut run decodes in 2 workers,
    # the uncut one in the training process: the per-sample seeding makes them read the same batches.
    train_dir, _ = shapes
    flags = [a for k, v in DETECT_TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    base = ["detect", "train", "--train", str(train_dir), "--out", str(tmp_path), "--no-progress", "--json", *flags]
    assert main([*base, "--name", "cut", "--max-steps", "5", "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 5
    assert main(["detect", "train", "--resume", str(tmp_path / "cut"), "--json", "--no-progress"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["step"] == 8 and resumed["epoch"] == 2  # 32 images / batch 8, two epochs: the planned end
    uncut = train(detect_cfg(train_dir, tmp_path, "uncut", workers=0), **QUIET)
    a, b = final_weights(resumed), final_weights(uncut)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options", [{"amp": "bf16"}, {"amp": "fp16"}, {"ema_decay": 0.5},
                                     {"accum_steps": 2, "batch_size": 4}])
def test_amp_ema_and_accumulation_train_a_detector(shapes, tmp_path, options):
    train_dir, _ = shapes
    res = train(detect_cfg(train_dir, tmp_path, "x", epochs=1, **options), **QUIET)
    last = torch.load(Path(res["run_dir"]) / "last.pt", weights_only=True)
    assert last["kind"] == "detector" and math.isfinite(res["train_loss"]) and res["train_images"] == 32
    assert res["step"] == 4  # 32 images at 8 a step (accumulation: 2 batches of 4 per optimiser step)
    assert last["scaler"].get("scale", None) is not None if options.get("amp") == "fp16" else not last["scaler"]
    if "ema_decay" in options:  # best/final weights are the average, which lags the trained model
        ema, model = last["ema"], last["model"]
        assert any(not torch.equal(ema[k], model[k]) for k in model if model[k].is_floating_point())
        assert all(torch.equal(final_weights(res)[k], ema[k]) for k in ema)
    else:
        assert last["ema"] is None


def test_tensorboard_logs_the_detection_rows(shapes, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_dir, val_dir = shapes
    res = train(detect_cfg(train_dir, tmp_path, "tb", val=str(val_dir), epochs=1), tensorboard=True, **QUIET)
    acc = EventAccumulator(str(Path(res["run_dir"]) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/cls_loss", "train/box_loss", "val/map", "val/map50", "lr"} <= set(
        acc.Tags()["scalars"])
    assert acc.Scalars("val/map")[0].value == pytest.approx(res["val_map"], rel=1e-6)
    assert acc.Scalars("train/box_loss")[0].value == pytest.approx(res["train_box_loss"], rel=1e-6)


def test_two_process_ddp_on_cpu(shapes, tmp_path):
    train_dir, _ = shapes
    flags = [a for k, v in {**DETECT_TINY, "threads": 1}.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "resnet50", "detect", "train", "--train", str(train_dir), "--out", str(tmp_path),
                            "--name", "ddp", "--no-progress", *flags],
                           capture_output=True, text=True, env=env, timeout=300)
    finally:
        kill_leftovers(str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]  # 32 images, global batch 8 split as 4 + 4
    assert [r["train_images"] for r in rows] == [32, 32]  # summed over the two processes
    assert (tmp_path / "ddp" / "final.safetensors").stat().st_size > 0


def test_the_detection_loss_needs_no_host_sync():
    # on the meta device every data-dependent step (.item(), nonzero, boolean indexing, `if tensor`) raises: the
    # loss running there means the training step never waits for the device
    model = create_detector(arch="resnet18", image_size=64, num_classes=3, version="v2")
    cls = torch.zeros(2, model.anchors(64, 64)[0].shape[0], 3, device="meta")
    deltas = torch.zeros(2, cls.shape[1], 4, device="meta")
    boxes = torch.zeros(2, 5, 4, device="meta")
    labels = torch.zeros(2, 5, dtype=torch.int64, device="meta")
    valid = torch.zeros(2, 5, dtype=torch.bool, device="meta")
    model._anchor_cache = {(64, 64, torch.device("meta")): tuple(
        (a.to("meta") if torch.is_tensor(a) else a) for a in model.anchors(64, 64))}
    model.mean = model.mean.to("meta")
    losses = model.loss((cls, deltas), boxes, labels, valid, (64, 64))
    assert set(losses) == {"classification", "bbox_regression"} and losses["classification"].device.type == "meta"
    with pytest.raises(Exception):  # the check itself: a sync on meta fails
        torch.zeros(3, device="meta").nonzero()


def test_epoch_plan_is_the_loaders_order_and_flips(shapes):
    from resnet50.detect.coco import DetectionSamples, load_sample
    from resnet50.detect.train import epoch_plan

    train_dir, _ = shapes
    ds = CocoDataset(train_dir)
    order, flips = epoch_plan(len(ds), 1, 7, 0.5)
    loader = build_loader(DetectionSamples(ds, 64, 0.5), 4, train=True, seed=7, collate=collate_detection)
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert batch.image_ids == [ds.images[i].id for i in order[:4]]
    want = torch.stack([load_sample(ds, i, 64, f).image for i, f in zip(order[:4], flips[:4])])
    assert torch.equal(batch.images, want) and 0 < sum(flips) < len(flips)
