"""The detection demo: write multi scenes (``resnet50.scenes``: 1-4 Fashion-MNIST items of 28-84 px on a 128 px
canvas), fine-tune RetinaNet on them with the ``scenes`` recipe (from the classification demo's checkpoint when one
is given, from scratch otherwise), measure it on validation scenes with pycocotools, and draw its boxes on a few."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..files import output_dir, write_json

TRAIN_SCENES = 5000  # drawn from the embedded train split
VAL_SCENES = 500  # drawn from the embedded val split, never trained on
VAL_SEED = 1


def run_detect_demo(out: str = "runs", init_weights: str | None = None, overrides: dict | None = None,
                    train_scenes: int = TRAIN_SCENES, val_scenes: int = VAL_SCENES, samples: int = 6,
                    progress: bool = True, log=print) -> dict:
    from ..scenes import write_scenes
    from .checkpoint import load_detector
    from .coco import CocoDataset
    from .predict import detect_files, draw_detections
    from .train import resolve, train

    name = (overrides or {}).get("name") or f"detect-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root = output_dir(Path(out) / name)
    t0 = time.perf_counter()
    train_dir = write_scenes(root / "scenes-train", split="train", kind="multi", count=train_scenes, seed=0).parent
    val_dir = write_scenes(root / "scenes-val", split="val", kind="multi", count=val_scenes, seed=VAL_SEED).parent
    log(f"wrote {train_scenes} training and {val_scenes} validation scenes under {root} "
        f"({time.perf_counter() - t0:.0f} s)")
    cfg = resolve("scenes", {**(overrides or {}), "train": str(train_dir), "val": str(val_dir), "out": str(root),
                             "name": "run", "init_weights": init_weights or ""})
    if not init_weights:
        log("no --init-weights: training from scratch")
    result = train(cfg, progress=progress, log=log)
    run_dir = Path(result["run_dir"])
    val = result["val"]
    if val is None:
        raise UserError("the demo run ended without a validation")

    ckpt = load_detector(run_dir / "final.safetensors")
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
        "run_dir": str(run_dir), "init_weights": init_weights or None, "train_scenes": train_scenes,
        "val_scenes": val_scenes, "train_seconds": result["train_seconds"],
        "train_cpu_seconds": result["train_cpu_seconds"], "epochs": result.get("epoch"),
        "steps": result.get("step"), "img_s": result.get("img_s"),
        "map": val["map"], "map50": val["map50"], "map75": val["map75"], "per_class": val["per_class"],
        "picture": str(picture), "samples": [f.to_dict() for f in found],
    }
    write_json(run_dir / "detect_demo.json", summary)
    log(f"validation scenes: mAP@[.5:.95] {val['map']:.3f}, mAP@.5 {val['map50']:.3f}; "
        f"{result['train_seconds'] / 60:.1f} min of training; picture {picture}")
    return summary
