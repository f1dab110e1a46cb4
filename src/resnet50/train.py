"""The training loop: one process or DDP (torchrun), AMP, channels_last, EMA, exact resume.

A run folder holds ``config.json`` (the resolved TrainConfig), ``metrics.jsonl`` (one line per epoch),
``curves.png``, ``last.pt`` (everything needed to resume: model, optimiser, scaler, EMA and the :class:`RunState`:
step, epoch, best, history, loader position, RNG states), ``best.safetensors`` and ``final.safetensors`` (weights
with metadata, for evaluate, predict and export). Every file is written atomically; a kill at any moment leaves the
previous ``last.pt`` whole.

Resuming restores the exact state: the learning rate is a function of the step, the loader resumes mid-epoch at
the batch after the checkpoint, each sample's augmentation depends only on (seed, epoch, index), and the torch RNG
(mixup, cutmix) is restored. In deterministic mode a resumed run ends with the same weights as an uninterrupted one.

The step never waits for the device: loss, accuracy counts and the finite-loss check stay on the device and are
read every ``LOG_EVERY`` steps and at checkpoints (as timm's loop does), so a GPU is never stalled by the host.
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
from .data import Loader, Preprocessing, Skipped, TransformConfig, build_dataset, build_loader, build_transform
from .errors import UserError
from .evaluate import evaluate
from .files import output_dir, pyplot, save_figure, write_json, write_text
from .labels import class_mapping
from .model import ResNet
from .optim import ModelEMA, build_optimizer, loss_fn, lr_at, mix_batch, soft_targets
from .recipes import TrainConfig, apply_overrides, run_name
from .tensorboard import Board

LOG_EVERY = 20  # optimiser steps between reads of the running loss (progress bar, finite check)


class TrainingDiverged(UserError):
    exit_code = 3


# --- set-up ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

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


def pick_device(kind: str, ddp: Dist) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, and on CPUs with bf16 instructions (AVX512-BF16, AMX), where it is several times
    faster than fp32 (docs/benchmarks.md); off on other CPUs, where oneDNN converts around every kernel."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" or (device.type == "cpu" and has_native_bf16()) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


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


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-convolution kernel (out, c, k, k) for ``in_chans`` inputs, as timm's ``adapt_input_conv`` does:
    RGB -> gray sums over the colour inputs (a gray image is R = G = B, so the response is unchanged); other
    counts repeat the kernel over the new inputs and rescale by c / in_chans to keep the activation scale."""
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = math.ceil(in_chans / c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def init_from(model: ResNet, path: str, classes: list[str], log) -> None:
    """Fine-tuning: start ``model`` from the weights file ``path``. The first convolution is adapted to the
    data's channels, and the classifier is kept where the file's class names cover the data's (rows taken by
    name, :mod:`resnet50.labels`), else reset."""
    src = weights.load(path)
    sd = dict(src.model.state_dict())
    if sd["conv1.weight"].shape[1] != model.cfg.in_chans:
        log(f"--init-weights: conv1 adapted from {sd['conv1.weight'].shape[1]} to {model.cfg.in_chans} input "
            "channel(s) (summed for gray, repeated and rescaled otherwise)")
        sd["conv1.weight"] = adapt_input_conv(sd["conv1.weight"], model.cfg.in_chans)
    fc = {k: sd.pop(k) for k in list(sd) if k.startswith("fc.")}
    try:
        rows = class_mapping(classes, src.classes, src.num_classes) if src.classes and fc else None
    except UserError:
        rows = None
    if rows is not None:
        sd.update({k: v[rows] for k, v in fc.items()})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise UserError(f"--init-weights {path} does not fit {weights.arch_name(model.cfg) or 'the model'} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); give weights of the same --arch")
    if rows is None:
        log(f"--init-weights: classifier reset to the data's {len(classes)} classes")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


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


# --- the run state and checkpoints ---------------------------------------------------------------------------

@dataclasses.dataclass
class RunState:
    """Where a run stands: exactly what ``last.pt`` holds besides the modules' own state dicts."""

    step: int = 0
    epoch: int = 0  # epochs completed
    best: float = -1.0
    history: list = dataclasses.field(default_factory=list)
    epoch_stats: list | None = None  # mid-epoch: the epoch's running [loss sum, correct, seen, skipped] so far
    loader: dict | None = None
    rng: dict | None = None
    classes: list | None = None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in d:
                setattr(self, f.name, d[f.name])


def load_checkpoint(path: str | os.PathLike, kind: str = "classifier") -> dict:
    """A run's last.pt (``path``: the file or its run folder) for resuming, checked to be a training checkpoint of
    this toolkit of ``kind`` ("classifier" or "detector"); errors are one-line UserErrors."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give a run folder or its last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many types
        raise UserError(f"{path} is not a readable training checkpoint ({type(e).__name__}); it may be "
                        "truncated") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError(f"{path} is not a training checkpoint of this toolkit (no config/model); to start from "
                        "weights use --init-weights")
    found = state.get("kind", "classifier")  # train.py's checkpoints have no "kind"; resnet50.detect.train's say so
    if found != kind:
        resume_with = {"classifier": "'resnet50 train --resume RUN'",
                       "detector": "'resnet50 detect train --resume RUN'"}.get(found, "the command that wrote it")
        raise UserError(f"{path} is a {found}'s training checkpoint, not a {kind}'s; continue it with {resume_with}")
    state["path"] = str(path)
    return state


# Options a resumed run may change: where and how long it runs, how it reads data, and where the data now is
# (a moved dataset; its classes are checked against the checkpoint's).
MAY_CHANGE = {"run.time_limit", "run.max_steps", "run.checkpoint_every", "run.out", "run.name", "data.workers",
              "data.data", "run.device", "run.threads"}


def check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    """A resumed run keeps its architecture, data and optimisation; only ``MAY_CHANGE`` may differ."""
    new = cfg.to_dict()
    for sec in ("model", "data", "optim", "run"):
        for k, v in saved.get(sec, {}).items():
            key = f"{sec}.{k}"
            nv = new[sec].get(k)
            if key not in MAY_CHANGE and _norm(nv) != _norm(v):
                flag = "--" + k.replace("_", "-")
                raise UserError(f"resuming a run with {key}={v!r}, but {flag} {nv!r} was given; drop {flag} "
                                "(the checkpoint fixes it) or start a new run")


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


def elastic_restart(cfg: TrainConfig) -> Path | None:
    """The checkpoint a worker restarted by torchrun continues from, or None on a first start.

    torchrun with its max-restarts option above 0 restarts every worker with the same command line after one fails,
    counting the restarts in ``TORCHELASTIC_RESTART_COUNT`` (torch.distributed.elastic): a restarted worker resumes
    the run folder's ``last.pt`` (atomic, so whole after any kill) exactly, or starts again when none was written
    yet. The folder must not depend on the start time: an elastic job (``TORCHELASTIC_MAX_RESTARTS`` > 0) needs
    --name."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and not cfg.run.name:
        raise UserError("torchrun with max-restarts restarts the workers, which find their run folder by name; give "
                        "--name (a restarted worker then continues its last.pt)")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    last = Path(cfg.run.out) / cfg.run.name / "last.pt"
    return last if last.exists() else None


def resume_config(path: str | os.PathLike, overrides: dict) -> tuple[TrainConfig, dict]:
    """The config of the run at ``path`` (a run folder or its last.pt) with ``overrides`` applied and checked,
    and the checkpoint. The run continues in the checkpoint's own folder, wherever it is called from; its data
    may be pointed to again (``--data``) when it has moved."""
    state = load_checkpoint(path)
    saved = TrainConfig.from_dict(state["config"])
    # --max-steps and --time-limit stop one invocation: a resumed run goes on to its end unless given them again
    cfg = apply_overrides(TrainConfig.from_dict(state["config"]), {"max_steps": 0, "time_limit": 0, **overrides})
    check_resume_config(saved.to_dict(), cfg)
    run_dir = Path(state["path"]).resolve().parent
    cfg.run.out, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg, state


@dataclasses.dataclass
class Run:
    """Everything a training run is made of once set up."""

    cfg: TrainConfig
    ddp: Dist
    device: torch.device
    data: DataBundle
    model: ResNet
    net: nn.Module  # the model as trained: DDP- and compile-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    amp_dtype: torch.dtype | None
    state: RunState
    run_dir: Path
    steps_per_epoch: int
    peak_lr: float
    log: object = print
    board: Board | None = None  # TensorBoard events (train(tensorboard=True)), main process only

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.run.channels_last else torch.contiguous_format

    @property
    def eval_model(self) -> ResNet:
        return self.ema.module if self.ema is not None else self.model

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.of(self.data.eval_transform)

    started: float = dataclasses.field(default_factory=time.perf_counter)  # when train() was called
    calibration: Calibration = dataclasses.field(default_factory=lambda: Calibration())

    @property
    def total_steps(self) -> int:
        """Optimiser steps this run takes: the time budget's, once fixed, else --epochs' worth."""
        return self.cfg.run.budget_steps or self.steps_per_epoch * self.cfg.optim.epochs

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def lr(self, step: int) -> float:
        """The schedule runs over the run's steps: --epochs, or the budget's steps once fixed."""
        o = self.cfg.optim
        if self.cfg.run.budget_steps:
            o = dataclasses.replace(o, epochs=self.cfg.run.budget_steps / self.steps_per_epoch)
        return lr_at(step, self.steps_per_epoch, o, self.peak_lr)

    def save_last(self, running: list | None = None) -> None:
        """Write last.pt (rank 0); ``running`` are the current epoch's figures when saved mid-epoch."""
        if not self.ddp.main:
            return
        self.state.loader = self.data.train_loader.state_dict()
        self.state.rng = {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        ckpt = {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, **self.state.state_dict(), "epoch_stats": running}
        with weights.atomic_path(self.run_dir / "last.pt") as tmp:
            torch.save(ckpt, tmp)

    def restore(self, checkpoint: dict) -> None:
        """Continue from ``checkpoint`` (what :meth:`save_last` wrote): weights, optimiser, scaler, EMA, run
        state, loader position and RNG states."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.state.load_state_dict(checkpoint)
        if not self.ddp.main:  # the epoch's running figures are the job's sums (EpochMeter.saved): rank 0's alone
            self.state.epoch_stats = None
        self.data.train_loader.load_state_dict(checkpoint["loader"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"])

    def save_weights(self, name: str, source: str) -> None:
        weights.save(self.run_dir / name, self.eval_model, self.data.classes, self.preprocessing, source)


def start_process(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """This process's place in the job, its device, threads, determinism and seed."""
    on_gpu = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
    ddp = setup_distributed("cuda" if on_gpu else "cpu")
    device = pick_device(cfg.run.device, ddp)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.run.seed)
    return ddp, device


def wrap(model: ResNet, cfg: TrainConfig, ddp: Dist, device: torch.device) -> nn.Module:
    """The model as trained: SyncBN, DDP and torch.compile as configured."""
    if cfg.run.sync_bn and ddp.world > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it on CPU")
    net: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cfg.run.sync_bn and ddp.world > 1 else model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.run.compile else net


def setup(cfg: TrainConfig, checkpoint: dict | None = None, log=print) -> Run:
    """Build the run ``cfg`` describes (or continue ``checkpoint``): process group, data, model, optimiser."""
    ddp, device = start_process(cfg)
    run_dir = Path(cfg.run.out) / cfg.run.name
    if ddp.main:
        output_dir(run_dir, "--out/--name")
    try:
        data = build_data(cfg, ddp.world)
    except UserError as e:
        if checkpoint is None:
            raise
        raise UserError(f"{e}; if the run's data has moved, point to it: 'resnet50 train --resume {run_dir} "
                        "--data PATH'") from e
    if checkpoint is not None and checkpoint.get("classes") not in (None, data.classes):
        raise UserError(f"the data at {cfg.data.data} has classes {data.classes[:5]}..., the run was trained on "
                        f"{checkpoint['classes'][:5]}...; point --data at the run's own dataset")
    model = cfg.model.create(num_classes=len(data.classes), in_chans=data.in_chans)
    if data.per_rank_batch == 1 and has_batchnorm(model):
        raise UserError(f"a batch of 1 image per process cannot train BatchNorm (its batch statistics need at least "
                        f"2 values per channel); raise --batch-size to at least {2 * ddp.world}")
    if cfg.model.init_weights and checkpoint is None:
        init_from(model, cfg.model.init_weights, data.classes, log if ddp.main else (lambda *a: None))
    model = model.to(device, memory_format=torch.channels_last if cfg.run.channels_last else torch.contiguous_format)
    o = cfg.optim
    peak_lr = o.lr * cfg.data.batch_size * o.accum_steps / 256
    amp_dtype = autocast_dtype(cfg.run.amp, device)
    run = Run(cfg, ddp, device, data, model, model, build_optimizer(model, o, peak_lr),
              torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
              ModelEMA(model, cfg.run.ema_decay, cfg.run.ema_every) if cfg.run.ema_decay else None, amp_dtype,
              RunState(classes=data.classes), run_dir, max(1, data.batches_per_epoch // o.accum_steps), peak_lr, log)
    if checkpoint is not None:
        run.restore(checkpoint)
    run.net = wrap(model, cfg, ddp, device)
    return run


# --- the time budget -----------------------------------------------------------------------------------------

CALIBRATION = (3, 13)  # optimiser steps: a budgeted run's speed is measured between these two (after warm-up)
# The plan assumes steps this much slower than calibrated: measured runs went on 5-8 % slower than their calibration
# steps (docs/benchmarks.md, the demo section), and a budget is a promise about the end.
BUDGET_MARGIN = 1.05
clock = time.perf_counter  # the budget's clock (a test replaces it)


class Calibration:
    """A time budget's speed measurement: it starts at the first optimiser step >= CALIBRATION[0] this process takes
    and ends CALIBRATION[1] - CALIBRATION[0] steps later (so a run resumed before its budget was fixed measures
    again); :meth:`at` returns (the step time to plan with, the clock) at its end and None before."""

    def __init__(self) -> None:
        self.start: tuple[int, float] | None = None

    def at(self, step: int) -> tuple[float, float] | None:
        if self.start is None:
            if step >= CALIBRATION[0]:
                self.start = (step, clock())
            return None
        if step - self.start[0] < CALIBRATION[1] - CALIBRATION[0]:
            return None
        now = clock()
        return (now - self.start[1]) / (step - self.start[0]) * BUDGET_MARGIN, now


def plan_budget(budget_s: float, elapsed_s: float, step: int, step_s: float, eval_s: float,
                steps_per_epoch: int, eval_every: int, max_steps: int) -> int:
    """The most optimiser steps T such that the steps still to run and the validations they imply fit in what is
    left of ``budget_s``: ``(T - step) * step_s + evals(T) * eval_s <= budget_s - elapsed_s``, at most
    ``max_steps`` (--epochs' worth), at least ``step`` (the steps already taken)."""
    left = budget_s - elapsed_s
    best = step
    for evals in range(1, math.ceil(max_steps / steps_per_epoch) + 1):
        t = min(max_steps, step + int((left - evals * eval_s) // step_s))
        if t >= step and math.ceil(math.ceil(t / steps_per_epoch) / eval_every) <= evals:
            best = max(best, t)
    return best


def calibrate(run: Run, step: int) -> None:
    """When the calibration ends, fix the run's budget_steps from the step time it measured."""
    measured = run.calibration.at(step)
    if measured is None:
        return
    fix_budget(run.cfg, run.run_dir, run.ddp, run.device, run.started, *measured, step, run.steps_per_epoch,
               run.data.val_count or 0, run.log)


def fix_budget(cfg, run_dir: Path, ddp: Dist, device: torch.device, started: float, step_s: float, now: float,
               step: int, steps_per_epoch: int, val_images: int, log, eval_extra_s: float = 0.0) -> None:
    """Fix ``cfg.run.budget_steps`` by :func:`plan_budget` (rank 0 decides, every process gets its answer), record
    it in config.json and say how long the run will take. ``cfg``: a TrainConfig or a detection config (both have
    run.time_budget, run.eval_every, run.budget_steps, data.batch_size and optim.epochs). A validation of
    ``val_images`` is estimated as a forward pass, about a third of a training step's work per image, plus
    ``eval_extra_s`` (scoring)."""
    r = cfg.run
    eval_s = val_images / cfg.data.batch_size * step_s / 3 + (eval_extra_s if val_images else 0.0)
    steps = plan_budget(r.time_budget * 60, now - started, step, step_s, eval_s, steps_per_epoch, r.eval_every,
                        steps_per_epoch * cfg.optim.epochs)
    if ddp.world > 1:
        t = torch.tensor([steps], dtype=torch.int64, device=device)
        dist.broadcast(t, 0)
        steps = int(t)
    r.budget_steps = steps
    if ddp.main:
        write_json(run_dir / "config.json", cfg.to_dict(), indent=2)
        end = time.strftime("%H:%M", time.localtime(time.time() + r.time_budget * 60 - (now - started)))
        log(f"time budget {r.time_budget:g} min: {step_s:.2f} s/step measured, so {steps} steps "
            f"({steps / steps_per_epoch:.1f} epochs); training ends about {end} (rerun exactly with "
            f"--budget-steps {steps})")


# --- one epoch -----------------------------------------------------------------------------------------------

class EpochMeter:
    """An epoch's running figures: loss sum, correct count (both on the device: no host sync per step), images
    seen, skipped samples, and the time spent waiting for data against computing."""

    def __init__(self, device: torch.device, saved: list | None) -> None:
        loss, correct, seen, skipped = (list(saved) + [0] * 4)[:4] if saved else (0.0, 0, 0, 0)
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=device)
        self.seen, self.skipped_before = int(seen), int(skipped)
        self.skipped: list[Skipped] = []
        self.bad_step = torch.tensor(-1, dtype=torch.int64, device=device)  # first step with a non-finite loss
        self.data_s = self.compute_s = 0.0
        self.start = self.mark = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        n = labels.shape[0]
        loss = loss.detach()
        finite = torch.isfinite(loss)
        self.bad_step = torch.where(finite | (self.bad_step >= 0), self.bad_step, torch.full_like(self.bad_step, step))
        self.loss += torch.where(finite, loss.double(), torch.zeros_like(self.loss)) * n
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += n

    def waited(self) -> None:
        """A batch arrived: the time since the last mark was spent waiting for data."""
        now = time.perf_counter()
        self.data_s, self.mark = self.data_s + now - self.mark, now

    def computed(self) -> None:
        now = time.perf_counter()
        self.compute_s, self.mark = self.compute_s + now - self.mark, now

    def saved(self) -> list:
        """The running [loss sum, correct, seen, skipped] for a mid-epoch checkpoint, summed over processes: the
        job's figures, which rank 0 alone carries on after a resume (:meth:`Run.restore`)."""
        stats = torch.tensor([float(self.loss), int(self.correct), self.seen,
                              self.skipped_before + len(self.skipped)], dtype=torch.float64, device=self.loss.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        loss, correct, seen, skipped = stats.tolist()
        return [loss, int(correct), int(seen), int(skipped)]

    def row(self, run: Run, epoch: int, res: int) -> dict:
        """The epoch's metrics.jsonl row, summed over processes (on the run's device: NCCL reduces CUDA tensors
        only)."""
        stats = torch.tensor([float(self.loss), int(self.correct), self.seen, self.data_s, self.compute_s,
                              self.skipped_before + len(self.skipped)], dtype=torch.float64, device=run.device)
        if run.ddp.world > 1:
            dist.all_reduce(stats)
        elapsed = time.perf_counter() - self.start
        loss, correct, seen, data_s, compute_s, skipped = stats.tolist()
        return {
            "epoch": epoch + 1, "step": run.state.step, "lr": run.lr(max(run.state.step - 1, 0)), "train_res": res,
            "train_loss": loss / max(seen, 1), "train_top1": correct / max(seen, 1), "train_images": int(seen),
            "epoch_s": elapsed, "img_s": seen / max(elapsed, 1e-9),
            # time waiting for the loader against time computing, summed over processes
            "data_s": data_s, "compute_s": compute_s, "data_share": data_s / max(data_s + compute_s, 1e-9),
            "skipped_files": int(skipped),
        }


def check_finite(run: Run, meter: EpochMeter, epoch: int) -> None:
    """Stop the run when a loss was NaN or infinite, naming the last good checkpoint (or its absence)."""
    bad = int(meter.bad_step)
    if bad < 0:
        return
    last = run.run_dir / "last.pt"
    where = f"the last good checkpoint is {last}; lower --lr or add --warmup-epochs, then continue it with " \
        f"'resnet50 train --resume {run.run_dir}' or start again" \
        if last.exists() else ("no checkpoint was written yet; lower --lr or add --warmup-epochs and start again "
                               "(--checkpoint-every N saves mid-epoch)")
    raise TrainingDiverged(f"the loss became nan at step {bad} (epoch {epoch + 1}); {where}")


def train_one_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict, bool, bool]:
    """Train one epoch (or the rest of one, after a resume); returns its statistics row, whether the run stopped
    early (``--max-steps``) and whether the epoch was completed."""
    loader = run.data.train_loader
    res = train_resolution(epoch, run.cfg)
    run.net.train()
    loader.set_epoch(epoch)
    meter = EpochMeter(run.device, run.state.epoch_stats)
    run.state.epoch_stats = None
    remaining, initial = loader.num_batches(), loader.state_dict()["consumed"] // loader.batch_size
    bar = tqdm(total=None if remaining is None else initial + remaining, initial=initial, unit="batch",
               desc=f"epoch {epoch + 1}/{run.epochs}", disable=not (progress and run.ddp.main), leave=False)
    micro, batches, stop = 0, 0, False
    # shards give ranks unequal batch counts: DDP's join lets a rank that runs out shadow the others' all-reduces
    uneven = run.ddp.world > 1 and loader.iterable and hasattr(run.net, "join")
    with run.net.join() if uneven else nullcontext():
        for images, labels, bad in loader:
            batches += 1
            meter.skipped.extend(bad)
            meter.waited()
            if labels.numel() < 2 and has_batchnorm(run.model):  # BatchNorm cannot train on one image: drop it
                meter.skipped.extend(Skipped(f"a batch at step {run.state.step}", "one image left after skipping "
                                             "unreadable files; dropped (BatchNorm needs 2)") for _ in labels)
                continue
            micro += 1
            sync = micro % run.cfg.optim.accum_steps == 0
            logits, loss, labels = _forward_backward(run, images, labels, res, sync)
            meter.add(loss, logits, labels, run.state.step)
            if sync:
                _optimizer_step(run)
                stop = _after_step(run, meter, epoch, bar)
            meter.computed()
            bar.update(1)
            if stop or (remaining is not None and batches >= remaining):
                break  # --max-steps, or (shards) the batch count the schedule was planned with
    bar.close()
    check_finite(run, meter, epoch)
    budget_spent = bool(run.cfg.run.budget_steps and run.state.step >= run.cfg.run.budget_steps)
    done = not stop or budget_spent or (remaining is not None and batches >= remaining)
    stop = stop and not budget_spent
    if done:
        loader.set_epoch(epoch + 1)
    row = meter.row(run, epoch, res)
    if meter.skipped and run.ddp.main:
        s = meter.skipped[0]
        run.log(f"epoch {epoch + 1}: skipped {row['skipped_files']} sample(s), e.g. {s.path}: {s.reason}")
    if not done:
        row["partial"] = True  # replaced by the whole epoch's row when the run is resumed
        run.state.epoch_stats = meter.saved()
    return row, stop, done


def _after_step(run: Run, meter: EpochMeter, epoch: int, bar) -> bool:
    """Every LOG_EVERY optimiser steps read the running figures (the only host sync); fix a time budget's steps;
    write mid-epoch checkpoints; returns whether ``--max-steps`` is reached."""
    step, r = run.state.step, run.cfg.run
    if r.time_budget and not r.budget_steps:
        calibrate(run, step)
    if step % LOG_EVERY == 0:
        if run.device.type == "cuda":
            torch.cuda.synchronize()  # honest timing at log points only
        check_finite(run, meter, epoch)
        bar.set_postfix(loss=f"{float(meter.loss) / max(meter.seen, 1):.3f}", lr=f"{run.lr(step):.3g}",
                        img_s=f"{meter.seen * run.ddp.world / (time.perf_counter() - meter.start):.0f}")
    if r.checkpoint_every and step % r.checkpoint_every == 0:
        check_finite(run, meter, epoch)
        run.save_last(meter.saved())
    return bool(r.max_steps and step >= r.max_steps) or bool(r.budget_steps and step >= r.budget_steps)


def _forward_backward(run: Run, images, labels, res: int, sync: bool):
    o, ddp = run.cfg.optim, run.ddp
    images = images.to(run.device, non_blocking=True)
    labels = labels.to(run.device, non_blocking=True)
    if res != images.shape[-1]:
        images = F.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    images = images.contiguous(memory_format=run.memory_format)
    targets = soft_targets(labels, len(run.data.classes), o.label_smoothing)
    images, targets = mix_batch(images, targets, o)
    lr = run.lr(run.state.step)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    no_sync = ddp.world > 1 and not sync and hasattr(run.net, "no_sync")
    with run.net.no_sync() if no_sync else nullcontext():
        with torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext():
            logits = run.net(images)
        loss = loss_fn(logits, targets, o)
        run.scaler.scale(loss / o.accum_steps).backward()
    return logits, loss, labels


def _optimizer_step(run: Run) -> None:
    if run.cfg.optim.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    if run.ema is not None:
        run.ema.update(run.model, run.state.step)


# --- evaluation, records -------------------------------------------------------------------------------------

def evaluate_and_save(run: Run, epoch: int, row: dict, progress: bool) -> None:
    """Validate (with the EMA weights when there are some), add the figures to ``row`` and write
    best.safetensors when the top-1 improved."""
    tta = "flip" if run.cfg.run.tta_flip else "none"
    val = evaluate(run.eval_model, run.data.val_loader, len(run.data.classes), tta=tta, device=run.device,
                   channels_last=run.cfg.run.channels_last, autocast_dtype=run.amp_dtype,
                   progress=progress and run.ddp.main)
    row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], val_tta=tta,
               val_model="ema" if run.ema is not None else "model")
    if run.ddp.main and val["top1"] > run.state.best:
        run.state.best = val["top1"]
        run.save_weights("best.safetensors", f"resnet50 train {run.cfg.recipe} epoch {epoch + 1}")


def record(run: Run, row: dict) -> None:
    """Append the epoch's row (replacing a partial row of the same epoch) and rewrite metrics.jsonl, curves."""
    hist = run.state.history
    if hist and hist[-1].get("partial") and hist[-1]["epoch"] == row["epoch"]:
        hist.pop()
    hist.append(row)
    if run.ddp.main:
        write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in hist))
        plot_curves(run.run_dir / "curves.png", hist)
        if run.board is not None:
            run.board.epoch(row, run.run_dir / "curves.png")
        val_txt = f", val top-1 {row['val_top1']:.2%}" if "val_top1" in row else ""
        run.log(f"epoch {row['epoch']}/{run.epochs}: train loss {row['train_loss']:.4f}{val_txt}, "
                f"{row['img_s']:.0f} img/s, data {row['data_share']:.0%} of the time")


def describe(run: Run) -> str:
    n_train = run.data.train_count
    n_train = "an unknown number of" if n_train is None else n_train
    m = run.cfg.model
    links = getattr(run.data.train_set, "walk_skipped", [])
    note = f"; skipped {len(links)} link(s) while listing files, e.g. {links[0].path}: {links[0].reason}" \
        if links else ""
    return (f"run {run.run_dir}: {m.arch} {m.variant} on {run.data.source} ({n_train} train / "
            f"{run.data.val_count if run.data.val_count is not None else '?'} val images, {len(run.data.classes)} "
            f"classes), {run.ddp.world} process(es) on {run.device}, batch {run.cfg.data.batch_size}, peak lr "
            f"{run.peak_lr:.4g}, {run.steps_per_epoch} steps/epoch{note}")


# --- the loop ------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: str | os.PathLike | dict | None = None, progress: bool = True,
          log=print, tensorboard: bool = False) -> dict:
    """Train per ``cfg``, or continue a run (``resume``: its folder, its last.pt, or the checkpoint dict that
    :func:`resume_config` returned). Returns the last epoch's metrics with ``run_dir``, ``best_val_top1`` and the
    whole ``history`` (one row per epoch). ``tensorboard``: also write each row to TensorBoard
    (``resnet50.tensorboard``)."""
    started = clock()
    checkpoint = load_checkpoint(resume) if isinstance(resume, (str, os.PathLike)) else resume
    if checkpoint is not None:
        check_resume_config(checkpoint["config"], cfg)
    if not cfg.run.name:
        cfg.run.name = run_name(cfg)
    if checkpoint is None and cfg.data.data != "embedded" and Path(cfg.data.data).exists():
        cfg.data.data = str(Path(cfg.data.data).resolve())  # the run folder can be resumed from anywhere
    run = setup(cfg, checkpoint, log)
    run.started = started
    if tensorboard and run.ddp.main:  # a resumed run's redone epochs replace those logged before
        run.board = Board(run.run_dir / "tensorboard", purge_step=run.state.epoch + 1)
    if run.ddp.main:
        write_json(run.run_dir / "config.json", cfg.to_dict(), indent=2)
        log(describe(run))
    t_start = time.perf_counter()
    epoch = run.state.epoch
    while epoch < run.epochs:  # a time budget fixes run.epochs during the first epoch
        row, stopped, done = train_one_epoch(run, epoch, progress)
        last_epoch = epoch + 1 >= run.epochs
        if (epoch + 1) % cfg.run.eval_every == 0 or last_epoch or stopped:
            evaluate_and_save(run, epoch, row, progress)
        row["elapsed_s"] = time.perf_counter() - t_start
        record(run, row)
        if done:
            run.state.epoch = epoch + 1
        run.save_last(None if done else run.state.epoch_stats)
        out_of_time = cfg.run.time_limit and time.perf_counter() - t_start > cfg.run.time_limit * 60
        if stopped or (out_of_time and not last_epoch):
            if out_of_time and run.ddp.main:
                log(f"time limit of {cfg.run.time_limit} min reached after epoch {epoch + 1}; stopping")
            break
        epoch += 1
    if run.ddp.main:
        run.save_weights("final.safetensors", f"resnet50 train {cfg.recipe} step {run.state.step}")
    if run.board is not None:
        run.board.close()
    if run.ddp.world > 1:
        dist.barrier()
    last = run.state.history[-1] if run.state.history else {}
    return {**last, "run_dir": str(run.run_dir), "best_val_top1": run.state.best,
            "total_steps": run.total_steps, "history": list(run.state.history)}


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
