"""Detector training: one process or DDP (torchrun), bf16 autocast, channels_last, exact resume.

A run folder holds ``config.json`` (the resolved DetectTrainConfig), ``metrics.jsonl`` (one line per epoch),
``curves.png``, ``last.pt`` (model, optimiser, scaler, step, epoch, position in the epoch, RNG state, history,
config), ``best.safetensors`` (the best validation mAP) and ``final.safetensors`` (detector weights with their
config and class names, for ``resnet50 detect evaluate|predict``). Every file is written atomically.

Exact resume: the learning rate is a function of the step (``resnet50.optim.lr_at``), each epoch's image order and
flips come from a generator seeded with (seed, epoch) alone, and a checkpoint records how many batches of the epoch
are done, so a resumed run sees the same batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import train as classification
from ..errors import UserError
from ..files import atomic_path, output_dir, pyplot, save_figure, write_json
from ..optim import build_optimizer, lr_at
from ..recipes import OptimSpec, coerce_field
from ..train import Calibration, autocast_dtype, fix_budget, pick_device, setup_distributed
from .checkpoint import save_detector
from .coco import CocoDataset, make_batch
from .evaluate import evaluate
from .fpn import init_body, set_trainable_layers
from .retinanet import DetectorConfig, RetinaNet


class TrainingDiverged(UserError):
    exit_code = 3


@dataclass
class DetectData:
    train: str = ""  # a COCO folder (instances JSON + images) or the JSON itself
    val: str = ""  # the same, for validation (mAP); "" = no validation
    hflip: float = 0.5  # probability of mirroring a training image (and its boxes)
    batch_size: int = 16  # global batch (split over DDP processes)
    eval_batch_size: int = 32


@dataclass
class DetectOptim:
    optimizer: str = "sgd"  # sgd or adamw (resnet50.optim)
    lr: float = 0.16  # per 256 images, scaled linearly with the batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True
    schedule: str = "step"  # step, cosine or linear (to zero), after the warmup
    milestones: tuple[int, ...] = (16, 22)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start: float = 0.001
    epochs: int = 26
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    trainable_layers: int = 5  # of the backbone (conv1, layer1..layer4), torchvision's trainable_backbone_layers


@dataclass
class DetectRun:
    out: str = "runs"
    name: str = ""  # default <recipe>-<arch>-<timestamp>
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 on CUDA and on CPUs with bf16 instructions, else fp32; or bf16, off
    channels_last: bool = True
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints; 0 = end of each epoch only
    max_steps: int = 0  # stop after this many steps (tests, smoke runs); 0 = no limit
    time_limit: float = 0.0  # minutes: stop after the epoch in which this runs out; 0 = off
    # Time-budgeted training, as resnet50.train does it (Li et al., "Budgeted Training", ICLR 2020): minutes of
    # training including its validations. Optimiser steps CALIBRATION[0]..[1] measure the speed; the run's length is
    # then fixed as budget_steps (saved in config.json and last.pt: --budget-steps N repeats it exactly) and the
    # schedule runs over those steps; --epochs is the upper bound. 0 = off.
    time_budget: float = 0.0
    budget_steps: int = 0
    threads: int = 0  # torch intra-op threads; 0 = the default
    deterministic: bool = False


@dataclass
class DetectTrainConfig:
    recipe: str = "coco"
    description: str = ""
    init_weights: str = ""  # backbone start: a classification checkpoint (ours, torchvision/timm ResNet) or ""
    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectData = field(default_factory=DetectData)
    optim: DetectOptim = field(default_factory=DetectOptim)
    run: DetectRun = field(default_factory=DetectRun)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DetectTrainConfig":
        d = dict(d)
        sections = {"model": DetectorConfig.from_dict(d.pop("model", {}))}
        for name, typ in SECTIONS.items():
            if name == "model":
                continue
            sub = d.pop(name, {})
            unknown = set(sub) - {f.name for f in dataclasses.fields(typ)}
            if unknown:
                raise UserError(f"unknown {name} config key(s) {sorted(unknown)}")
            sections[name] = typ(**{k: coerce_field(typ, k, v) for k, v in sub.items()})
        unknown = set(d) - {"recipe", "description", "init_weights"}
        if unknown:
            raise UserError(f"unknown config key(s) {sorted(unknown)}")
        return cls(**d, **sections)


SECTIONS = {"model": DetectorConfig, "data": DetectData, "optim": DetectOptim, "run": DetectRun}


def flat_fields() -> dict[str, str]:
    """Every overridable field: name -> section ('' for the top level). Names are unique across sections."""
    out = {"init_weights": ""}
    for sec, typ in SECTIONS.items():
        for f in dataclasses.fields(typ):
            out[f.name] = sec
    return out


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
        optim=DetectOptim(optimizer="sgd", lr=0.16, momentum=0.9, weight_decay=1e-4, schedule="step",
                          milestones=(16, 22), warmup_epochs=0.14, warmup_start=0.001, epochs=26,
                          trainable_layers=3),
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
        optim=DetectOptim(optimizer="adamw", lr=0.016, weight_decay=0.05, decay_norm_and_bias=False,
                          schedule="cosine", warmup_epochs=0.3, warmup_start=0.01, epochs=6, grad_clip=10.0,
                          trainable_layers=3),
        run=DetectRun(eval_every=100),
    )


RECIPES = {"coco": _coco, "scenes": _scenes}


def resolve(recipe: str, overrides: dict | None = None) -> DetectTrainConfig:
    """The named recipe with ``overrides`` (flat field names, as on the command line) applied and checked."""
    if recipe not in RECIPES:
        raise UserError(f"unknown detection recipe {recipe!r}; choose from: {', '.join(RECIPES)}")
    return apply_overrides(RECIPES[recipe](), overrides)


def apply_overrides(cfg: DetectTrainConfig, overrides: dict | None) -> DetectTrainConfig:
    fields = flat_fields()
    model_over = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise UserError(f"unknown config field {key!r}; see 'resnet50 detect train --help'")
        sec = fields[key]
        if sec == "":
            cfg.init_weights = str(value)
        elif sec == "model":
            model_over[key] = coerce_field(DetectorConfig, key, value)
        else:
            section = getattr(cfg, sec)
            setattr(section, key, coerce_field(type(section), key, value))
    if model_over:
        cfg.model = dataclasses.replace(cfg.model, **model_over)
    validate(cfg)
    return cfg


def validate(cfg: DetectTrainConfig) -> None:
    o, d, r = cfg.optim, cfg.data, cfg.run
    checks = [
        (o.optimizer in ("sgd", "adamw"), f"unknown optimizer {o.optimizer!r}; use sgd or adamw"),
        (o.schedule in ("step", "cosine", "linear"), f"unknown schedule {o.schedule!r}; use step, cosine or linear"),
        (o.epochs >= 1, "epochs must be >= 1"),
        (o.lr > 0, "lr must be positive"),
        (0 <= o.trainable_layers <= 5, "trainable_layers must be 0..5"),
        (d.batch_size >= 1 and d.eval_batch_size >= 1, "batch sizes must be >= 1"),
        (0 <= d.hflip <= 1, "hflip is a probability in [0, 1]"),
        (r.amp in ("auto", "bf16", "off"), f"unknown amp {r.amp!r}; use auto, bf16 or off"),
        (r.device in ("auto", "cpu", "cuda"), f"unknown device {r.device!r}; use auto, cpu or cuda"),
        (r.eval_every >= 1, "eval_every must be >= 1"),
        (r.time_budget >= 0 and r.budget_steps >= 0, "time_budget and budget_steps must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def optim_spec(o: DetectOptim, budget_epochs: float = 0.0) -> OptimSpec:
    """The classification OptimSpec that resnet50.optim's optimiser and schedule read, from our fields; a time
    budget's steps (``budget_epochs``, in epochs) replace --epochs as the schedule's length once fixed."""
    return OptimSpec(optimizer=o.optimizer, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                     decay_norm_and_bias=o.decay_norm_and_bias, schedule=o.schedule, milestones=o.milestones,
                     gamma=o.gamma, warmup_epochs=o.warmup_epochs, warmup_start=o.warmup_start,
                     epochs=budget_epochs or o.epochs)


# --- the loop ------------------------------------------------------------------------------------------------------

def epoch_plan(n: int, epoch: int, seed: int, hflip: float) -> tuple[list[int], list[bool]]:
    """The image order and flips of an epoch: a function of (seed, epoch) only, so a resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < hflip).tolist()
    return order, flips


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A detection run's last.pt (the file or its run folder), checked (``resnet50.train.load_checkpoint``)."""
    return classification.load_checkpoint(path, kind="detector")


RESUMABLE_CHANGES = ("max_steps", "time_limit", "checkpoint_every", "eval_every", "threads", "device", "out", "name")


def check_resume_config(saved: DetectTrainConfig, cfg: DetectTrainConfig) -> None:
    """A resumed run keeps its model, data and optimisation; only the run options of RESUMABLE_CHANGES may differ."""
    old, new = saved.to_dict(), cfg.to_dict()
    for sec in ("model", "data", "optim", "run"):
        for k, v in old[sec].items():
            if k not in RESUMABLE_CHANGES and k != "num_classes" and new[sec].get(k) != v:  # classes: the data's
                raise UserError(f"resuming a run with {k}={v!r}, but {k}={new[sec].get(k)!r} was given; drop the "
                                "option (the checkpoint fixes it) or start a new run")
    if old["init_weights"] != new["init_weights"]:
        raise UserError("--init-weights cannot change on resume (the checkpoint holds the weights)")


def _unwrap(net: nn.Module) -> RetinaNet:
    return getattr(net, "module", net)


def train(cfg: DetectTrainConfig | None, resume: str | None = None, progress: bool = True, log=print) -> dict:
    """Train per ``cfg``, or continue the checkpoint ``resume`` with its own config (``cfg`` None); returns the last
    epoch's row with run_dir, best_map and the final validation metrics."""
    state = None
    if resume:
        state = load_checkpoint(resume)
        saved = DetectTrainConfig.from_dict(state["config"])
        if cfg is not None:
            if not cfg.run.budget_steps:  # a budgeted run resumes with the steps it fixed
                cfg.run.budget_steps = saved.run.budget_steps
            check_resume_config(saved, cfg)
        cfg = cfg or saved
    if cfg is None:
        raise UserError("give a config or a checkpoint to resume")
    r, o, dc = cfg.run, cfg.optim, cfg.data
    if not dc.train:
        raise UserError("no training data: give --train (a COCO folder or instances JSON)")
    ddp = setup_distributed("cuda" if r.device == "cuda" or (r.device == "auto" and torch.cuda.is_available())
                            else "cpu")
    device = pick_device(r.device, ddp)
    if r.threads:
        torch.set_num_threads(r.threads)
    if r.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(r.seed)

    train_set = CocoDataset(dc.train, in_chans=cfg.model.in_chans)
    val_set = CocoDataset(dc.val, in_chans=cfg.model.in_chans) if dc.val else None
    if val_set is not None and val_set.classes != train_set.classes:
        raise UserError(f"{dc.val} has classes {val_set.classes[:4]}..., {dc.train} has {train_set.classes[:4]}...; "
                        "train and validation data need the same categories in the same order")
    if cfg.model.num_classes != len(train_set.classes):
        cfg.model = dataclasses.replace(cfg.model, num_classes=len(train_set.classes))
    classes = list(train_set.classes)
    if dc.batch_size % ddp.world:
        raise UserError(f"batch_size {dc.batch_size} does not split over {ddp.world} processes; use a multiple")
    per_rank = dc.batch_size // ddp.world
    steps_per_epoch = len(train_set) // dc.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"the training set ({len(train_set)} images) is smaller than one batch of {dc.batch_size}; "
                        "lower --batch-size")

    model = RetinaNet(cfg.model)
    if cfg.init_weights and state is None:
        log(f"backbone from {init_body(model.backbone.body, cfg.init_weights)}")
    set_trainable_layers(model.backbone.body, o.trainable_layers)
    memory_format = torch.channels_last if r.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    peak_lr = o.lr * dc.batch_size / 256
    optimizer = build_optimizer(model, optim_spec(o), peak_lr)

    def schedule() -> OptimSpec:  # over --epochs, or over the time budget's steps once they are fixed
        return optim_spec(o, r.budget_steps / steps_per_epoch)

    def epochs() -> int:
        return -(-(r.budget_steps or steps_per_epoch * o.epochs) // steps_per_epoch)
    amp = autocast_dtype(r.amp, device)

    step, start_epoch, done_batches, best, history, running = 0, 0, 0, -1.0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, start_epoch, done_batches = state["step"], state["epoch"], state["batches_done"]
        best, history, running = state["best"], state["history"], state["running"]
        torch.set_rng_state(state["rng"])
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    run_dir = Path(r.out) / (r.name or f"{cfg.recipe}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    if ddp.main:
        output_dir(run_dir, "--out")
        write_json(run_dir / "config.json", cfg.to_dict(), indent=2)
        log(f"run {run_dir}: RetinaNet {cfg.model.version} {cfg.model.arch} on {train_set.json_path} "
            f"({train_set.stats.summary()}), {len(classes)} classes, {ddp.world} process(es) on {device}, "
            f"batch {dc.batch_size}, peak lr {peak_lr:.4g}, {steps_per_epoch} steps/epoch, amp {amp}")
        if val_set is not None:
            log(f"validation: {val_set.json_path} ({val_set.stats.summary()})")

    def checkpoint(epoch: int, batches_done: int, sums: list | None) -> None:
        if not ddp.main:
            return
        with atomic_path(run_dir / "last.pt") as tmp:
            torch.save({"kind": "detector", "config": cfg.to_dict(), "model": _unwrap(net).state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                        "batches_done": batches_done, "best": best, "history": history, "running": sums,
                        "rng": torch.get_rng_state()}, tmp)

    # wall time, and this process's CPU time (all threads): on shared cores the second says what the run cost
    t_start, cpu_start = time.perf_counter(), time.process_time()
    started, calibration = classification.clock(), Calibration()  # the time budget's clock and speed
    eval_wall = eval_cpu = 0.0  # validation time, kept out of the training time
    last, stop, val = (history[-1] if history else {}), False, None
    for epoch in range(start_epoch, epochs()):
        net.train()
        order, flips = epoch_plan(len(train_set), epoch, r.seed, dc.hflip)
        # loss sums (classification, regression), images, skipped files
        sums = running if running is not None else [0.0, 0.0, 0, 0]
        running = None
        bar = tqdm(total=steps_per_epoch, initial=done_batches, desc=f"epoch {epoch + 1}/{epochs()}", unit="batch",
                   disable=not (progress and ddp.main), leave=False)
        t_epoch, seen_now = time.perf_counter(), 0
        for b in range(done_batches, steps_per_epoch):
            lo = b * dc.batch_size + ddp.rank * per_rank
            idx = order[lo:lo + per_rank]
            batch = make_batch(train_set, idx, cfg.model.image_size, [flips[i] for i in idx])
            sums[3] += len(batch.skipped)
            lr = lr_at(step, steps_per_epoch, schedule(), peak_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images = batch.images.to(device).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                outputs = net(images)
            losses = model.loss(outputs, batch.boxes.to(device), batch.labels.to(device), batch.valid.to(device),
                                tuple(images.shape[-2:]))
            loss = losses["classification"] + losses["bbox_regression"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); the last "
                                       f"good checkpoint is {run_dir / 'last.pt'}; lower --lr or add warmup")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], o.grad_clip)
            optimizer.step()
            step += 1
            if r.time_budget and not r.budget_steps and (measured := calibration.at(step)) is not None:
                fix_budget(cfg, run_dir, ddp, device, started, *measured, step, steps_per_epoch,
                           len(val_set) if val_set is not None else 0, log, eval_extra_s=2.0)  # 2 s: pycocotools
                bar.set_description(f"epoch {epoch + 1}/{epochs()}")
            n = images.shape[0]
            sums[0] += float(losses["classification"].detach()) * n
            sums[1] += float(losses["bbox_regression"].detach()) * n
            sums[2] += n
            seen_now += n
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}",
                            img_s=f"{seen_now * ddp.world / (time.perf_counter() - t_epoch):.1f}")
            if r.checkpoint_every and step % r.checkpoint_every == 0:
                checkpoint(epoch, b + 1, list(sums))
            if r.budget_steps and step >= r.budget_steps:  # the budget ends the run (and this epoch) here
                done_batches = b + 1
                break
            if r.max_steps and step >= r.max_steps:
                stop = b + 1 < steps_per_epoch
                done_batches = b + 1
                break
        else:
            done_batches = steps_per_epoch
        bar.close()
        totals = torch.tensor(sums, dtype=torch.float64)
        if ddp.world > 1:
            dist.all_reduce(totals)
        epoch_s = time.perf_counter() - t_epoch
        row = {"epoch": epoch + 1, "step": step, "lr": lr_at(max(step - 1, 0), steps_per_epoch, schedule(), peak_lr),
               "train_loss": float((totals[0] + totals[1]) / max(totals[2], 1)),
               "train_cls_loss": float(totals[0] / max(totals[2], 1)),
               "train_box_loss": float(totals[1] / max(totals[2], 1)),
               "train_images": int(totals[2]), "skipped_files": int(totals[3]), "epoch_s": epoch_s,
               "img_s": seen_now * ddp.world / max(epoch_s, 1e-9)}
        final_epoch = epoch + 1 >= epochs() or bool(r.max_steps and step >= r.max_steps) \
            or bool(r.budget_steps and step >= r.budget_steps)
        out_of_time = bool(r.time_limit) and time.perf_counter() - t_start > r.time_limit * 60
        if val_set is not None and ddp.main and ((epoch + 1) % r.eval_every == 0 or final_epoch or out_of_time):
            t_eval, c_eval = time.perf_counter(), time.process_time()
            # the run's last validation also scores the boxes with labels ignored (a second COCOeval, no new pass)
            val = evaluate(_unwrap(net), val_set, dc.eval_batch_size, device, amp, r.channels_last, progress,
                           class_agnostic=bool(final_epoch or out_of_time))
            eval_wall += time.perf_counter() - t_eval
            eval_cpu += time.process_time() - c_eval
            row["val_s"] = time.perf_counter() - t_eval
            row.update(val_map=val["map"], val_map50=val["map50"], val_map75=val["map75"])
            if val["map"] > best:
                best = val["map"]
                save_detector(run_dir / "best.safetensors", _unwrap(net), classes,
                              f"resnet50 detect train {cfg.recipe} epoch {epoch + 1}")
        row["train_s"] = time.perf_counter() - t_start - eval_wall
        row["train_cpu_s"] = time.process_time() - cpu_start - eval_cpu
        if stop:  # a partial epoch: the checkpoint resumes inside it, and its row is written when it completes
            checkpoint(epoch, done_batches, list(sums))
        history.append(row)
        last = row
        if ddp.main:
            _write_history(run_dir, history)
            _plot(run_dir, history)
            val_txt = f", val mAP {row['val_map']:.3f} (AP50 {row['val_map50']:.3f})" if "val_map" in row else ""
            log(f"epoch {epoch + 1}/{epochs()}: loss {row['train_loss']:.4f} (cls {row['train_cls_loss']:.4f}, box "
                f"{row['train_box_loss']:.4f}){val_txt}, {row['img_s']:.1f} img/s")
        if stop:
            break
        done_batches = 0
        checkpoint(epoch + 1, 0, None)
        if final_epoch:
            break
        if out_of_time:
            if ddp.main:
                log(f"time limit of {r.time_limit} min reached after epoch {epoch + 1}; stopping")
            break
    if ddp.main:
        save_detector(run_dir / "final.safetensors", _unwrap(net), classes, f"resnet50 detect train {cfg.recipe} "
                      f"step {step}")
    if ddp.world > 1:
        dist.barrier()
    return {**last, "run_dir": str(run_dir), "best_map": best, "val": val, "classes": classes,
            "train_seconds": time.perf_counter() - t_start - eval_wall,
            "train_cpu_seconds": time.process_time() - cpu_start - eval_cpu}


def _write_history(run_dir: Path, history: list[dict]) -> None:
    with atomic_path(run_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))


def _plot(run_dir: Path, history: list[dict]) -> None:
    """curves.png: training losses per epoch (classification, regression) and validation mAP / mAP@.5."""
    plt = pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_cls_loss"] for r in history], label="classification (focal)")
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
    save_figure(fig, run_dir / "curves.png")
