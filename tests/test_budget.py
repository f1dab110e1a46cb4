"""Time-budgeted training: the plan, steps fixed after calibration, the schedule over the budget, exact resume.
The budget's clock is replaced by one that ticks 1 s a reading, so the planned steps do not depend on the load."""

import itertools
import json

import pytest
import torch

import resnet50.engine as engine
import resnet50.train as tr
from resnet50 import weights
from resnet50.engine import (BUDGET_MARGIN, CALIBRATION, FORWARD_SHARE, REPLAN_MARGIN, REPLAN_STEPS, Calibration,
                             plan_budget)
from resnet50.optim import lr_at
from resnet50.recipes import OptimSpec, resolve
from resnet50.train import train

from .helpers import make_idx_dataset

TINY = dict(arch="resnet20_cifar", image_size=32, crop_pct=0.0, batch_size=8, workers=0, lr=0.03, schedule="linear",
            warmup_epochs=7.0, channels_last=False, deterministic=True)  # warm-up (28 steps) covers calibration
QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=40)  # 36 train images: 4 steps an epoch


@pytest.fixture
def ticking(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(engine, "clock", lambda: float(next(ticks)))  # start 0, calibration 1 and 2: 1 s in all


STEP_S = 1 / (CALIBRATION[1] - CALIBRATION[0]) * BUDGET_MARGIN  # the planned step: 1 s over the calibration steps


def cfg(data, out, name, **kw):
    return resolve("demo", {**TINY, "data": str(data), "out": str(out), "name": name, "epochs": 20, **kw})


def test_plan_fits_steps_and_validations_in_the_budget():
    # 100 s left, 0.5 s a step, a 5 s validation per epoch of 20 steps: 150 steps (8 validations) need 70 + 40 s;
    # 140 steps (7 validations) take 65 + 35 = 100 s
    t = plan_budget(budget_s=110, elapsed_s=10, step=10, step_s=0.5, eval_s=5, steps_per_epoch=20, eval_every=1,
                    max_steps=10_000)
    assert t == 140 and (t - 10) * 0.5 + 7 * 5 <= 100
    assert plan_budget(110, 10, 10, 0.5, 5, 20, 1, max_steps=60) == 60  # --epochs caps the budget
    assert plan_budget(10, 10, 10, 0.5, 5, 20, 1, 10_000) == 10  # nothing left: stop where it is


def test_steps_are_fixed_after_calibration_and_the_schedule_runs_over_them(data, tmp_path, ticking):
    res = train(cfg(data, tmp_path, "b", time_budget=0.05), **QUIET)  # 3 s: 2 s gone, 1 s of 0.055 s steps
    steps = json.loads((tmp_path / "b" / "config.json").read_text())["run"]["budget_steps"]
    # planned with 0.05 s steps and the 10 % margin; eval 4 images, two views each (the recipe's flip TTA) / batch 8 *
    # 1/2.4 of a step per epoch: the most steps T with (T - 25) * 0.055 + ceil(T / 4) * 0.0229 <= 1
    assert steps == plan_budget(3, 2, CALIBRATION[1], STEP_S, 2 * 4 / 8 * STEP_S * FORWARD_SHARE, 4, 1, 80) == 39
    assert res["step"] == res["total_steps"] == steps and res["epoch"] == 10  # 9 epochs and 3 steps
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["config"]["run"]["budget_steps"] == steps
    o = OptimSpec(lr=1.0, schedule="linear", warmup_epochs=7.0, epochs=20)
    budget = OptimSpec(lr=1.0, schedule="linear", warmup_epochs=7.0, epochs=steps / 4)
    assert lr_at(steps, 4, budget, 1.0) == 0.0 and lr_at(steps, 4, o, 1.0) > 0.3  # linear to zero at the budget
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(lr_at(steps - 1, 4, budget, 0.03 * 8 / 256))


def test_the_callers_evaluation_after_training_is_taken_from_the_budget(data, tmp_path, ticking):
    # 100 forward passes after training at 1/2.4 of a 0.055 s step per image of a batch of 8: 0.29 s less to train
    train(cfg(data, tmp_path, "after", time_budget=0.05, budget_after_images=100), **QUIET)
    steps = json.loads((tmp_path / "after" / "config.json").read_text())["run"]["budget_steps"]
    after_s = 100 * STEP_S / 8 * FORWARD_SHARE
    assert steps == plan_budget(3 - after_s, 2, CALIBRATION[1], STEP_S, 2 * 4 / 8 * STEP_S * FORWARD_SHARE, 4, 1, 80) == 34


def test_a_budgeted_run_resumes_exactly(data, tmp_path, ticking):
    train(cfg(data, tmp_path, "cut", time_budget=0.05, max_steps=CALIBRATION[1] + 3), **QUIET)
    steps = json.loads((tmp_path / "cut" / "config.json").read_text())["run"]["budget_steps"]
    assert steps == 39
    cut, state = tr.resume_config(tmp_path / "cut", {})
    train(cut, resume=state, **QUIET)
    train(cfg(data, tmp_path, "ref", budget_steps=steps), **QUIET)
    a = weights.load(tmp_path / "cut" / "final.safetensors").model.state_dict()
    b = weights.load(tmp_path / "ref" / "final.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_measures_the_steps_this_process_takes(ticking):
    first, (a, b) = Calibration(), CALIBRATION  # from the start: steps 5..25, clock readings 0 and 1
    assert [first.at(s) for s in range(1, b)] == [None] * (b - 1)
    assert first.at(b) == (pytest.approx(STEP_S), 1.0)
    resumed = Calibration()  # a run resumed at step 8, before its budget was fixed: steps 8..28, not a stale start
    assert resumed.at(8) is None and all(resumed.at(s) is None for s in range(9, 8 + b - a))
    assert resumed.at(8 + b - a) == (pytest.approx(STEP_S), 3.0)


def test_the_second_measurement_runs_from_the_first_plan_without_its_validations(ticking):
    cal = Calibration()
    assert cal.again(CALIBRATION[1] + REPLAN_STEPS, 0.0) is None  # no first plan: nothing to measure again
    cal.planned_at(25, -30.0, 1.0)  # the first plan at step 25, clock -30 s, 1 s of validation so far
    assert all(cal.again(s, 4.0) is None for s in range(25, 25 + REPLAN_STEPS))
    # the clock now reads 0: 30 s since the plan, 3 of them validating, over 60 steps
    assert cal.again(25 + REPLAN_STEPS, 4.0) == (pytest.approx(27 / REPLAN_STEPS * REPLAN_MARGIN), 0.0)
    assert cal.again(25 + REPLAN_STEPS + 1, 4.0) is None  # taken once


def test_a_run_faster_than_its_calibration_is_planned_again_and_runs_the_longer_schedule(data, tmp_path, ticking):
    # clock readings: 0 at the start, 1 and 2 at steps 5 and 25 (the first plan: 0.055 s steps, 4 s left of 6), 3 at
    # step 85 (60 steps in 1 s: planned again with 0.0175 s steps and 3 s left); one validation, at the end
    res = train(cfg(data, tmp_path, "again", time_budget=0.1, epochs=100, eval_every=1000), **QUIET)
    eval_s = lambda step_s: 2 * 4 / 8 * step_s * FORWARD_SHARE  # noqa: E731
    first = plan_budget(6, 2, CALIBRATION[1], STEP_S, eval_s(STEP_S), 4, 1000, 400)
    step_s = 1 / REPLAN_STEPS * REPLAN_MARGIN
    steps = json.loads((tmp_path / "again" / "config.json").read_text())["run"]["budget_steps"]
    assert first == 97 and steps == plan_budget(6, 3, CALIBRATION[1] + REPLAN_STEPS, step_s, eval_s(step_s), 4,
                                                1000, 400) == 256
    assert res["step"] == res["total_steps"] == steps
    rows = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    budget = OptimSpec(lr=1.0, schedule="linear", warmup_epochs=7.0, epochs=steps / 4)
    assert rows[-1]["lr"] == pytest.approx(lr_at(steps - 1, 4, budget, 0.03 * 8 / 256))
