"""Faster R-CNN as a detection task: on the engine (a short run lowers its four losses and resumes bit for bit), through
``detect train|evaluate|predict|export --detector fasterrcnn``, torchvision's state-dict layouts loaded strictly, and
the RPN's proposals on a hand-checked case."""

import copy
import json
from pathlib import Path

import pytest
import torch

from resnet50 import UserError
from resnet50.cli import main
from resnet50.detect.checkpoint import COCO_CLASSES, load_detector, save_detector
from resnet50.detect.coco import CocoDataset, make_batch
from resnet50.detect.fasterrcnn import create_fasterrcnn
from resnet50.detect.retinanet import create_detector
from resnet50.detect.train import RCNNTrainConfig, resolve, train

from ..helpers import DETECT_TINY

QUIET = dict(progress=False, log=lambda *a: None)
RCNN_TINY = {**DETECT_TINY, "detector": "fasterrcnn", "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 32}


def rcnn_cfg(train_dir, out, name, **kw) -> RCNNTrainConfig:
    return resolve("scenes", {**RCNN_TINY, "train": str(train_dir), "out": str(out), "name": name, **kw})


def batch_losses(model, ds, size=64) -> dict:
    """The four losses on all of ``ds`` in one batch, the samples drawn under seed 0, on a copy in eval-BN mode."""
    batch = make_batch(ds, list(range(len(ds))), size)
    model = copy.deepcopy(model).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        return {k: float(v) for k, v in model.loss(model(batch.images), batch.boxes, batch.labels, batch.valid,
                                                   (size, size)).items()}


def test_training_on_the_engine_lowers_the_losses_and_resumes_exactly(shapes, tmp_path):
    train_dir, val_dir = shapes
    full = train(rcnn_cfg(train_dir, tmp_path, "full", val=str(val_dir), epochs=3), **QUIET)
    run = Path(full["run_dir"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["detector"] == "fasterrcnn" and cfg["model"]["num_classes"] == 3  # 2 classes + the background
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and 0 <= rows[-1]["val_map"] <= 1
    assert {"train_loss_objectness", "train_loss_rpn_box_reg", "train_loss_classifier", "train_loss_box_reg"} <= set(
        rows[-1])
    for r in rows:  # the grouped figures are the sums of the four terms
        assert r["train_cls_loss"] == pytest.approx(r["train_loss_objectness"] + r["train_loss_classifier"])
        assert r["train_box_loss"] == pytest.approx(r["train_loss_rpn_box_reg"] + r["train_loss_box_reg"])
    trained = load_detector(run / "final.safetensors")
    assert trained.detector == "fasterrcnn" and trained.classes == ["square", "stripes"]
    torch.manual_seed(0)  # train() seeds the same way before it builds the model: this is its starting point
    start = create_fasterrcnn(**{**trained.config.to_dict()})
    ds = CocoDataset(train_dir)
    before, after = batch_losses(start, ds), batch_losses(trained.model, ds)
    assert sum(after.values()) < 0.7 * sum(before.values()), (before, after)
    assert after["loss_objectness"] < before["loss_objectness"]

    # cut at step 6 of 12 (mid-epoch 2), resume: the same weights (the proposal samples come from the restored RNG)
    cut = train(rcnn_cfg(train_dir, tmp_path, "cut", epochs=3, max_steps=6), **QUIET)
    resumed = train(rcnn_cfg(train_dir, tmp_path, "cut", epochs=3), resume=cut["run_dir"], **QUIET)
    assert resumed["step"] == 12
    uncut = train(rcnn_cfg(train_dir, tmp_path, "uncut", epochs=3), **QUIET)
    a = load_detector(Path(resumed["run_dir"]) / "final.safetensors").model.state_dict()
    b = load_detector(Path(uncut["run_dir"]) / "final.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_evaluate_predict_export_with_the_detector_flag(shapes, tmp_path, capsys):
    train_dir, val_dir = shapes
    flags = [a for k, v in RCNN_TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    assert main(["detect", "train", "--train", str(train_dir), "--out", str(tmp_path), "--name", "r", "--no-progress",
                 "--json", *flags, "--epochs", "1"]) == 0  # the last --epochs stands
    out = json.loads(capsys.readouterr().out)
    weights = str(Path(out["run_dir"]) / "final.safetensors")
    assert main(["detect", "evaluate", "--weights", weights, "--data", str(val_dir), "--detector", "fasterrcnn",
                 "--score-thresh", "0.0", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 16 and set(r["per_class"]) == {"square", "stripes"} and 0 <= r["map"] <= 1
    assert main(["detect", "predict", str(val_dir / "images" / "001.png"), "--weights", weights, "--detector",
                 "fasterrcnn", "--min-score", "0", "--out", str(tmp_path / "pics"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert Path(found[0]["picture"]).is_file()
    assert all(d["label"] in ("square", "stripes") for d in found[0]["detections"])
    # --coco: the detections as an instances file the readers take back; the detector scored on its own output
    # finds every box it wrote, first (AP 1 wherever it wrote one)
    coco = tmp_path / "pseudo" / "instances.json"
    assert main(["detect", "predict", str(val_dir / "images"), "--weights", weights, "--min-score", "0.05",
                 "--coco", str(coco), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    doc = json.loads(coco.read_text())
    assert len(doc["images"]) == 16 and len(doc["annotations"]) == sum(len(f["detections"]) for f in found) > 0
    assert [c["name"] for c in doc["categories"]] == ["square", "stripes"]
    assert main(["detect", "evaluate", "--weights", weights, "--data", str(coco), "--score-thresh", "0.05",
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] > 0.99
    assert main(["detect", "predict", str(val_dir), "--weights", weights, "--coco", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    pytest.importorskip("onnxruntime")
    assert main(["detect", "export", "--weights", weights, "--out", str(tmp_path / "d.onnx"), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["detector"] == "fasterrcnn" and e["outputs"][-2:] == ["objectness", "rpn_deltas"]
    assert e["detections_agree"] and Path(e["onnx"]).stat().st_size > 1e6

    # the other detector named: one line each, exit 2
    assert main(["detect", "predict", str(val_dir), "--weights", weights, "--detector", "retinanet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a Faster R-CNN, not a RetinaNet" in err
    assert main(["detect", "train", "--train", str(train_dir), "--out", str(tmp_path), "--rpn-nms-thresh", "0.6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --detector fasterrcnn" in err
    assert not (tmp_path / "runs").exists()


def test_retinanet_export_agrees_with_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from resnet50.detect.checkpoint import DetectorCheckpoint
    from resnet50.detect.export import export_detector

    model = create_detector(arch="resnet18", image_size=64, num_classes=2, in_chans=1, mean=(0.3,), std=(0.3,))
    r = export_detector(DetectorCheckpoint(model.eval(), ["a", "b"]), tmp_path / "r.onnx")
    assert r["outputs"] == ["cls_logits", "bbox_regression"] and r["detections_agree"] and r["max_abs_diff"] < 1e-3


def _old_torchvision_keys(sd: dict) -> dict:
    """Our (today's torchvision) names as torchvision before 0.13 saved them (its COCO v1 files)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k = k.replace(f"backbone.fpn.{block}.{i}.0.", f"backbone.fpn.{block}.{i}.")
        out[k] = v
    return out


@pytest.mark.parametrize("version,norm,old_names", [("v1", "frozen", True), ("v1", "frozen", False),
                                                    ("v2", "frozen", False), ("v2", "batch", False)])
def test_torchvision_state_dicts_load_strictly(tmp_path, version, norm, old_names):
    torch.manual_seed(0)
    model = create_fasterrcnn(version=version, norm=norm, image_size=64).eval()  # 91 classes: torchvision's COCO
    sd = model.state_dict()
    torch.save(_old_torchvision_keys(sd) if old_names else sd, tmp_path / "tv.pth")
    ckpt = load_detector(tmp_path / "tv.pth", image_size=64, score_thresh=0.2)
    assert ckpt.detector == "fasterrcnn" and ckpt.config.version == version and ckpt.config.norm == norm
    assert ckpt.config.box_score_thresh == 0.2  # --score-thresh means the box head's threshold here
    assert ckpt.classes == COCO_CLASSES[1:] and ckpt.classes[0] == "person"  # our label 0 = torchvision's class 1
    got = ckpt.model.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    del sd["roi_heads.box_predictor.cls_score.bias"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="missing .*cls_score.bias"):
        load_detector(tmp_path / "broken.pth")


def test_our_file_keeps_the_detector_and_its_classes(tmp_path):
    model = create_fasterrcnn(arch="resnet18", num_classes=3, image_size=64, in_chans=1, mean=(0.3,), std=(0.3,))
    with pytest.raises(UserError, match="3 class names given for a detector with 2 classes"):
        save_detector(tmp_path / "x.safetensors", model, ["a", "b", "c"])
    save_detector(tmp_path / "x.safetensors", model, ["a", "b"])
    ckpt = load_detector(tmp_path / "x.safetensors")
    assert ckpt.detector == "fasterrcnn" and ckpt.classes == ["a", "b"] and ckpt.config.num_classes == 3
    with pytest.raises(UserError, match="num_classes=3"):
        load_detector(tmp_path / "x.safetensors", num_classes=4)


def test_rpn_proposals_on_a_hand_checked_case():
    # 64 px input, torchvision's anchors (32..512 px on P2..P6, 3 ratios): 3 x (256 + 64 + 16 + 4 + 1) = 1023.
    # Zero deltas: a proposal is its anchor, clipped. Objectness -10 everywhere except, on P2 (stride 4, grid 16):
    # a = ratio 1 at cell (4, 4) (index (4*16+4)*3+1 = 205, box 0,0,32,32) score 5; b = ratio 0.5 at the same cell
    # (204; IoU 0.60 with a: kept) score 4; c = ratio 1 at cell (4, 5) (208, box 4,0,36,32: IoU 0.78 with a,
    # suppressed by NMS at 0.7) score 3; on P3 (offset 768, grid 8) d = ratio 1 at cell (2, 2) (823, box 0,0,48,48)
    # score 2: it overlaps a but is of another level, so it stays.
    model = create_fasterrcnn(arch="resnet18", image_size=64, rpn_pre_nms_top_n_test=3, rpn_post_nms_top_n_test=3,
                              rpn_pre_nms_top_n_train=3, rpn_post_nms_top_n_train=2)
    features = [torch.zeros(1, 1, s, s) for s in (16, 8, 4, 2, 1)]
    objectness = torch.full((1, 1023), -10.0)
    for idx, score in ((205, 5.0), (204, 4.0), (208, 3.0), (823, 2.0)):
        objectness[0, idx] = score
    outputs = {"features": features, "objectness": objectness, "deltas": torch.zeros(1, 1023, 4)}
    anchors, counts = model.anchors((64, 64), features)
    assert counts == [768, 192, 48, 12, 3] and anchors[205].tolist() == [0, 0, 32, 32]
    test = model.proposals(outputs, (64, 64), training=False)[0]
    want = anchors[[205, 204, 823]].clamp(0, 64)
    assert test.shape == (3, 4) and torch.equal(test, want), test
    assert want[2].tolist() == [0, 0, 48, 48] and anchors[208].tolist() == [4, 0, 36, 32]
    train_props = model.proposals(outputs, (64, 64), training=True)[0]
    assert torch.equal(train_props, want[:2])  # the post-NMS top-n of the training settings
