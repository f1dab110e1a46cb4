"""resnet50 experiment transfer: the k-shot folders, every method run, medians, the plot (a smoke-size run)."""

import json
from pathlib import Path

import pytest
import torch

from resnet50 import create_model, weights
from resnet50.cli import main
from resnet50.data import Preprocessing
from resnet50.transfer import TARGET, write_split


def test_k_shot_folders_hold_k_images_of_each_new_class(tmp_path):
    root = write_split(tmp_path / "k", "train", TARGET, per_class=3, seed=1)
    counts = {d.name: len(list(d.glob("*.png"))) for d in root.iterdir()}
    assert counts == {"Sandal": 3, "Shirt": 3, "Sneaker": 3, "Bag": 3, "Ankle boot": 3}
    again = write_split(tmp_path / "k2", "train", TARGET, per_class=3, seed=1)
    assert sorted(p.name for p in (again / "Bag").iterdir()) == sorted(p.name for p in (root / "Bag").iterdir())


def test_transfer_runs_every_method_and_writes_its_figures(tmp_path, capsys):
    torch.manual_seed(0)
    pre = tmp_path / "pre.safetensors"
    weights.save(pre, create_model("resnet18", num_classes=5, in_chans=1), ["a", "b", "c", "d", "e"],
                 Preprocessing(48, 48, (0.286,), (0.353,)))
    assert main(["experiment", "transfer", "--out", str(tmp_path / "t"), "--ks", "2", "--seeds", "2", "--steps",
                 "2", "--pretrained", str(pre), "--no-progress", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["median_top1"]) == {"finetune", "linear-probe", "knn", "scratch"} and len(r["runs"]) == 8
    for m, row in r["median_top1"].items():
        tops = sorted(x["top1"] for x in r["runs"] if x["method"] == m)
        assert row["2"] == (tops[0] + tops[1]) / 2 and 0 <= row["2"] <= 1  # the median of two seeds
    assert Path(r["plot"]).stat().st_size > 0 and (tmp_path / "t" / "transfer.json").is_file()


def test_lr_find_gives_each_trained_run_the_range_tests_rate(tmp_path, capsys):
    torch.manual_seed(0)
    pre = tmp_path / "pre.safetensors"
    weights.save(pre, create_model("resnet18", num_classes=5, in_chans=1), ["a", "b", "c", "d", "e"],
                 Preprocessing(48, 48, (0.286,), (0.353,)))
    out = tmp_path / "t"
    assert main(["experiment", "transfer", "--out", str(out), "--ks", "2", "--seeds", "1", "--steps", "2",
                 "--pretrained", str(pre), "--methods", "finetune,scratch", "--lr-find", "--no-progress",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["lr_find"] is True and len(r["runs"]) == 2
    for run in r["runs"]:
        found = json.loads((out / "runs" / f"{run['method']}-k2-seed0-find-lr-find" / "lr_find.json").read_text())
        assert run["lr_per_256"] == found["lr_per_256"]  # the range test's suggestion, on the run's own images
        config = json.loads((out / "runs" / f"{run['method']}-k2-seed0" / "config.json").read_text())
        assert config["optim"]["lr"] == run["lr_per_256"]


def test_a_degradation_flag_given_to_transfer_is_refused(tmp_path, capsys):
    assert main(["experiment", "transfer", "--out", str(tmp_path / "t"), "--lr", "0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr is a degradation option" in err and "--lr-find" in err
    assert not (tmp_path / "t").exists()  # nothing written


def test_bad_transfer_inputs_write_nothing(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_text("hi")
    assert main(["experiment", "transfer", "--out", str(tmp_path / "t"), "--pretrained", str(bad), "--lr-find",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable safetensors file" in err
    assert not (tmp_path / "t").exists()
    with pytest.raises(SystemExit) as stop:  # argparse's own errors: one line too, naming --help
        main(["lr-find", "--rule", "bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'bogus'" in err and "--help" in err
