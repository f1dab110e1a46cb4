"""Detector evaluation on a COCO-format dataset: run the network in batches, post-process, and let pycocotools
measure (``coco.coco_evaluate``): mAP@[.5:.95], mAP@.5, mAP@.75, by object size, AR@100 and per-class AP.

Classes are matched by name: a detector trained on the dataset's categories is used as is; one with other names
(a torchvision COCO model on a subset, say) has its detections of classes the dataset lacks dropped, and the
dataset's classes it lacks score AP 0.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from tqdm import tqdm

from ..data.decode import MAX_PIXELS
from ..errors import UserError
from ..files import output_file, write_json
from .checkpoint import load_detector
from .coco import CocoDataset, coco_evaluate, make_batch
from .detectors import Detector


@torch.no_grad()
def detect_dataset(model: Detector, ds: CocoDataset, batch_size: int = 32, device=torch.device("cpu"),
                   amp: torch.dtype | None = None, channels_last: bool = False, progress: bool = False):
    """Detections for every image of ``ds``: (image ids, detections with boxes in original pixels, skipped files)."""
    model.eval()
    size = model.cfg.image_size
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ids, dets, skipped = [], [], []
    starts = range(0, len(ds), batch_size)
    for s in tqdm(starts, desc="detect", unit="batch", disable=not progress, leave=False):
        batch = make_batch(ds, list(range(s, min(s + batch_size, len(ds)))), size)
        skipped += batch.skipped
        if not batch.image_ids:
            continue
        images = batch.images.to(device).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            outputs = model(images)
        for det, scale in zip(model.postprocess(outputs, (size, size), batch.valid_hw), batch.scales):
            dets.append({"boxes": det["boxes"].cpu() / scale, "scores": det["scores"].cpu(),
                         "labels": det["labels"].cpu()})
        ids += batch.image_ids
    return ids, dets, skipped


def evaluate(model: Detector, ds: CocoDataset, batch_size: int = 32, device=torch.device("cpu"),
             amp: torch.dtype | None = None, channels_last: bool = False, progress: bool = False,
             classes: list[str] | None = None, class_agnostic: bool = False,
             results_path: str | os.PathLike | None = None, keep_results: bool = False) -> dict:
    """pycocotools metrics of ``model`` on ``ds``. ``classes``: the model's class names (default: the dataset's).
    ``class_agnostic`` adds ``class_agnostic``: map, map50, map75 with labels ignored (``coco_evaluate``'s
    use_cats=False): what the boxes score when only finding and placing the objects counts. ``results_path``:
    also write the detections scored, in COCO's results format (a JSON list of {image_id, category_id, bbox
    [x, y, w, h] in the image's pixels, score}: what pycocotools' ``loadRes`` and other tools read), atomically;
    ``keep_results`` returns that list as ``coco_results`` instead."""
    ids, dets, skipped = detect_dataset(model, ds, batch_size, device, amp, channels_last, progress)
    to_category = category_map(classes or ds.classes, ds)
    results = []
    for image_id, det in zip(ids, dets):
        for (x1, y1, x2, y2), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist()):
            cid = to_category[label]
            if cid is not None:
                results.append({"image_id": image_id, "category_id": cid, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": score})
    gt = ds.ground_truth()
    if skipped and not ids:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read (e.g. {skipped[0].path}: "
                        f"{skipped[0].reason})")
    if skipped:  # an image that did not decode has no detections: measure on the images that did
        done = set(ids)
        gt = dict(gt, images=[im for im in gt["images"] if im["id"] in done],
                  annotations=[a for a in gt["annotations"] if a["image_id"] in done])
    metrics = coco_evaluate(gt, results)
    if class_agnostic:
        agnostic = coco_evaluate(gt, results, use_cats=False)
        metrics["class_agnostic"] = {k: agnostic[k] for k in ("map", "map50", "map75")}
    metrics["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    if keep_results:
        metrics["coco_results"] = results
    elif results_path is not None:
        write_json(results_path, results, indent=None)
    return metrics


def category_map(model_classes: list[str], ds: CocoDataset) -> list[int | None]:
    """For each model class index the dataset's category id of the same name (None where it has none)."""
    if list(model_classes) == list(ds.classes):
        return list(ds.category_ids)
    by_name = dict(zip(ds.classes, ds.category_ids))
    mapping = [by_name.get(name) for name in model_classes]
    if not any(c is not None for c in mapping):
        raise UserError(f"the detector's classes ({', '.join(model_classes[:5])}, ...) share no name with the "
                        f"dataset's ({', '.join(ds.classes[:5])}, ...)")
    return mapping


def evaluate_weights(weights: str, data: str, batch_size: int = 32, device: str = "cpu", progress: bool = True,
                     class_agnostic: bool = False, strict: bool = False, max_pixels: int = MAX_PIXELS,
                     results_path: str | os.PathLike | None = None, **overrides) -> dict:
    """Load detector ``weights`` (ours or torchvision's; ``overrides``: ``load_detector``'s) and evaluate them on the COCO folder ``data``. The result
    says what the measure lost: ``lost_images`` (image entries whose files are missing, and files that did not
    decode) with examples in ``missing`` and ``skipped_files``; ``strict`` refuses (UserError) any loss instead."""
    ckpt = load_detector(weights, **overrides)
    ds = CocoDataset(data, in_chans=ckpt.config.in_chans, max_pixels=max_pixels)
    if results_path is not None:  # before the detections are computed, not after
        output_file(results_path, "--results", create_parent=True)
    if strict and ds.missing:
        raise UserError(f"{ds.json_path}: {len(ds.missing)} image file(s) missing, e.g. {ds.missing[0]}; fix the "
                        "file_names or drop --strict to measure on the rest")
    dev = torch.device(device)
    metrics = evaluate(ckpt.model.to(dev), ds, batch_size, dev, progress=progress, classes=ckpt.classes,
                       class_agnostic=class_agnostic, keep_results=results_path is not None)
    if strict and metrics["skipped_files"]:
        s = metrics["skipped_files"][0]
        raise UserError(f"{len(metrics['skipped_files'])} image(s) of {ds.json_path} could not be read, e.g. "
                        f"{s['path']}: {s['reason']}; fix them or drop --strict to measure on the rest")
    if results_path is not None:
        write_json(results_path, metrics.pop("coco_results"), indent=None)
    lost = len(ds.missing) + len(metrics["skipped_files"])
    return {"weights": str(weights), "data": str(ds.json_path), "dataset": ds.stats.to_dict(),
            "listed_images": len(ds) + len(ds.missing), "lost_images": lost, "missing": ds.missing, **metrics,
            **({"results": str(results_path)} if results_path is not None else {})}
