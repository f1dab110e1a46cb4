"""Real-world inputs that once gave silent wrong results or tracebacks (issue 10's cases), each rebuilt here.

1 EXIF orientation, 2 class folders matched by name, 3 flags that contradict a weights file, 4 batches of one,
5 fine-tuning across channel counts, 6 images above Pillow's own pixel limit, 7 hints name flags that exist,
8 training checkpoints as common scripts write them, 9 messages after a failure and rows after a resume."""

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import UserError, create_model, weights
from resnet50.data import Preprocessing, decode_image
from resnet50.labels import class_mapping

from .helpers import make_idx_dataset


def cli(*args, check=None):
    out = subprocess.run([sys.executable, "-m", "resnet50", *map(str, args)], capture_output=True, text=True)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if check is not None:
        assert out.returncode == check, (out.returncode, out.stderr[-2000:])
    return out


# --- 1: EXIF orientation --------------------------------------------------------------------------------------

def _blocks() -> np.ndarray:
    """A 32 x 64 RGB image of 2 x 4 flat 16 px blocks, each its own colour: any turn or mirror moves them."""
    colours = np.array([[(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)],
                        [(20, 230, 230), (230, 20, 230), (240, 240, 240), (10, 10, 10)]], np.uint8)
    return colours.repeat(16, 0).repeat(16, 1)


# What a viewer shows for each EXIF Orientation value (TIFF 6.0 / EXIF 2.3), written with numpy alone.
VIEW = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation, tmp_path):
    stored = _blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=98, exif=exif.tobytes())
    got = np.asarray(decode_image(path)).astype(int)
    want = VIEW[orientation](stored).astype(int)
    assert got.shape == want.shape
    centres = [(y, x) for y in range(8, want.shape[0], 16) for x in range(8, want.shape[1], 16)]
    for y, x in centres:  # block centres: JPEG's rounding stays far below the colour differences
        assert np.abs(got[y, x] - want[y, x]).max() < 30, (orientation, y, x)


def test_predict_sees_a_tagged_photo_upright(tmp_path):
    stored = _blocks()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "tagged.jpg", quality=98, exif=exif.tobytes())
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, -1))).save(tmp_path / "upright.jpg", quality=98)
    Image.fromarray(stored).save(tmp_path / "untagged.jpg", quality=98)
    torch.manual_seed(0)
    weights.save(tmp_path / "m.safetensors", create_model("resnet18", num_classes=3), ["red", "green", "blue"],
                 Preprocessing(64, 64, (0.5,) * 3, (0.25,) * 3))
    out = cli("predict", tmp_path / "tagged.jpg", tmp_path / "upright.jpg", tmp_path / "untagged.jpg", "--weights",
              tmp_path / "m.safetensors", "--backend", "eager", "--topk", "3", "--json", check=0)
    probs = {Path(r["file"]).stem: {p["label"]: p["probability"] for p in r["predictions"]}
             for r in json.loads(out.stdout)["results"]}
    diff = {k: max(abs(probs["tagged"][c] - probs[k][c]) for c in probs[k]) for k in ("upright", "untagged")}
    assert diff["upright"] < 0.02 and diff["untagged"] > 5 * diff["upright"], diff


# --- 2: class folders matched by name ------------------------------------------------------------------------

def test_evaluate_matches_class_folders_by_name_or_index(tmp_path):
    classes = ["zebra", "apple", "mango", "kiwi"]  # not sorted: folder order differs from the model's
    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=4).eval()
    weights.save(tmp_path / "m.safetensors", model, classes, Preprocessing(32, 32, (0.5,) * 3, (0.25,) * 3))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) * (i % 4 + 1) // 4 for i in range(24)]
    with torch.no_grad():
        x = (torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images]) - 0.5) / 0.25
        emb = model.forward_embedding(x)  # a classifier that reads the 4 most varying features, centred
        dims = emb.var(0).topk(4).indices
        model.fc.weight.zero_()
        model.fc.weight[torch.arange(4), dims] = 1.0
        model.fc.bias.copy_(-emb.mean(0)[dims])
        pred = model(x).argmax(1).tolist()
    weights.save(tmp_path / "m.safetensors", model, classes, Preprocessing(32, 32, (0.5,) * 3, (0.25,) * 3))
    for layout, name in (("names", lambda k: classes[k]), ("indices", str)):
        for i, (a, k) in enumerate(zip(images, pred)):
            folder = tmp_path / layout / name(k)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(folder / f"{i}.png")
        for cls in classes:  # ImageFolder needs every class folder to hold an image: one correctly labelled
            folder = tmp_path / layout / name(classes.index(cls))
            if not any(folder.glob("*.png")):
                raise AssertionError("pick another seed: a class got no prediction")
        res = json.loads(cli("evaluate", "--weights", tmp_path / "m.safetensors", "--data", tmp_path / layout,
                             "--split", "test", "--json", "--no-progress", check=0).stdout)
        assert res["top1"] == 1.0, layout  # every image sits in the folder of the class the model gives it
        assert all(v in (1.0, None) for v in res["per_class_accuracy"].values())
        assert res["classes"] == classes
    (tmp_path / "bad" / "durian").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "bad" / "durian" / "0.png")
    bad = cli("evaluate", "--weights", tmp_path / "m.safetensors", "--data", tmp_path / "bad", "--split", "test",
              check=2)
    assert "'durian'" in bad.stderr and "'zebra'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_class_mapping_rules():
    assert class_mapping(["b", "a"], ["a", "b", "c"], 3) == [1, 0]
    assert class_mapping(["0", "2"], ["a", "b", "c"], 3) == [0, 2]
    assert class_mapping(["b", "1"], ["a", "b", "c"], 3) == [1, 1]
    assert class_mapping(["x", "y"], None, 2) == [0, 1]
    fmnist = ["T-shirt/top", "Trouser", "Ankle boot"]
    assert class_mapping(["Ankle_boot", "T-shirt-top", "trouser"], fmnist, 3) == [2, 0, 1]  # as folders spell them
    with pytest.raises(UserError, match="the model has 3 classes, the dataset 2"):
        class_mapping(["x", "y"], None, 3)
    with pytest.raises(UserError, match="does not know: 'z'"):
        class_mapping(["a", "z"], ["a", "b"], 2)


# --- 3: flags that contradict the file ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r18(rgb_checkpoint):
    """Our 3-class checkpoint (ours.safetensors) and a torchvision-layout 10-class state dict (tv.pth) beside it."""
    root = rgb_checkpoint.parent
    torch.save(create_model("resnet18", num_classes=10).state_dict(), root / "tv.pth")
    return root


@pytest.mark.parametrize("command", ["export", "benchmark"])
def test_every_model_flag_against_a_checkpoint_takes_effect_or_is_refused(command, r18, tmp_path):
    extra = ["--out", tmp_path / "x.onnx", "--no-check"] if command == "export" else ["--runs", "1", "--warmup", "0",
                                                                                     "--backend", "eager",
                                                                                     "--batch", "1"]
    for flag, value in (("--num-classes", 5), ("--in-chans", 1), ("--variant", "v1"), ("--arch", "resnet34")):
        out = cli(command, "--weights", r18 / "ours.safetensors", flag, value, *extra, check=2)
        assert "contradicts" in out.stderr and flag in out.stderr, out.stderr
        out = cli(command, "--weights", r18 / "tv.pth", flag, value, *extra)
        if flag == "--variant":  # torchvision files do not say their variant: the flag takes effect
            assert out.returncode == 0, out.stderr
        else:
            assert out.returncode == 2, out.stderr
    # agreeing flags are accepted, --size takes effect
    out = cli("export", "--weights", r18 / "ours.safetensors", "--num-classes", 3, "--size", 48, "--json",
              "--out", tmp_path / "y.onnx", check=0)
    assert json.loads(out.stdout)["metadata"]["preprocessing"].count("48") >= 1


def test_convert_refuses_a_variant_that_contradicts_our_file(r18, tmp_path):
    out = cli("convert", r18 / "ours.safetensors", tmp_path / "o.safetensors", "--variant", "v1", check=2)
    assert "contradicts" in out.stderr
    cli("convert", r18 / "tv.pth", tmp_path / "v1.safetensors", "--variant", "v1", check=0)
    assert weights.load(tmp_path / "v1.safetensors").config.variant == "v1"


# --- 4: batches of one ----------------------------------------------------------------------------------------

def _rgb_folder(root: Path, per_class: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c, rgb in {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}.items():
        for split in ("train", "val"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                a = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(root / split / c / f"{i}.png")
    return root


TINY = ["--arch", "resnet18", "--image-size", 32, "--crop-pct", 1.0, "--epochs", 1, "--workers", 0, "--no-progress"]


def test_a_batch_of_one_is_refused_before_training(tmp_path):
    data = _rgb_folder(tmp_path / "rgb")
    out = cli("train", "--data", data, "--batch-size", 1, "--out", tmp_path, *TINY, check=2)
    assert "batch of 1" in out.stderr and "--batch-size" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_batch_left_with_one_image_is_dropped_and_counted(tmp_path):
    data = _rgb_folder(tmp_path / "rgb", per_class=2)
    (data / "train" / "red" / "1.png").unlink()  # 5 readable + 3 unreadable = 8 files: 4 whole batches of 2
    whole = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(whole, "JPEG")
    for i in range(3):
        (data / "train" / "red" / f"bad{i}.jpg").write_bytes(whole.getvalue()[:60])
    out = cli("train", "--data", data, "--batch-size", 2, "--out", tmp_path, "--name", "one", *TINY, check=0)
    row = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    # 3 unreadable files in 4 batches of 2 leave 1 or 3 batches with a lone image, each dropped and counted
    assert row["skipped_files"] in (4, 6) and row["train_images"] + row["skipped_files"] == 8, row
    assert "skipped" in out.stdout + out.stderr


# --- 5: fine-tuning across channel counts ---------------------------------------------------------------------

def test_init_weights_from_an_rgb_checkpoint_trains_on_gray_data(r18, tmp_path):
    from resnet50.weights import adapt_input_conv

    w = torch.randn(64, 3, 7, 7)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    gray = torch.rand(2, 1, 32, 32)
    conv = torch.nn.functional.conv2d
    assert torch.allclose(conv(gray, adapt_input_conv(w, 1)), conv(gray.repeat(1, 3, 1, 1), w), atol=1e-4)
    four = adapt_input_conv(w, 4)
    assert four.shape == (64, 4, 7, 7) and torch.allclose(four[:, :3] / 0.75, w)
    data = make_idx_dataset(tmp_path / "idx", n_train=40)
    out = cli("train", "--data", data, "--init-weights", r18 / "ours.safetensors", "--arch", "resnet18",
              "--image-size", 32, "--crop-pct", 0, "--batch-size", 8, "--max-steps", 2, "--workers", 0,
              "--no-progress", "--out", tmp_path, "--name", "ft", check=0)
    assert "conv1 adapted from 3 to 1" in out.stdout
    assert weights.load(tmp_path / "ft" / "final.safetensors").config.in_chans == 1


def test_init_weights_keeps_the_classifier_rows_of_classes_it_knows(tmp_path):
    from resnet50.weights import init_from

    src = create_model("resnet18", num_classes=3)
    weights.save(tmp_path / "s.safetensors", src, ["red", "green", "blue"])
    dst = create_model("resnet18", num_classes=3)
    init_from(dst, str(tmp_path / "s.safetensors"), ["blue", "red", "green"], log=lambda *a: None)
    assert torch.equal(dst.fc.weight, src.fc.weight[[2, 0, 1]]) and torch.equal(dst.fc.bias, src.fc.bias[[2, 0, 1]])


# --- 6: images above Pillow's own limit -----------------------------------------------------------------------

def test_max_pixels_is_the_only_pixel_limit(tmp_path):
    side = 13_400  # 179.6 Mpx: just above Pillow's 178,956,970-pixel refusal threshold
    path = tmp_path / "big.png"
    Image.new("1", (side, side)).save(path, optimize=False)
    with pytest.raises(UserError, match="exceeds max_pixels=.*--max-pixels"):
        decode_image(path, 1)
    img = decode_image(path, 1, max_pixels=200_000_000)
    assert img.size == (side, side)


# --- 7: every hint names a flag that exists on the command that prints it -------------------------------------

# The library modules whose messages each command can print (through the modules it calls).
PRINTED_BY = {
    "train": ["train", "experiment", "demo"], "recipes": ["train"], "optim": ["train"],
    "evaluate": ["evaluate"], "predict": ["predict"], "export": ["export"], "quantize": ["quantize"],
    "bench": ["benchmark"], "serve": ["serve"], "experiments": ["experiment"], "demo": ["demo"],
    "data/loader": ["train"], "data/transforms": ["train"], "infer": ["predict", "benchmark", "serve"],
    "backends": ["predict", "benchmark", "serve"], "data/decode": ["predict", "evaluate", "train", "serve"],
    "weights": ["convert", "export", "benchmark"], "files": ["train", "evaluate", "experiment", "demo"],
}


def _flags(command: str) -> set[str]:
    """The options of ``command``; a two-word one ('detect train') is a subcommand's own parser."""
    from resnet50.cli import build_parser

    parser = build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return {s for a in parser._actions for s in a.option_strings}


FLAG = r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]"


def test_every_hint_names_a_flag_of_the_command_that_prints_it():
    root = Path(__file__).parents[1] / "src" / "resnet50"
    bad = []
    for module, commands in PRINTED_BY.items():
        text = (root / f"{module}.py").read_text()
        # a hint that names a command ('resnet50 train --resume RUN') is checked against that command
        for cmd, rest in re.findall(r"'resnet50 ([a-z]+)([^']*)'", text):
            if cmd == "detect":  # a subcommand: 'resnet50 detect train --resume RUN'
                sub, _, rest = rest.strip().partition(" ")
                cmd = f"detect {sub}"
            bad += [f"{module}.py: '{cmd}' is no command"] if cmd.split()[0] not in _commands() else \
                [f"{module}.py: {f} (not on {cmd})" for f in re.findall(FLAG, rest) if f not in _flags(cmd)]
        text = re.sub(r"'resnet50 [a-z]+[^']*'", "", text)
        for flag in set(re.findall(FLAG, text)):
            missing = [c for c in commands if flag not in _flags(c)]
            if missing:
                bad.append(f"{module}.py: {flag} (not on {', '.join(missing)})")
    assert not bad, bad


def _commands() -> set[str]:
    from resnet50.cli import COMMANDS

    return set(COMMANDS)


# --- 8: training checkpoints as common scripts write them -----------------------------------------------------

class NotData:  # a class: pickling it records code to run on load
    pass


def test_training_checkpoints_of_common_scripts_load(tmp_path):
    model = create_model("resnet18", num_classes=3)
    sd = model.state_dict()
    variants = {
        "timm.pth": {"epoch": 3, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                     "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "metric": 71.5,
                     "state_dict_ema": sd},
        "tv_ref.pth": {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {}, "lr_scheduler": {},
                       "epoch": 2, "args": argparse.Namespace(lr=0.5, model="resnet18"),
                       "best_acc1": torch.tensor(70.2)},
        "ema_only.pth": {"model_ema": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "epoch": 1},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        ck = weights.load(tmp_path / name)
        assert all(torch.equal(ck.model.state_dict()[k], sd[k]) for k in sd), name
        cli("convert", tmp_path / name, tmp_path / f"{name}.safetensors", check=0)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    out = cli("predict", tmp_path / "x.png", "--weights", tmp_path / "tv_ref.pth", "--backend", "eager", "--json",
              check=0)
    assert json.loads(out.stdout)["results"][0]["predictions"]
    torch.save({"state_dict": sd, "extra": NotData()}, tmp_path / "code.pth")
    with pytest.raises(UserError, match="carries Python objects or code"):
        weights.load(tmp_path / "code.pth")


# --- 9: messages after a failure, rows after a resume ---------------------------------------------------------

def test_a_run_diverging_before_its_first_checkpoint_says_so(tmp_path):
    data = make_idx_dataset(tmp_path / "idx", n_train=40)
    out = cli("train", "--data", data, "--arch", "resnet20_cifar", "--image-size", 32, "--crop-pct", 0,
              "--batch-size", 8, "--lr", 1e30, "--warmup-epochs", 0, "--workers", 0, "--no-progress",
              "--out", tmp_path, "--name", "div", "--epochs", 1)
    assert out.returncode == 3 and "no checkpoint was written yet" in out.stderr, out.stderr
    assert not (tmp_path / "div" / "last.pt").exists()
    assert "--lr" in out.stderr and "--warmup-epochs" in out.stderr


def test_a_run_stopped_early_and_resumed_has_one_row_per_epoch(tmp_path):
    data = make_idx_dataset(tmp_path / "idx", n_train=80)
    common = ["--data", data, "--arch", "resnet20_cifar", "--image-size", 32, "--crop-pct", 0, "--batch-size", 8,
              "--workers", 0, "--no-progress", "--out", tmp_path, "--name", "r", "--epochs", 2, "--lr", 0.03]
    cli("train", *common, "--max-steps", 4, check=0)  # 9 steps an epoch: stopped mid-epoch 1
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["partial"]
    cli("train", "--resume", tmp_path / "r", "--no-progress", check=0)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and not any(r.get("partial") for r in rows)
    assert rows[0]["train_images"] == 72 and rows[1]["step"] == 18
