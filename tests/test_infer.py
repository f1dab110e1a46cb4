"""resnet50.infer: backends agree with eager, the choice of backend, errors for unknown or missing backends."""

import os
import sys

import numpy as np
import pytest
import torch

from resnet50 import create_model
from resnet50.cli import main
from resnet50.cpu import has_native_bf16
from resnet50.errors import UserError
from resnet50.infer import (
    AUTO_ORDER,
    BACKENDS,
    BF16_BACKENDS,
    EagerBackend,
    available_backends,
    create_backend,
    load_model,
    onnx_file,
    physical_cores,
    resolve_backend,
    topk,
)
from resnet50.weights import Preprocessing, save

pytestmark = pytest.mark.usefixtures("onnx_cache")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save(path, create_model("resnet20_cifar", num_classes=4), ["a", "b", "c", "d"], Preprocessing(36, 32), "test")
    return path


def batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_eager_backend_is_the_model_in_channels_last(ckpt):
    loaded = load_model(ckpt)
    x = batch(3)
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(x)).numpy()
    got = EagerBackend(loaded.model)(x)
    assert got.shape == (3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_backends_match_eager(ckpt, name):
    if name == "openvino":
        pytest.importorskip("openvino")
    loaded = load_model(ckpt)
    eager, other = create_backend("eager", loaded), create_backend(name, loaded)
    assert other.name == name
    for n in (1, 5):  # two batch sizes through the same session: the batch dimension is dynamic
        np.testing.assert_allclose(other(batch(n, n)), eager(batch(n, n)), atol=1e-4)


@pytest.mark.parametrize("name", BF16_BACKENDS)
def test_bf16_backends_are_close_to_eager_not_equal(ckpt, name):
    if name == "openvino-bf16":
        pytest.importorskip("openvino")
        if not has_native_bf16():
            pytest.skip("openvino-bf16 needs a CPU with bf16 instructions")
    loaded = load_model(ckpt)
    eager, other = create_backend("eager", loaded), create_backend(name, loaded)
    x = batch(6)
    want, got = eager(x), other(x)
    assert other.name == name and got.dtype == np.float32 and got.shape == want.shape
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per operation): close to fp32, and not fp32 itself
    # (eager-bf16 computes in bf16 on any CPU, slowly without bf16 instructions; openvino-bf16 is refused there)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-6 < err < 0.05, err


def test_bf16_backends_are_offered_only_with_bf16_instructions(ckpt, monkeypatch):
    import resnet50.cpu

    assert not set(AUTO_ORDER) & set(BF16_BACKENDS)  # auto means an fp32 result
    monkeypatch.setattr(resnet50.cpu, "cpu_info", lambda: ("cpu", frozenset({"avx2", "fma"})))
    assert not set(available_backends()) & set(BF16_BACKENDS)
    monkeypatch.setattr(resnet50.cpu, "cpu_info", lambda: ("cpu", frozenset({"avx512f", "avx512_bf16"})))
    assert "eager-bf16" in available_backends()
    assert resolve_backend("auto", load_model(ckpt)) in AUTO_ORDER
    monkeypatch.setattr(resnet50.cpu, "cpu_info", lambda: ("cpu", frozenset({"avx2"})))
    with pytest.raises(UserError, match="use --backend openvino"):
        resolve_backend("openvino-bf16", load_model(ckpt))


def test_onnx_export_is_cached_per_checkpoint(ckpt):
    loaded = load_model(ckpt)
    first = onnx_file(loaded)
    stamp = first.stat().st_mtime_ns
    again = onnx_file(load_model(ckpt))
    assert again == first and again.stat().st_mtime_ns == stamp
    assert str(first).startswith(os.environ["RESNET50_CACHE"])


def test_auto_picks_the_first_available_in_measured_order(ckpt):
    loaded = load_model(ckpt)
    assert AUTO_ORDER[0] == "onnx" and resolve_backend("auto", loaded) == "onnx"
    onnx_loaded = load_model(onnx_file(loaded))
    assert onnx_loaded.model is None and onnx_loaded.classes == ["a", "b", "c", "d"] and onnx_loaded.size == 32
    assert resolve_backend("auto", onnx_loaded) == "onnx"


def test_auto_falls_back_to_eager_without_onnxruntime(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert resolve_backend("auto", load_model(ckpt)) == "eager"


def test_unknown_and_mismatched_backends_are_clear_errors(ckpt):
    loaded = load_model(ckpt)
    with pytest.raises(UserError, match="unknown backend 'tensorrt'; choose from: auto, " + ", ".join(BACKENDS)):
        resolve_backend("tensorrt", loaded)
    with pytest.raises(UserError, match="runs an INT8 model"):
        resolve_backend("onnx-int8", loaded)
    with pytest.raises(UserError, match="needs PyTorch weights"):
        resolve_backend("eager", load_model(onnx_file(loaded)))


def test_missing_optional_dependency_names_pip_install(ckpt, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(UserError, match=r"needs the optional dependency 'openvino': pip install openvino"):
        create_backend("openvino", load_model(ckpt))
    from PIL import Image
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(img)
    rc = main(["predict", str(img), "--weights", str(ckpt), "--backend", "openvino"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "pip install openvino" in err


def test_damaged_or_foreign_onnx_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_model(bad)
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])),
              str(foreign))
    with pytest.raises(UserError, match="without our metadata"):
        load_model(foreign)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_topk_order_and_probabilities():
    idx, p = topk(np.array([[0.0, 2.0, 1.0, 2.0]]), 3)
    assert idx.tolist() == [[1, 3, 2]]  # ties: lower index first
    e = np.exp([0.0, 2.0, 1.0, 2.0])
    np.testing.assert_allclose(p[0], e[[1, 3, 2]] / e.sum())


def test_physical_cores_is_sane():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(not os.environ.get("RESNET50_SLOW_TESTS"),
                    reason="torch.compile takes ~30 s; set RESNET50_SLOW_TESTS=1")
def test_compile_backend_matches_eager(ckpt):
    loaded = load_model(ckpt)
    np.testing.assert_allclose(create_backend("compile", loaded)(batch(2)), create_backend("eager", loaded)(batch(2)),
                               atol=1e-4)
