"""resnet50.predict and the predict command: real image files of each format, metadata preprocessing, class
names, bad files among good ones, JSON/CSV output, CLI errors."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import create_model
from resnet50.cli import main
from resnet50.data.discover import expand_inputs
from resnet50.data.transforms import preprocess
from resnet50.infer import create_backend, load_model, softmax
from resnet50.labels import imagenet_synsets_and_names
from resnet50.predict import predict_files
from resnet50.weights import Preprocessing, save

CLASSES = ["cat", "dog", "bird"]
PRE = Preprocessing(resize=40, crop=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic")


pytestmark = pytest.mark.usefixtures("onnx_cache")  # the shared checkpoint below is exported once


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors")


def tiny_checkpoint(path, in_chans=3, classes=CLASSES, pre=PRE):
    model = create_model("resnet20_cifar", num_classes=len(classes) if classes else 5, in_chans=in_chans)
    save(path, model, list(classes) if classes else None, pre, "test")
    return path


@pytest.fixture
def images(tmp_path):
    """One file per format (sizes and contents differ), plus grayscale and RGBA PNGs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, fmt in enumerate(["png", "jpeg", "webp", "bmp", "tiff"]):
        p = folder / f"{i}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 60, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    gray = folder / "gray.png"
    Image.fromarray(rng.integers(0, 256, (45, 70), dtype=np.uint8), "L").save(gray)
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (48, 48, 4), dtype=np.uint8), "RGBA").save(rgba)
    return paths + [gray, rgba]


def reference_input(path, in_chans=3, pre=PRE):
    """Preprocessing written out independently: shorter side to ``resize`` (bicubic), centre crop, 0..1, mean/std."""
    img = Image.open(path)
    img.load()
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    img = img.convert("RGB" if in_chans == 3 else "L")
    w, h = img.size
    s = pre.resize
    img = img.resize((s, int(s * h / w)) if w <= h else (int(s * w / h), s), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = int(round((w - pre.crop) / 2)), int(round((h - pre.crop) / 2))
    a = np.asarray(img.crop((left, top, left + pre.crop, top + pre.crop)), dtype=np.float32) / 255
    a = a.reshape(pre.crop, pre.crop, -1).transpose(2, 0, 1)
    mean, std = (np.array(v[:in_chans], np.float32)[:, None, None] for v in (pre.mean, pre.std))
    return (a - mean) / std


def test_preprocessing_follows_checkpoint_metadata(tmp_path, images):
    loaded = load_model(tiny_checkpoint(tmp_path / "m.safetensors"))
    pre = loaded.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (40, 32, "bicubic")
    for p in images:
        x = preprocess(p, loaded)
        assert x.shape == (3, 32, 32) and x.dtype == np.float32
        np.testing.assert_allclose(x, reference_input(p), atol=1e-5)


def test_topk_matches_eager_model_for_every_format(tmp_path, images):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    loaded = load_model(ckpt)
    results = predict_files(images, loaded, create_backend("eager", loaded), k=2, batch_size=3)
    assert [r.file for r in results] == [str(p) for p in images] and all(r.error is None for r in results)
    x = torch.from_numpy(np.stack([reference_input(p) for p in images]))
    with torch.no_grad():
        probs = softmax(loaded.model(x).numpy().astype(np.float64))
    for r, p in zip(results, probs):
        order = np.argsort(-p, kind="stable")[:2]
        assert [t["index"] for t in r.top] == order.tolist()
        assert [t["label"] for t in r.top] == [CLASSES[i] for i in order]
        assert [t["rank"] for t in r.top] == [1, 2]
        np.testing.assert_allclose([t["probability"] for t in r.top], p[order], atol=1e-5)


def test_onnx_backend_gives_the_same_predictions(ckpt, images):
    loaded = load_model(ckpt)
    eager = predict_files(images, loaded, create_backend("eager", loaded), k=3)
    onnx = predict_files(images, loaded, create_backend("onnx", loaded), k=3)
    for a, b in zip(eager, onnx):
        assert [t["index"] for t in a.top] == [t["index"] for t in b.top]
        np.testing.assert_allclose([t["probability"] for t in a.top], [t["probability"] for t in b.top], atol=1e-5)


def test_grayscale_model_gets_L_images(tmp_path, images):
    pre = Preprocessing(resize=40, crop=32, mean=(0.3,), std=(0.2,), interpolation="bicubic")
    loaded = load_model(tiny_checkpoint(tmp_path / "g.safetensors", in_chans=1, pre=pre))
    results = predict_files(images, loaded, create_backend("eager", loaded), k=1)
    x = torch.from_numpy(np.stack([reference_input(p, 1, pre) for p in images]))
    assert x.shape[1] == 1
    with torch.no_grad():
        want = loaded.model(x).argmax(1).tolist()
    assert [r.top[0]["index"] for r in results] == want


def test_bad_files_are_reported_and_the_rest_predicted(tmp_path, images):
    loaded = load_model(tiny_checkpoint(tmp_path / "m.safetensors"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bomb = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(bomb)  # 9 Mpx, a few kB on disk
    files = [images[0], text, truncated, images[1], bomb, images[2]]
    results = predict_files(files, loaded, create_backend("eager", loaded), k=1, batch_size=4, max_pixels=4_000_000)
    errors = {r.file: r.error for r in results if r.error}
    assert set(errors) == {str(text), str(truncated), str(bomb)}
    assert "cannot identify" in errors[str(text)] and "truncated" in errors[str(truncated)].lower()
    assert "max_pixels" in errors[str(bomb)]
    good = predict_files([images[0], images[1], images[2]], loaded, create_backend("eager", loaded), k=1)
    kept = [r.top[0] for r in results if not r.error]
    assert [t["index"] for t in kept] == [g.top[0]["index"] for g in good]
    np.testing.assert_allclose([t["probability"] for t in kept], [g.top[0]["probability"] for g in good], atol=1e-5)


def test_class_names_imagenet_bundled_or_indices(tmp_path):
    synsets, names = imagenet_synsets_and_names()
    assert len(synsets) == len(set(synsets)) == 1000
    assert (synsets[0], names[0]) == ("n01440764", "tench") and names[999] == "toilet tissue"
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(img)
    model = create_model("resnet20_cifar", num_classes=1000)
    save(tmp_path / "in1k.safetensors", model, None, PRE, "imported")
    loaded = load_model(tmp_path / "in1k.safetensors")
    r = predict_files([img], loaded, create_backend("eager", loaded), k=3)[0]
    assert [t["label"] for t in r.top] == [names[t["index"]] for t in r.top]
    loaded5 = load_model(tiny_checkpoint(tmp_path / "c5.safetensors", classes=None))
    r = predict_files([img], loaded5, create_backend("eager", loaded5), k=5)[0]
    assert sorted(t["label"] for t in r.top) == ["0", "1", "2", "3", "4"]


def test_expand_inputs_folders_globs_and_errors(tmp_path, images):
    from resnet50.errors import UserError

    (tmp_path / "imgs" / "sub").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "imgs" / "sub" / "deep.png")
    (tmp_path / "imgs" / "readme.txt").write_text("skip me")
    found = expand_inputs([tmp_path / "imgs"])
    assert len(found) == len(images) + 1 and all(p.suffix != ".txt" for p in found)
    assert expand_inputs([str(tmp_path / "imgs" / "*.png")]) == sorted(p for p in found if p.parent.name == "imgs"
                                                                        and p.suffix == ".png")
    with pytest.raises(UserError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.gif")])
    with pytest.raises(UserError, match="does not exist"):
        expand_inputs([tmp_path / "missing.png"])


def test_cli_json_and_csv(tmp_path, images, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    rc = main(["predict", *map(str, images[:3]), str(bad), "--weights", str(ckpt), "--backend", "eager",
               "--topk", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["failed"] == 1 and out["files"] == 4 and out["backend"] == "eager"
    assert [len(r.get("predictions", [])) for r in out["results"]] == [2, 2, 2, 0]
    assert out["results"][3]["file"] == str(bad) and out["results"][3]["error"]
    rc = main(["predict", *map(str, images[:2]), "--weights", str(ckpt), "--backend", "eager", "--topk", "3", "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rc == 0 and len(rows) == 6
    assert [r["rank"] for r in rows] == ["1", "2", "3"] * 2 and {r["label"] for r in rows} == set(CLASSES)
    assert abs(sum(float(r["probability"]) for r in rows[:3]) - 1) < 1e-5


@pytest.mark.parametrize("args, message", [
    (["missing.png"], "missing.png does not exist"),
    (["{img}", "--backend", "fastest"], "unknown backend 'fastest'; choose from: auto, onnx"),
    (["{img}", "--backend", "onnx-int8"], "runs an INT8 model: make one with 'resnet50 quantize"),
    (["{img}", "--weights", "nope.safetensors"], "weights file nope.safetensors does not exist"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, images, capsys, args, message):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    argv = ["predict", *[a.replace("{img}", str(images[0])) for a in args]]
    if "--weights" not in argv:
        argv += ["--weights", str(ckpt)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("resnet50 predict: error: ") and message in err


def test_predict_cam_writes_overlays_and_boxes_in_image_pixels(tmp_path):
    from resnet50.predict import crop_to_image

    pre = Preprocessing(resize=64, crop=64)
    # a 90 x 60 image: resized to 96 x 64, the centre crop starts at x = 16; the whole crop is x 16..80 of the
    # resized image, i.e. x 15..75 of the original (scale 64 / 60)
    assert crop_to_image([0, 0, 64, 64], (90, 60), pre) == [15.0, 0.0, 60.0, 60.0]
    a = np.zeros((60, 90, 3), np.uint8)
    a[10:40, 50:80] = (250, 40, 40)
    Image.fromarray(a).save(tmp_path / "x.png")
    save(tmp_path / "m.safetensors", create_model("resnet18", num_classes=3), ["red", "green", "blue"], pre)
    out = subprocess.run([sys.executable, "-m", "resnet50", "predict", str(tmp_path / "x.png"), "--weights",
                          str(tmp_path / "m.safetensors"), "--backend", "eager", "--cam", str(tmp_path / "cams"),
                          "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)["results"][0]
    assert r["cam"]["class"] == r["predictions"][0]["label"] and r["cam"]["score"] == pytest.approx(
        r["predictions"][0]["probability"], abs=1e-4)
    x, y, w, h = r["cam"]["box"]
    assert 0 <= x and 0 <= y and x + w <= 90.5 and y + h <= 60.5 and w > 0 and h > 0
    picture = Image.open(r["cam"]["overlay"])
    assert picture.mode == "RGB" and min(picture.size) >= 256
