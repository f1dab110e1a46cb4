"""The localisation demo: write single scenes (one Fashion-MNIST item of 28-84 px on a 128 px canvas; half plain,
half cluttered, ``resnet50.scenes``), train a localiser on them from the classification demo's checkpoint (from
scratch without one) in a time budget, measure it on validation scenes of both kinds by the ILSVRC rule, and draw
its boxes on a few."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..detect.coco import CocoDataset
from ..errors import UserError
from ..files import atomic_path, output_dir, write_json
from ..scenes import write_mixed_scenes
from ..weights import check_source
from .evaluate import evaluate, load_localizer
from .predict import draw_box, locate_files
from .train import resolve, train

TRAIN_SCENES = 4000  # per kind (plain, cluttered), from the embedded train split
VAL_SCENES = 250  # per kind, from the embedded val split, never trained on
VAL_SEED = 1
# the demo trains in a time budget so that writing (about 15 s), training, evaluating and drawing end within 15
# minutes on any 2-core CPU; the final evaluation of the validation scenes is charged to the budget
# (budget_after_images); --epochs is the upper bound on a fast one
LOCALIZE_DEMO_BUDGET = {"time_budget": 13.5, "epochs": 8}


def run_localize_demo(out: str = "runs", init_weights: str | None = None, overrides: dict | None = None,
                      train_scenes: int = TRAIN_SCENES, val_scenes: int = VAL_SCENES, samples: int = 8,
                      progress: bool = True, log=print) -> dict:
    """Run the demo (module docstring) under ``out``; returns its summary (figures on plain and cluttered
    validation scenes, the picture's path)."""
    name = (overrides or {}).get("name") or f"localize-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(out) / name
    if init_weights:
        check_source(init_weights)
    cfg = resolve("scenes", {**LOCALIZE_DEMO_BUDGET, "budget_after_images": 2 * val_scenes, **(overrides or {}),
                             "train": str(root / "scenes-train"),
                             "val": str(root / "scenes-val"), "out": str(root), "name": "run",
                             "init_weights": init_weights or ""})
    output_dir(root)
    t0 = time.perf_counter()
    write_mixed_scenes(root / "scenes-train", "train", "single", train_scenes, 0)
    write_mixed_scenes(root / "scenes-val", "val", "single", val_scenes, VAL_SEED)
    log(f"wrote {2 * train_scenes} training and {2 * val_scenes} validation scenes (half cluttered) under {root} "
        f"({time.perf_counter() - t0:.0f} s)")
    if not init_weights:
        log("no --init-weights: training from scratch")
    result = train(cfg, progress=progress, log=log)
    run_dir = Path(result["run_dir"])
    ckpt = load_localizer(run_dir / "final.safetensors")
    figures = {kind: evaluate(ckpt.model, CocoDataset(root / "scenes-val" / kind / "instances.json"), 64)
               for kind in ("plain", "clutter")}
    if result["val"] is None:
        raise UserError("the demo run ended without a validation")
    picture = _sheet(root / "scenes-val", ckpt, run_dir / "localize.png", samples)
    summary = {"run_dir": str(run_dir), "init_weights": init_weights or None, "train_scenes": 2 * train_scenes,
               "val_scenes": 2 * val_scenes, "train_seconds": result["train_seconds"], "steps": result["step"],
               "epochs": result["epoch"], "img_s": result["img_s"], "all": result["val"],
               "plain": figures["plain"], "cluttered": figures["clutter"], "picture": str(picture)}
    write_json(run_dir / "localize_demo.json", summary)
    for kind in ("plain", "clutter"):
        f = figures[kind]
        log(f"{kind} validation scenes: top-1 loc {f['top1_loc']:.2%}, GT-known {f['gt_known_loc']:.2%}, top-1 cls "
            f"{f['top1_cls']:.2%}, mean IoU {f['mean_iou']:.3f}")
    return summary


def _sheet(val_root: Path, ckpt, path: Path, samples: int) -> Path:
    """A grid of validation scenes, half plain and half cluttered, with the predicted box (white) and the truth
    (green)."""
    tiles = []
    for kind in ("plain", "clutter"):
        ds = CocoDataset(val_root / kind / "instances.json")
        picks = list(range(0, len(ds), max(1, len(ds) // (samples // 2))))[:samples // 2]
        found = locate_files([str(ds.images[i].path) for i in picks], ckpt)
        for i, item in zip(picks, found):
            b = ds.images[i].boxes[0].tolist()
            tiles.append(draw_box(np.asarray(Image.open(item.file).convert("L")), item, truth=b)
                         if not item.error else None)
    tiles = [t for t in tiles if t is not None] or [Image.new("RGB", (128, 128))]
    cols = min(4, len(tiles))
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w + (cols - 1) * 8, -(-len(tiles) // cols) * (h + 8) - 8), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * (w + 8), (k // cols) * (h + 8)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path

