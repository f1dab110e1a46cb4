"""Localiser training: the :class:`Localization` task on the engine (``resnet50.engine``: AMP, EMA, DDP, budgets,
exact resume), its config and recipe.

Data: a COCO-format folder with exactly one box per image (our single scenes, plain or cluttered, are such
folders), read through the engine's loader as detection reads it (``detect.coco.DetectionSamples``: letterboxed,
mirrored with their box, decoded in workers). An image with several boxes is refused in one line naming it (a
single-object localiser has no rule to pick one); an image without a box is a counted skip.

Loss (per image, mean over the batch): cross-entropy of the class, plus for the box of the true class (PCR; the one
box for SCR) smooth L1 on its (cx, cy, w, h) fractions (beta 0.05, about 6 px at 128 px) and 1 - GIoU (Rezatofighi et
al. 2019: the overlap the IoU >= 0.5 rule measures). Validation: the ILSVRC figures (``localize.evaluate``); the
best top-1 localisation picks ``best.safetensors``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import engine, weights
from ..detect.coco import CocoDataset, training_loader
from ..detect.nms import box_iou, generalized_box_iou
from ..detect.train import DetectData
from ..engine import Dist, Run
from ..errors import UserError
from ..files import pyplot, save_figure
from ..recipes import OptimSpec, RunSpec, TaskConfig, apply_overrides
from ..train import frozen_stages, set_frozen
from .evaluate import evaluate, save_localizer
from .model import Localizer, LocalizerConfig, from_xyxy, to_xyxy

SMOOTH_L1_BETA = 0.05


@dataclass
class LocalizeTrainConfig(TaskConfig):
    COMMAND: typing.ClassVar[str] = "resnet50 localize train"

    recipe: str = "scenes"
    description: str = ""
    init_weights: str = ""  # a classifier to start from (ours, torchvision/timm; the classification demo's)
    box_weight: float = 1.0  # the box terms' weight against the class's cross-entropy
    model: LocalizerConfig = field(default_factory=LocalizerConfig)
    data: DetectData = field(default_factory=DetectData)
    optim: OptimSpec = field(default_factory=OptimSpec)
    run: RunSpec = field(default_factory=RunSpec)

    def validate(self) -> None:
        o, d, r = self.optim, self.data, self.run
        checks = [
            (o.optimizer in ("sgd", "adamw", "lamb"), f"unknown optimizer {o.optimizer!r}; use sgd, adamw or lamb"),
            (o.epochs >= 1 and o.lr > 0 and o.accum_steps >= 1, "epochs, lr and accum_steps must be positive"),
            (o.mixup == 0 and o.cutmix == 0, "mixup and cutmix blend images, and a blend has no one box: drop them"),
            (d.batch_size >= 2 and d.eval_batch_size >= 1, "batch_size must be >= 2 (BatchNorm) and eval >= 1"),
            (0 <= d.hflip <= 1, "hflip is a probability in [0, 1]"),
            (self.box_weight >= 0, "box_weight must be >= 0"),
            (o.loss == "ce" and o.bce_target_thresh == 0, "a localiser's class loss is cross-entropy: drop --loss and "
                                                          "--bce-target-thresh"),
            (not r.tta_flip, "tta_flip is a classification option (a mirrored box is another box): drop --tta-flip"),
            (o.layer_lr_decay == 1.0, "layer_lr_decay applies to classifiers ('resnet50 train'); a localiser trains "
                                      "body and box head at one rate: drop --layer-lr-decay"),
            (r.amp in ("auto", "bf16", "fp16", "off"), f"unknown amp {r.amp!r}; use auto, bf16, fp16 or off"),
            (r.time_budget >= 0 and r.budget_steps >= 0 and r.budget_after_images >= 0,
             "time_budget, budget_steps and budget_after_images must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


def _scenes() -> LocalizeTrainConfig:
    # The localisation demo: single scenes (one Fashion-MNIST item of 28-84 px on a 128 px canvas, plain and
    # cluttered), 1 channel, from the classification demo's ResNet-50 (--init-weights). Per-class regression (the
    # paper's better one). AdamW 1e-3 at batch 32 (8e-3 per 256), short warm-up, cosine to zero; label smoothing
    # 0.1 as the classification demo; flips; mean / std Fashion-MNIST's, as the demo normalises.
    return LocalizeTrainConfig(
        recipe="scenes", description="ResNet-50 localiser (PCR) on single scenes, 128 px, CPU",
        model=LocalizerConfig(arch="resnet50", in_chans=1, image_size=128, regression="pcr"),
        data=DetectData(batch_size=32, eval_batch_size=64, hflip=0.5, workers=2),
        optim=OptimSpec(optimizer="adamw", lr=0.008, weight_decay=0.05, decay_norm_and_bias=False,
                        schedule="cosine", warmup_epochs=0.3, warmup_start=0.01, epochs=8, label_smoothing=0.1,
                        grad_clip=10.0),
        run=RunSpec(eval_every=100),
    )


RECIPES = {"scenes": _scenes}


def resolve(recipe: str, overrides: dict | None = None) -> LocalizeTrainConfig:
    """The named recipe with ``overrides`` (flat field names, as on the command line) applied and checked."""
    if recipe not in RECIPES:
        raise UserError(f"unknown localisation recipe {recipe!r}; choose from: {', '.join(RECIPES)}")
    return apply_overrides(RECIPES[recipe](), overrides)


MAY_CHANGE = frozenset({"run.eval_every", "data.train", "data.val", "data.eval_batch_size", "model.num_classes"})


def resume_config(path: str | os.PathLike, overrides: dict) -> tuple[LocalizeTrainConfig, dict]:
    return engine.resume_config(path, overrides, kind="localizer", from_dict=LocalizeTrainConfig.from_dict,
                                apply_overrides=apply_overrides, may_change=MAY_CHANGE)


def single_objects(ds: CocoDataset) -> int:
    """Keep ``ds``'s images that have a box, refuse one with several; returns how many had none (skipped)."""
    several = next((im for im in ds.images if len(im.boxes) > 1), None)
    if several is not None:
        raise UserError(f"{ds.json_path}: image {several.id} ({several.path.name}) has {len(several.boxes)} boxes; "
                        "a single-object localiser needs one box per image: use 'resnet50 detect' for several")
    before = len(ds.images)
    ds.images = [im for im in ds.images if len(im.boxes)]
    if not ds.images:
        raise UserError(f"{ds.json_path}: no image has a box; a localiser learns from one box per image")
    return before - len(ds.images)


def box_losses(boxes: torch.Tensor, labels: torch.Tensor, gt: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The box terms of the module docstring: ``boxes`` (N, K, 4) fractions, ``labels`` (N,), ``gt`` (N, 4) xyxy
    pixels of a ``size``-px input."""
    pred = boxes[torch.arange(len(labels), device=labels.device), labels]
    target = from_xyxy(gt, size)
    l1 = F.smooth_l1_loss(pred, target, beta=SMOOTH_L1_BETA, reduction="none").sum(dim=1).mean()
    giou = (1 - generalized_box_iou(to_xyxy(pred, size), gt)).mean()
    return {"box_l1": l1, "box_giou": giou}


def _unwrap(net: nn.Module) -> Localizer:
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


class Localization:
    """Single-object localisation as an engine task (the module docstring)."""

    kind = "localizer"
    best_key = "val_top1_loc"
    may_change = MAY_CHANGE
    val_extra_s = 0.0

    def __init__(self, cfg: LocalizeTrainConfig, ddp: Dist, checkpoint: dict | None, log) -> None:
        d, m = cfg.data, cfg.model
        if not d.train:
            raise UserError("no training data: give --train (a COCO folder with one box per image)")
        self.cfg = cfg
        self.train_set = CocoDataset(d.train, in_chans=m.in_chans, max_pixels=d.max_pixels)
        self.negatives = single_objects(self.train_set)
        self.val_set = CocoDataset(d.val, in_chans=m.in_chans, max_pixels=d.max_pixels) if d.val else None
        if self.val_set is not None:
            single_objects(self.val_set)
            if self.val_set.classes != self.train_set.classes:
                raise UserError(f"{d.val} and {d.train} have different categories; give both the same, in order")
        self.classes = list(self.train_set.classes)
        if m.num_classes != len(self.classes):
            cfg.model = dataclasses.replace(m, num_classes=len(self.classes))
        self.train_loader = training_loader(self.train_set, cfg.model.image_size, d.hflip, d.batch_size, ddp.world,
                                            d.workers, cfg.run.seed)
        self.val_images = len(self.val_set) if self.val_set is not None else 0
        self.model = Localizer(cfg.model)
        if cfg.init_weights and checkpoint is None:
            src = weights.init_from(self.model.body, cfg.init_weights, self.classes, log)
            log(f"classifier from {cfg.init_weights} ({src.arch})")
        # --freeze-until / --freeze-epochs as for classifiers (resnet50.train.frozen_stages) on the body; the box
        # head always trains. A stage the network lacks is refused here, before any training.
        frozen_stages(self.model.body, cfg.optim, cfg.optim.freeze_epochs)
        self.find_unused = bool(cfg.optim.freeze_epochs)
        self.last_val: dict | None = None

    def describe(self, run: Run) -> str:
        m, t = self.cfg.model, self.train_set
        neg = f"; {self.negatives} image(s) without a box skipped" if self.negatives else ""
        return (f"run {run.run_dir}: localiser {m.arch} ({m.regression.upper()}) on {t.json_path} "
                f"({len(t)} images{neg}), {len(self.classes)} classes, {run.ddp.world} process(es) on {run.device}, "
                f"batch {self.cfg.data.batch_size}, peak lr {run.peak_lr:.4g}, {run.steps_per_epoch} steps/epoch")

    def train_mode(self, run: Run, epoch: int) -> None:
        run.net.train()
        set_frozen(self.model.body, frozen_stages(self.model.body, self.cfg.optim, epoch))

    def losses(self, run: Run, net: nn.Module, batch, epoch: int) -> tuple[dict, dict]:
        images = batch.images.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
        labels, gt = batch.labels[:, 0].to(run.device), batch.boxes[:, 0].to(run.device)
        with run.autocast():
            logits, boxes = net(images)
        size = self.cfg.model.image_size
        terms = box_losses(boxes.float(), labels, gt, size)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.optim.label_smoothing)
        w = self.cfg.box_weight
        with torch.no_grad():
            pred = to_xyxy(boxes[torch.arange(len(labels), device=labels.device), labels].float(), size)
            iou = torch.diagonal(box_iou(pred, gt))
        counters = {"correct": (logits.argmax(1) == labels).sum(), "located": (iou >= 0.5).sum()}
        return {"cls": ce, "box_l1": w * terms["box_l1"], "box_giou": w * terms["box_giou"]}, counters

    def figures(self, sums: dict, seen: int, epoch: int) -> dict:
        n = max(seen, 1)
        return {"train_cls_loss": sums.get("cls", 0.0) / n, "train_box_loss": (sums.get("box_l1", 0.0) +
                sums.get("box_giou", 0.0)) / n, "train_top1": sums.get("correct", 0.0) / n,
                "train_gt_known_loc": sums.get("located", 0.0) / n}

    def validate(self, run: Run, model: nn.Module, final: bool, progress: bool) -> dict:
        if self.val_set is None or not run.ddp.main:
            return {}
        val = evaluate(_unwrap(model), self.val_set, self.cfg.data.eval_batch_size, run.device, run.amp_dtype,
                       progress)
        self.last_val = val
        return {f"val_{k}": v for k, v in val.items() if k not in ("images", "skipped_files")}

    def save_weights(self, run: Run, path: Path, model: nn.Module, source: str) -> None:
        save_localizer(path, _unwrap(model), self.classes, source)

    def plot(self, history: list[dict], path: Path) -> None:
        plot_curves(path, history)

    def summary(self, row: dict) -> str:
        val = f", val top-1 loc {row['val_top1_loc']:.2%} (GT-known {row['val_gt_known_loc']:.2%}, top-1 cls " \
              f"{row['val_top1_cls']:.2%})" if "val_top1_loc" in row else ""
        return (f"loss {row['train_loss']:.4f} (cls {row['train_cls_loss']:.4f}, box {row['train_box_loss']:.4f})"
                f"{val}, {row['img_s']:.1f} img/s")


def train(cfg: LocalizeTrainConfig, resume: str | os.PathLike | dict | None = None, progress: bool = True,
          log=print, tensorboard: bool = False) -> dict:
    """Train per ``cfg`` or continue ``resume`` (a run folder, its last.pt, or :func:`resume_config`'s checkpoint).
    Returns the last epoch's row with run_dir, best_top1_loc, the last validation (``val``) and the classes."""
    checkpoint = engine.load_checkpoint(resume, "localizer") if isinstance(resume, (str, os.PathLike)) else resume
    if not cfg.run.name:
        cfg.run.name = f"localize-{cfg.recipe}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    result, task = engine.fit(Localization, cfg, checkpoint, progress, log, tensorboard)
    result["best_top1_loc"] = result.pop("best")
    return {**result, "val": task.last_val, "classes": task.classes}


def plot_curves(path: Path, history: list[dict]) -> None:
    """curves.png: the training losses per epoch and the validation localisation figures."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_cls_loss"] for r in history], label="class (cross-entropy)")
    a.plot(ep, [r["train_box_loss"] for r in history], label="box (smooth L1 + 1 - GIoU)")
    b.plot(ep, [r["train_gt_known_loc"] for r in history], "--", label="train GT-known loc")
    vals = [r for r in history if "val_top1_loc" in r]
    for key, name in (("val_top1_loc", "val top-1 loc"), ("val_gt_known_loc", "val GT-known loc"),
                      ("val_top1_cls", "val top-1 cls")):
        if vals:
            b.plot([r["epoch"] for r in vals], [r[key] for r in vals], "o-", label=name)
    a.set(xlabel="epoch", ylabel="loss", title="training loss")
    b.set(xlabel="epoch", ylabel="accuracy (IoU >= 0.5)", title="localisation (ILSVRC rule)", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
