"""resnet50.localize: the ILSVRC measure on a hand-checked case (top-1, top-5, IoU exactly 0.5), the box
parametrisation round trip, a short training run that lowers the loss, ONNX parity, and the bad inputs (several boxes
per image, images without a box, bad boxes, weights of a detector or a classifier)."""

import json
from pathlib import Path

import pytest
import torch

from resnet50 import UserError, create_model, weights
from resnet50.cli import main
from resnet50.data import FASHION_MNIST_CLASSES
from resnet50.detect.checkpoint import save_detector
from resnet50.detect.coco import CocoDataset
from resnet50.detect.retinanet import create_detector
from resnet50.localize import Localizer, LocalizerConfig, from_xyxy, ilsvrc_metrics, save_localizer, to_xyxy
from resnet50.localize.train import resolve, single_objects, train
from resnet50.scenes import write_scenes

from .helpers import write_coco

QUIET = dict(progress=False, log=lambda *a: None)


def test_ilsvrc_measure_on_a_hand_checked_case():
    # 4 images, 6 classes; ground truth box [0, 0, 10, 10] for every image
    gt = torch.tensor([[0.0, 0, 10, 10]] * 4)
    half = [0.0, 0, 10, 5]  # IoU exactly 0.5 with the truth: counts (>=)
    off = [0.0, 0, 10, 4.9]  # IoU 0.49: misses
    boxes = torch.zeros(4, 6, 4)
    boxes[:] = torch.tensor(off)
    boxes[0, 2] = torch.tensor(half)  # image 0: top class 2 = label, box IoU 0.5 -> top-1 loc
    boxes[1, 3] = torch.tensor([0.0, 0, 10, 10])  # image 1: label 3 ranked 2nd, its box perfect -> top-5 loc only
    boxes[2, 1] = torch.tensor([0.0, 0, 10, 10])  # image 2: top class 1 = label 1 but ... its box perfect -> top-1
    boxes[3, 5] = torch.tensor([0.0, 0, 10, 10])  # image 3: label 5 ranked 6th (outside top 5): GT-known only
    logits = torch.tensor([[0, 0, 9, 1, 0, 0], [0, 0, 9, 5, 0, 0], [0, 9, 0, 0, 0, 0], [6, 5, 4, 3, 2, 1.0]])
    labels = torch.tensor([2, 3, 1, 5])
    m = ilsvrc_metrics(logits, boxes, labels, gt)
    assert m["top1_cls"] == 0.5 and m["top5_cls"] == 0.75
    assert m["top1_loc"] == 0.5 and m["top5_loc"] == 0.75 and m["gt_known_loc"] == 1.0
    assert m["top1_loc_err"] == 0.5 and m["mean_iou"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    boxes[0, 2] = torch.tensor(off)
    assert ilsvrc_metrics(logits, boxes, labels, gt)["top1_loc"] == 0.25  # 0.49 is a miss


def test_box_parametrisation_round_trips():
    xyxy = torch.tensor([[3.0, 5.0, 40.0, 90.0], [0.0, 0.0, 128.0, 128.0]])
    frac = from_xyxy(xyxy, 128)
    assert torch.allclose(frac[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.allclose(to_xyxy(frac, 128), xyxy, atol=1e-5)
    model = Localizer(LocalizerConfig(arch="resnet18", num_classes=3, image_size=64, regression="scr")).eval()
    logits, boxes = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and boxes.shape == (2, 3, 4) and torch.equal(boxes[:, 0], boxes[:, 2])
    assert torch.allclose(boxes, torch.full_like(boxes, 0.5))  # zero-initialised head: the centred half box


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root / "train", "train", "single", 64, seed=0, clutter=True)
    write_scenes(root / "val", "val", "single", 32, seed=1)
    return root / "train", root / "val"


def cfg(train_dir, out, name, **kw):
    return resolve("scenes", {"train": str(train_dir), "out": str(out), "name": name, "arch": "resnet18",
                              "image_size": 64, "batch_size": 16, "workers": 0, "epochs": 4, "amp": "off",
                              "channels_last": False, "threads": 2, "lr": 0.1, "warmup_epochs": 0, **kw})


def test_a_short_run_lowers_the_loss_and_resumes(scenes, tmp_path):
    train_dir, val_dir = scenes
    res = train(cfg(train_dir, tmp_path, "a", val=str(val_dir)), **QUIET)
    rows = [json.loads(x) for x in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert rows[-1]["train_loss"] < 0.9 * rows[0]["train_loss"], [r["train_loss"] for r in rows]
    assert rows[-1]["train_box_loss"] < rows[0]["train_box_loss"], [r["train_box_loss"] for r in rows]
    assert 0 <= res["val"]["top1_loc"] <= res["val"]["gt_known_loc"] <= 1 and res["val"]["images"] == 32
    cut = train(cfg(train_dir, tmp_path, "b", epochs=2, max_steps=6), **QUIET)
    assert cut["step"] == 6
    done = train(cfg(train_dir, tmp_path, "b", epochs=2), resume=cut["run_dir"], **QUIET)
    ref = train(cfg(train_dir, tmp_path, "c", epochs=2), **QUIET)
    a = torch.load(Path(done["run_dir"]) / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(ref["run_dir"]) / "last.pt", weights_only=True)["model"]
    assert done["step"] == 8 and all(torch.equal(a[k], b[k]) for k in a)  # cut and resumed = uncut


def test_freeze_until_keeps_the_body_to_the_bit_and_unknown_options_are_refused(scenes, tmp_path):
    train_dir, _ = scenes
    classifier = create_model("resnet18", num_classes=10, in_chans=1)
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so that a change would show
        for m in classifier.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    weights.save(tmp_path / "cls.safetensors", classifier, list(FASHION_MNIST_CLASSES))
    start = classifier.state_dict()
    res = train(cfg(train_dir, tmp_path, "f", epochs=1, freeze_until="layer2",
                    init_weights=str(tmp_path / "cls.safetensors")), **QUIET)
    end = torch.load(Path(res["run_dir"]) / "last.pt", weights_only=True)["model"]
    frozen = [k for k in start if k.startswith(("conv1", "bn1", "layer1", "layer2"))]
    assert frozen and all(torch.equal(end[f"body.{k}"], start[k]) for k in frozen)  # weights and BN statistics
    assert not torch.equal(end["body.layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])
    with pytest.raises(UserError, match="the network's stages are stem, layer1"):
        train(cfg(train_dir, tmp_path, "g", freeze_until="layer9"), **QUIET)
    for flag, value in (("layer_lr_decay", 0.5), ("tta_flip", True), ("loss", "bce")):
        with pytest.raises(UserError, match=f"drop --{flag.replace('_', '-')}"):
            cfg(train_dir, tmp_path, "h", **{flag: value})


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from resnet50.localize.predict import export_onnx

    torch.manual_seed(0)
    model = Localizer(LocalizerConfig(arch="resnet18", num_classes=4, image_size=64))
    # the box head's last layer starts at zero (every box the centred half box, whatever the input): random values
    # here, so that the parity covers the box path, and every image gets its own boxes
    torch.nn.init.normal_(model.box_head[-1].weight, std=0.05)
    with torch.no_grad():
        boxes = model.eval()(torch.rand(3, 1, 64, 64))[1]
    assert float((boxes[0] - boxes[1]).abs().max()) > 1e-3
    r = export_onnx(model, tmp_path / "loc.onnx")
    assert r["parity"]["logits_max_abs"] < 1e-4 and r["parity"]["boxes_max_abs"] < 1e-5


def test_predict_draws_and_prints_boxes_in_both_frames(scenes, tmp_path, capsys):
    _, val_dir = scenes
    model = Localizer(LocalizerConfig(arch="resnet18", num_classes=10, image_size=128))
    save_localizer(tmp_path / "loc.safetensors", model, [str(i) for i in range(10)])
    img = val_dir / "images" / "000001.png"
    from PIL import Image
    Image.open(img).resize((256, 256)).save(tmp_path / "big.png")  # twice the letterbox: boxes scale by 2
    assert main(["localize", "predict", str(img), str(tmp_path / "big.png"), "--weights",
                 str(tmp_path / "loc.safetensors"), "--out", str(tmp_path / "pics"), "--json"]) == 0
    a, b = json.loads(capsys.readouterr().out)
    assert a["box"] == pytest.approx([32.0, 32.0, 96.0, 96.0]) and a["box_input"] == a["box"]  # the half box
    assert b["box"] == pytest.approx([64.0, 64.0, 192.0, 192.0]) and b["box_input"] == a["box"]
    assert Path(a["picture"]).stat().st_size > 0


def test_bad_localisation_inputs(scenes, tmp_path, capsys):
    train_dir, _ = scenes
    several = write_coco(tmp_path / "multi", [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                                              {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
                         [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 8, 8]},
                          {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 10, 8, 8]}])
    with pytest.raises(UserError, match=r"image 2 \(b.png\) has 2 boxes; a single-object localiser"):
        train(cfg(several, tmp_path, "m"), **QUIET)
    mixed = write_coco(tmp_path / "mixed", [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32}
                                            for i in range(1, 6)],
                       [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [1, 1, 0, 8]},  # zero area: skipped
                        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [40, 40, 8, 8]}])  # outside: skipped
    ds = CocoDataset(mixed)
    assert (ds.stats.zero_area_boxes, ds.stats.outside_boxes) == (1, 1)  # counted skips of bad boxes
    assert single_objects(ds) == 4 and [im.id for im in ds.images] == [1]  # images left without a box: skipped
    with pytest.raises(UserError, match=r"the training set \(1 images\) is smaller than one batch of 2"):
        train(cfg(mixed, tmp_path, "neg", batch_size=2), **QUIET)
    det = create_detector(arch="resnet18", image_size=64, num_classes=2)
    save_detector(tmp_path / "det.safetensors", det, ["a", "b"])
    weights.save(tmp_path / "cls.safetensors", create_model("resnet18", num_classes=2), ["a", "b"])
    for name, reader in (("det", "resnet50 detect predict"), ("cls", "resnet50 predict")):
        assert main(["localize", "predict", str(train_dir / "images" / "000001.png"), "--weights",
                     str(tmp_path / f"{name}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name}.safetensors" in err and reader in err
