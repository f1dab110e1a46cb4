"""The detection demo: write multi scenes (``resnet50.scenes``: 1-4 Fashion-MNIST items of 28-84 px on a 128 px
canvas; half of them on the cluttered background), fine-tune a RetinaNet or Faster R-CNN (``detector``) on them with
its ``scenes`` recipe (from the classification demo's checkpoint when one is given, from scratch otherwise), measure
it on plain and on cluttered validation scenes with pycocotools, and draw its boxes on a few."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..files import output_dir, write_json
from ..scenes import write_mixed_scenes
from ..weights import check_source
from .checkpoint import load_detector
from .coco import CocoDataset
from .detectors import TITLES
from .evaluate import evaluate
from .predict import detect_files, draw_detections
from .train import resolve, train

TRAIN_SCENES = 5000  # drawn from the embedded train split, half plain and half cluttered
VAL_SCENES = 500  # drawn from the embedded val split, never trained on, half plain and half cluttered
VAL_SEED = 1
# The demo trains in a time budget (resnet50.detect.train's time_budget), so that writing the scenes, training,
# evaluating and drawing end within 15 minutes on any 2-core CPU; --epochs is the upper bound on a fast one.
DETECT_DEMO_BUDGET = {"time_budget": 12.5, "epochs": 8}


def run_detect_demo(out: str = "runs", init_weights: str | None = None, overrides: dict | None = None,
                    train_scenes: int = TRAIN_SCENES, val_scenes: int = VAL_SCENES, samples: int = 6,
                    progress: bool = True, log=print, detector: str = "fasterrcnn") -> dict:
    """Run the demo under ``out/<name>/`` and return its summary (also written as RUN/detect_demo.json): mAP,
    mAP@.5, mAP@.75 on all validation scenes and per kind (``plain``, ``clutter``, each with labels ignored too),
    training time and speed, the picture's path. ``train_scenes`` / ``val_scenes``: totals, half of each kind."""

    name = (overrides or {}).get("name") or f"detect-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(out) / name
    train_dir, val_dir = root / "scenes-train", root / "scenes-val"
    # the config and the weights' path first: a wrong option is refused before any scene is written
    if init_weights:
        check_source(init_weights)
    if train_scenes < 2 or val_scenes < 2:
        raise UserError("--train-scenes and --val-scenes must be at least 2 (half plain, half cluttered)")
    cfg = resolve("scenes", {**DETECT_DEMO_BUDGET, **(overrides or {}), "train": str(train_dir), "val": str(val_dir),
                             "out": str(root), "name": "run", "init_weights": init_weights or "",
                             "detector": detector})
    output_dir(root)
    t0 = time.perf_counter()
    write_mixed_scenes(train_dir, split="train", kind="multi", count=train_scenes // 2, seed=0)
    write_mixed_scenes(val_dir, split="val", kind="multi", count=val_scenes // 2, seed=VAL_SEED)
    log(f"wrote {train_scenes // 2 * 2} training and {val_scenes // 2 * 2} validation scenes (half cluttered) under "
        f"{root} ({time.perf_counter() - t0:.0f} s); {TITLES[detector]}")
    if not init_weights:
        log("no --init-weights: training from scratch")
    if cfg.run.time_budget:
        log(f"training for {cfg.run.time_budget:g} minutes (a time budget: as many steps as fit, at most "
            f"{cfg.optim.epochs} epochs), then evaluating and drawing: ending about "
            f"{time.strftime('%H:%M', time.localtime(time.time() + 60 * (cfg.run.time_budget + 0.5)))}")
    result = train(cfg, progress=progress, log=log)
    run_dir = Path(result["run_dir"])
    val = result["val"]
    if val is None:
        raise UserError("the demo run ended without a validation")

    # the last validation's detections with labels ignored: how much of the gap is naming, not finding, the items
    agnostic = val["class_agnostic"]
    ckpt = load_detector(run_dir / "final.safetensors")
    kinds = {}
    for kind in ("plain", "clutter"):
        m = evaluate(ckpt.model, CocoDataset(val_dir / kind, in_chans=1), cfg.data.eval_batch_size,
                     classes=ckpt.classes, class_agnostic=True)
        kinds[kind] = {"map": m["map"], "map50": m["map50"], "map75": m["map75"], "images": m["images"],
                       "class_agnostic": m["class_agnostic"]}
    ds = CocoDataset(val_dir, in_chans=1)
    picks = [ds.images[i].path for i in range(0, len(ds), max(1, len(ds) // samples))[:samples]]
    found = detect_files(picks, ckpt, min_score=0.5)
    tiles = [draw_detections(np.asarray(Image.open(f.file).convert("L")), f.detections) for f in found]
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w + (cols - 1) * 8, rows * h + (rows - 1) * 8), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * (w + 8), (k // cols) * (h + 8)))
    picture = run_dir / "detect.png"
    sheet.save(picture)
    summary = {
        "run_dir": str(run_dir), "detector": detector, "init_weights": init_weights or None, "train_scenes": train_scenes,
        "val_scenes": val_scenes, "train_seconds": result["train_seconds"],
        "train_cpu_seconds": result["train_cpu_seconds"], "epochs": result.get("epoch"),
        "steps": result.get("step"), "img_s": result.get("img_s"),
        "map": val["map"], "map50": val["map50"], "map75": val["map75"], "per_class": val["per_class"],
        "class_agnostic": agnostic, "by_kind": kinds,
        "picture": str(picture), "samples": [f.to_dict() for f in found],
    }
    write_json(run_dir / "detect_demo.json", summary)
    log(f"validation scenes: mAP@[.5:.95] {val['map']:.3f}, mAP@.5 {val['map50']:.3f} (labels ignored: "
        f"{agnostic['map']:.3f}, {agnostic['map50']:.3f}); " + "; ".join(
            f"{k} {v['map']:.3f} / {v['map50']:.3f}" for k, v in kinds.items())
        + f"; {result['train_seconds'] / 60:.1f} min of training; picture {picture}")
    return summary
