"""BAS: weakly supervised localisation by background activation suppression (Wu, Zhai, Cao, "Background Activation
Suppression for Weakly Supervised Object Localization", CVPR 2022).

A generator reads a classifier's C3 and C4 maps and draws, per class, a foreground map ``M`` in [0, 1] at stride 8.
It learns from class labels only, with the classifier held fixed, by three terms (the paper's section 3):

- **background activation** ``S_bg / S``: ``S`` is the true class's activation over the whole image (the mean of
  its ReLU'd class-activation map, CAM, on C5) and ``S_bg`` the same on the background image, the input with ``M``
  upsampled to its pixels and blended towards black (:func:`erase`): what the classifier still sees of the class
  once the foreground is erased. Activation, not cross-entropy, is the paper's point: cross-entropy saturates once a
  part of the object is kept, the activation keeps falling until the whole object is covered. Ratios >= 1 are cut
  to 1 (the paper sets them to zero: either way they carry no gradient);
- **area** ``mean(M)`` times ``area_weight``: the smallest map that suppresses the background's activation;
- **foreground guidance**: cross-entropy of the classifier on the foreground image (the complement: ``M`` keeps
  the input, the rest is black; weight 0.5, as the paper's ResNet-50), so that the foreground alone tells the class.

Differences from the paper, each for a reason: the classifier is not trained with the generator (it is given,
trained on the same images with labels only, and stays exactly as it was: its top-1 is the classifier's); the
generator reads C3 (stride 8) and C4 upsampled onto it instead of C4 at stride 8 from a dilated layer3, so that its
map is at stride 8 with the classifier unchanged; and the erasing happens on the input pixels, not on the
features. Erasing on features was tried first and measured (docs/benchmarks.md, issue 22): with the true box
erased, a C4 feature map still carries 57-60 % of the class's activation (its cells outside the box see the item
through their receptive fields), the input image 8 % (plain scenes) to 24 % (cluttered); a generator trained
against C4 erasing drew maps shifted up and left of the items, GT-known 30-33 %.

At inference the map of the predicted class (top-1 localisation) or of the true class (GT-known) is upsampled to
the input, thresholded at a fraction of its maximum chosen on a small held-out set with boxes (Choe et al. 2020),
and boxed around its largest 8-connected region (``wsol.map_boxes``).

Shapes: images (N, C, S, S) normalised; C3 (N, 512, S/8, S/8), C4 (N, 1024, S/16, S/16) for ResNet-50; maps
(N, K, S/8, S/8).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..cam import upsample_map
from ..detect.coco import CocoDataset, make_batch
from ..engine import autocast_dtype
from ..errors import UserError
from ..files import output_dir, pyplot, save_figure, write_json
from ..model import ResNet
from ..weights import read_safetensors, write_safetensors
from .train import single_objects
from .wsol import (_batches, _iou, _normalise, choose_threshold, classifier_of, heat_offsets, loc_figures, map_boxes,
                   offset_summary, plot_offsets, write_pseudo_boxes)

FOREGROUND_WEIGHT = 0.5  # the paper's ResNet-50 weight of the foreground cross-entropy
AREA_WEIGHT = 1.5  # the paper uses 0.7-1.5 by backbone; 1.5 of 0.6, 1.0, 1.5 on held-out scenes (docs/benchmarks.md)
C3_STRIDE = 8
GENERATOR_FORMAT = "resnet50-bas-generator"
BAS_STEPS, BAS_BATCH, BAS_LR = 200, 32, 1e-3  # 200 steps (7.5 min at 128 px, 2 Zen 4 cores): 800 were no better
# on the held-out scenes (docs/benchmarks.md)


class ForegroundGenerator(nn.Module):
    """(C3 (N, c3, h, w), C4 (N, c4, h/2, w/2)) -> per-class foreground maps (N, K, h, w) in [0, 1]: C4 upsampled
    onto C3's grid (each C4 cell on the C3 cell at its centre), the two concatenated, a 1x1 and a 3x3 convolution
    with BatchNorm and ReLU to ``width`` channels, a 3x3 convolution to K maps, a sigmoid."""

    def __init__(self, c3: int, c4: int, num_classes: int, width: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c3 + c4, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, c3: Tensor, c4: Tensor) -> Tensor:
        n, c, h, w = c4.shape
        up = upsample_map(c4.float().reshape(n * c, h, w), tuple(c3.shape[-2:]), 2).reshape(n, c, *c3.shape[-2:])
        return torch.sigmoid(self.out(self.body(torch.cat([c3.float(), up], 1))).float())


@torch.no_grad()
def classifier_maps(net: ResNet, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(C3, C4, C5) of a fixed classifier ``net`` (eval mode) for normalised images ``x``."""
    x = net.stem(x)
    c3 = net.layer2(net.layer1(x))
    c4 = net.layer3(c3)
    return c3, c4, net.layer4(c4)


def class_activation(net: ResNet, c5: Tensor, labels: Tensor) -> Tensor:
    """The activation of class ``labels`` (N,): the mean over positions of its ReLU'd CAM on ``c5``, (N,)."""
    fc = net.get_classifier()
    cam = torch.einsum("nc,nchw->nhw", fc.weight[labels].float(), c5.float()) + fc.bias[labels].float()[:, None, None]
    return F.relu(cam).mean((1, 2))


def erase(x: Tensor, m: Tensor, fill: Tensor) -> tuple[Tensor, Tensor]:
    """(the background image: ``x`` with the foreground map ``m`` (N, h, w, stride 8) upsampled to its pixels and
    blended towards ``fill`` (C,), the normalised value of black; the foreground image: the complement)."""
    mp = upsample_map(m.float(), tuple(x.shape[-2:]), C3_STRIDE)[:, None].to(x.dtype)
    f = fill.to(x.dtype).reshape(1, -1, 1, 1)
    return x * (1 - mp) + f * mp, x * mp + f * (1 - mp)


def bas_losses(net: ResNet, gen: ForegroundGenerator, x: Tensor, labels: Tensor, fill: Tensor, area_weight: float,
               foreground_weight: float = FOREGROUND_WEIGHT, autocast=None) -> dict[str, Tensor]:
    """The three terms of the module docstring for a batch of normalised images ``x`` (N, C, S, S) with labels
    (N,); ``fill`` (C,) the normalised value of a black pixel; the classifier ``net`` fixed (no gradient reaches
    its weights)."""
    ctx = autocast if autocast is not None else torch.autocast(x.device.type, enabled=False)
    with ctx:
        c3, c4, c5 = classifier_maps(net, x)
        full = class_activation(net, c5, labels)
        maps = gen(c3, c4)
        m = maps[torch.arange(len(labels), device=labels.device), labels]
        bg, fg = erase(x, m, fill)
        ratio = (class_activation(net, net.forward_features(bg), labels) / full.clamp(min=1e-6)).clamp(max=1.0)
        ce = F.cross_entropy(net(fg).float(), labels)
    return {"background": ratio.mean(), "area": area_weight * m.float().mean(), "foreground": foreground_weight * ce}


def train_generator(net: ResNet, gen: ForegroundGenerator, batches, fill: Tensor, steps: int, lr: float,
                    area_weight: float, foreground_weight: float = FOREGROUND_WEIGHT, autocast=None,
                    progress: bool = False, every: int = 25) -> list[dict]:
    """AdamW (weight decay 1e-4) at ``lr``, cosine to zero over ``steps`` batches of (normalised images, labels)
    from the iterable ``batches``; ``net`` stays fixed in eval mode. Returns the mean terms every ``every`` steps
    (``step``, ``background``, ``area``, ``foreground``, ``seconds``)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    gen.train()
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0, history, run = time.perf_counter(), [], {}
    bar = tqdm(total=steps, desc="BAS generator", unit="step", disable=not progress, leave=False)
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break
        terms = bas_losses(net, gen, x, y, fill, area_weight, foreground_weight, autocast)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise UserError(f"the BAS loss became {float(loss)} at step {step + 1}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in terms.items():
            run[k] = run.get(k, 0.0) + float(v.detach())
        bar.update(1)
        if (step + 1) % every == 0 or step + 1 == steps:
            n = (step % every) + 1
            history.append({"step": step + 1, **{k: v / n for k, v in run.items()},
                            "seconds": time.perf_counter() - t0})
            bar.set_postfix(background=f"{history[-1]['background']:.3f}", area=f"{history[-1]['area']:.3f}")
            run = {}
    bar.close()
    return history


@torch.no_grad()
def generator_maps(net: ResNet, gen: ForegroundGenerator, x: Tensor, labels: Tensor, autocast=None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(the map of the predicted class (N, h, w), of ``labels``' class (N, h, w), the logits (N, K))."""
    gen.eval()
    ctx = autocast if autocast is not None else torch.autocast(x.device.type, enabled=False)
    with ctx:
        c3, c4, c5 = classifier_maps(net, x)
        logits = net.forward_head(c5).float()
        maps = gen(c3, c4).float()
    idx = torch.arange(len(x))
    return maps[idx, logits.argmax(1)], maps[idx, labels], logits


def _training_batches(ds: CocoDataset, size: int, batch_size: int, mean, std, seed: int):
    """Endless shuffled batches (normalised images, labels) of ``ds``, each image mirrored with probability 0.5."""
    rng = random.Random(seed)
    while True:
        order, yielded = list(range(len(ds))), 0
        rng.shuffle(order)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s:s + batch_size]
            b = make_batch(ds, idx, size, [rng.random() < 0.5 for _ in idx])
            if len(b.image_ids) >= 2:
                yielded += 1
                yield _normalise(b.images, mean, std), b.labels[:, 0]
        if not yielded:  # every image unreadable: an endless loop otherwise
            raise UserError(f"no batch of 2 or more readable images in {ds.json_path} (its image files are missing "
                            "or cannot be decoded); check the folder or write it again")


def all_maps(net: ResNet, gen: ForegroundGenerator, ds: CocoDataset, size: int, mean, std, autocast=None,
             batch_size: int = 64, progress: bool = False) -> dict:
    """:func:`generator_maps` over every image of ``ds``, with the true boxes (read only to score), labels,
    letterbox scales and COCO ids."""
    keys = ("pred_maps", "true_maps", "logits", "labels", "gt")
    out: dict = {k: [] for k in keys} | {"scales": [], "image_ids": []}
    for batch in _batches(ds, size, batch_size, progress, "BAS maps"):
        y = batch.labels[:, 0]
        pred, true, logits = generator_maps(net, gen, _normalise(batch.images, mean, std), y, autocast)
        for k, v in zip(keys, (pred, true, logits, y, batch.boxes[:, 0])):
            out[k].append(v)
        out["scales"] += batch.scales
        out["image_ids"] += batch.image_ids
    if not out["logits"]:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
    return {k: (torch.cat(v) if k in keys else v) for k, v in out.items()}


def load_generator(path: str, gen: ForegroundGenerator) -> tuple[float, int, int]:
    """Load a ``generator.safetensors`` into ``gen`` (built for the classifier at hand); returns (its area weight,
    its training steps, its image size in px; 0 where the file does not say). Errors: ``UserError`` for another
    kind of file or a generator of a classifier with other channels or classes."""
    if not Path(path).is_file():
        raise UserError(f"generator {path} does not exist; give the generator.safetensors that resnet50 localize bas "
                        "wrote")
    meta, tensors = read_safetensors(Path(path))
    if meta.get("format") != GENERATOR_FORMAT:
        raise UserError(f"{path} is not a BAS generator (no format {GENERATOR_FORMAT!r}); give the "
                        "generator.safetensors that resnet50 localize bas wrote")
    want = gen.state_dict()
    if set(tensors) != set(want) or any(tensors[k].shape != want[k].shape for k in want):
        raise UserError(f"{path} was trained on a classifier with other channels or classes "
                        f"({meta.get('classifier')}); give --weights that classifier")
    gen.load_state_dict(tensors)
    return float(meta.get("area_weight", "nan")), int(meta.get("steps", 0)), int(meta.get("image_size", 0))


def true_class_boxes(net: ResNet, gen: ForegroundGenerator, ds: CocoDataset, size: int, mean, std,
                     threshold: float, autocast=None, batch_size: int = 64, progress: bool = False) -> dict:
    """The box of every image of ``ds`` from its true class's map at ``threshold`` (PSOL's pseudo boxes), batch by
    batch: only the boxes (N, 4, input pixels), the true boxes (read only to score), letterbox scales and COCO ids
    are kept, so memory grows by 8 numbers an image, not by its map."""
    out: dict = {"boxes": [], "gt": [], "scales": [], "image_ids": []}
    for batch in _batches(ds, size, batch_size, progress, "BAS pseudo boxes"):
        _, true, _ = generator_maps(net, gen, _normalise(batch.images, mean, std), batch.labels[:, 0], autocast)
        out["boxes"].append(map_boxes(true, size, threshold))
        out["gt"].append(batch.boxes[:, 0])
        out["scales"] += batch.scales
        out["image_ids"] += batch.image_ids
    if not out["boxes"]:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
    return {**out, "boxes": torch.cat(out["boxes"]), "gt": torch.cat(out["gt"])}


def run_bas(weights_path: str, train: str, held_out: str, val: list[str], out: str, size: int | None = None,
            steps: int = BAS_STEPS, batch_size: int = BAS_BATCH, lr: float = BAS_LR, area_weight: float = AREA_WEIGHT,
            foreground_weight: float = FOREGROUND_WEIGHT, amp: str = "auto", seed: int = 0, progress: bool = True,
            log=print, generator: str | None = None) -> dict:
    """BAS end to end on COCO folders of single-object images, the classifier at ``weights_path`` trained with
    class labels only and held fixed:

    1. the generator trained ``steps`` batches on ``train``'s images and labels (its boxes are never read);
    2. the box threshold (a fraction of each map's maximum) chosen on ``held_out`` (Choe et al.'s protocol: its
       size is stated in the result) from the true class's maps;
    3. every ``val`` folder scored by the ILSVRC rule (top-1 loc from the predicted class's map, GT-known from the
       true class's), with the heat-centroid offsets; a picture of maps and boxes (``out/maps.png``);
    4. pseudo boxes for every ``train`` image from its true class's map (``out/pseudo``, PSOL's step 1: then
       ``resnet50 localize train --train out/pseudo --regression scr``); their agreement with the true boxes is
       reported, read only to score.

    With ``generator`` (a ``generator.safetensors`` of an earlier run on the same classifier) step 1 is skipped and
    that generator scored. ``size`` (the letterbox side, default 128) is the generator's own when it is scored
    (another is refused). Writes ``out/generator.safetensors``, ``out/bas.json``, ``out/maps.png`` and
    ``out/offsets.png`` (histograms of the heat centroids' offsets from the box centres, per ``val`` folder), each
    atomically, and returns the JSON's contents. Errors: ``UserError`` for a classifier of other classes than
    ``train``'s, folders of other classes than ``train``, a generator of another classifier or size, or unreadable
    folders."""
    finite = all(math.isfinite(v) for v in (lr, area_weight, foreground_weight))
    if steps < 1 or batch_size < 2 or not finite or lr <= 0 or area_weight < 0 or foreground_weight < 0:
        raise UserError("BAS needs steps >= 1, batch_size >= 2, a finite lr > 0 and finite non-negative loss weights")
    if size is not None and size < 32:
        raise UserError(f"--image-size must be >= 32 px (got {size})")
    net, mean, std, classes = classifier_of(weights_path)
    if net.cfg.stem != "imagenet":
        raise UserError(f"{weights_path}: BAS reads C3 and C4 of an ImageNet-stem ResNet, not a {net.cfg.stem!r} "
                        "stem; give a resnet18/34/50/101/152 classifier")
    in_chans = net.cfg.in_chans
    sets = {"train": CocoDataset(train, in_chans=in_chans), "held_out": CocoDataset(held_out, in_chans=in_chans)}
    vals = [CocoDataset(v, in_chans=in_chans) for v in val]
    for ds in [*sets.values(), *vals]:
        single_objects(ds)
    if len(sets["train"].classes) != net.cfg.num_classes:
        raise UserError(f"{weights_path} classifies {net.cfg.num_classes} classes, {train} has "
                        f"{len(sets['train'].classes)}; give the classifier trained on these classes")
    if classes and list(classes) != list(sets["train"].classes):
        raise UserError(f"{train}'s classes {sets['train'].classes} are not {weights_path}'s {list(classes)} in "
                        "that order; give the classifier trained on these classes")
    for path, ds in [(held_out, sets["held_out"]), *zip(val, vals)]:
        if ds.classes != sets["train"].classes:
            raise UserError(f"{path}'s classes {ds.classes} are not {train}'s {sets['train'].classes}; write every "
                            "folder with the same categories in the same order")
    if not generator and len(sets["train"]) < batch_size:
        raise UserError(f"{train} has {len(sets['train'])} images, fewer than one batch of {batch_size}; lower "
                        "--batch-size")
    torch.manual_seed(seed)
    dtype = autocast_dtype(amp, torch.device("cpu"))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else None
    gen = ForegroundGenerator(net.feature_channels[1], net.feature_channels[2], net.cfg.num_classes)
    fill = _normalise(torch.zeros(1, in_chans, 1, 1), mean, std).reshape(-1)
    if generator:
        (area_weight, steps, trained_size), history = load_generator(generator, gen), []
        if size is not None and trained_size and size != trained_size:
            raise UserError(f"{generator} was trained at {trained_size} px, not {size}; drop --image-size or give "
                            f"--image-size {trained_size}")
        size = trained_size or size
        log(f"BAS generator {generator} (area weight {area_weight}) scored, classifier {weights_path}")
    else:
        log(f"BAS generator on {len(sets['train'])} training images (labels only), {steps} steps of {batch_size}, "
            f"area weight {area_weight}, classifier {weights_path} fixed")
    size = size or 128
    t0 = time.perf_counter()
    if not generator:
        history = train_generator(net, gen, _training_batches(sets["train"], size, batch_size, mean, std, seed),
                                  fill, steps, lr, area_weight, foreground_weight, autocast, progress)
    train_s = time.perf_counter() - t0
    meta = {"format": GENERATOR_FORMAT, "classifier": str(weights_path), "classes": json.dumps(classes),
            "area_weight": str(area_weight), "image_size": str(size), "steps": str(steps)}
    held = all_maps(net, gen, sets["held_out"], size, mean, std, autocast, progress=progress)
    threshold, curve = choose_threshold(held["true_maps"], held["gt"], size)
    meta["threshold"] = str(threshold)
    root = output_dir(Path(out))  # after training: a refused or failed (NaN) run writes nothing
    write_safetensors(root / "generator.safetensors", gen, meta)
    scored, shown, offsets = {}, [], {}
    for path, ds in zip(val, vals):
        v = all_maps(net, gen, ds, size, mean, std, autocast, progress=progress)
        figures = loc_figures(map_boxes(v["pred_maps"], size, threshold), map_boxes(v["true_maps"], size, threshold),
                              v["logits"], v["labels"], v["gt"])
        name = "/".join(Path(path).resolve().parts[-2:])
        offsets[name] = heat_offsets(v["true_maps"], v["gt"], size)
        scored[path] = {**figures, "offsets": offset_summary(offsets[name])}
        shown.append((ds, v))
    picture = plot_maps(shown, size, threshold, classes, root / "maps.png")
    plot_offsets(offsets, root / "offsets.png")
    tr = true_class_boxes(net, gen, sets["train"], size, mean, std, threshold, autocast, progress=progress)
    pseudo = write_pseudo_boxes(sets["train"], tr["image_ids"], tr["boxes"], tr["scales"], root / "pseudo",
                                "BAS (Wu et al. 2022)")
    result = {"method": "BAS (Wu, Zhai, Cao, CVPR 2022), classifier fixed, erasing on the input",
              "weights": str(weights_path), "train": str(sets["train"].json_path), "train_images": len(tr["boxes"]),
              "held_out_images": len(held["labels"]), "threshold": threshold, "held_out_gt_known": curve,
              "val": scored, "steps": steps, "batch_size": batch_size, "lr": lr, "area_weight": area_weight,
              "foreground_weight": foreground_weight, "amp": str(dtype).replace("torch.", "") if dtype else "off",
              "seed": seed, "train_seconds": train_s, "history": history,
              "pseudo_boxes": str(pseudo),
              "pseudo_box_iou50": float((_iou(tr["boxes"], tr["gt"]) >= 0.5).float().mean()),
              "generator": str(root / "generator.safetensors"), "picture": str(picture),
              "offsets_picture": str(root / "offsets.png"), "scored_generator": generator,
              "boxes_seen": "train: none (labels only; pseudo_box_iou50 reads them only to score); held_out: the "
                            "threshold; val: scoring only"}
    write_json(root / "bas.json", result, indent=2)
    return result


def plot_maps(shown: list, size: int, threshold: float, classes: list[str], path: Path, per_set: int = 8) -> Path:
    """A grid: per scored folder, ``per_set`` images with the predicted class's map over them, its box (green,
    with the predicted class) and the true box (red)."""
    plt = pyplot()
    rows = len(shown)
    fig, axes = plt.subplots(rows, per_set, figsize=(2 * per_set, 2.2 * rows), squeeze=False)
    for r, (ds, v) in enumerate(shown):
        batch = make_batch(ds, list(range(min(len(ds), 2 * per_set))), size)
        at = {iid: j for j, iid in enumerate(batch.image_ids)}  # images matched by id: an unreadable one is skipped
        n = min(per_set, len(v["labels"]))
        n = next((i for i in range(n) if v["image_ids"][i] not in at), n)
        up = upsample_map(v["pred_maps"][:n], (size, size), C3_STRIDE)
        boxes = map_boxes(v["pred_maps"][:n], size, threshold)
        for i in range(per_set):
            ax = axes[r, i]
            ax.axis("off")
            if i >= n:
                continue
            ax.imshow(batch.images[at[v["image_ids"][i]], 0], cmap="gray", vmin=0, vmax=1)
            ax.imshow(up[i], cmap="jet", alpha=0.35, vmin=0, vmax=1)
            for (x1, y1, x2, y2), colour in ((v["gt"][i].tolist(), "red"), (boxes[i].tolist(), "lime")):
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5))
            pred, true = int(v["logits"][i].argmax()), int(v["labels"][i])
            iou = float(_iou(boxes[i:i + 1], v["gt"][i:i + 1])[0])
            ax.set_title(f"{classes[pred] if pred < len(classes) else pred} (IoU {iou:.2f})", fontsize=8,
                         color="black" if pred == true else "darkred")
        axes[r, 0].text(-0.1, 0.5, "/".join(Path(str(ds.json_path)).parent.parts[-2:]), transform=axes[r, 0].transAxes,
                        rotation=90, va="center", ha="right", fontsize=9)
    fig.suptitle(f"BAS maps of the predicted class; green: box at {threshold:.2f} of the maximum, red: true box",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
