"""The transfer experiment: what starting from pretrained weights buys on few labelled images of new classes.

Pretrain ResNet-50 v1.5 on five Fashion-MNIST classes (T-shirt/top, Trouser, Pullover, Dress, Coat; the embedded
train split, validated on the embedded val split), or take a checkpoint given (a torchvision-layout ImageNet one
where there is one), then learn the other five (Sandal, Shirt, Sneaker, Bag, Ankle boot) from k labelled images per
class (k = 10, 50, 250, drawn by seed from the embedded train split) four ways:

    finetune      the ``finetune`` recipe from the pretrained weights (head first, then discriminative rates)
    linear-probe  the ``linear-probe`` recipe: a linear classifier on the frozen pretrained features
    knn           a k-nearest-neighbour vote (``embed.knn_predict``, cosine, 20 neighbours or fewer) on the frozen
                  pretrained features of the k-shot images
    scratch       the ``demo`` recipe from random weights

each scored by top-1 on those five classes of the embedded validation split (about 1,000 images; never trained
on), validated once, at its end. Every trained run takes the same number of optimiser steps (``steps``), at the
demo's 48 px, and its recipe's peak learning rate, or with ``lr_find`` the range test's suggestion on its own k-shot
training set (``resnet50.lr_find``; the scored images play no part). The figures are
medians over ``seeds`` (a seed draws the k-shot images and initialises the run); ``transfer.png`` plots accuracy
against k, ``transfer.json`` keeps every run.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from . import weights
from .data import FASHION_MNIST_CLASSES, build_dataset, embedded_dataset
from .data.transforms import eval_transform
from .errors import UserError
from .evaluate import knn_score
from .files import output_dir, pyplot, save_figure, write_json
from .lr_find import auto_lr
from .recipes import resolve
from .train import train

SOURCE = FASHION_MNIST_CLASSES[:5]
TARGET = FASHION_MNIST_CLASSES[5:]
METHODS = ("finetune", "linear-probe", "knn", "scratch")
# the demo's shapes for every run; and the pad-and-crop translation (4 px), which the demo recipe drops for its
# short budgets but which few-shot runs, seeing each image hundreds of times, need
SHARED = {"image_size": 48, "crop_pct": 1.0, "pad": 4, "workers": 0}
KNN_K = 20
# a few-shot training set is written this many times over (copies of each file) so that an epoch has about
# STEPS_PER_EPOCH optimiser steps: 50 images at batch 25 would make 150 two-step epochs, each with its validation
# (1,000 images) and its last.pt, ten times the training's own time. Same steps, same images, fewer epochs.
STEPS_PER_EPOCH = 30


def _folder_name(name: str) -> str:
    return name.replace("/", "_")


def write_split(root: Path, split: str, classes, per_class: int | None = None, seed: int = 0,
                repeats: int = 1) -> Path:
    """The embedded ``split``'s images of ``classes`` as class folders under ``root`` (``per_class`` of each, drawn
    by ``seed``, or all), each written ``repeats`` times (``NNNNN-rJ.png``: the same image, augmented afresh each
    time it is read); returns ``root``."""
    ds = embedded_dataset(split)
    rng = np.random.default_rng(seed)
    targets = np.asarray(ds.targets)
    for name in classes:
        idx = np.flatnonzero(targets == FASHION_MNIST_CLASSES.index(name))
        if per_class is not None:
            if per_class > len(idx):
                raise UserError(f"k = {per_class} exceeds the {len(idx)} {name} images of the embedded {split} split")
            idx = rng.choice(idx, per_class, replace=False)
        folder = root / _folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            image = Image.fromarray(ds.images[i])
            for j in range(repeats):
                image.save(folder / (f"{int(i):05d}.png" if repeats == 1 else f"{int(i):05d}-r{j}.png"))
    return root


def pretrain(out: Path, epochs: int, progress: bool, log) -> str:
    """The demo recipe on the five source classes; returns its best weights' path."""
    root = out / "source"
    write_split(root / "train", "train", SOURCE)
    write_split(root / "val", "val", SOURCE)
    cfg = resolve("demo", {**SHARED, "data": str(root), "out": str(out), "name": "pretrain", "epochs": epochs})
    res = train(cfg, progress=progress, log=log)
    log(f"pretrained on {', '.join(SOURCE)}: val top-1 {res['best_val_top1']:.2%}")
    return str(Path(res["run_dir"]) / "best.safetensors")


def run_method(method: str, data: Path, pretrained: str, out: Path, name: str, steps: int, seed: int,
               n_train: int, progress: bool, arch: str = "resnet50", overrides: dict | None = None,
               repeats: int = 1, lr_find: bool = False) -> tuple[float, float | None]:
    """One method's top-1 on the target classes' validation images and its peak rate per 256 images (None for
    k-NN); ``data`` holds ``n_train`` distinct images, each ``repeats`` times; ``lr_find``: the rate from the range
    test on ``data``'s training images."""
    if method == "knn":
        ckpt = weights.load(pretrained)
        gallery = build_dataset(str(data), "train", in_chans=ckpt.model.cfg.in_chans)
        queries = build_dataset(str(data), "val", in_chans=ckpt.model.cfg.in_chans)
        transform = eval_transform(ckpt.preprocessing.for_channels(ckpt.model.cfg.in_chans), ckpt.model.cfg.in_chans)
        return knn_score(ckpt.model.eval(), gallery, queries, transform, min(KNN_K, n_train),
                         progress=False)["top1"], None
    batch = min(32, max(2, n_train // 2))
    epochs = max(1, math.ceil(steps / (n_train * repeats // batch)))
    over = {**SHARED, "arch": arch, **(overrides or {}), "data": str(data), "out": str(out), "name": name,
            "batch_size": batch, "epochs": epochs, "max_steps": steps, "seed": seed,
            "warmup_epochs": min(0.3 * epochs, 2.0), "eval_every": epochs}
    if method != "scratch":
        over["init_weights"] = pretrained
    if method == "finetune":
        over["freeze_epochs"] = max(1, epochs // 8)  # about an eighth of the run with the head alone
    recipe = {"finetune": "finetune", "linear-probe": "linear-probe", "scratch": "demo"}[method]
    if lr_find:
        over["lr"] = auto_lr(resolve(recipe, {**over, "name": name + "-find"}), progress=False, log=lambda *a: None)
    cfg = resolve(recipe, over)
    res = train(cfg, progress=progress, log=lambda *a: None)
    return res["val_top1"], cfg.optim.lr  # its one validation (a best of several: chosen on scored images)


def transfer(out: str = "runs/transfer", ks=(10, 50, 250), seeds: int = 3, pretrained: str | None = None,
             steps: int = 300, pretrain_epochs: int = 4, methods=METHODS, progress: bool = True, log=print,
             overrides: dict | None = None, lr_find: bool = False) -> dict:
    """Run the experiment (module docstring). ``overrides``: TrainConfig fields for every trained run (the
    architecture is the pretrained weights'); ``lr_find``: each trained run's rate from the range test on its
    training images. Returns per method and k the median top-1 and every seed's (with its rate)."""
    if lr_find and "lr" in (overrides or {}):
        raise UserError("give either --lr-find or --lr, not both: --lr-find picks each run's rate")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or seeds < 1 or steps < 1 or not ks or min(ks) < 1:
        raise UserError(f"transfer needs methods among {', '.join(METHODS)} (not {unknown}), seeds >= 1, steps >= 1 "
                        "and k >= 1")
    arch = None
    if pretrained is not None:
        weights.check_source(pretrained)
        arch = weights.load(pretrained).arch  # read before anything is written: a bad file is a one-line error
    root = Path(out)
    output_dir(root)
    if pretrained is None:
        pretrained = pretrain(root, pretrain_epochs, progress, log)
        arch = weights.load(pretrained).arch  # scratch runs train the same network
    val = root / "target-val"
    if not val.exists():
        write_split(val, "val", TARGET)
    runs = []
    for k in ks:
        for seed in range(seeds):
            batch = min(32, max(2, 5 * k // 2))  # run_method's
            repeats = max(1, math.ceil(STEPS_PER_EPOCH * batch / (5 * k)))
            folders = {}
            for r in {1, repeats}:
                data = folders[r] = root / (f"k{k}-seed{seed}" + (f"-x{r}" if r > 1 else ""))
                write_split(data / "train", "train", TARGET, per_class=k, seed=seed, repeats=r)
                if not (data / "val").exists():
                    (data / "val").symlink_to(val.resolve(), target_is_directory=True)
            for method in methods:
                r = 1 if method == "knn" else repeats  # k-NN votes over the distinct images
                top1, lr = run_method(method, folders[r], pretrained, root / "runs", f"{method}-k{k}-seed{seed}",
                                      steps, seed, 5 * k, progress, arch, overrides, r, lr_find)
                runs.append({"method": method, "k": k, "seed": seed, "top1": top1, "lr_per_256": lr})
                log(f"k = {k:>3}, seed {seed}: {method:<12} top-1 {top1:.2%}" +
                    (f" (lr {lr:.3g} per 256)" if lr is not None else ""))
    table = {m: {k: statistics.median(r["top1"] for r in runs if r["method"] == m and r["k"] == k) for k in ks}
             for m in methods}
    plot = root / "transfer.png"
    _plot(table, ks, seeds, plot)
    result = {"pretrained": pretrained, "ks": list(ks), "seeds": seeds, "steps": steps, "lr_find": lr_find,
              "median_top1": table,
              "runs": runs, "plot": str(plot), "target_classes": list(TARGET), "source_classes": list(SOURCE)}
    write_json(root / "transfer.json", result, indent=2)
    return result


def _plot(table: dict, ks, seeds: int, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, row in table.items():
        ax.plot(list(ks), [100 * row[k] for k in ks], "o-", lw=2, label=method)
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set(xlabel="labelled images per class (k)", ylabel="top-1 on the 5 new classes (%)",
           title=f"Transfer to Sandal, Shirt, Sneaker, Bag, Ankle boot (median of {seeds} seed(s))")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
