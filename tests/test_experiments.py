"""The degradation experiment's runs: trained apart and drawn together, continued after an interruption, refused
when a folder holds a run of other settings."""

import json
import subprocess
import sys

import pytest

from resnet50.errors import UserError
from resnet50.experiments import degradation

from .helpers import make_idx_dataset

QUIET = {"progress": False, "overrides": {"workers": 0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=40, n_test=16))


def test_nets_trained_apart_are_reused_by_a_run_with_all(data, tmp_path):
    out = str(tmp_path / "deg")
    alone = degradation(data, [20], epochs=1, batch_size=16, out=out, only=("resnet20",), **QUIET)
    assert [(r["arch"], r["epochs_found"]) for r in alone["runs"]] == [("resnet20_cifar", 0)]
    both = degradation(data, [20], epochs=1, batch_size=16, out=out, **QUIET)
    assert [(r["arch"], r["epochs_found"]) for r in both["runs"]] == [("plain20_cifar", 0), ("resnet20_cifar", 1)]
    assert both["runs"][1]["train_error"] == alone["runs"][0]["train_error"]
    hist = json.loads((tmp_path / "deg" / "degradation.json").read_text())["histories"]
    assert sorted(hist) == ["plain20_cifar", "resnet20_cifar"]
    # a third run finds both done and trains nothing: the same figures, to the last digit
    again = degradation(data, [20], epochs=1, batch_size=16, out=out, **QUIET)
    assert [r["epochs_found"] for r in again["runs"]] == [1, 1] and again["runs"] == [
        {**r, "epochs_found": 1} for r in both["runs"]]


def test_an_interrupted_net_continues_to_the_same_end(data, tmp_path):
    whole = degradation(data, [20], epochs=2, batch_size=16, out=str(tmp_path / "whole"), only=("resnet20",),
                        **QUIET)
    cut = str(tmp_path / "cut")
    first = degradation(data, [20], epochs=2, batch_size=16, out=cut, only=("resnet20",), max_steps=3, **QUIET)
    assert json.loads((tmp_path / "cut" / "degradation.json").read_text())[
        "histories"]["resnet20_cifar"][-1]["step"] == 3
    rest = degradation(data, [20], epochs=2, batch_size=16, out=cut, only=("resnet20",), **QUIET)
    assert rest["runs"][0]["epochs_found"] == 1 and first["runs"][0]["epochs_found"] == 0
    hist = json.loads((tmp_path / "cut" / "degradation.json").read_text())["histories"]["resnet20_cifar"]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[-1]["step"] == 4
    assert rest["runs"][0]["train_error"] == pytest.approx(whole["runs"][0]["train_error"], abs=1e-9)
    assert rest["runs"][0]["val_error"] == pytest.approx(whole["runs"][0]["val_error"], abs=1e-9)


def test_other_settings_in_the_folder_are_refused_before_any_training(data, tmp_path):
    out = str(tmp_path / "deg")
    degradation(data, [20], epochs=1, batch_size=16, out=out, only=("resnet20",), **QUIET)
    with pytest.raises(UserError, match=r"resnet20_cifar run of other settings \(optim.epochs 1 there, 2 now.*"
                                        r"choose another --out"):
        degradation(data, [20], epochs=2, batch_size=16, out=out, **QUIET)
    assert not (tmp_path / "deg" / "plain20_cifar").exists()  # checked before plain-20 (first in order) trained
    with pytest.raises(UserError, match="resnet56: not among the nets of depths 20; choose from plain20, resnet20"):
        degradation(data, [20], out=out, only=("resnet56",), **QUIET)
    bad = subprocess.run([sys.executable, "-m", "resnet50", "experiment", "degradation", "--only", "resnet21",
                          "--out", out], capture_output=True, text=True)
    assert bad.returncode == 2 and "resnet21: not among the nets of depths 20,56" in bad.stderr
    assert "Traceback" not in bad.stderr
