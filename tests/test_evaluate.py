import json
import subprocess
import sys

import pytest
import torch

from resnet50 import create_model, weights
from resnet50.data import TransformConfig, build_dataset, build_transform

from .helpers import make_idx_dataset

CLASSES = ["h", "v", "check", "diag"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    data = make_idx_dataset(root / "idx")
    torch.manual_seed(0)
    m = create_model("resnet20_cifar", num_classes=4, in_chans=1).eval()
    for mod in m.modules():  # non-trivial BN statistics so predictions vary between images
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
    pre = weights.Preprocessing(resize=28, crop=32, mean=(0.3,), std=(0.3,))
    weights.save(root / "m.safetensors", m, CLASSES, pre)
    return root, data, m


def test_evaluate_cli_matches_the_model_and_writes_reports(setup):
    root, data, m = setup
    out = subprocess.run([sys.executable, "-m", "resnet50", "evaluate", "--weights", str(root / "m.safetensors"),
                          "--data", str(data), "--split", "test", "--json", "--no-progress", "--out", str(root / "rep")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["samples"] == 40 and sum(map(sum, r["confusion_matrix"])) == 40
    assert list(r["per_class_accuracy"]) == CLASSES
    # the same images through the same transform and model, by hand
    ds = build_dataset(data, "test", in_chans=1)
    ds.transform = build_transform(TransformConfig(image_size=32, crop_pct=32 / 28, mean=(0.3,), std=(0.3,),
                                                   in_chans=1), train=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        pred = m(x).argmax(1)
    assert r["top1"] == pytest.approx((pred == y).float().mean().item())
    assert (root / "rep" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((root / "rep" / "confusion.json").read_text())["matrix"] == r["confusion_matrix"]
    assert json.loads((root / "rep" / "metrics.json").read_text())["top1"] == r["top1"]


def test_evaluate_ten_crop_and_flip(setup):
    root, data, _ = setup
    for tta in ("flip", "ten-crop"):
        out = subprocess.run([sys.executable, "-m", "resnet50", "evaluate", "--weights", str(root / "m.safetensors"),
                              "--data", str(data), "--tta", tta, "--json", "--no-progress"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["samples"] == 40 and r["tta"] == tta and 0 <= r["top1"] <= 1


def test_evaluate_errors(setup, tmp_path):
    root, data, _ = setup
    m = create_model("resnet20_cifar", num_classes=7, in_chans=1)
    weights.save(tmp_path / "seven.safetensors", m)
    for args, msg in (([str(tmp_path / "seven.safetensors"), str(data)], "7 classes, the dataset 4"),
                      ([str(tmp_path / "none.safetensors"), str(data)], "does not exist"),
                      ([str(root / "m.safetensors"), str(tmp_path / "nodata")], str(tmp_path / "nodata"))):
        out = subprocess.run([sys.executable, "-m", "resnet50", "evaluate", "--weights", args[0], "--data", args[1]],
                             capture_output=True, text=True)
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr


def test_degradation_experiment_smoke(setup, tmp_path):
    _, data, _ = setup
    out = subprocess.run([sys.executable, "-m", "resnet50", "experiment", "degradation", "--data", str(data),
                          "--depths", "20", "--epochs", "1", "--batch_size", "16", "--max_steps", "2",
                          "--out", str(tmp_path), "--no-progress", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert [x["arch"] for x in r["runs"]] == ["plain20_cifar", "resnet20_cifar"] and r["warmup_epochs"] == 0.5
    assert (tmp_path / "degradation.png").read_bytes()[:4] == b"\x89PNG"
    hist = json.loads((tmp_path / "degradation.json").read_text())["histories"]
    assert hist["resnet20_cifar"][0]["step"] == 2
    bad = subprocess.run([sys.executable, "-m", "resnet50", "experiment", "degradation", "--depths", "21"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "6n+2" in bad.stderr
