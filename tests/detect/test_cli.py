"""resnet50 detect evaluate|predict|demo|train from the command line."""

import json
from pathlib import Path

import torch

from resnet50.cli import main
from resnet50.detect.checkpoint import save_detector
from resnet50.detect.retinanet import (
    create_detector,
)


def test_cli_evaluate_and_predict(shapes, tmp_path, capsys):
    train_dir, val_dir = shapes
    model = create_detector(arch="resnet18", image_size=64, num_classes=2, in_chans=1, mean=(0.3,), std=(0.3,),
                            score_thresh=0.0)
    save_detector(tmp_path / "det.safetensors", model, ["square", "stripes"])
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(val_dir),
                 "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 16 and set(r["per_class"]) == {"square", "stripes"} and 0 <= r["map"] <= 1
    assert "class_agnostic" not in r
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(val_dir),
                 "--json", "--no-progress", "--class-agnostic"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["map"] == r["map"] and 0 <= a["class_agnostic"]["map"] <= 1 and set(a["class_agnostic"]) == {
        "map", "map50", "map75"}
    # --results: COCO's results format, read back by pycocotools' loadRes, scores the same mAP
    res = tmp_path / "results.json"
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(val_dir),
                 "--json", "--no-progress", "--results", str(res)]) == 0
    w = json.loads(capsys.readouterr().out)
    rows = json.loads(res.read_text())
    assert w["results"] == str(res) and len(rows) == w["detections"] > 0 and w["map"] == r["map"]
    assert set(rows[0]) == {"image_id", "category_id", "bbox", "score"}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from resnet50.detect.coco import find_instances_json

    gt = COCO(str(find_instances_json(val_dir)))
    ev = COCOeval(gt, gt.loadRes(str(res)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    capsys.readouterr()  # pycocotools prints
    assert abs(ev.stats[0] - r["map"]) < 1e-12
    (tmp_path / "broken.png").write_bytes(b"nope")
    assert main(["detect", "predict", str(val_dir / "images" / "001.png"), str(tmp_path / "broken.png"),
                 "--weights", str(tmp_path / "det.safetensors"), "--out", str(tmp_path / "pics"),
                 "--min-score", "0", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["picture"] and Path(found[0]["picture"]).is_file() and found[0]["detections"]
    assert {"label", "score", "box", "class_index"} <= set(found[0]["detections"][0])
    assert found[1]["error"] and found[1]["detections"] == []
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "missing.pt"), "--data", str(val_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err


def test_detect_demo_command_runs_end_to_end(tmp_path, capsys):
    # the README's detection demo, shrunk: 32 training and 8 validation scenes, 2 steps, no time budget
    assert main(["detect", "demo", "--out", str(tmp_path), "--detector", "retinanet", "--train-scenes", "32",
                 "--val-scenes", "8",
                 "--max-steps", "2", "--time-budget", "0", "--amp", "off", "--threads", "2", "--json",
                 "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 2 and s["train_scenes"] == 32 and s["val_scenes"] == 8 and 0 <= s["map"] <= 1
    assert Path(s["picture"]).stat().st_size > 0 and len(s["per_class"]) == 10
    assert set(s["class_agnostic"]) == {"map", "map50", "map75"}
    assert s["detector"] == "retinanet" and set(s["by_kind"]) == {"plain", "clutter"}
    assert [v["images"] for v in s["by_kind"].values()] == [4, 4]  # half of the validation scenes each
    cfg = json.loads((Path(s["run_dir"]) / "config.json").read_text())
    assert cfg["run"]["time_budget"] == 0 and cfg["optim"]["epochs"] == 8  # the flag took effect, the cap is the demo's
    assert cfg["run"]["amp"] == "off" and cfg["run"]["threads"] == 2
    assert main(["detect", "demo", "--out", str(tmp_path / "r"), "--train-scenes", "16",  # the default: Faster R-CNN
                 "--val-scenes", "4", "--max-steps", "1", "--time-budget", "0", "--amp", "off", "--json",
                 "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["detector"] == "fasterrcnn" and 0 <= r["by_kind"]["clutter"]["map50"] <= 1
    assert json.loads((Path(r["run_dir"]) / "config.json").read_text())["detector"] == "fasterrcnn"
    assert main(["detect", "demo", "--out", str(tmp_path / "bad"), "--time-budget", "-1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "bad").exists()  # refused before writing
    assert main(["detect", "demo", "--out", str(tmp_path / "bad"), "--init-weights", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no.pt does not exist" in err and not (tmp_path / "bad").exists()


def test_resuming_the_other_kind_of_checkpoint_names_the_right_command(tmp_path, capsys):
    torch.save({"kind": "detector", "config": {}, "model": {}}, tmp_path / "det.pt")
    torch.save({"config": {}, "model": {}}, tmp_path / "cls.pt")
    assert main(["train", "--resume", str(tmp_path / "det.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a detector's training checkpoint" in err
    assert "'resnet50 detect train --resume" in err
    assert main(["detect", "train", "--resume", str(tmp_path / "cls.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a classifier's training checkpoint" in err and "'resnet50 train --resume" in err
