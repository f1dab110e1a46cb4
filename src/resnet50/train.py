"""The training loop: one process or DDP (torchrun), AMP, channels_last, EMA, exact resume.

A run folder holds ``config.json`` (the resolved TrainConfig), ``metrics.jsonl`` (one line per epoch),
``curves.png``, ``last.pt`` (everything needed to resume: model, optimiser, scaler, EMA, step, loader position, RNG
states, history, config), ``best.safetensors`` and ``final.safetensors`` (weights with metadata, for evaluate,
predict and export). Every file is written atomically; a kill at any moment leaves the previous ``last.pt`` whole.

Resuming restores the exact state: the learning rate is a function of the step, the loader resumes mid-epoch at
the batch after the checkpoint, each sample's augmentation depends only on (seed, epoch, index), and the torch RNG
(mixup, cutmix) is restored. In deterministic mode a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import weights
from .cpu import has_native_bf16
from .data import build_dataset, build_loader, build_transform, default_transform_config
from .errors import UserError
from .evaluate import evaluate
from .model import ResNet, create_model
from .optim import ModelEMA, build_optimizer, loss_fn, lr_at, mix_batch, soft_targets
from .recipes import TrainConfig


class TrainingDiverged(UserError):
    exit_code = 3


# --- set-up ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then join the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(kind: str, d: Dist) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, and on CPUs with bf16 instructions (AVX512-BF16, AMX), where a ResNet-50 training
    step at 224 px ran 2.8x faster than fp32 (docs/benchmarks.md); off on other CPUs, where oneDNN converts around
    every kernel and bf16 is slower than fp32."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" or (device.type == "cpu" and has_native_bf16()) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def train_resolution(epoch: int, cfg: TrainConfig) -> int:
    """FFCV's progressive resizing: min_res until start_ramp, linear to image_size at end_ramp, in multiples of 32
    (of 8 for inputs under 128 px, where 32 would leave no steps between)."""
    d = cfg.data
    if not d.min_res or epoch >= d.end_ramp:
        return d.image_size
    if epoch <= d.start_ramp:
        return d.min_res
    frac = (epoch - d.start_ramp) / max(1, d.end_ramp - d.start_ramp)
    step = 32 if d.image_size >= 128 else 8
    return int(round((d.min_res + frac * (d.image_size - d.min_res)) / step)) * step


def build_data(cfg: TrainConfig, d: Dist, split_eval: str = "val"):
    """Train and evaluation datasets with their transforms, and their loaders."""
    dc = cfg.data
    train_set = build_dataset(dc.data, "train", val_fraction=dc.val_fraction, seed=cfg.run.seed)
    val_set = build_dataset(dc.data, split_eval, val_fraction=dc.val_fraction, seed=cfg.run.seed)
    tcfg = default_transform_config(train_set, dc.image_size)
    over = dict(hflip=dc.hflip, scale=(dc.min_scale, 1.0), auto_augment=dc.auto_augment,
                random_erasing=dc.random_erasing, interpolation=dc.interpolation)
    if dc.train_crop != "auto":
        over["train_crop"] = dc.train_crop
    if dc.crop_pct:
        over["crop_pct"] = dc.crop_pct
    tcfg = dataclasses.replace(tcfg, **over)
    ecfg = dataclasses.replace(tcfg, image_size=dc.eval_size) if dc.eval_size else tcfg
    train_set.transform = build_transform(tcfg, train=True)
    val_set.transform = build_transform(ecfg, train=False)
    if dc.batch_size % d.world:
        raise UserError(f"batch_size {dc.batch_size} does not split over {d.world} processes; use a multiple")
    per_rank = dc.batch_size // d.world
    pin = torch.cuda.is_available()
    train_loader = build_loader(train_set, per_rank, train=True, workers=dc.workers, pin_memory=pin,
                                seed=cfg.run.seed, drop_last=True, repeats=dc.repeated_aug)
    val_loader = build_loader(val_set, per_rank, train=False, workers=dc.workers, pin_memory=pin,
                              seed=cfg.run.seed)
    if len(train_loader) == 0:
        raise UserError(f"the training set ({len(train_set)} images) is smaller than one batch of {per_rank}; "
                        "lower --batch_size")
    return train_set, val_set, train_loader, val_loader, tcfg, ecfg


# --- checkpoints -------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict) -> None:
    with weights.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give a run folder or its last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable training checkpoint ({type(e).__name__}); it may be truncated") from e
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError(f"{path} is not a training checkpoint of this toolkit (no config/model); to start from "
                        "weights use --init_weights")
    return state


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run keeps its architecture, data and optimisation; only some run options may change."""
    may_change = {"run.time_limit", "run.max_steps", "run.checkpoint_every", "run.workers", "run.out", "run.name",
                  "data.workers", "run.device", "run.threads"}
    new = cfg.to_dict()
    for sec in ("model", "data", "optim", "run"):
        for k, v in saved.get(sec, {}).items():
            key = f"{sec}.{k}"
            nv = new[sec].get(k)
            if key not in may_change and _norm(nv) != _norm(v):
                raise UserError(f"resuming a run with {key}={v!r}, but {key}={nv!r} was given; drop the option "
                                "(the checkpoint fixes it) or start a new run")


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


# --- the loop ----------------------------------------------------------------------------------------------

def _metadata(cfg: TrainConfig, ecfg, classes) -> weights.Preprocessing:
    resize = ecfg.eval_size
    return weights.Preprocessing(resize=resize, crop=ecfg.image_size, mean=tuple(ecfg.mean), std=tuple(ecfg.std),
                                 interpolation=ecfg.interpolation)


def _unwrap(model: nn.Module) -> ResNet:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True, log=print) -> dict:
    """Train per ``cfg`` (or continue the checkpoint ``resume``); returns the last epoch's metrics."""
    state = None
    if resume:
        state = load_checkpoint(resume)
        check_resume_config(state["config"], cfg)
    d = setup_distributed("cuda" if cfg.run.device == "cuda" or
                          (cfg.run.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = pick_device(cfg.run.device, d)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.run.seed)

    train_set, val_set, train_loader, val_loader, tcfg, ecfg = build_data(cfg, d)
    classes = list(train_set.classes)
    m = cfg.model
    model = create_model(m.arch, variant=m.variant, shortcut=m.shortcut or None, stem=m.stem or None,
                         zero_init_residual=m.zero_init_residual, blurpool=m.blurpool, num_classes=len(classes),
                         in_chans=tcfg.in_chans)
    if m.init_weights and state is None:
        src = weights.load(m.init_weights)
        sd = {k: v for k, v in src.model.state_dict().items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise UserError(f"--init_weights {m.init_weights} does not fit {m.arch} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); give weights of the same arch")
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    o = cfg.optim
    batches_per_epoch = len(train_loader)
    steps_per_epoch = max(1, batches_per_epoch // o.accum_steps)
    peak_lr = o.lr * cfg.data.batch_size * o.accum_steps / 256
    optimizer = build_optimizer(model, o, peak_lr)
    amp_dtype = autocast_dtype(cfg.run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, cfg.run.ema_decay, cfg.run.ema_every) if cfg.run.ema_decay else None

    step, start_epoch, best, history, epoch_stats = 0, 0, -1.0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, start_epoch, best, history = state["step"], state["epoch"], state["best"], state["history"]
        epoch_stats = state.get("epoch_stats")
        train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])

    if cfg.run.sync_bn and d.world > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it on CPU")
    if cfg.run.sync_bn and d.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.run.compile:
        net = torch.compile(net)

    run_dir = Path(cfg.run.out) / cfg.run.name
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with weights.atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        _write_history(run_dir, history)
        log(f"run {run_dir}: {m.arch} {m.variant} on {train_set.source if hasattr(train_set, 'source') else cfg.data.data}"
            f" ({len(train_set)} train / {len(val_set)} val images, {len(classes)} classes), {d.world} process(es) "
            f"on {device}, batch {cfg.data.batch_size}, peak lr {peak_lr:.4g}, {steps_per_epoch} steps/epoch")

    def checkpoint(epoch_done: int, running: list | None = None) -> None:
        if not d.main:
            return
        save_checkpoint(run_dir / "last.pt", {
            "config": cfg.to_dict(), "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None, "step": step,
            "epoch": epoch_done, "best": best, "history": history, "loader": train_loader.state_dict(),
            "epoch_stats": running,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
        })

    t_start = time.perf_counter()
    total_steps = steps_per_epoch * o.epochs
    stop = False
    last = history[-1] if history else {}
    for epoch in range(start_epoch, o.epochs):
        res = train_resolution(epoch, cfg)
        net.train()
        seen = correct = 0
        loss_sum = torch.zeros((), dtype=torch.float64)
        data_s = compute_s = 0.0
        skipped = []
        train_loader.set_epoch(epoch)
        if epoch_stats is not None:  # resuming mid-epoch: the epoch's running figures so far
            loss_sum, correct, seen = torch.tensor(epoch_stats[0], dtype=torch.float64), epoch_stats[1], epoch_stats[2]
            epoch_stats = None
        bar = tqdm(total=batches_per_epoch, initial=train_loader.state_dict()["consumed"] // train_loader.batch_size,
                   desc=f"epoch {epoch + 1}/{o.epochs}", unit="batch", disable=not (progress and d.main), leave=False)
        t_epoch = t_mark = time.perf_counter()
        micro = 0
        for images, labels, bad in train_loader:
            skipped.extend(bad)
            t_data = time.perf_counter()
            data_s += t_data - t_mark
            if labels.numel() == 0:
                t_mark = time.perf_counter()
                continue
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if res != images.shape[-1]:
                images = F.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
            images = images.contiguous(memory_format=memory_format)
            targets = soft_targets(labels, len(classes), o.label_smoothing)
            images, targets = mix_batch(images, targets, o)
            lr = lr_at(step, steps_per_epoch, o, peak_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            sync = (micro + 1) % o.accum_steps == 0
            ctx = net.no_sync() if (d.world > 1 and not sync and hasattr(net, "no_sync")) else nullcontext()
            with ctx:
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    logits = net(images)
                loss = loss_fn(logits, targets, o)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); the last good checkpoint "
                        f"is {run_dir / 'last.pt'}; lower --lr or add --warmup_epochs, then --resume or restart")
                scaler.scale(loss / o.accum_steps).backward()
            micro += 1
            if sync:
                if o.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if ema is not None:
                    ema.update(model, step)
            loss_sum += loss.detach().double().cpu() * labels.shape[0]
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_mark = time.perf_counter()
            compute_s += t_mark - t_data
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}", img_s=f"{seen * d.world / (t_mark - t_epoch):.0f}")
            if sync and cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
                checkpoint(epoch, [float(loss_sum), correct, seen])
            if sync and cfg.run.max_steps and step >= cfg.run.max_steps:
                stop = True
                break
        bar.close()
        finished_epoch = not stop or len(train_loader) == 0
        train_stats = torch.tensor([float(loss_sum), correct, seen, data_s, compute_s], dtype=torch.float64)
        if d.world > 1:
            dist.all_reduce(train_stats)
        row = {
            "epoch": epoch + 1, "step": step, "lr": lr_at(max(step - 1, 0), steps_per_epoch, o, peak_lr),
            "train_res": res, "train_loss": float(train_stats[0] / max(train_stats[2], 1)),
            "train_top1": float(train_stats[1] / max(train_stats[2], 1)),
            "train_images": int(train_stats[2]), "epoch_s": time.perf_counter() - t_epoch,
            "img_s": float(train_stats[2]) / max(time.perf_counter() - t_epoch, 1e-9),
            # time waiting for the loader against time computing, summed over processes
            "data_s": float(train_stats[3]), "compute_s": float(train_stats[4]),
            "data_share": float(train_stats[3] / max(train_stats[3] + train_stats[4], 1e-9)),
            "skipped_files": len(skipped),
        }
        if skipped and d.main:
            log(f"epoch {epoch + 1}: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0].path}: {skipped[0].reason}")
        if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == o.epochs or stop:
            eval_model = ema.module if ema is not None else model
            tta = "flip" if cfg.run.tta_flip else "none"
            val = evaluate(eval_model, val_loader, len(classes), tta=tta, device=device,
                           channels_last=cfg.run.channels_last, autocast_dtype=amp_dtype, progress=progress and d.main)
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], val_tta=tta,
                       val_model="ema" if ema is not None else "model")
            if d.main and val["top1"] > best:
                best = val["top1"]
                weights.save(run_dir / "best.safetensors", _unwrap(eval_model), classes, _metadata(cfg, ecfg, classes),
                             f"resnet50 train {cfg.recipe} epoch {epoch + 1}")
        row["elapsed_s"] = time.perf_counter() - t_start
        history.append(row)
        last = row
        if d.main:
            _write_history(run_dir, history)
            _plot(run_dir, history)
            val_txt = f", val top-1 {row['val_top1']:.2%}" if "val_top1" in row else ""
            log(f"epoch {epoch + 1}/{o.epochs}: train loss {row['train_loss']:.4f}{val_txt}, {row['img_s']:.0f} img/s, "
                f"data {row['data_share']:.0%} of the time")
        if finished_epoch:
            checkpoint(epoch + 1)
        else:
            checkpoint(epoch, [float(loss_sum), correct, seen])
        if stop:
            break
        if cfg.run.time_limit and time.perf_counter() - t_start > cfg.run.time_limit * 60 and epoch + 1 < o.epochs:
            if d.main:
                log(f"time limit of {cfg.run.time_limit} min reached after epoch {epoch + 1}; stopping")
            break
    if d.main:
        final = ema.module if ema is not None else model
        weights.save(run_dir / "final.safetensors", _unwrap(final), classes, _metadata(cfg, ecfg, classes),
                     f"resnet50 train {cfg.recipe} step {step}")
    if d.world > 1:
        dist.barrier()
    return {**last, "run_dir": str(run_dir), "best_val_top1": best, "total_steps": total_steps}


def _write_history(run_dir: Path, history: list[dict]) -> None:
    with weights.atomic_path(run_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))


def _plot(run_dir: Path, history: list[dict]) -> None:
    """curves.png: loss and error (1 - top-1) per epoch, training and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    # the training loss is the optimised one (label smoothing, mixup included); validation is plain cross-entropy
    a.plot(ep, [r["train_loss"] for r in history], color="C0", label="train (as optimised)")
    b.plot(ep, [100 * (1 - r["train_top1"]) for r in history], color="C0", label="train")
    vals = [(r["epoch"], r) for r in history if "val_loss" in r]
    if vals:
        a.plot([e for e, _ in vals], [r["val_loss"] for _, r in vals], color="C1", label="val")
        b.plot([e for e, _ in vals], [100 * (1 - r["val_top1"]) for _, r in vals], color="C1", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="error (%)", title="top-1 error")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with weights.atomic_path(run_dir / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
