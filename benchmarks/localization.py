"""Weakly supervised localisation, measured: ResNet-50 trained on single scenes with class labels only (the boxes
are never read in training), then CAM boxes (Zhou et al. 2016) scored on the validation scenes.

    nice -n 10 python benchmarks/localization.py --json benchmarks/results/localization.json --picture docs/img/cam.png
    python benchmarks/localization.py --val-dir path/to/scenes      # score on another set made by resnet50.scenes

Training scenes are drawn by the rule of ``resnet50.scenes`` from the embedded training split, a fresh set of
``--train-scenes`` each epoch (seed 1000 + epoch: random scale and position are the augmentation, with a
horizontal flip); validation scenes are ``write_scenes(split="val", kind="single", count=2000, seed=0)``'s, or the
set in ``--val-dir``. The recipe was chosen on the validation scenes only.

CAM's map is the last stage's: stride 32, 4 x 4 at 128 px, and a box from a 4 x 4 map cannot fit a 28-84 px
item (even an ideal map, the item's own pixels average-pooled, gives IoU >= 0.5 for about a quarter of the
scenes; 82 % at stride 16, 99.6 % at stride 8). So the network is trained as it is (stride 32, the cheapest) and
CAM is read from ``resnet50.cam.dilated(model, 8)``: the same weights with the last two stages run "a trous",
which reproduces the 4 x 4 map exactly on its grid and fills in the 16 x 16 between. ``--cam-stride`` chooses
(32 is plain CAM); ``--compare`` also scores strides 32 and 16 and Grad-CAM on layer3 of the plain network.
Writes JSON with hardware, versions, time and the figures, and a grid of overlays of the first validation scenes
(not chosen: failures included).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from resnet50 import create_model
from resnet50.cam import cam, dilated, draw_overlay, grad_cam, iou, label_font, localization_accuracy
from resnet50.cpu import cpu_info, has_native_bf16
from resnet50.data import FASHION_MNIST_CLASSES
from resnet50.data.transforms import Preprocessing
from resnet50.files import atomic_path, write_json
from resnet50.optim import build_optimizer, loss_fn, lr_at, soft_targets
from resnet50.recipes import OptimSpec
from resnet50.scenes import generate_scenes, read_scenes
from resnet50.weights import load, save

MEAN, STD = 0.1, 0.25  # about the pixel mean and spread of single 128 px scenes (measured: 0.094 and 0.25)


def unstride(model: torch.nn.Module, output_stride: int) -> torch.nn.Module:
    """Build the network at a finer output stride: stride 1 (no dilation) in the first block of each stage past
    ``output_stride``, so the later stages run at a finer grid with smaller receptive fields. Same parameters and
    state dict; ``resnet50.cam.dilated`` reads the strides off the modules. (No ResNetConfig field says this yet,
    so a checkpoint of such a network is rebuilt at stride 32: pass the same --train-stride with --weights.)"""
    stride = 4
    for name in model.stage_names[1:]:
        stride *= 2
        if stride > output_stride:
            for m in getattr(model, name)[0].modules():
                if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1):
                    m.stride = (1, 1)
    return model


def to_input(canvases: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> normalised float (N, 1, S, S), channels_last."""
    x = (canvases.float()[:, None] / 255 - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last)


def train(model: torch.nn.Module, spec: OptimSpec, batch: int, scenes: int, seed: int, amp: bool) -> list[dict]:
    """AdamW with the lr a function of the step (``resnet50.optim``), label smoothing, bf16 autocast where the CPU
    has bf16 instructions; a fresh set of ``scenes`` single training scenes each epoch, class labels only."""
    peak = spec.lr * batch / 256
    opt = build_optimizer(model, spec, peak)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = scenes // batch
    log, step = [], 0
    for epoch in range(spec.epochs):
        t0 = time.perf_counter()
        canvases, items = generate_scenes("train", "single", scenes, seed=1000 + epoch)
        canvases, labels = torch.from_numpy(canvases), torch.tensor([it[0][0] for it in items])
        order = torch.randperm(len(labels), generator=g)
        model.train()
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            x, y = to_input(canvases[idx]), labels[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps_per_epoch, spec, peak)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = loss_fn(logits, soft_targets(y, 10, spec.label_smoothing), spec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        log.append({"epoch": epoch + 1, "loss": statistics.fmean(losses), "seconds": round(seconds, 1),
                    "img_s": round(steps_per_epoch * batch / seconds, 1)})
        print(f"epoch {epoch + 1}/{spec.epochs}  loss {log[-1]['loss']:.4f}  {seconds:.0f} s  "
              f"{log[-1]['img_s']:.1f} img/s", flush=True)
    return log


def localize(model, canvases: torch.Tensor, labels: list[int], boxes: list[list[int]], method: str, amp: bool,
             batch: int = 50) -> tuple[dict, list]:
    """Top-1 and GT-known localisation over the scenes. The GT-known box is recomputed only where the predicted
    class is not the label (elsewhere it is the same box)."""
    model.eval()
    run = cam if method == "cam" else (lambda m, x, target=None: grad_cam(m, x, target, stage="layer3"))
    pred_cls, pred_boxes, known_boxes, results = [], [], [], []
    for i in range(0, len(labels), batch):
        x, y = to_input(canvases[i:i + batch]), torch.tensor(labels[i:i + batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            r = run(model, x)
            known = r.boxes.clone()
            wrong = (r.classes != y).nonzero()[:, 0]
            if len(wrong):
                known[wrong] = run(model, x[wrong], target=y[wrong]).boxes
        pred_cls += r.classes.tolist()
        pred_boxes += r.boxes.tolist()
        known_boxes += known.tolist()
        results.append(r)
    return localization_accuracy(pred_cls, pred_boxes, known_boxes, labels, boxes), results


def picture(path: Path, canvases: torch.Tensor, labels: list[int], boxes: list[list[int]], r, title: str,
            subtitle: str, cols: int = 4, rows: int = 3) -> None:
    """A grid of overlays of the first cols x rows scenes: heatmap of the predicted class, its CAM box (white), the
    ground truth (green), the predicted label and probability; under each, the true class and the box's IoU, in
    green where the ILSVRC rule counts it localised (class right, IoU >= 0.5) and red where not."""
    gap, head, foot = 10, 78, 30
    tiles = [draw_overlay(canvases[k].numpy(), r.heatmaps[k], r.boxes[k].tolist(),
                          FASHION_MNIST_CLASSES[int(r.classes[k])], float(r.scores[k]), gt_box=boxes[k], min_size=256)
             for k in range(cols * rows)]
    tw, th = tiles[0].size
    sheet = Image.new("RGB", (cols * tw + (cols + 1) * gap, head + rows * (th + foot + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for text, y, size, color in ((title, 10, 22, (20, 20, 20)), (subtitle, 46, 15, (90, 90, 90))):
        while size > 8 and draw.textlength(text, font=label_font(size)) > sheet.width - 2 * gap:
            size -= 1
        draw.text((gap, y), text, fill=color, font=label_font(size))
    for k, tile in enumerate(tiles):
        x0, y0 = gap + (k % cols) * (tw + gap), head + (k // cols) * (th + foot + gap)
        sheet.paste(tile, (x0, y0))
        v = iou(r.boxes[k].tolist(), boxes[k])
        ok = int(r.classes[k]) == labels[k] and v >= 0.5
        draw.text((x0 + 2, y0 + th + 6), f"{'✓' if ok else '✗'} {FASHION_MNIST_CLASSES[labels[k]]} · IoU {v:.2f}",
                  fill=(20, 130, 40) if ok else (190, 30, 30), font=label_font(15))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.004, help="AdamW peak learning rate per 256 images")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.3, help="epochs")
    ap.add_argument("--train-scenes", type=int, default=12000, help="fresh training scenes per epoch")
    ap.add_argument("--train-stride", type=int, choices=(8, 16, 32), default=32,
                    help="output stride of the trained network (finer: smaller receptive fields, more compute)")
    ap.add_argument("--cam-stride", type=int, choices=(8, 16, 32), default=8,
                    help="stride of the CAM map, from the trained network run a trous (<= --train-stride)")
    ap.add_argument("--compare", action="store_true", help="also CAM at strides 32 and 16, Grad-CAM on layer3")
    ap.add_argument("--val-dir", default=None, help="single scenes written by write_scenes; default: generated")
    ap.add_argument("--val-count", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1, help="independent trainings (seeds seed .. seed + runs - 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="score this checkpoint instead of training")
    ap.add_argument("--save", default=None, help="write the (first run's) trained model here (.safetensors)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--picture", default=None)
    args = ap.parse_args()
    amp = has_native_bf16()  # bf16 autocast where the CPU has bf16 instructions (1.8x at 128 px, docs/benchmarks.md)

    if args.val_dir:
        val = read_scenes(args.val_dir)
        if any(len(b) != 1 for b in val.boxes):
            print("localization.py: --val-dir must hold single scenes (one box each)", file=sys.stderr)
            return 2
        canvases, labels, boxes = val.images, [lab[0] for lab in val.labels], [b[0] for b in val.boxes]
        val_source = str(args.val_dir)
    else:
        canvases, items = generate_scenes("val", "single", args.val_count, seed=0)
        labels, boxes = [it[0][0] for it in items], [it[0][1] for it in items]
        val_source = f"write_scenes(split='val', kind='single', count={args.val_count}, size=128, seed=0)"
    canvases = torch.from_numpy(canvases)

    spec = OptimSpec(optimizer="adamw", lr=args.lr, weight_decay=args.weight_decay, decay_norm_and_bias=False,
                     schedule="cosine", warmup_epochs=args.warmup, epochs=args.epochs, label_smoothing=0.1)
    runs = []
    for run in range(1 if args.weights else args.runs):
        seed = args.seed + run
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        if args.weights:
            model, log = unstride(load(args.weights).model, args.train_stride), []
        else:
            model = create_model("resnet50", num_classes=10, in_chans=1, zero_init_residual=True)
            unstride(model, args.train_stride)
            log = train(model.to(memory_format=torch.channels_last), spec, args.batch, args.train_scenes, seed, amp)
            if args.save and run == 0:
                save(args.save, model.eval(), list(FASHION_MNIST_CLASSES),
                     Preprocessing(resize=128, crop=128, mean=(MEAN,), std=(STD,)), "benchmarks/localization.py")
        train_min = (time.perf_counter() - t0) / 60
        t1 = time.perf_counter()
        localizer = dilated(model, args.cam_stride) if args.cam_stride < args.train_stride else model
        figures, results = localize(localizer, canvases, labels, boxes, "cam", amp)
        row = {"seed": seed, "train_minutes": round(train_min, 2), "eval_minutes": 0.0, "cam": figures}
        row["eval_minutes"] = round((time.perf_counter() - t1) / 60, 2)
        print(f"run {run + 1}: {train_min:.1f} min training, {row['eval_minutes']:.1f} min scoring; "
              f"CAM at stride {args.cam_stride}: top-1 cls {figures['top1_cls']:.2%}  top-1 loc "
              f"{figures['top1_loc']:.2%}  GT-known loc {figures['gt_known_loc']:.2%}  "
              f"mean IoU {figures['mean_iou']:.3f}", flush=True)
        if args.compare:
            for stride in (s for s in (32, 16) if args.cam_stride < s <= args.train_stride):
                m = dilated(model, stride) if stride < args.train_stride else model
                row[f"cam_stride{stride}"] = localize(m, canvases, labels, boxes, "cam", amp)[0]
            row["gradcam_layer3"] = localize(model, canvases, labels, boxes, "gradcam", amp)[0]
            for key in (k for k in row if k.startswith(("cam_", "gradcam"))):
                print(f"       {key}: top-1 loc {row[key]['top1_loc']:.2%}  GT-known {row[key]['gt_known_loc']:.2%}"
                      f"  top-1 cls {row[key]['top1_cls']:.2%}", flush=True)
        row["epochs"] = log
        runs.append(row)
        if run == 0 and args.picture:
            title = (f"CAM of ResNet-50 trained on class labels only: top-1 loc {figures['top1_loc']:.1%}, "
                     f"GT-known {figures['gt_known_loc']:.1%}")
            subtitle = (f"The first 12 of {len(labels)} validation scenes. White: CAM box (20 % of max, largest "
                        f"component, map stride {args.cam_stride}). Green: ground truth. Below: true class, IoU.")
            picture(Path(args.picture), canvases, labels, boxes, results[0], title, subtitle)

    result = {
        "what": "ResNet-50 v1.5 (in_chans=1, 10 classes) trained on single scenes with class labels only; CAM "
                "boxes (20 % of max, largest 8-connected component) scored on the validation scenes",
        "hardware": {"cpu": cpu_info()[0] or platform.processor(), "threads": torch.get_num_threads(),
                     "bf16_autocast": amp},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "val": {"source": val_source, "scenes": len(labels)},
        "recipe": None if args.weights else {
            "optim": asdict(spec), "batch": args.batch, "train_scenes_per_epoch": args.train_scenes,
            "input": "128 px, (x / 255 - 0.1) / 0.25, channels_last", "zero_init_residual": True,
            "augmentation": "fresh scenes each epoch (seed 1000 + epoch), horizontal flip"},
        "weights": args.weights,
        "train_stride": args.train_stride,
        "cam_stride": args.cam_stride,
        "runs": len(runs),
        "train_minutes": spread([r["train_minutes"] for r in runs]),
        **{key: spread([r["cam"][key] for r in runs]) for key in ("top1_cls", "top1_loc", "gt_known_loc", "mean_iou")},
        "per_run": runs,
    }
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
