"""resnet50.quantize: INT8 QDQ model from a tiny checkpoint and tiny class folders; its report and its use."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import create_model
from resnet50.cli import main
from resnet50.data.discover import expand_inputs
from resnet50.data.transforms import preprocess
from resnet50.errors import UserError
from resnet50.infer import create_backend, load_model
from resnet50.predict import predict_files
from resnet50.quantize import QUANTIZATION, quantize
from resnet50.weights import Preprocessing, save

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def setup(onnx_cache, tmp_path_factory):
    """A checkpoint and class folders of coloured noise images (6 per class), quantised once for the module."""
    root = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)  # module fixtures run before the autouse seed: fix the model here
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            a = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            a[..., c] += 120
            Image.fromarray(a).save(root / "data" / name / f"{i}.png")
    ckpt = root / "m.safetensors"
    save(ckpt, create_model("resnet20_cifar", num_classes=3), CLASSES, Preprocessing(36, 32), "test")
    out = root / "m.int8.onnx"
    report = quantize(ckpt, root / "data", out)
    return root, ckpt, out, report


def test_report_and_held_out_split(setup):
    root, ckpt, out, r = setup
    assert r["out"] == str(out) and out.exists() and r["bytes"] == out.stat().st_size
    assert r["settings"]["format"] == "QDQ" and r["settings"]["weights"] == "int8 symmetric per-channel"
    # 18 images: every 5th (3 of them) held out for evaluation, the other 15 calibrate
    assert r["calibration"]["images"] == 15 and r["evaluation"]["images"] == 3
    assert r["evaluation"]["held_out_from_calib"] and r["evaluation"]["labels"] == "class folders"
    assert r["bytes"] < r["fp32_bytes"]  # int8 weights


def test_reported_figures_are_what_the_models_give(setup):
    root, ckpt, out, r = setup
    held = expand_inputs([root / "data"])[4::5]
    fp32, int8 = load_model(ckpt), load_model(out)
    assert int8.quantization == QUANTIZATION and int8.classes == CLASSES
    x = np.stack([preprocess(f, fp32) for f in held])
    a = create_backend("onnx", fp32)(x).argmax(1)
    b = create_backend("onnx-int8", int8)(x).argmax(1)
    labels = np.array([CLASSES.index(f.parent.name) for f in held])
    e = r["evaluation"]
    assert e["top1_agreement"] == pytest.approx(np.mean(a == b))
    assert e["top1_fp32"] == pytest.approx(np.mean(a == labels))
    assert e["top1_int8"] == pytest.approx(np.mean(b == labels))


def test_int8_model_is_quantised_and_close_to_fp32(setup):
    import onnx

    root, ckpt, out, r = setup
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    fp32, int8 = load_model(ckpt), load_model(out)
    x = np.stack([preprocess(f, fp32) for f in expand_inputs([root / "data"])])
    f, q = create_backend("eager", fp32)(x), create_backend("auto", int8)(x)
    assert q.shape == f.shape == (18, 3)
    # on images like the calibration ones, the INT8 error is small next to the spread of the logits
    assert np.abs(q - f).max() < 0.1 * (f.max() - f.min())


def test_predict_and_cli_with_the_int8_backend(setup, capsys):
    root, ckpt, out, r = setup
    files = expand_inputs([root / "data" / "red"])[:2]
    loaded = load_model(out)
    results = predict_files(files, loaded, create_backend("onnx-int8", loaded), k=3)
    assert all(r.error is None and sorted(t["label"] for t in r.top) == sorted(CLASSES) for r in results)
    rc = main(["predict", *map(str, files), "--weights", str(out), "--backend", "eager"])
    err = capsys.readouterr().err
    assert rc == 2 and "is an INT8 model; run it with --backend onnx-int8" in err


def test_separate_eval_folder_without_labels(setup, tmp_path, capsys):
    root, ckpt, out, r = setup
    (tmp_path / "eval").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (50 * i, 100, 200)).save(tmp_path / "eval" / f"{i}.jpg")
    rc = main(["quantize", "--weights", str(ckpt), "--calib", str(root / "data"), "--eval", str(tmp_path / "eval"),
               "--out", str(tmp_path / "q.onnx"), "--calib-count", "6", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["calibration"]["images"] == 6 and rep["evaluation"]["images"] == 3
    assert rep["evaluation"]["top1_fp32"] is None and rep["evaluation"]["labels"].startswith("none")
    assert 0 <= rep["evaluation"]["top1_agreement"] <= 1


def test_errors(setup, tmp_path):
    root, ckpt, out, r = setup
    with pytest.raises(UserError, match="name the output"):
        quantize(ckpt, root / "data", tmp_path / "q.int8")
    with pytest.raises(UserError, match="is not a folder"):
        quantize(ckpt, root / "nowhere", tmp_path / "q.onnx")
    with pytest.raises(UserError, match="already quantised"):
        quantize(out, root / "data", tmp_path / "q.onnx")


def test_labels_from_class_folder_names_or_indices(setup, tmp_path):
    from resnet50.quantize import _labels

    loaded = load_model(setup[1])
    assert _labels([tmp_path / "blue" / "a.png", tmp_path / "1" / "b.png"], tmp_path, loaded) == [2, 1]
    assert _labels([tmp_path / "purple" / "c.png"], tmp_path, loaded) is None  # not a class of the model
    assert _labels([tmp_path / "3" / "c.png"], tmp_path, loaded) is None  # index out of range (3 classes)
    assert _labels([tmp_path / "d.png"], tmp_path, loaded) is None  # not in a class folder


def test_percentile_calibration_with_an_uneven_image_count(setup, tmp_path, capsys):
    root, ckpt, out, r = setup
    rep = quantize(ckpt, root / "data", tmp_path / "p.onnx", calib_count=11, method="percentile")
    assert capsys.readouterr().out == ""  # onnxruntime's calibrator prints; stdout stays clean for --json
    assert rep["settings"]["calibration"] == "percentile" and rep["calibration"]["images"] == 11
    assert load_model(tmp_path / "p.onnx").quantization == QUANTIZATION
