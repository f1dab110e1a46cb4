"""The detection data path against the public-bug cases of reliability set 3 (issue 25): negatives, Label Studio
file names, undecodable batches, huge images and bounded memory, EXIF-turned photos, undefined mAP, v2's GroupNorm
width. Each kind is fixed in the one data path (``detect.coco`` + the engine's loader)."""

import io
import json
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import UserError
from resnet50.cli import main
from resnet50.detect.checkpoint import save_detector
from resnet50.detect.coco import CocoDataset, make_batch
from resnet50.detect.retinanet import create_detector
from resnet50.detect.train import epoch_plan, resolve, train

from ..helpers import DETECT_TINY

QUIET = dict(progress=False, log=lambda *a: None)
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def picture(w=64, h=48, box=None, seed=0) -> Image.Image:
    arr = (np.random.default_rng(seed).random((h, w)) * 60).astype(np.uint8)
    if box is not None:
        x, y, bw, bh = box
        arr[y:y + bh, x:x + bw] = 220
    return Image.fromarray(arr)


def coco(root: Path, entries: list[tuple[str, tuple | None]], size=(64, 48), write=True) -> Path:
    """A COCO folder: (file_name, box or None) per image; files written under root/images by base name."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (name, box) in enumerate(entries, 1):
        if write:
            picture(*size, box, seed=i).save(root / "images" / name.replace("\\", "/").rsplit("/", 1)[-1])
        images.append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
        if box is not None:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + i % 2, "bbox": list(box),
                         "area": box[2] * box[3], "iscrowd": 0})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return root


def detector(tmp_path) -> Path:
    model = create_detector(arch="resnet18", image_size=64, num_classes=2, in_chans=1, mean=(0.3,), std=(0.3,),
                            score_thresh=0.0)
    save_detector(tmp_path / "det.safetensors", model, ["cat", "dog"])
    return tmp_path / "det.safetensors"


def cfg(train_dir, out, name, **kw):
    return resolve("scenes", {**DETECT_TINY, "batch_size": 2, "train": str(train_dir), "out": str(out),
                              "name": name, **kw})


def test_02_a_batch_of_negatives_trains_and_undefined_map_is_said(tmp_path, capsys):
    neg = coco(tmp_path / "neg", [("a.png", None), ("b.png", None)])
    res = train(cfg(neg, tmp_path, "neg", val=str(neg), epochs=1), **QUIET)  # was: index 0 is out of bounds
    assert res["step"] == 1 and res["train_box_loss"] == 0.0 and 0 < res["train_cls_loss"] < 1
    assert res["val_map"] is None and res["best_map"] == -1.0
    assert main(["detect", "evaluate", "--weights", str(detector(tmp_path)), "--data", str(neg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mAP undefined" in out and "0.000" not in out  # pycocotools says -1: undefined, not zero


def test_04_label_studio_file_names_are_found_by_base_name(tmp_path, capsys):
    names = ["a.png", "images\\b.png", "..\\..\\label-studio\\media\\upload\\4\\c.png", "images/1/d.png",
             "/data/upload/1/e.png", "gone.png"]
    root = coco(tmp_path / "ls", [(n, (8, 6, 24, 18)) for n in names])
    (root / "images" / "1").mkdir()
    (root / "images" / "d.png").rename(root / "images" / "1" / "d.png")  # images/1/d.png as written
    (root / "images" / "gone.png").unlink()
    ds = CocoDataset(root)
    assert len(ds) == 5 and ds.stats.found_by_name == 2 and ds.missing == ["gone.png (not in the folder)"]
    assert main(["detect", "evaluate", "--weights", str(detector(tmp_path)), "--data", str(root), "--json",
                 "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["images"], r["listed_images"], r["lost_images"], r["missing"]) == (5, 6, 1, ["gone.png (not in the folder)"])
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(root),
                 "--no-progress"]) == 0
    assert "measured on 5 of 6 listed images: lost 1 (1 missing" in capsys.readouterr().out
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(root),
                 "--strict", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gone.png" in err and "--strict" in err


def test_a_file_name_two_files_share_is_not_guessed(tmp_path):
    root = coco(tmp_path / "amb", [("a.png", (8, 6, 24, 18)), ("/elsewhere/x.png", (8, 6, 24, 18))])
    for sub in ("p", "q"):
        (root / "images" / sub).mkdir()
        picture().save(root / "images" / sub / "x.png")
    (root / "images" / "x.png").unlink()
    ds = CocoDataset(root)
    assert len(ds) == 1 and ds.missing == ["/elsewhere/x.png (2 files named so in the folder)"]


def test_09_a_batch_with_no_readable_image_is_skipped_and_counted(tmp_path):
    order, _ = epoch_plan(4, 0, 0, 0.5)
    root = coco(tmp_path / "trunc", [(f"im{i}.png", (8 + 5 * i, 6, 24, 18)) for i in range(4)])
    for i in order[:2]:  # the first batch of 2 of epoch 1: both files cut short (an interrupted copy)
        data = (root / "images" / f"im{i}.png").read_bytes()
        (root / "images" / f"im{i}.png").write_bytes(data[: len(data) // 3])
    res = train(cfg(root, tmp_path, "trunc", epochs=2), **QUIET)  # was: cannot reshape tensor of 0 elements
    # epoch 1: its first batch is empty, its second trains; epoch 2 pairs each bad file with a good one, and a
    # single image cannot train BatchNorm: both batches dropped, 2 unreadable + 2 left alone, all counted
    assert [r["skipped_files"] for r in res["history"]] == [2, 4] and res["step"] == 1
    assert (Path(res["run_dir"]) / "last.pt").is_file()
    with pytest.raises(UserError, match="none of the 2 images"):
        from resnet50.detect.evaluate import evaluate_weights

        bad = coco(tmp_path / "allbad", [("a.png", (8, 6, 24, 18)), ("b.png", (8, 6, 24, 18))])
        for f in ("a.png", "b.png"):
            (bad / "images" / f).write_bytes(b"\x89PNG\r\n")
        evaluate_weights(str(detector(tmp_path)), str(bad), progress=False)


def test_10_max_pixels_is_a_flag_with_a_reason_and_memory_stays_bounded(tmp_path, capsys):
    root = coco(tmp_path / "big", [("a.png", (8, 6, 24, 18)), ("b.png", (8, 6, 24, 18))])
    Image.new("L", (3000, 2000)).save(root / "images" / "huge.png")
    doc = json.loads((root / "instances.json").read_text())
    doc["images"].append({"id": 3, "file_name": "huge.png", "width": 3000, "height": 2000})
    (root / "instances.json").write_text(json.dumps(doc))
    w = str(detector(tmp_path))
    assert main(["detect", "evaluate", "--weights", w, "--data", str(root), "--max-pixels", "1000000",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lost 1 (0 missing, 1 unreadable), e.g. " in out and "huge.png" in out and "max-pixels" in out
    assert main(["detect", "evaluate", "--weights", w, "--data", str(root), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    # camera-size JPEGs: nothing decoded is kept, and a JPEG is decoded at the DCT scale the letterbox needs
    photos = tmp_path / "photos" / "images"
    photos.mkdir(parents=True)
    entries = []
    for i in range(6):
        buf = io.BytesIO()
        picture(4000, 3000, (500, 400, 800, 600), seed=i).save(buf, format="JPEG")
        (photos / f"p{i}.jpg").write_bytes(buf.getvalue())
        entries.append((f"p{i}.jpg", (500, 400, 800, 600)))
    ds = CocoDataset(coco(tmp_path / "photos", entries, size=(4000, 3000), write=False), in_chans=1)
    make_batch(ds, [0], 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in range(len(ds)):
        b = make_batch(ds, [k], 64)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB: one photo is 12 MB decoded
    assert not hasattr(ds, "_cache") and b.images.shape == (1, 1, 64, 64)
    assert b.boxes[0, 0].tolist() == pytest.approx([8.0, 6.4, 20.8, 16.0])  # the JSON's box at 64 / 4000


def test_exif_turned_photos_are_read_in_the_frame_the_json_gives(tmp_path, capsys):
    # a phone photo stored 64x48 with Orientation 6 (shown 48x64): a tool that wrote the stored size annotated the
    # stored pixels; one that wrote the shown size, the shown pixels. Both are read in their JSON's frame.
    stored = picture(64, 48, (8, 6, 24, 18))
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, size in (("stored", (64, 48)), ("shown", (48, 64))):
        root = coco(tmp_path / name, [("a.jpg", (8, 6, 24, 18) if name == "stored" else (24, 8, 18, 24))],
                    size=size, write=False)
        stored.save(root / "images" / "a.jpg", exif=exif, quality=95)
        ds = CocoDataset(root)
        pixels = ds.pixels(0)
        assert pixels.shape == (size[1], size[0])
        box = ds.images[0].boxes[0].astype(int)
        assert pixels[box[1] + 2:box[3] - 2, box[0] + 2:box[2] - 2].mean() > 180  # the box is on the item
    mismatch = coco(tmp_path / "wrong", [("a.png", (8, 6, 24, 18))], size=(64, 48))
    doc = json.loads((mismatch / "instances.json").read_text())
    doc["images"][0]["width"] = 100
    (mismatch / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="none of the 1 images .* is 64x48 px, but the JSON says 100x48"):
        from resnet50.detect.evaluate import evaluate_weights

        evaluate_weights(str(detector(tmp_path)), str(mismatch), progress=False)


def test_v2_fpn_channels_must_fit_groupnorm():
    with pytest.raises(UserError, match="fpn_channels 32 does not fit v2's GroupNorm"):
        create_detector(version="v2", fpn_channels=32)
    model = create_detector(version="v2", arch="resnet18", fpn_channels=64, image_size=64, num_classes=2).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))  # batch 1, P7 of one cell: fine at two channels a group
