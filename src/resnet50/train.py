"""Classification training: the :class:`Classification` task on the engine (``resnet50.engine``: one process or
DDP via torchrun, AMP, channels_last, EMA, budgets, exact resume), its data and its start from a checkpoint.

A run folder holds ``config.json`` (the resolved TrainConfig), ``metrics.jsonl``, ``curves.png``, ``last.pt`` (the
engine's), ``best.safetensors`` and ``final.safetensors`` (weights with metadata, for evaluate, predict and export).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import engine, weights
from .data import (
    Loader,
    Preprocessing,
    TransformConfig,
    build_dataset,
    build_loader,
    build_transform,
)
from .engine import Dist, Run, TrainingDiverged  # noqa: F401  (TrainingDiverged: the error a diverged run raises)
from .errors import UserError
from .evaluate import evaluate
from .files import pyplot, save_figure
from .model import ResNet
from .optim import loss_fn, mix_batch, soft_targets, stage_index
from .recipes import OptimSpec, TrainConfig, apply_overrides, run_name


def train_resolution(epoch: int, cfg: TrainConfig) -> int:
    """FFCV's progressive resizing: min_res until start_ramp, linear to image_size at end_ramp, in multiples of 32
    (of 8 for inputs under 128 px, where 32 would leave no steps between)."""
    dc = cfg.data
    if not dc.min_res or epoch >= dc.end_ramp:
        return dc.image_size
    if epoch <= dc.start_ramp:
        return dc.min_res
    frac = (epoch - dc.start_ramp) / max(1, dc.end_ramp - dc.start_ramp)
    step = 32 if dc.image_size >= 128 else 8
    return int(round((dc.min_res + frac * (dc.image_size - dc.min_res)) / step)) * step


@dataclasses.dataclass
class DataBundle:
    """The training and validation data of a run, with their transforms and loaders."""

    train_set: object
    val_set: object
    train_loader: Loader
    val_loader: Loader
    train_transform: TransformConfig
    eval_transform: TransformConfig
    per_rank_batch: int
    batches_per_epoch: int

    @property
    def classes(self) -> list[str]:
        return list(self.train_set.classes)

    @property
    def in_chans(self) -> int:
        return self.train_transform.in_chans

    @property
    def source(self) -> str:
        return str(getattr(self.train_set, "source", None) or self.train_set)

    @property
    def train_count(self) -> int | None:
        return _count(self.train_set)

    @property
    def val_count(self) -> int | None:
        return _count(self.val_set)


def _count(dataset) -> int | None:
    if hasattr(dataset, "num_samples"):
        return dataset.num_samples
    return len(dataset)


def build_data(cfg: TrainConfig, world: int = 1) -> DataBundle:
    """Train and validation datasets with the transforms ``cfg.data`` describes, and their loaders (each process
    gets ``batch_size / world`` images a step)."""
    dc = cfg.data
    kw = dict(val_fraction=dc.val_fraction, seed=cfg.run.seed, max_pixels=dc.max_pixels)
    train_set = build_dataset(dc.data, "train", **kw)
    val_set = build_dataset(dc.data, "val", **kw)
    tcfg, ecfg = dc.transforms(train_set)
    if cfg.model.init_weights and dc.preprocessing == "weights":
        tcfg, ecfg = (weights_preprocessing(t, cfg.model.init_weights) for t in (tcfg, ecfg))
    train_set.transform = build_transform(tcfg, train=True)
    val_set.transform = build_transform(ecfg, train=False)
    if dc.batch_size % world:
        raise UserError(f"--batch-size {dc.batch_size} does not split over {world} processes; use a multiple")
    per_rank = dc.batch_size // world
    pin = torch.cuda.is_available()
    if hasattr(train_set, "count"):  # shards: the sample count plans the schedule (a scan of tar headers)
        train_set.count()
    train_loader = build_loader(train_set, per_rank, train=True, workers=dc.workers, pin_memory=pin,
                                seed=cfg.run.seed, drop_last=True, repeats=dc.repeated_aug)
    val_loader = build_loader(val_set, per_rank, train=False, workers=dc.workers, pin_memory=pin, seed=cfg.run.seed)
    batches = train_loader.num_batches()
    if not batches:
        raise UserError(f"the training set ({_count(train_set)} images) is smaller than one batch of {per_rank}; "
                        "lower --batch-size")
    return DataBundle(train_set, val_set, train_loader, val_loader, tcfg, ecfg, per_rank, batches)


def weights_preprocessing(tcfg: TransformConfig, path: str) -> TransformConfig:
    """``tcfg`` with the mean, std and interpolation of the weights at ``path`` (what they were trained with), where
    they have the data's channel count; unchanged otherwise (gray data from RGB weights keep the data's own)."""
    pre = weights.load(path).preprocessing
    if pre is None or len(pre.mean) != tcfg.in_chans:
        return tcfg
    return dataclasses.replace(tcfg, mean=tuple(pre.mean), std=tuple(pre.std), interpolation=pre.interpolation)


# --- resume ------------------------------------------------------------------------------------------------

# What a resumed classification run may change beyond the engine's MAY_CHANGE: where its data now is (a moved
# dataset; its classes are checked against the checkpoint's).
MAY_CHANGE = frozenset({"data.data"})


def resume_config(path: str | os.PathLike, overrides: dict) -> tuple[TrainConfig, dict]:
    """The config of the run at ``path`` (a run folder or its last.pt) with ``overrides`` applied and checked, and
    the checkpoint (``engine.resume_config``); its data may be pointed to again (``--data``) when it has moved."""
    return engine.resume_config(path, overrides, kind="classifier", from_dict=TrainConfig.from_dict,
                                apply_overrides=apply_overrides, may_change=MAY_CHANGE)


def elastic_restart(cfg: TrainConfig) -> Path | None:
    """The checkpoint a worker restarted by torchrun continues from (``engine.elastic_restart``), or None."""
    return engine.elastic_restart(cfg.run)


# --- fine-tuning: frozen stages ------------------------------------------------------------------------------

def frozen_stages(model: ResNet, o: OptimSpec, epoch: int) -> list[str]:
    """The top-level modules of ``model`` that do not train in ``epoch``: everything but the classifier while
    ``epoch < freeze_epochs`` (fastai's ``fine_tune``: the new head first), then the stem through ``freeze_until``
    (partial fine-tuning; "layer4" is a linear probe on the frozen features). Raises UserError for a stage the
    network does not have."""
    names = [n for n, _ in model.named_children()]
    head = len(model.stage_names) + 1
    if epoch < o.freeze_epochs:
        return [n for n in names if stage_index(model, n) < head]
    if not o.freeze_until:
        return []
    if o.freeze_until != "stem" and o.freeze_until not in model.stage_names:
        raise UserError(f"--freeze-until {o.freeze_until}: the network's stages are stem, "
                        f"{', '.join(model.stage_names)}; name one of them")
    last = 0 if o.freeze_until == "stem" else model.stage_names.index(o.freeze_until) + 1
    return [n for n in names if stage_index(model, n) <= last]


def set_frozen(model: nn.Module, frozen: list[str]) -> None:
    """Freeze the named top-level modules (no gradients; BatchNorm in inference mode, so its statistics stay the
    pretrained ones, as Keras' transfer-learning guide does) and let the others train."""
    for name, child in model.named_children():
        stop = name in frozen
        for p in child.parameters():
            p.requires_grad_(not stop)
        if stop:
            child.eval()


# --- the task ------------------------------------------------------------------------------------------------

class Classification:
    """Image classification as an engine task: the data of ``cfg.data``, the network of ``cfg.model`` (started
    from ``--init-weights`` when given), the loss of ``cfg.optim`` (label smoothing, mixup, cutmix, BCE) at the
    epoch's resolution (progressive resizing), top-1/top-5 validation."""

    kind = "classifier"
    best_key = "val_top1"
    may_change = MAY_CHANGE

    def __init__(self, cfg: TrainConfig, ddp: Dist, checkpoint: dict | None, log) -> None:
        self.cfg = cfg
        try:
            self.data = build_data(cfg, ddp.world)
        except UserError as e:
            if checkpoint is None:
                raise
            raise UserError(f"{e}; if the run's data has moved, point to it: 'resnet50 train --resume "
                            f"{Path(cfg.run.out) / cfg.run.name} --data PATH'") from e
        self.classes = self.data.classes
        self.train_loader = self.data.train_loader
        self.val_images = (self.data.val_count or 0) * (2 if cfg.run.tta_flip else 1)  # flip TTA: two views
        self.val_extra_s = 0.0
        self.model = cfg.model.create(num_classes=len(self.classes), in_chans=self.data.in_chans)
        if cfg.model.init_weights and checkpoint is None:
            weights.init_from(self.model, cfg.model.init_weights, self.classes, log)
        o = cfg.optim
        frozen_stages(self.model, o, o.freeze_epochs)  # a --freeze-until the network lacks: refused before training
        self.find_unused = bool(o.freeze_epochs)  # DDP: the body joins training after the head-only epochs

    def train_mode(self, run: Run, epoch: int) -> None:
        run.net.train()
        set_frozen(self.model, frozen_stages(self.model, self.cfg.optim, epoch))

    def describe(self, run: Run) -> str:
        data, m = self.data, self.cfg.model
        n_train = "an unknown number of" if data.train_count is None else data.train_count
        links = getattr(data.train_set, "walk_skipped", [])
        note = f"; skipped {len(links)} link(s) while listing files, e.g. {links[0].path}: {links[0].reason}" \
            if links else ""
        return (f"run {run.run_dir}: {m.arch} {m.variant} on {data.source} ({n_train} train / "
                f"{data.val_count if data.val_count is not None else '?'} val images, {len(self.classes)} "
                f"classes), {run.ddp.world} process(es) on {run.device}, batch {self.cfg.data.batch_size}, peak lr "
                f"{run.peak_lr:.4g}, {run.steps_per_epoch} steps/epoch{note}")

    def losses(self, run: Run, net: nn.Module, batch, epoch: int) -> tuple[dict, dict]:
        o = self.cfg.optim
        images = batch.images.to(run.device, non_blocking=True)
        labels = batch.labels.to(run.device, non_blocking=True)
        res = train_resolution(epoch, self.cfg)
        if res != images.shape[-1]:
            images = F.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        images = images.contiguous(memory_format=run.memory_format)
        targets = soft_targets(labels, len(self.classes), o.label_smoothing)
        images, targets = mix_batch(images, targets, o)
        with run.autocast():
            logits = net(images)
        return {"loss": loss_fn(logits, targets, o)}, {"correct": (logits.argmax(1) == labels).sum()}

    def figures(self, sums: dict, seen: int, epoch: int) -> dict:
        return {"train_res": train_resolution(epoch, self.cfg), "train_top1": sums.get("correct", 0) / max(seen, 1)}

    def validate(self, run: Run, model: nn.Module, final: bool, progress: bool) -> dict:
        tta = "flip" if self.cfg.run.tta_flip else "none"
        val = evaluate(model, self.data.val_loader, len(self.classes), tta=tta, device=run.device,
                       channels_last=self.cfg.run.channels_last, autocast_dtype=run.amp_dtype, progress=progress)
        return {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"], "val_tta": tta,
                "val_model": "ema" if run.ema is not None else "model"}

    def save_weights(self, run: Run, path: Path, model: nn.Module, source: str) -> None:
        weights.save(path, model, self.classes, Preprocessing.of(self.data.eval_transform), source)

    def plot(self, history: list[dict], path: Path) -> None:
        plot_curves(path, history)

    def summary(self, row: dict) -> str:
        val_txt = f", val top-1 {row['val_top1']:.2%}" if "val_top1" in row else ""
        return (f"train loss {row['train_loss']:.4f}{val_txt}, {row['img_s']:.0f} img/s, data "
                f"{row['data_share']:.0%} of the time")


def data_as_recorded(data: str) -> str:
    """``--data`` as a run records it: an existing folder or file made absolute, so the run folder can be resumed
    (or found again, as the degradation experiment does) from anywhere; "embedded" and other names as given."""
    return str(Path(data).resolve()) if data != "embedded" and Path(data).exists() else data


def train(cfg: TrainConfig, resume: str | os.PathLike | dict | None = None, progress: bool = True,
          log=print, tensorboard: bool = False) -> dict:
    """Train per ``cfg``, or continue a run (``resume``: its folder, its last.pt, or the checkpoint dict that
    :func:`resume_config` returned). Returns the last epoch's metrics with ``run_dir``, ``best_val_top1`` and the
    whole ``history`` (one row per epoch). ``tensorboard``: also write each row to TensorBoard
    (``resnet50.tensorboard``)."""
    checkpoint = engine.load_checkpoint(resume) if isinstance(resume, (str, os.PathLike)) else resume
    if not cfg.run.name:
        cfg.run.name = run_name(cfg)
    if checkpoint is None:
        cfg.data.data = data_as_recorded(cfg.data.data)
    result, _ = engine.fit(Classification, cfg, checkpoint, progress, log, tensorboard)
    result["best_val_top1"] = result.pop("best")
    return result


def plot_curves(path: Path, history: list[dict]) -> None:
    """Loss and error (1 - top-1) per epoch, training and validation, side by side."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    # the training loss is the optimised one (label smoothing, mixup included); validation is plain cross-entropy
    a.plot(ep, [r["train_loss"] for r in history], color="C0", label="train (as optimised)")
    b.plot(ep, [100 * (1 - r["train_top1"]) for r in history], color="C0", label="train")
    vals = [r for r in history if "val_loss" in r]
    if vals:
        a.plot([r["epoch"] for r in vals], [r["val_loss"] for r in vals], color="C1", label="val")
        b.plot([r["epoch"] for r in vals], [100 * (1 - r["val_top1"]) for r in vals], color="C1", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="error (%)", title="top-1 error")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
