"""The paper's experiments, run with the toolkit's own training loop.

degradation (He et al. 2015, Figures 1 and 6): plain nets get worse as they get deeper, in training error as well
as test error, so the cause is optimisation, not overfitting; the same nets with identity shortcuts (option A) get
better with depth. CIFAR-style nets of depth 6n+2, trained with the section 4.2 recipe scaled to a few epochs:
SGD momentum 0.9, lr 0.1 per 128 images (0.2 per 256, as ``lr`` counts it) divided by 10 at 50 % and 75 % of
training, weight decay 1e-4; a linear warmup over the first half epoch for every net (the paper warms up only its
110-layer net, at lr 0.01 for about 400 steps; in a few-epoch run the 56-layer nets otherwise spend their first
epoch above chance-level loss).

Each net trains in its own run folder, ``<out>/<arch>``; a folder that already holds a run of the same settings
(its last.pt) is continued exactly where it stopped, or reused when finished, so an interrupted experiment loses
only the epoch it was in, and the nets may be trained apart (``only``, in parallel processes) and drawn together.
"""

from __future__ import annotations

from pathlib import Path

from . import engine
from .errors import UserError
from .files import output_dir, pyplot, save_figure, write_json
from .model import ARCHS
from .recipes import DataSpec, ModelSpec, OptimSpec, RunSpec, TrainConfig, apply_overrides, validate
from .tensorboard import Board
from .train import data_as_recorded, train


def degradation_config(arch: str, data: str, epochs: int, batch_size: int, lr: float, out: str, max_steps: int = 0,
                       seed: int = 0, warmup_epochs: float = 0.5) -> TrainConfig:
    cfg = TrainConfig(
        recipe="degradation", description=f"He et al. Fig. 6: {arch}",
        model=ModelSpec(arch=arch),
        data=DataSpec(data=data, image_size=32, crop_pct=0, batch_size=batch_size, workers=0, train_crop="pad"),
        optim=OptimSpec(lr=lr, momentum=0.9, weight_decay=1e-4, schedule="step",
                        milestones=(max(1, epochs // 2), max(1, (3 * epochs) // 4)), epochs=epochs,
                        warmup_epochs=warmup_epochs),
        run=RunSpec(out=out, name=arch, seed=seed, max_steps=max_steps),
    )
    validate(cfg)
    return cfg


KINDS = ("plain", "resnet")


def degradation(data: str = "embedded", depths: list[int] = (20, 56), *, epochs: int = 8, batch_size: int = 128,
                lr: float = 0.2, warmup_epochs: float = 0.5, out: str = "runs/degradation", max_steps: int = 0,
                progress: bool = True, overrides: dict | None = None, tensorboard: bool = False,
                only: tuple[str, ...] = ()) -> dict:
    """Train plain-d and resnet-d for each depth (``only``: just these of them, by name, "plain56" or "resnet20";
    default all); plot training (dashed) and validation (solid) error curves of the nets trained or found. A net
    whose folder ``<out>/<arch>`` holds a run of these settings is continued or, finished, reused (see the module's
    note; each run's ``epochs_found`` says how many epochs were found done). ``overrides``: other TrainConfig
    fields, by name, applied to every net (not the architecture or run name, which the experiment sets per net).
    ``tensorboard``: each net's run writes TensorBoard events (its ``<out>/<arch>/tensorboard``), and the
    comparison plot goes to ``<out>/tensorboard``.

    Errors: ``UserError`` for a depth that is not 6n+2, a name in ``only`` outside the depths' nets, or a folder
    holding a run of other settings."""
    fixed = sorted(set(overrides or {}) & {"arch", "name"})
    if fixed:
        raise UserError(f"the experiment sets {' and '.join(fixed)} for each net itself; drop "
                        + " ".join("--" + k for k in fixed))
    for d in depths:
        if (d - 2) % 6 or d < 8:
            raise UserError(f"depth {d} is not 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); choose CIFAR-style depths")
    grid = [f"{kind}{d}" for kind in KINDS for d in depths]
    unknown = [n for n in only if n not in grid]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not among the nets of depths {','.join(map(str, depths))}; choose "
                        f"from {', '.join(grid)}")
    data = data_as_recorded(data)  # so a rerun from elsewhere finds the same runs
    nets = []  # every net's config and earlier run, all checked before any trains
    for kind in KINDS:
        for d in (d for d in depths if not only or f"{kind}{d}" in only):
            arch = f"{kind}{d}_cifar"
            if arch not in ARCHS:
                raise UserError(f"no {arch}; available depths: 20, 32, 44, 56, 110")
            cfg = apply_overrides(degradation_config(arch, data, epochs, batch_size, lr, out, max_steps,
                                                     warmup_epochs=warmup_epochs), overrides)
            nets.append((kind, d, cfg, _earlier_run(cfg)))
    output_dir(out)
    runs = []
    for kind, d, cfg, earlier in nets:
        hist = train(cfg, earlier, progress=progress, log=lambda *a: None, tensorboard=tensorboard)["history"]
        runs.append({"arch": cfg.model.arch, "kind": kind, "depth": d, "history": hist,
                     "epochs_found": earlier["epoch"] if earlier else 0,
                     "train_error": 1 - hist[-1]["train_top1"], "val_error": 1 - hist[-1]["val_top1"]})
    plot = Path(out) / "degradation.png"
    _plot(runs, plot)
    if tensorboard:
        board = Board(Path(out) / "tensorboard")
        board.image("degradation", plot, 0)
        board.close()
    result = {"runs": [{k: v for k, v in r.items() if k != "history"} for r in runs], "plot": str(plot),
              "epochs": epochs, "warmup_epochs": warmup_epochs, "lr_per_256": lr, "data": data}
    write_json(Path(out) / "degradation.json", {**result, "histories": {r["arch"]: r["history"] for r in runs}})
    return result


def _earlier_run(cfg: TrainConfig) -> dict | None:
    """The checkpoint of this net's run in its folder, to continue or reuse, or None when there is none yet.
    Errors: ``UserError`` when that run has other settings (``engine.config_changes``)."""
    last = Path(cfg.run.out) / cfg.run.name / "last.pt"
    if not last.is_file():
        return None
    checkpoint = engine.load_checkpoint(last)
    changes = engine.config_changes(checkpoint["config"], cfg.to_dict(), frozenset())
    if changes:
        said = ", ".join(f"{key} {v!r} there, {nv!r} now" for key, v, nv in changes[:3])
        raise UserError(f"{last.parent} holds a {cfg.run.name} run of other settings ({said}); choose another "
                        "--out, or delete that folder to train the net again")
    return checkpoint


def _plot(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    kinds = [k for k in KINDS if any(r["kind"] == k for r in runs)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, kind in zip(axes, kinds):
        for r in (r for r in runs if r["kind"] == kind):
            ep = [h["epoch"] for h in r["history"]]
            line, = ax.plot(ep, [100 * (1 - h["val_top1"]) for h in r["history"]], lw=2,
                            label=f"{kind}-{r['depth']} val")
            ax.plot(ep, [100 * (1 - h["train_top1"]) for h in r["history"]], ls="--", color=line.get_color(),
                    label=f"{kind}-{r['depth']} train")
        ax.set(title="plain nets" if kind == "plain" else "ResNets (option A)", xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    # as the paper's Fig. 6 (0-20 %): the first epochs' near-chance errors run off the top, so the gaps at the end,
    # a point or less between some nets, stay readable
    axes[0].set_ylim(0, max(30.0, 150 * max(max(r["train_error"], r["val_error"]) for r in runs)))
    depths = sorted({r["depth"] for r in runs})
    fig.suptitle(f"Plain vs residual nets of depth {', '.join(map(str, depths))}: training (dashed) and validation "
                 "(solid) error, as in He et al. Fig. 6")
    fig.tight_layout()
    save_figure(fig, path)
