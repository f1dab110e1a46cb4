"""Detector training (RetinaNet or Faster R-CNN, ``detector``): the :class:`Detection` task on the engine (``resnet50.engine``: one process or DDP via
torchrun, AMP bf16/fp16, EMA, accumulation, budgets, TensorBoard, exact resume), its config and recipes.

A run folder holds ``config.json`` (the resolved DetectTrainConfig), ``metrics.jsonl``, ``curves.png``, ``last.pt``
(the engine's), ``best.safetensors`` (the best validation mAP) and ``final.safetensors`` (detector weights with
their config and class names, for ``resnet50 detect evaluate|predict``).

The data go through ``resnet50.data.Loader`` (``coco.DetectionSamples``: decoding in workers, nothing kept in
memory, each image's flip seeded by (seed, epoch, index)), so a resumed run sees the same batches as an uncut one.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import engine
from ..data.decode import MAX_PIXELS
from ..data.loader import ResumableSampler
from ..data.seeding import mix_seed
from ..engine import Dist, Run
from ..errors import UserError
from ..files import pyplot, save_figure
from ..recipes import OptimSpec, RunSpec, TaskConfig, apply_overrides, config_from_dict, flat_fields
from . import detectors
from .checkpoint import save_detector
from .coco import CocoDataset, training_loader
from .detectors import Detector
from .evaluate import evaluate
from .fasterrcnn import FasterRCNNConfig
from .fpn import init_body, set_trainable_layers
from .retinanet import DetectorConfig


@dataclass
class DetectData:
    train: str = ""  # a COCO folder (instances JSON + images) or the JSON itself
    val: str = ""  # the same, for validation (mAP); "" = no validation
    hflip: float = 0.5  # probability of mirroring a training image (and its boxes)
    batch_size: int = 16  # global batch (split over DDP processes)
    eval_batch_size: int = 32
    workers: int = 2  # loader processes decoding images (0: in the training process)
    max_pixels: int = MAX_PIXELS  # refuse images whose header claims more pixels (decompression bombs)


@dataclass
class DetectTrainConfig(TaskConfig):
    """A RetinaNet's training run (``model``: DetectorConfig); :class:`RCNNTrainConfig` is a Faster R-CNN's.
    ``from_dict`` reads either, by the saved ``detector``."""

    COMMAND: typing.ClassVar[str] = "resnet50 detect train"

    recipe: str = "coco"
    description: str = ""
    detector: str = "retinanet"  # retinanet | fasterrcnn: which config class this is (detectors.DETECTORS)
    init_weights: str = ""  # backbone start: a classification checkpoint (ours, torchvision/timm ResNet) or ""
    trainable_layers: int = 5  # of the backbone (conv1, layer1..layer4), torchvision's trainable_backbone_layers
    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectData = field(default_factory=DetectData)
    optim: OptimSpec = field(default_factory=OptimSpec)
    run: RunSpec = field(default_factory=RunSpec)

    def validate(self) -> None:
        validate(self)

    @classmethod
    def from_dict(cls, d: dict):
        detector = d.get("detector", "retinanet")  # runs saved before Faster R-CNN are RetinaNet runs
        return config_from_dict(config_class(detectors.check_name(detector)) if cls is DetectTrainConfig else cls, d)


@dataclass
class RCNNTrainConfig(DetectTrainConfig):
    """A Faster R-CNN's training run: the same data, optimiser and run sections, ``model`` a FasterRCNNConfig."""

    detector: str = "fasterrcnn"
    model: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)


def config_class(detector: str) -> type[DetectTrainConfig]:
    return RCNNTrainConfig if detectors.check_name(detector) == "fasterrcnn" else DetectTrainConfig


# --- recipes -------------------------------------------------------------------------------------------------------

def _coco() -> DetectTrainConfig:
    # torchvision's references/detection recipe for retinanet_resnet50_fpn (36.4 COCO mAP): 26 epochs, SGD momentum
    # 0.9, lr 0.01 at batch 16 (8 GPUs x 2; = 0.16 per 256), /10 at epochs 16 and 22, wd 1e-4, linear warmup over
    # the first 1000 steps from 0.001 x lr, ImageNet-initialised backbone with frozen BN and conv1 + layer1 frozen.
    # Its 800 px shorter side is our 800 px letterbox.
    return DetectTrainConfig(
        recipe="coco", description="torchvision's RetinaNet recipe: SGD 0.01 @ 16, 26 epochs, steps at 16 and 22",
        model=DetectorConfig(),
        data=DetectData(batch_size=16),
        optim=OptimSpec(optimizer="sgd", lr=0.16, momentum=0.9, weight_decay=1e-4, schedule="step",
                        milestones=(16, 22), warmup_epochs=0.14, warmup_start=0.001, epochs=26),
        trainable_layers=3,
    )


def _scenes() -> DetectTrainConfig:
    # The embedded detection demo: multi scenes (1-4 Fashion-MNIST items of 28-84 px, boxes 10-84 px) at 128 px,
    # 1 channel, on 2 CPU cores in at most 15 minutes. RetinaNet v2 (GroupNorm head, GIoU loss: the box loss is the
    # overlap the metric measures). Anchors one octave below torchvision's (16..256 instead of 32..512), so P3..P5
    # cover the 10-101 px boxes. A 128-channel FPN and head (torchvision's 256 is for 800 px COCO images; the
    # parameter names are the same, the shapes narrower): 1.5x the training speed. conv1 and layer1 frozen (as
    # torchvision's trainable_backbone_layers=3), BN of the rest trained: the classification demo's statistics are
    # of full-frame items, a scene is mostly background. mean / std are Fashion-MNIST's, as the classification demo
    # normalises. AdamW, lr 0.016 per 256 (1e-3 at batch 16), short warmup, cosine to zero over 6 epochs of 5,000
    # scenes; validation only at the end (it costs time). Chosen on the validation scenes; the runs and figures are
    # in docs/benchmarks.md (Localisation and detection).
    return DetectTrainConfig(
        recipe="scenes", description="RetinaNet v2 on multi scenes, 128 px, CPU, at most 15 minutes",
        model=DetectorConfig(version="v2", in_chans=1, norm="batch", anchor_sizes=(16, 32, 64, 128, 256),
                             fpn_channels=128, image_size=128, mean=(0.2860,), std=(0.3530,),
                             detections_per_img=100),
        data=DetectData(batch_size=16, hflip=0.5),
        optim=OptimSpec(optimizer="adamw", lr=0.016, weight_decay=0.05, decay_norm_and_bias=False,
                        schedule="cosine", warmup_epochs=0.3, warmup_start=0.01, epochs=6, grad_clip=10.0),
        run=RunSpec(eval_every=100), trainable_layers=3,
    )


def _rcnn_coco() -> RCNNTrainConfig:
    # torchvision's references/detection recipe for fasterrcnn_resnet50_fpn (37.0 COCO box mAP): 26 epochs, SGD
    # momentum 0.9, lr 0.02 at batch 16 (8 GPUs x 2; = 0.32 per 256), /10 at epochs 16 and 22, wd 1e-4, linear
    # warmup over the first 1000 steps from 0.001 x lr, ImageNet-initialised backbone with frozen BN and conv1 +
    # layer1 frozen (trainable_backbone_layers=3). Its 800 px shorter side is our 800 px letterbox.
    return RCNNTrainConfig(
        recipe="coco", description="torchvision's Faster R-CNN recipe: SGD 0.02 @ 16, 26 epochs, steps at 16 and 22",
        model=FasterRCNNConfig(),
        data=DetectData(batch_size=16),
        optim=OptimSpec(optimizer="sgd", lr=0.32, momentum=0.9, weight_decay=1e-4, schedule="step",
                        milestones=(16, 22), warmup_epochs=0.14, warmup_start=0.001, epochs=26),
        trainable_layers=3,
    )


def _rcnn_scenes() -> RCNNTrainConfig:
    # Faster R-CNN v1 (TwoMLPHead: v2's four 3x3 convs on every RoI cost more than the backbone at 128 px) on the
    # embedded multi scenes, on 2 CPU cores, with the RetinaNet scenes recipe's data, optimiser and schedule (so
    # the two compare on one budget). Anchors one octave below torchvision's (16..256 px on P2..P6: the boxes are
    # 10-84 px), a 128-channel FPN, trained BN, 1 channel with Fashion-MNIST's statistics. A scene holds 1-4
    # objects, so the RoI heads sample 128 proposals per image (detectron2's tutorial value for small datasets;
    # torchvision's 512 is for COCO's crowds) from the RPN's 500 best after NMS (training) and 300 (test; the
    # Faster R-CNN paper evaluates with 300 proposals).
    base = _scenes()
    return RCNNTrainConfig(
        recipe="scenes", description="Faster R-CNN v1 on multi scenes, 128 px, CPU, at most 15 minutes",
        model=FasterRCNNConfig(version="v1", in_chans=1, norm="batch", anchor_sizes=(16, 32, 64, 128, 256),
                               fpn_channels=128, image_size=128, mean=(0.2860,), std=(0.3530,),
                               rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=500,
                               rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300,
                               box_batch_size_per_image=128),
        data=base.data, optim=base.optim, run=base.run, trainable_layers=base.trainable_layers,
    )


RECIPES = {"retinanet": {"coco": _coco, "scenes": _scenes}, "fasterrcnn": {"coco": _rcnn_coco, "scenes": _rcnn_scenes}}


def resolve(recipe: str, overrides: dict | None = None) -> DetectTrainConfig:
    """The named recipe of the detector ``overrides["detector"]`` (default retinanet) with ``overrides`` (flat
    field names, as on the command line) applied and checked. An option of the other detector is refused."""
    overrides = dict(overrides or {})
    detector = detectors.check_name(str(overrides.get("detector") or "retinanet"))
    if recipe not in RECIPES[detector]:
        raise UserError(f"unknown detection recipe {recipe!r}; choose from: {', '.join(RECIPES[detector])}")
    own = flat_fields(config_class(detector))
    for key in overrides:
        other = next((d for d in RECIPES if key not in own and key in flat_fields(config_class(d))), None)
        if other is not None:
            raise UserError(f"--{key.replace('_', '-')} is a {detectors.TITLES[other]} option, not a "
                            f"{detectors.TITLES[detector]} one: add --detector {other} or drop it")
    return apply_overrides(RECIPES[detector][recipe](), overrides)


# classification-only fields a detection config refuses when set (their classification defaults are off)
CLASSIFICATION_ONLY = {"label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "loss": "ce", "bce_target_thresh": 0.0,
                       "tta_flip": False, "freeze_epochs": 0, "freeze_until": "", "layer_lr_decay": 1.0}


def validate(cfg: DetectTrainConfig) -> None:
    o, d, r = cfg.optim, cfg.data, cfg.run
    if cfg.detector != type(cfg)().detector:
        raise UserError(f"detector {cfg.detector!r} does not fit this config; the detector is chosen before the "
                        "recipe: resnet50 detect train --detector NAME")
    for name, off in CLASSIFICATION_ONLY.items():
        value = getattr(o, name) if hasattr(o, name) else getattr(r, name)
        if value != off:
            raise UserError(f"{name} is a classification option; a detector does not use it: drop "
                            f"--{name.replace('_', '-')} (a detector's backbone freezes by --trainable-layers)")
    checks = [
        (o.optimizer in ("sgd", "adamw"), f"unknown optimizer {o.optimizer!r}; use sgd or adamw"),
        (o.schedule in ("step", "cosine", "linear"), f"unknown schedule {o.schedule!r}; use step, cosine or linear"),
        (o.epochs >= 1, "epochs must be >= 1"),
        (o.lr > 0, "lr must be positive"),
        (o.accum_steps >= 1, "accum_steps must be >= 1"),
        (0 <= cfg.trainable_layers <= 5, "trainable_layers must be 0..5"),
        (d.batch_size >= 1 and d.eval_batch_size >= 1, "batch sizes must be >= 1"),
        (0 <= d.hflip <= 1, "hflip is a probability in [0, 1]"),
        (d.workers >= 0, f"workers must be 0 or more, not {d.workers}"),
        (d.max_pixels >= 1, f"max_pixels must be positive, not {d.max_pixels}"),
        (r.amp in ("auto", "bf16", "fp16", "off"), f"unknown amp {r.amp!r}; use auto, bf16, fp16 or off"),
        (r.device in ("auto", "cpu", "cuda"), f"unknown device {r.device!r}; use auto, cpu or cuda"),
        (r.eval_every >= 1, "eval_every must be >= 1"),
        (0 <= r.ema_decay < 1, "ema_decay must be in [0, 1)"),
        (r.time_budget >= 0 and r.budget_steps >= 0 and r.budget_after_images >= 0,
         "time_budget, budget_steps and budget_after_images must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def epoch_plan(n: int, epoch: int, seed: int, hflip: float) -> tuple[list[int], list[bool]]:
    """The image order and flips of an epoch of ``n`` training images on one process: a function of (seed, epoch)
    alone, exactly what the loader (``data.ResumableSampler``, per-sample seeds) and ``coco.DetectionSamples``
    produce, so a resume replays it and a user can see which images an epoch's batches hold."""
    sampler = ResumableSampler(n, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order, flips = sampler.indices(), []
    for i in order:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(seed, epoch, i))
            flips.append(bool(hflip) and bool(torch.rand(()) < hflip))
    return order, flips


# --- resume --------------------------------------------------------------------------------------------------------

# What a resumed detection run may change beyond the engine's MAY_CHANGE: how often it validates, where its data now
# are (classes are checked), and the class count (the data's).
MAY_CHANGE = frozenset({"run.eval_every", "data.train", "data.val", "data.eval_batch_size", "model.num_classes"})


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A detection run's last.pt (the file or its run folder), checked (``engine.load_checkpoint``)."""
    return engine.load_checkpoint(path, kind="detector")


def resume_config(path: str | os.PathLike, overrides: dict) -> tuple[DetectTrainConfig, dict]:
    """The config of the detection run at ``path`` with ``overrides`` applied and checked, and the checkpoint
    (``engine.resume_config``: a run cut by --max-steps or --time-limit goes on to its planned end)."""
    return engine.resume_config(path, overrides, kind="detector", from_dict=DetectTrainConfig.from_dict,
                                apply_overrides=apply_overrides, may_change=MAY_CHANGE)


# --- the task ------------------------------------------------------------------------------------------------------

def _unwrap(net: nn.Module) -> Detector:
    net = getattr(net, "_orig_mod", net)  # torch.compile
    return getattr(net, "module", net)  # DDP


class Detection:
    """Object detection as an engine task: COCO-format training data (letterboxed, flipped) through the engine's
    loader, a RetinaNet or Faster R-CNN (``cfg.detector``; its backbone from ``--init-weights``), the detector's own
    losses (``model.loss``), pycocotools mAP."""

    kind = "detector"
    best_key = "val_map"
    may_change = MAY_CHANGE
    val_extra_s = 2.0  # pycocotools' scoring of a validation, beyond the forward passes
    find_unused = False  # trainable_layers freezes the same stages all run long

    def __init__(self, cfg: DetectTrainConfig, ddp: Dist, checkpoint: dict | None, log) -> None:
        d = cfg.data
        if not d.train:
            raise UserError("no training data: give --train (a COCO folder or instances JSON)")
        self.cfg = cfg
        self.train_set = CocoDataset(d.train, in_chans=cfg.model.in_chans, max_pixels=d.max_pixels)
        self.val_set = CocoDataset(d.val, in_chans=cfg.model.in_chans, max_pixels=d.max_pixels) if d.val else None
        if self.val_set is not None and self.val_set.classes != self.train_set.classes:
            raise UserError(f"{d.val} has classes {self.val_set.classes[:4]}..., {d.train} has "
                            f"{self.train_set.classes[:4]}...; train and validation data need the same categories "
                            "in the same order")
        self.classes = list(self.train_set.classes)
        if cfg.model.num_labels != len(self.classes):  # a Faster R-CNN's box head counts the background too
            extra = cfg.model.num_classes - cfg.model.num_labels
            cfg.model = dataclasses.replace(cfg.model, num_classes=len(self.classes) + extra)
        self.train_loader = training_loader(self.train_set, cfg.model.image_size, d.hflip, d.batch_size, ddp.world,
                                            d.workers, cfg.run.seed)
        self.val_images = len(self.val_set) if self.val_set is not None else 0
        self.model = detectors.build(cfg.detector, cfg.model)
        if cfg.init_weights and checkpoint is None:
            log(f"backbone from {init_body(self.model.backbone.body, cfg.init_weights)}")
        set_trainable_layers(self.model.backbone.body, cfg.trainable_layers)
        self.last_val: dict | None = None

    def describe(self, run: Run) -> str:
        t = self.train_set
        text = (f"run {run.run_dir}: {detectors.describe(self.model)} on {t.json_path} ({t.stats.summary()}), "
                f"{len(self.classes)} classes, {run.ddp.world} process(es) on {run.device}, batch "
                f"{self.cfg.data.batch_size}, peak lr {run.peak_lr:.4g}, {run.steps_per_epoch} steps/epoch, amp "
                f"{run.amp_dtype}")
        if self.val_set is not None:
            text += f"\nvalidation: {self.val_set.json_path} ({self.val_set.stats.summary()})"
        return text

    def train_mode(self, run: Run, epoch: int) -> None:
        run.net.train()

    def losses(self, run: Run, net: nn.Module, batch, epoch: int) -> tuple[dict, dict]:
        images = batch.images.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
        with run.autocast():
            outputs = net(images)
        losses = _unwrap(net).loss(outputs, batch.boxes.to(run.device), batch.labels.to(run.device),
                                   batch.valid.to(run.device), tuple(images.shape[-2:]))
        return losses, {}

    def figures(self, sums: dict, seen: int, epoch: int) -> dict:
        """train_cls_loss and train_box_loss (the detector's terms summed by kind), and for a detector with more
        than two terms (Faster R-CNN's RPN and RoI losses) each of them as train_<term>."""
        groups = self.model.loss_groups
        row = {f"train_{kind}_loss": sum(sums.get(k, 0.0) for k, g in groups.items() if g == kind) / max(seen, 1)
               for kind in ("cls", "box")}
        if len(groups) > 2:
            row.update({f"train_{k}": sums.get(k, 0.0) / max(seen, 1) for k in groups})
        return row

    def validate(self, run: Run, model: nn.Module, final: bool, progress: bool) -> dict:
        if self.val_set is None or not run.ddp.main:
            return {}
        # the run's last validation also scores the boxes with labels ignored (a second COCOeval, no new pass)
        val = evaluate(_unwrap(model), self.val_set, self.cfg.data.eval_batch_size, run.device, run.amp_dtype,
                       self.cfg.run.channels_last, progress, class_agnostic=final)
        self.last_val = val
        return {"val_map": val["map"], "val_map50": val["map50"], "val_map75": val["map75"]}

    def save_weights(self, run: Run, path: Path, model: nn.Module, source: str) -> None:
        save_detector(path, _unwrap(model), self.classes, source)

    def plot(self, history: list[dict], path: Path) -> None:
        plot_curves(path, history)

    def summary(self, row: dict) -> str:
        val_txt = "" if "val_map" not in row else ", val mAP undefined (no ground-truth boxes)" \
            if row["val_map"] is None else f", val mAP {row['val_map']:.3f} (AP50 {row['val_map50']:.3f})"
        return (f"loss {row['train_loss']:.4f} (cls {row['train_cls_loss']:.4f}, box {row['train_box_loss']:.4f})"
                f"{val_txt}, {row['img_s']:.1f} img/s")


def train(cfg: DetectTrainConfig | None, resume: str | os.PathLike | dict | None = None, progress: bool = True,
          log=print, tensorboard: bool = False) -> dict:
    """Train per ``cfg``, or continue a run (``resume``: its folder, its last.pt, or the checkpoint dict that
    :func:`resume_config` returned; with ``cfg`` None, the checkpoint's own config). Returns the last epoch's row
    with run_dir, best_map, the last validation's metrics (``val``), the classes, and the training time."""
    checkpoint = load_checkpoint(resume) if isinstance(resume, (str, os.PathLike)) else resume
    if cfg is None:
        if checkpoint is None:
            raise UserError("give a config or a checkpoint to resume")
        cfg, checkpoint = resume_config(checkpoint["path"], {})
    if not cfg.run.name:
        cfg.run.name = f"{cfg.recipe}-{cfg.detector}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    result, task = engine.fit(Detection, cfg, checkpoint, progress, log, tensorboard)
    result["best_map"] = result.pop("best")
    return {**result, "val": task.last_val, "classes": task.classes}


def plot_curves(path: Path, history: list[dict]) -> None:
    """curves.png: training losses per epoch (classification, regression) and validation mAP / mAP@.5."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_cls_loss"] for r in history], label="classification")
    a.plot(ep, [r["train_box_loss"] for r in history], label="box regression")
    a.plot(ep, [r["train_loss"] for r in history], label="total")
    vals = [r for r in history if "val_map" in r]
    if vals:
        b.plot([r["epoch"] for r in vals], [r["val_map"] for r in vals], "o-", label="mAP@[.5:.95]")
        b.plot([r["epoch"] for r in vals], [r["val_map50"] for r in vals], "o-", label="mAP@.5")
    a.set(xlabel="epoch", ylabel="loss", title="training loss")
    b.set(xlabel="epoch", ylabel="AP", title="validation (pycocotools)", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
