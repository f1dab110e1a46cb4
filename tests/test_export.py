"""resnet50.export: each format reloads, has a dynamic batch, matches eager, and carries the metadata."""

import json

import numpy as np
import pytest
import torch

from resnet50 import create_model
from resnet50.cli import main
from resnet50.errors import UserError
from resnet50.export import (
    CHECK_BATCH,
    FORMATS,
    TOLERANCE,
    TRACE_BATCH,
    export,
    load_exported,
)
from resnet50.infer import load_model
from resnet50.weights import Preprocessing, save


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save(path, create_model("resnet20_cifar", num_classes=3), ["x", "y", "z"],
         Preprocessing(36, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), "test")
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit, still asked for
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_on_another_batch_size(ckpt, tmp_path, fmt):
    loaded = load_model(ckpt)
    out = tmp_path / f"m.{fmt}"
    report = export(loaded, fmt, out)
    par = report["parity"]
    assert CHECK_BATCH != TRACE_BATCH and par["batch"] == CHECK_BATCH
    assert par["passed"] and 0 <= par["max_abs_diff"] <= par["tolerance"]
    assert par["tolerance"] == pytest.approx(TOLERANCE * max(1.0, par["max_abs_logit"]))
    assert report["bytes"] == out.stat().st_size > 0
    # independently of the built-in check: a third batch size, compared here
    run = load_exported(fmt, out)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = loaded.model(x).numpy()
    got = run(x.numpy())
    assert got.shape == (5, 3)
    assert np.abs(got - want).max() <= TOLERANCE


def test_onnx_metadata_and_dynamic_batch(ckpt, tmp_path):
    import onnx

    loaded = load_model(ckpt)
    export(loaded, "onnx", tmp_path / "m.onnx", check=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["x", "y", "z"]
    assert json.loads(meta["preprocessing"])["mean"] == [0.5, 0.5, 0.5]
    assert meta["arch"] == "resnet20_cifar" and meta["in_chans"] == "3" and meta["num_classes"] == "3"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    again = load_model(tmp_path / "m.onnx")  # the ONNX file alone is enough to predict
    assert again.classes == ["x", "y", "z"] and again.preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cli_export_torchscript_json_keeps_metadata(ckpt, tmp_path, capsys):
    out = tmp_path / "m.pt"
    rc = main(["export", "--format", "torchscript", "--weights", str(ckpt), "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["parity"]["passed"] and report["input"] == [None, 3, 32, 32]
    extra = {"metadata.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(json.loads(extra["metadata.json"])["classes"]) == ["x", "y", "z"]


def test_export_errors(ckpt, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export(load_model(ckpt), "tflite", tmp_path / "x")
    rc = main(["export", "--weights", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err


def test_parity_check_catches_a_wrong_model(ckpt):
    from resnet50.export import parity

    loaded = load_model(ckpt)

    def eager(x):
        with torch.no_grad():
            return loaded.model(torch.from_numpy(x)).numpy()
    assert parity(loaded, eager)["passed"] and parity(loaded, eager)["max_abs_diff"] == 0
    off = parity(loaded, lambda x: eager(x) + 2e-3)
    assert not off["passed"] and off["max_abs_diff"] == pytest.approx(2e-3, rel=1e-3)
    frozen = parity(loaded, lambda x: eager(x[:2]))  # a graph that froze the traced batch size
    assert not frozen["passed"] and "output shape" in frozen["error"]
