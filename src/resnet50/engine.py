"""The training engine: the one loop under every task (classification, detection, localisation), task-free.

A task (``train.Classification``, ``detect.train.Detection``, ``localize.train.Localization``) hands the engine
what is its own, the :class:`Task` contract: its model, its training loader (``resnet50.data.Loader``),
``losses(run, net, batch, epoch)`` -> named loss terms and device-side counters, ``validate``, ``save_weights`` and
``plot``; ``kind`` names the checkpoint and ``best_key`` the validation figure that picks ``best.safetensors``. The engine owns the rest, so
each of these is written once (as detectron2's ``SimpleTrainer`` does with ``loss_dict = model(data)``, without its
hooks): the process group and device, AMP (bf16, fp16 with a GradScaler), SyncBN/DDP/torch.compile, EMA, gradient
accumulation, clipping, the learning-rate schedule, non-finite detection on the device, time budgets and limits,
``last.pt``, exact resume, elastic restarts, ``metrics.jsonl``, TensorBoard, best/final weights and progress.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line per epoch), ``curves.png``,
``last.pt`` (everything needed to resume: model, optimiser, scaler, EMA and the :class:`RunState`: step, epoch, best,
history, loader position, RNG states), ``best.safetensors`` and ``final.safetensors``. Every file is written
atomically; a kill at any moment leaves the previous ``last.pt`` whole.

Resuming restores the exact state: the learning rate is a function of the step, the loader resumes mid-epoch at the
batch after the checkpoint, each sample's augmentation depends only on (seed, epoch, index), and the torch RNG
(mixup, cutmix) is restored. In deterministic mode a resumed run ends with the same weights as an uninterrupted one.

The step never waits for the device: the loss terms, the task's counters and the finite-loss check stay on the
device and are read every ``LOG_EVERY`` steps and at checkpoints (as timm's loop does).

Config: any dataclass with ``recipe``, ``to_dict()``, ``data.batch_size``, ``optim`` (a ``recipes.OptimSpec``) and
``run`` (a ``recipes.RunSpec``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .cpu import has_native_bf16
from .data import Loader, Skipped
from .errors import UserError
from .files import atomic_path, output_dir, write_json, write_text
from .optim import ModelEMA, build_optimizer, lr_at
from .recipes import OptimSpec, RunSpec
from .small_maps import use_small_map_convs
from .tensorboard import Board

LOG_EVERY = 20  # optimiser steps between reads of the running figures (progress bar, finite check)

# the command that continues each kind of run (last.pt's "kind")
RESUME_COMMANDS = {"classifier": "resnet50 train", "detector": "resnet50 detect train",
                   "localizer": "resnet50 localize train"}

# Options any resumed run may change: where and how long it runs and how it reads its data. Tasks add their own.
MAY_CHANGE = frozenset({"run.time_limit", "run.max_steps", "run.checkpoint_every", "run.out", "run.name",
                        "run.device", "run.threads", "run.conv_impl", "data.workers"})


class TrainingDiverged(UserError):
    exit_code = 3


class Task(Protocol):
    """What a training task hands the engine (see the module docstring)."""

    kind: str  # "classifier" | "detector" | "localizer": last.pt's kind, and the command that resumes it
    best_key: str  # the row field best.safetensors follows ("val_top1", "val_map"); higher is better
    may_change: frozenset[str]  # "section.key" config fields a resume may change, beyond MAY_CHANGE
    model: nn.Module  # unwrapped, on the CPU; the engine moves and wraps it
    train_loader: Loader
    classes: list[str]
    val_images: int  # forward passes of an image one validation makes, TTA views included (the time budget's
    # estimate); 0 = no validation
    val_extra_s: float  # seconds a validation costs beyond its forward passes (scoring)

    find_unused: bool  # DDP: some parameters train in some epochs only (find_unused_parameters)

    def describe(self, run: Run) -> str: ...
    def train_mode(self, run: Run, epoch: int) -> None:
        """Put ``run.net`` in training mode for ``epoch`` (a task may freeze parts of it)."""
    def losses(self, run: Run, net: nn.Module, batch: Any, epoch: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(named loss terms, summed and back-propagated, each a mean over the batch; device-side counters such as
        "correct", summed over the epoch). Autocast is the task's: ``with run.autocast(): ...``."""
    def figures(self, sums: dict[str, float], seen: int, epoch: int) -> dict: ...
    def validate(self, run: Run, model: nn.Module, final: bool, progress: bool) -> dict: ...
    def save_weights(self, run: Run, path: Path, model: nn.Module, source: str) -> None: ...
    def plot(self, history: list[dict], path: Path) -> None: ...
    def summary(self, row: dict) -> str: ...


# --- the process ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (RANK set and not 0): where a command prints its result
    once, not once per process."""
    return os.environ.get("RANK", "0") == "0"


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


def start_process(r: RunSpec) -> tuple[Dist, torch.device]:
    """This process's place in the job, its device, threads, determinism and seed."""
    on_gpu = r.device == "cuda" or (r.device == "auto" and torch.cuda.is_available())
    ddp = setup_distributed("cuda" if on_gpu else "cpu")
    device = pick_device(r.device, ddp)
    if r.threads:
        torch.set_num_threads(r.threads)
    if r.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(r.seed)
    return ddp, device


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap(model: nn.Module, r: RunSpec, ddp: Dist, device: torch.device, find_unused: bool = False) -> nn.Module:
    """The model as trained: SyncBN, DDP (``find_unused``: its find_unused_parameters, for a model whose trained
    parameters change between epochs) and torch.compile as configured."""
    if r.sync_bn and ddp.world > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it on CPU")
    net: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(model) if r.sync_bn and ddp.world > 1 else model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=find_unused)
    return torch.compile(net) if r.compile else net


# --- the run state, checkpoints and resume --------------------------------------------------------------------

@dataclasses.dataclass
class RunState:
    """Where a run stands: exactly what ``last.pt`` holds besides the modules' own state dicts."""

    step: int = 0
    epoch: int = 0  # epochs completed
    best: float = -1.0
    history: list = dataclasses.field(default_factory=list)
    epoch_stats: dict | None = None  # mid-epoch: the epoch's running sums so far (EpochMeter.saved)
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
    found = state.get("kind", "classifier")  # checkpoints of classifiers written before "kind" existed have none
    if found != kind:
        command = RESUME_COMMANDS.get(found)
        resume_with = f"'{command} --resume RUN'" if command else "the command that wrote it"
        raise UserError(f"{path} is a {found}'s training checkpoint, not a {kind}'s; continue it with {resume_with}")
    state["path"] = str(path)
    return state


def config_changes(saved: dict, new: dict, may_change: frozenset[str]) -> list[tuple[str, object, object]]:
    """The ``(section.key, saved value, new value)`` of every config field that differs between two configs'
    ``to_dict()``, beyond the ``may_change`` fields (and MAY_CHANGE), the recipe's name and its description."""
    allowed, changes = MAY_CHANGE | may_change, []
    for sec, values in saved.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for k, v in items:
            key = sec if k is None else f"{sec}.{k}"
            nv = new.get(sec) if k is None else new.get(sec, {}).get(k)
            if key not in allowed and _norm(nv) != _norm(v) and sec not in ("recipe", "description"):
                changes.append((key, v, nv))
    return changes


def check_resume_config(saved: dict, new: dict, may_change: frozenset[str]) -> None:
    """A resumed run keeps its architecture, data and optimisation: only the ``section.key`` fields of
    ``may_change`` (and MAY_CHANGE) may differ between the saved config and the new one."""
    changes = config_changes(saved, new, may_change)
    if changes:
        key, v, nv = changes[0]
        name = key.split(".")[-1]
        flag = "--" + name.replace("_", "-")
        raise UserError(f"resuming a run with {name}={v!r} ({key}), but {flag} {nv!r} was given; drop "
                        f"{flag} (the checkpoint fixes it) or start a new run")


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def resume_config(path: str | os.PathLike, overrides: dict, *, kind: str, from_dict, apply_overrides,
                  may_change: frozenset[str]) -> tuple[Any, dict]:
    """The config of the run at ``path`` (a run folder or its last.pt) with ``overrides`` (flat field names)
    applied and checked, and the checkpoint. ``--max-steps`` and ``--time-limit`` stop one invocation, so a resumed
    run goes on to its end unless given them again. The run continues in the checkpoint's own folder, wherever it
    is called from."""
    state = load_checkpoint(path, kind)
    saved = from_dict(state["config"])
    cfg = apply_overrides(from_dict(state["config"]), {"max_steps": 0, "time_limit": 0, **overrides})
    check_resume_config(saved.to_dict(), cfg.to_dict(), may_change)
    run_dir = Path(state["path"]).resolve().parent
    cfg.run.out, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg, state


def elastic_restart(r: RunSpec) -> Path | None:
    """The checkpoint a worker restarted by torchrun continues from, or None on a first start.

    torchrun with its max-restarts option above 0 restarts every worker with the same command line after one fails,
    counting the restarts in ``TORCHELASTIC_RESTART_COUNT`` (torch.distributed.elastic): a restarted worker resumes
    the run folder's ``last.pt`` (atomic, so whole after any kill) exactly, or starts again when none was written
    yet. The folder must not depend on the start time: an elastic job (``TORCHELASTIC_MAX_RESTARTS`` > 0) needs
    --name."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and not r.name:
        raise UserError("torchrun with max-restarts restarts the workers, which find their run folder by name; give "
                        "--name (a restarted worker then continues its last.pt)")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    last = Path(r.out) / r.name / "last.pt"
    return last if last.exists() else None


# --- the time budget -----------------------------------------------------------------------------------------

# Optimiser steps: a budgeted run's speed is measured between these two, after warm-up. Steps 3-13 read 1.4x the
# later step time on the Zen 2 of docs/benchmarks.md (the allocator and oneDNN still warming up), which cost the demo
# 40 % of its training; 20 steps from step 5 follow the run's speed. The demo's warmup (28 steps) covers them.
CALIBRATION = (5, 25)
# The plan assumes steps this much slower than calibrated: measured runs went on 5-8 % slower than their calibration
# steps on Zen 4 and 8-14 % on Zen 2 (docs/benchmarks.md, the demo section), and a budget is a promise about the end.
BUDGET_MARGIN = 1.10
# An image's forward pass (validation, the caller's evaluation after training) as a share of its training step's
# time: a third of the work, but measured at 1 / 2.46 on Zen 2 (t10k at 138 img/s against training at 56 img/s).
FORWARD_SHARE = 1 / 2.4
# The budget is planned again once, REPLAN_STEPS steps after the first plan, from the steps in between (their
# validations taken out): the first steps run slower than the rest (oneDNN's primitive cache, the allocator, the
# loader's first epoch): on the Zen 4 of docs/benchmarks.md steps 5-25 of the classification demo took 7 % longer
# than the run's average, and with the margin the demo ended 7 min 46 s after its start on a budget of 9 minutes.
# The second measurement is of the steady state and is planned with a smaller margin; it may shorten the run as well
# as lengthen it. The steps between the two plans ran at the first plan's rates (see fix_budget).
REPLAN_STEPS = 60
REPLAN_MARGIN = 1.05
clock = time.perf_counter  # the budget's clock (a test replaces it)


class Calibration:
    """A time budget's speed measurements. The first starts at the first optimiser step >= CALIBRATION[0] this
    process takes and ends CALIBRATION[1] - CALIBRATION[0] steps later (so a run resumed before its budget was fixed
    measures again); :meth:`at` returns (the step time to plan with, the clock) at its end and None before. The
    second (:meth:`again`) runs from the first plan (:meth:`planned_at`) to REPLAN_STEPS steps later, with the
    seconds spent validating in between taken out, and is taken once."""

    def __init__(self) -> None:
        self.start: tuple[int, float] | None = None
        self.first: tuple[int, float, float] | None = None  # (step, clock, validation seconds) at the first plan

    def at(self, step: int) -> tuple[float, float] | None:
        if self.start is None:
            if step >= CALIBRATION[0]:
                self.start = (step, clock())
            return None
        if step - self.start[0] < CALIBRATION[1] - CALIBRATION[0]:
            return None
        now = clock()
        return (now - self.start[1]) / (step - self.start[0]) * BUDGET_MARGIN, now

    def planned_at(self, step: int, now: float, eval_s: float) -> None:
        self.first = (step, now, eval_s)

    def again(self, step: int, eval_s: float) -> tuple[float, float] | None:
        if self.first is None or step - self.first[0] < REPLAN_STEPS:
            return None
        (s0, t0, e0), self.first, now = self.first, None, clock()
        return (now - t0 - (eval_s - e0)) / (step - s0) * REPLAN_MARGIN, now


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


def fix_budget(run: Run, step_s: float, now: float, again: bool = False) -> None:
    """Fix ``run.cfg.run.budget_steps`` by :func:`plan_budget` (rank 0 decides, every process gets its answer),
    record it in config.json and say how long the run will take. A validation is estimated as a forward pass over
    the task's ``val_images`` at ``FORWARD_SHARE`` of a training step's time per image, plus its ``val_extra_s``; the
    ``run.budget_after_images`` forward passes the caller makes after training (the demo's test evaluation) are
    taken from the budget at the same rate. ``again``: the second plan (:class:`Calibration`). The steps between the
    two plans ran at the first plan's rates, so a rerun with the final --budget-steps has the run's length and its
    rates from the second plan on, and the same weights only when the second plan fell inside the warmup (whose
    rates do not depend on the plan)."""
    r, task = run.cfg.run, run.task
    val_images = task.val_images
    forward_s = step_s / run.cfg.data.batch_size * FORWARD_SHARE  # one image's forward pass
    eval_s = val_images * forward_s + (task.val_extra_s if val_images else 0.0)
    after_s = r.budget_after_images * forward_s
    steps = plan_budget(r.time_budget * 60 - after_s, now - run.started, run.state.step, step_s, eval_s,
                        run.steps_per_epoch, r.eval_every, run.steps_per_epoch * run.cfg.optim.epochs)
    if run.ddp.world > 1:
        t = torch.tensor([steps], dtype=torch.int64, device=run.device)
        dist.broadcast(t, 0)
        steps = int(t)
    r.budget_steps = steps
    if run.ddp.main:
        write_json(run.run_dir / "config.json", run.cfg.to_dict(), indent=2)
        end = time.strftime("%H:%M", time.localtime(time.time() + r.time_budget * 60 - (now - run.started)))
        after = f" and an evaluation of {r.budget_after_images} forward passes" if r.budget_after_images else ""
        head = f"time budget {r.time_budget:g} min: {step_s:.2f} s/step measured"
        if again:
            head = f"time budget planned again at step {run.state.step}: {step_s:.2f} s/step since the first plan"
        run.log(f"{head}, so {steps} steps ({steps / run.steps_per_epoch:.1f} epochs){after} ending about {end} "
                f"(rerun {'' if again else 'exactly '}with --budget-steps {steps})")


# --- the run -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """Everything a training run is made of once set up."""

    cfg: Any
    task: Task
    ddp: Dist
    device: torch.device
    model: nn.Module
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
    board: Board | None = None  # TensorBoard events (fit(tensorboard=True)), main process only
    started: float = dataclasses.field(default_factory=time.perf_counter)  # when training was called
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    eval_s: float = 0.0  # wall and CPU seconds spent validating, kept out of the training time
    eval_cpu_s: float = 0.0

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.run.channels_last else torch.contiguous_format

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def total_steps(self) -> int:
        """Optimiser steps this run takes: the time budget's, once fixed, else --epochs' worth."""
        return self.cfg.run.budget_steps or self.steps_per_epoch * self.cfg.optim.epochs

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def schedule(self) -> OptimSpec:
        """The optimisation spec the schedule reads: over --epochs, or over the budget's steps once fixed."""
        o = self.cfg.optim
        if self.cfg.run.budget_steps:
            o = dataclasses.replace(o, epochs=self.cfg.run.budget_steps / self.steps_per_epoch)
        return o

    def lr(self, step: int) -> float:
        return lr_at(step, self.steps_per_epoch, self.schedule(), self.peak_lr)

    def autocast(self):
        """The run's mixed-precision context (bf16 or fp16), or none."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def save_last(self, running: dict | None = None) -> None:
        """Write last.pt (rank 0); ``running`` are the current epoch's figures when saved mid-epoch."""
        if not self.ddp.main:
            return
        self.state.loader = self.task.train_loader.state_dict()
        self.state.rng = {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        ckpt = {"kind": self.task.kind, "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, **self.state.state_dict(), "epoch_stats": running}
        with atomic_path(self.run_dir / "last.pt") as tmp:
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
        self.task.train_loader.load_state_dict(checkpoint["loader"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"])

    def save_weights(self, name: str, source: str) -> None:
        self.task.save_weights(self, self.run_dir / name, self.eval_model, source)


def setup(task_factory, cfg, checkpoint: dict | None = None, log=print) -> Run:
    """Build the run ``cfg`` describes (or continue ``checkpoint``): process group, the task (its data and model,
    from ``task_factory(cfg, ddp, checkpoint, log)``), optimiser, scaler, EMA, wrapping."""
    ddp, device = start_process(cfg.run)
    run_dir = Path(cfg.run.out) / cfg.run.name
    task = task_factory(cfg, ddp, checkpoint, log if ddp.main else (lambda *a: None))
    if checkpoint is not None and checkpoint.get("classes") not in (None, list(task.classes)):
        raise UserError(f"the run's data now has classes {list(task.classes)[:5]}..., the run was trained on "
                        f"{checkpoint['classes'][:5]}...; point to the run's own dataset")
    per_rank = cfg.data.batch_size // ddp.world
    if per_rank == 1 and has_batchnorm(task.model):
        raise UserError(f"a batch of 1 image per process cannot train BatchNorm (its batch statistics need at least "
                        f"2 values per channel); raise --batch-size to at least {2 * ddp.world}")
    if ddp.main:  # after the task has checked its data: a refused run leaves no folder behind
        output_dir(run_dir, "--out/--name")
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model = task.model.to(device, memory_format=memory_format)
    o, r = cfg.optim, cfg.run
    if r.conv_impl == "auto" and device.type == "cpu":
        use_small_map_convs(model)
    peak_lr = o.lr * cfg.data.batch_size * o.accum_steps / 256
    amp_dtype = autocast_dtype(r.amp, device)
    run = Run(cfg, task, ddp, device, model, model, build_optimizer(model, o, peak_lr),
              torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
              ModelEMA(model, r.ema_decay, r.ema_every) if r.ema_decay else None, amp_dtype,
              RunState(classes=list(task.classes)), run_dir,
              max(1, task.train_loader.num_batches() // o.accum_steps), peak_lr, log)
    if checkpoint is not None:
        run.restore(checkpoint)
    run.net = wrap(model, r, ddp, device, getattr(task, "find_unused", False))
    return run


# --- one epoch -----------------------------------------------------------------------------------------------

class EpochMeter:
    """An epoch's running figures: the sum of each named loss term (times the batch) and of each counter (all on
    the device: no host sync per step), images seen, skipped samples, and the time spent waiting for data against
    computing."""

    def __init__(self, device: torch.device, saved: dict | None) -> None:
        saved = saved or {}
        self.device = device
        self.sums: dict[str, Tensor] = {k: torch.tensor(float(v), dtype=torch.float64, device=device)
                                        for k, v in saved.get("sums", {}).items()}
        self.loss_names: list[str] = list(saved.get("loss_names", []))
        self.seen, self.skipped_before = int(saved.get("seen", 0)), int(saved.get("skipped", 0))
        self.skipped: list[Skipped] = []
        self.bad_step = torch.tensor(-1, dtype=torch.int64, device=device)  # first step with a non-finite loss
        self.data_s = self.compute_s = 0.0
        self.start = self.mark = time.perf_counter()

    def add(self, losses: dict[str, Tensor], counters: dict[str, Tensor], total: Tensor, n: int, step: int) -> None:
        finite = torch.isfinite(total.detach())
        self.bad_step = torch.where(finite | (self.bad_step >= 0), self.bad_step, torch.full_like(self.bad_step, step))
        if not self.loss_names:
            self.loss_names = list(losses)
        for k, v in losses.items():
            v = torch.where(finite, v.detach().double(), torch.zeros((), dtype=torch.float64, device=v.device)) * n
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        for k, v in counters.items():
            v = v.detach().double()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.seen += n

    @property
    def loss(self) -> Tensor:
        """The summed loss of the epoch so far (a device tensor)."""
        parts = [self.sums[k] for k in self.loss_names if k in self.sums]
        return sum(parts[1:], parts[0]) if parts else torch.zeros((), dtype=torch.float64, device=self.device)

    def waited(self) -> None:
        """A batch arrived: the time since the last mark was spent waiting for data."""
        now = time.perf_counter()
        self.data_s, self.mark = self.data_s + now - self.mark, now

    def computed(self) -> None:
        now = time.perf_counter()
        self.compute_s, self.mark = self.compute_s + now - self.mark, now

    def _reduced(self, extra: list[float]) -> tuple[dict[str, float], list[float]]:
        """The sums and ``extra`` figures summed over processes (on the meter's device: NCCL reduces CUDA tensors
        only)."""
        keys = sorted(self.sums)
        values = [self.sums[k].to(torch.float64) for k in keys]
        stats = torch.stack(values + [torch.tensor(float(x), dtype=torch.float64, device=self.device) for x in extra])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        out = stats.tolist()
        return dict(zip(keys, out[:len(keys)])), out[len(keys):]

    def saved(self) -> dict:
        """The running sums for a mid-epoch checkpoint, summed over processes: the job's figures, which rank 0
        alone carries on after a resume (:meth:`Run.restore`)."""
        sums, (seen, skipped) = self._reduced([self.seen, self.skipped_before + len(self.skipped)])
        return {"sums": sums, "loss_names": self.loss_names, "seen": int(seen), "skipped": int(skipped)}

    def row(self, run: Run, epoch: int) -> dict:
        """The epoch's metrics.jsonl row, summed over processes: the engine's figures and the task's."""
        sums, (seen, data_s, compute_s, skipped) = self._reduced(
            [self.seen, self.data_s, self.compute_s, self.skipped_before + len(self.skipped)])
        elapsed = time.perf_counter() - self.start
        loss = sum(sums.get(k, 0.0) for k in self.loss_names)
        return {
            "epoch": epoch + 1, "step": run.state.step, "lr": run.lr(max(run.state.step - 1, 0)),
            "train_loss": loss / max(seen, 1), **run.task.figures(sums, int(seen), epoch),
            "train_images": int(seen), "epoch_s": elapsed, "img_s": seen / max(elapsed, 1e-9),
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
    command = RESUME_COMMANDS[run.task.kind]
    where = f"the last good checkpoint is {last}; lower --lr or add --warmup-epochs, then continue it with " \
        f"'{command} --resume {run.run_dir}' or start again" \
        if last.exists() else ("no checkpoint was written yet; lower --lr or add --warmup-epochs and start again "
                               "(--checkpoint-every N saves mid-epoch)")
    raise TrainingDiverged(f"the loss became nan at step {bad} (epoch {epoch + 1}); {where}")


def train_one_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict, bool, bool]:
    """Train one epoch (or the rest of one, after a resume); returns its statistics row, whether the run stopped
    early (``--max-steps``) and whether the epoch was completed."""
    loader = run.task.train_loader
    run.task.train_mode(run, epoch)
    loader.set_epoch(epoch)
    meter = EpochMeter(run.device, run.state.epoch_stats if isinstance(run.state.epoch_stats, dict) else None)
    run.state.epoch_stats = None
    remaining, initial = loader.num_batches(), loader.state_dict()["consumed"] // loader.batch_size
    bar = tqdm(total=None if remaining is None else initial + remaining, initial=initial, unit="batch",
               desc=f"epoch {epoch + 1}/{run.epochs}", disable=not (progress and run.ddp.main), leave=False)
    micro, batches, stop = 0, 0, False
    # shards give ranks unequal batch counts: DDP's join lets a rank that runs out shadow the others' all-reduces
    uneven = run.ddp.world > 1 and loader.iterable and hasattr(run.net, "join")
    with run.net.join() if uneven else nullcontext():
        for batch in loader:
            batches += 1
            meter.skipped.extend(batch.skipped)
            meter.waited()
            n = batch.images.shape[0]
            if n == 0 or (n < 2 and has_batchnorm(run.model)):  # nothing left, or BatchNorm cannot train on one
                meter.skipped.extend(Skipped(f"a batch at step {run.state.step}", "fewer than 2 images left after "
                                             "skipping unreadable files; dropped (BatchNorm needs 2)")
                                     for _ in range(n))
                bar.update(1)
                continue
            micro += 1
            sync = micro % run.cfg.optim.accum_steps == 0
            _forward_backward(run, batch, epoch, meter, n, sync)
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
    row = meter.row(run, epoch)
    if meter.skipped and run.ddp.main:
        s = meter.skipped[0]
        run.log(f"epoch {epoch + 1}: skipped {row['skipped_files']} sample(s), e.g. {s.path}: {s.reason}")
    if not done:
        row["partial"] = True  # replaced by the whole epoch's row when the run is resumed
        run.state.epoch_stats = meter.saved()
    return row, stop, done


def _forward_backward(run: Run, batch, epoch: int, meter: EpochMeter, n: int, sync: bool) -> None:
    lr = run.lr(run.state.step)
    for g in run.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    no_sync = run.ddp.world > 1 and not sync and hasattr(run.net, "no_sync")
    with run.net.no_sync() if no_sync else nullcontext():
        losses, counters = run.task.losses(run, run.net, batch, epoch)
        total = sum(list(losses.values())[1:], next(iter(losses.values())))
        run.scaler.scale(total / run.cfg.optim.accum_steps).backward()
    meter.add(losses, counters, total, n, run.state.step)


def _optimizer_step(run: Run) -> None:
    if run.cfg.optim.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], run.cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    if run.ema is not None:
        run.ema.update(run.model, run.state.step)


def _after_step(run: Run, meter: EpochMeter, epoch: int, bar) -> bool:
    """Every LOG_EVERY optimiser steps read the running figures (the only host sync); fix a time budget's steps;
    write mid-epoch checkpoints; returns whether ``--max-steps`` or the budget is reached."""
    step, r = run.state.step, run.cfg.run
    if r.time_budget and not r.budget_steps and (measured := run.calibration.at(step)) is not None:
        fix_budget(run, *measured)
        run.calibration.planned_at(step, measured[1], run.eval_s)  # a run that ends first never measures again
        bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
    elif (measured := run.calibration.again(step, run.eval_s)) is not None:
        fix_budget(run, *measured, again=True)
        bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
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


# --- validation, records -------------------------------------------------------------------------------------

def evaluate_and_save(run: Run, epoch: int, row: dict, final: bool, progress: bool) -> None:
    """Validate (with the EMA weights when there are some), add the task's figures to ``row`` and write
    best.safetensors when its ``best_key`` improved."""
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    val = run.task.validate(run, run.eval_model, final, progress and run.ddp.main)
    run.eval_s += time.perf_counter() - t_wall
    run.eval_cpu_s += time.process_time() - t_cpu
    if not val:
        return
    row.update(val, val_s=time.perf_counter() - t_wall)
    key = run.task.best_key
    if run.ddp.main and row.get(key) is not None and row[key] > run.state.best:  # None: undefined (no boxes)
        run.state.best = row[key]
        run.save_weights("best.safetensors", f"{RESUME_COMMANDS[run.task.kind]} {run.cfg.recipe} epoch {epoch + 1}")


def record(run: Run, row: dict) -> None:
    """Append the epoch's row (replacing a partial row of the same epoch) and rewrite metrics.jsonl, curves."""
    hist = run.state.history
    if hist and hist[-1].get("partial") and hist[-1]["epoch"] == row["epoch"]:
        hist.pop()
    hist.append(row)
    if run.ddp.main:
        write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in hist))
        run.task.plot(hist, run.run_dir / "curves.png")
        if run.board is not None:
            run.board.epoch(row, run.run_dir / "curves.png")
        run.log(f"epoch {row['epoch']}/{run.epochs}: {run.task.summary(row)}")


# --- the loop ------------------------------------------------------------------------------------------------

def fit(task_factory, cfg, checkpoint: dict | None = None, progress: bool = True, log=print,
        tensorboard: bool = False) -> tuple[dict, Task]:
    """Train the task ``task_factory(cfg, ddp, checkpoint, log)`` builds per ``cfg``, or continue ``checkpoint``
    (what :func:`load_checkpoint` read; a time budget's fixed steps are taken from it when ``cfg`` has none).
    Returns the last epoch's row with ``run_dir``, ``best`` (the best ``best_key``), ``total_steps``, the whole
    ``history``, and ``train_seconds`` / ``train_cpu_seconds`` (training without validation; the CPU time of all
    threads says what the run cost on shared cores); and the task, for what it keeps of the run (a last
    validation's full figures, say)."""
    started, cpu_start = clock(), time.process_time()
    if checkpoint is not None:
        if not cfg.run.budget_steps:  # a budgeted run resumes with the steps it fixed
            cfg.run.budget_steps = checkpoint["config"].get("run", {}).get("budget_steps", 0)
        check_resume_config(checkpoint["config"], cfg.to_dict(), task_factory.may_change)
    run = setup(task_factory, cfg, checkpoint, log)
    run.started = started
    if tensorboard and run.ddp.main:  # a resumed run's redone epochs replace those logged before
        run.board = Board(run.run_dir / "tensorboard", purge_step=run.state.epoch + 1)
    if run.ddp.main:
        write_json(run.run_dir / "config.json", cfg.to_dict(), indent=2)
        log(run.task.describe(run))
    t_start = time.perf_counter()
    epoch = run.state.epoch
    while epoch < run.epochs:  # a time budget fixes run.epochs during the first epoch
        row, stopped, done = train_one_epoch(run, epoch, progress)
        last_epoch = epoch + 1 >= run.epochs
        out_of_time = bool(cfg.run.time_limit) and time.perf_counter() - t_start > cfg.run.time_limit * 60
        if (epoch + 1) % cfg.run.eval_every == 0 or last_epoch or stopped or out_of_time:
            evaluate_and_save(run, epoch, row, last_epoch or stopped or out_of_time, progress)
        row["elapsed_s"] = time.perf_counter() - t_start
        row["train_s"] = row["elapsed_s"] - run.eval_s
        row["train_cpu_s"] = time.process_time() - cpu_start - run.eval_cpu_s
        record(run, row)
        if done:
            run.state.epoch = epoch + 1
        run.save_last(None if done else run.state.epoch_stats)
        if stopped or (out_of_time and not last_epoch):
            if out_of_time and run.ddp.main:
                log(f"time limit of {cfg.run.time_limit} min reached after epoch {epoch + 1}; stopping")
            break
        epoch += 1
    if run.ddp.main:
        run.save_weights("final.safetensors", f"{RESUME_COMMANDS[run.task.kind]} {cfg.recipe} step {run.state.step}")
    if run.board is not None:
        run.board.close()
    if run.ddp.world > 1:
        dist.barrier()
    last = run.state.history[-1] if run.state.history else {}
    return {**last, "run_dir": str(run.run_dir), "best": run.state.best, "total_steps": run.total_steps,
            "history": list(run.state.history), "train_seconds": time.perf_counter() - t_start - run.eval_s,
            "train_cpu_seconds": time.process_time() - cpu_start - run.eval_cpu_s}, run.task
