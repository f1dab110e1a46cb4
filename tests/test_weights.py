import json
import os
import subprocess
import sys

import pytest
import torch

from resnet50 import UserError, create_model, weights
from resnet50.weights import Preprocessing


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _same_outputs(a, b, size=64, in_chans=3):
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_save_then_load_gives_identical_outputs_and_metadata(tmp_path):
    m = _randomise_bn(create_model("resnet18", num_classes=3, in_chans=1, variant="v1"))
    pre = Preprocessing(resize=36, crop=32, mean=(0.28,), std=(0.35,))
    weights.save(tmp_path / "m.safetensors", m, ["shirt", "bag", "boot"], pre, "unit test")
    ck = weights.load(tmp_path / "m.safetensors")
    assert ck.arch == "resnet18" and ck.classes == ["shirt", "bag", "boot"] and ck.source == "unit test"
    assert ck.preprocessing == pre
    assert ck.config == m.cfg
    assert _same_outputs(m, ck.model, 32, 1)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_torchvision_layout_round_trip_strict(tmp_path):
    m = _randomise_bn(create_model("resnet50"))
    sd = m.state_dict()
    # The layout torchvision and timm use: 320 entries, these names.
    assert len(sd) == 320
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer3.5.conv3.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"):
        assert k in sd
    torch.save(sd, tmp_path / "tv.pth")
    ck = weights.load(tmp_path / "tv.pth")
    assert ck.arch == "resnet50" and ck.config.variant == "v1.5" and _same_outputs(m, ck.model)
    # ours into theirs: what convert writes loads strictly into a fresh model
    weights.convert(tmp_path / "tv.pth", tmp_path / "ours.safetensors")
    weights.convert(tmp_path / "ours.safetensors", tmp_path / "back.pth")
    fresh = create_model("resnet50")
    fresh.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    assert _same_outputs(m, fresh)


@pytest.mark.parametrize("wrap", ["timm", "ddp", "safetensors"])
def test_common_checkpoint_containers(tmp_path, wrap):
    m = _randomise_bn(create_model("resnet18", num_classes=10))
    sd = m.state_dict()
    if wrap == "timm":
        torch.save({"epoch": 3, "arch": "resnet18", "state_dict": sd}, tmp_path / "w.pth")
        path = tmp_path / "w.pth"
    elif wrap == "ddp":
        torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "w.pth")
        path = tmp_path / "w.pth"
    else:
        from safetensors.torch import save_file

        save_file(sd, tmp_path / "w.safetensors")
        path = tmp_path / "w.safetensors"
    ck = weights.load(path)
    assert ck.arch == "resnet18" and ck.config.num_classes == 10 and _same_outputs(m, ck.model)


def test_variant_override_for_state_dicts(tmp_path):
    torch.save(create_model("resnet50", variant="v1").state_dict(), tmp_path / "v1.pth")
    assert weights.load(tmp_path / "v1.pth", variant="v1").config.variant == "v1"


def test_mismatch_names_missing_unexpected_shapes_and_cause(tmp_path):
    torch.save(create_model("resnet101").state_dict(), tmp_path / "r101.pth")
    with pytest.raises(UserError) as e:
        weights.load(tmp_path / "r101.pth", arch="resnet50")
    msg = str(e.value)
    assert "holds resnet101" in msg and "--arch resnet101" in msg and "unexpected 306" in msg
    assert "layer3.6." in msg
    torch.save(create_model("resnet50", num_classes=10).state_dict(), tmp_path / "c10.pth")
    with pytest.raises(UserError, match="10 classes, the model 1000") as e:
        weights.load(tmp_path / "c10.pth", arch="resnet50")
    assert "fc.weight (10, 2048) vs (1000, 2048)" in str(e.value)


def test_bad_files_are_clear_errors(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    with open(tmp_path / "code.pth", "wb") as f:
        torch.save({"w": torch.zeros(1), "x": Payload()}, f)
    with pytest.raises(UserError, match="refusing to load .* carries Python objects or code"):
        weights.load(tmp_path / "code.pth")

    torch.save(create_model("resnet18").state_dict(), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        weights.load(tmp_path / "trunc.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        weights.load(tmp_path / "text.pth")
    weights.save(tmp_path / "ok.safetensors", create_model("resnet18"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:1000])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        weights.load(tmp_path / "trunc.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        weights.load(tmp_path / "nope.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        weights.load(tmp_path / "empty.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not in the ResNet layout"):
        weights.load(tmp_path / "other.pth")


def test_failed_write_leaves_previous_file_intact(tmp_path):
    m = create_model("resnet18")
    target = tmp_path / "m.safetensors"
    weights.save(target, m)
    before = target.read_bytes()
    with pytest.raises(UserError, match="3 class names"):
        weights.save(target, create_model("resnet18", num_classes=2), ["a", "b", "c"])

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with weights.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert target.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_cli_convert(tmp_path):
    torch.save(create_model("resnet34", num_classes=4).state_dict(), tmp_path / "r34.pth")
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    run = [sys.executable, "-m", "resnet50", "convert"]
    out = subprocess.run(run + [str(tmp_path / "r34.pth"), str(tmp_path / "r34.safetensors"),
                                "--classes", str(tmp_path / "classes.txt"), "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["arch"] == "resnet34" and info["classes"] == 4
    assert weights.load(tmp_path / "r34.safetensors").classes == ["a", "b", "c", "d"]
    bad = subprocess.run(run + [str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(run + [str(tmp_path / "r34.pth"), str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown output format '.onnx'" in bad.stderr
