"""Weakly supervised object localisation (WSOL): boxes from networks that never saw one, and CAM measured right.

Three pieces, each from its paper:

- **DDT** (Wei, Zhang, Li, Shen, Zhou, "Unsupervised Object Discovery and Co-Localization by Deep Descriptor
  Transforming", Pattern Recognition 2019): the descriptors of a pretrained classifier's last stage at every
  position of the images of one class, centred on their mean; their first principal component. Projected on it, the
  positions of the object the images share come out positive and the background negative; the box is the one
  around the largest 8-connected positive region of the map, upsampled to pixels. Only class labels are read.
- **PSOL** (Zhang, Wei, Yang, "Rethinking the Route Towards Weakly Supervised Object Localization", CVPR 2020):
  DDT's boxes of the training images as pseudo ground truth for a box regressor (our ``Localizer``, class-agnostic
  SCR as PSOL's), trained by ``resnet50 localize train`` on the folder :func:`write_pseudo_boxes` writes. Its class
  comes from the image labels, its box from DDT: no true box is read in training.
- **CAM by Choe et al.'s protocol** (Choe, Oh, Lee, Chun, Akata, Shim, "Evaluating Weakly Supervised Object
  Localization Methods Right", CVPR 2020): the CAM threshold chosen on a small held-out set *with* boxes (its size
  stated with every figure), beside the CAM paper's fixed 20 % of the maximum.

Before any map is trusted, :func:`heat_offsets` measures where its mass sits against the box centre (x and y,
input pixels): a systematic offset caps every box made from the map.

Maps are read at output stride 8 (``cam.dilated``: the last two stages "a trous", the same weights): at 128 px the
plain stride-32 map is 4 x 4, too coarse for a 28-84 px item (the CAM benchmark's docstring gives the numbers).
Inputs are letterboxed single scenes (``detect.coco.make_batch``); boxes are xyxy input pixels unless named
otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .. import weights
from ..cam import class_activation_maps, connected_components, dilated, upsample_map
from ..detect.coco import CocoDataset, make_batch
from ..detect.nms import box_iou
from ..errors import UserError
from ..files import atomic_path, output_dir, pyplot, save_figure, write_json
from ..model import ResNet
from .evaluate import load_localizer
from .train import single_objects

OUTPUT_STRIDE = 8
CAM_RULE = 0.2  # the CAM paper's threshold: 20 % of the map's maximum
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # Choe et al.'s sweep, 0.05 .. 0.95


@dataclass
class Scenes:
    """One pass of a classifier over a COCO folder of single-object images (``ds``): per image the stage-4
    descriptors at stride 8 (``features`` (N, C, h, w) float32, kept only when asked), the logits (N, K), the true
    labels (N,), the true boxes (N, 4 xyxy input px), the letterbox scales (N,) and the COCO ids."""

    logits: Tensor
    labels: Tensor
    gt: Tensor
    scales: list[float]
    image_ids: list[int]
    size: int


def _normalise(images: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean, dtype=images.dtype).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).reshape(1, -1, 1, 1)
    return (images - m) / s


def _batches(ds: CocoDataset, size: int, batch_size: int, progress: bool, desc: str):
    for s in tqdm(range(0, len(ds), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = make_batch(ds, list(range(s, min(s + batch_size, len(ds)))), size)
        if batch.image_ids:
            yield batch


@torch.no_grad()
def _descriptors(net: ResNet, x: Tensor, stage: str) -> tuple[Tensor, Tensor | None]:
    """(the map of ``stage`` ("C4": layer3, "C5": layer4) of a dilated classifier ``net``, (N, C, h, w) at stride
    8; the logits (N, K) when the stage is the last, else None)."""
    x = net.stem(x)
    for name in net.stage_names[:3 if stage == "C4" else 4]:
        x = getattr(net, name)(x)
    return x.float(), (net.forward_head(x).float() if stage == "C5" else None)


SIGN_IMAGES = 8  # per class, the images whose maps fix the component's sign


class DDT:
    """Per class ``k``: the first principal component ``direction[k]`` (C,) of the descriptors of that class's
    images, each image's descriptors centred on their own mean (``project`` does the same). DDT centres on the set's
    mean; with plain and cluttered scenes in one set, the set's first component is the one that tells the two
    backgrounds apart, not the object from its background, and per-image centring removes exactly that (measured
    on 200 validation scenes: see docs/benchmarks.md, "Weakly supervised localisation"). An eigenvector's sign is
    arbitrary: it is chosen so that the positive side is the smaller part of the images (the object is smaller
    than its background), counted on the maps of the first ``SIGN_IMAGES`` images of each class. One class
    (``per_class=False``) is DDT's class-agnostic form. ``stage``: the descriptors' stage, "C4" (layer3) or "C5"."""

    def __init__(self, direction: Tensor, stage: str = "C4") -> None:
        self.direction, self.stage = direction, stage

    @classmethod
    def fit(cls, model: ResNet, ds: CocoDataset, size: int, mean, std, num_classes: int, per_class: bool = True,
            stage: str = "C4", batch_size: int = 32, progress: bool = False) -> DDT:
        """Accumulate per class the count and the Gram matrix (float64) of the centred descriptors over every
        position of every image of ``ds`` (memory O(K C^2), not O(N)); then each covariance's eigenvector of the
        largest eigenvalue. Reads the images' class labels, never their boxes.
        Errors: ``UserError`` when no image can be read or a class has no image."""
        if stage not in ("C4", "C5"):
            raise UserError(f"DDT reads stage C4 (layer3) or C5 (layer4), not {stage!r}")
        net = dilated(model, OUTPUT_STRIDE).eval()

        def descriptors():
            for batch in _batches(ds, size, batch_size, progress, "DDT fit"):
                feats, _ = _descriptors(net, _normalise(batch.images, mean, std), stage)
                n = len(feats)
                yield feats, (batch.labels[:, 0] if per_class else torch.zeros(n, dtype=torch.int64))

        try:
            ddt = cls.from_descriptors(descriptors(), num_classes if per_class else 1, stage)
        except UserError as e:
            raise UserError(f"{ds.json_path}: {e}") from None
        if ddt is None:
            raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
        return ddt

    @classmethod
    def from_descriptors(cls, batches, groups: int, stage: str = "C4") -> DDT | None:
        """The fit's arithmetic over ``batches`` of (descriptors (N, C, h, w), group of each image (N,) int64);
        None when there is no batch. Errors: ``UserError`` when a group has no image."""
        count = torch.zeros(groups, dtype=torch.float64)
        gram, kept = None, {g: [] for g in range(groups)}
        for feats, group in batches:
            feats = feats - feats.mean((2, 3), keepdim=True)
            c = feats.shape[1]
            if gram is None:
                gram = torch.zeros(groups, c, c, dtype=torch.float64)
            for g in group.unique().tolist():
                xs = feats[group == g].permute(0, 2, 3, 1).reshape(-1, c).double()
                count[g] += xs.shape[0]
                gram[g] += xs.T @ xs
                room = SIGN_IMAGES - sum(len(k) for k in kept[g])
                if room > 0:
                    kept[g].append(feats[group == g][:room])
        if gram is None:
            return None
        empty = [g for g in range(groups) if count[g] == 0]
        if empty:
            raise UserError(f"no image of class(es) {empty[:5]} to fit DDT on; give images of every class, or fit "
                            "one class-agnostic DDT (--class-agnostic)")
        _, vecs = torch.linalg.eigh(gram / count[:, None, None])
        direction = vecs[:, :, -1].float()
        for g in range(groups):
            maps = torch.einsum("nchw,c->nhw", torch.cat(kept[g]), direction[g])
            if (maps > 0).float().mean() > 0.5:
                direction[g] = -direction[g]
        return cls(direction, stage)

    def project(self, feats: Tensor, groups: Tensor) -> Tensor:
        """(N, C, h, w) descriptors, (N,) class of each image (0 for the class-agnostic form) -> (N, h, w) maps."""
        centred = feats - feats.mean((2, 3), keepdim=True)
        return torch.einsum("nchw,nc->nhw", centred, self.direction[groups])


CHUNK = 256  # maps upsampled at once by map_boxes and heat_offsets (64 KB each at 128 px)


def box_of_positive(mask: np.ndarray) -> list[int]:
    """The xyxy box (pixels, the last pixel + 1) around the largest 8-connected True region of a 2-D mask; the whole
    image when the mask is empty."""
    h, w = mask.shape
    comps = connected_components(mask)
    if not comps:
        return [0, 0, w, h]
    _, (x, y, bw, bh) = max(comps, key=lambda c: c[0])
    return [x, y, x + bw, y + bh]


def map_boxes(maps: Tensor, size: int, threshold: float | None = None) -> Tensor:
    """Boxes (N, 4 xyxy input px) from (N, h, w) stride-8 maps upsampled to ``size`` px: around the largest region
    above 0 (``threshold`` None: DDT's rule) or above ``threshold`` x the map's maximum after its negative part is
    cut (CAM's rule). Upsampled ``CHUNK`` maps at a time: memory does not grow with N."""
    out = []
    for part in maps.split(CHUNK):
        for m in upsample_map(part, (size, size), OUTPUT_STRIDE).numpy():
            if threshold is None:
                mask = m > 0
            else:
                m = np.maximum(m, 0)
                mask = m >= threshold * m.max() if m.max() > 0 else np.zeros_like(m, bool)
            out.append(box_of_positive(mask))
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def heat_offsets(maps: Tensor, gt: Tensor, size: int) -> Tensor:
    """(N, 2) the offset (x, y) in input pixels from each box centre (``gt`` (N, 4) xyxy) to the centroid of its
    map's positive mass upsampled to ``size`` px (``maps`` (N, h, w)); NaN where a map has no positive mass.
    Positive x: the heat sits right of the box centre; positive y: below it. ``CHUNK`` maps at a time."""
    pix = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    centroids = []
    for part in maps.split(CHUNK):
        up = upsample_map(part, (size, size), OUTPUT_STRIDE).clamp(min=0)
        mass = up.sum((1, 2))
        centroids.append(torch.stack([(up.sum(1) * pix).sum(1) / mass, (up.sum(2) * pix).sum(1) / mass], dim=1))
    c = torch.cat(centroids) if centroids else torch.zeros(0, 2)
    return c - torch.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2], dim=1)


def _iou(a: Tensor, b: Tensor) -> Tensor:
    return box_iou(a, b).diagonal()


@torch.no_grad()
def ddt_maps(model: ResNet, ddt: DDT, ds: CocoDataset, size: int, mean, std, batch_size: int = 32,
             progress: bool = False) -> dict:
    """DDT's maps (N, h, w) for every image of ``ds``: from its true class's component (``true_maps``: class labels
    are the weak supervision WSOL allows) and from the predicted class's (``pred_maps``), with the classifier's
    logits, the true boxes (``gt``, read only to score), labels, letterbox scales and COCO ids. Boxes come from
    :func:`map_boxes` at a threshold chosen on a held-out set (:func:`choose_threshold`)."""
    net = dilated(model, OUTPUT_STRIDE).eval()
    model = model.eval()
    per_class = len(ddt.direction) > 1
    true_maps, pred_maps, logits, gts, labels, scales, ids = [], [], [], [], [], [], []
    for batch in _batches(ds, size, batch_size, progress, "DDT maps"):
        x = _normalise(batch.images, mean, std)
        feats, _ = _descriptors(net, x, ddt.stage)
        lg = model(x).float()  # the classifier's own prediction (stride 32, as it was trained)
        y = batch.labels[:, 0]
        true_maps.append(ddt.project(feats, y if per_class else torch.zeros_like(y)))
        pred_maps.append(ddt.project(feats, lg.argmax(1) if per_class else torch.zeros_like(y)))
        logits.append(lg)
        gts.append(batch.boxes[:, 0])
        labels.append(y)
        scales += batch.scales
        ids += batch.image_ids
    if not logits:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
    return {"true_maps": torch.cat(true_maps), "pred_maps": torch.cat(pred_maps), "logits": torch.cat(logits),
            "gt": torch.cat(gts), "labels": torch.cat(labels), "scales": scales, "image_ids": ids}


def choose_threshold(maps: Tensor, gt: Tensor, size: int, thresholds=THRESHOLDS) -> tuple[float, dict]:
    """Choe et al.'s protocol: the threshold (a fraction of each map's maximum) with the best GT-known localisation
    on a held-out set with boxes (``maps`` (N, h, w), ``gt`` (N, 4)); ties go to the one nearest the CAM paper's
    20 %. Returns it and the whole curve {threshold: GT-known}."""
    curve = {t: float((_iou(map_boxes(maps, size, t), gt) >= 0.5).float().mean()) for t in thresholds}
    return max(curve, key=lambda t: (curve[t], -abs(t - CAM_RULE))), curve


def write_pseudo_boxes(ds: CocoDataset, image_ids: list[int], boxes: Tensor, scales: list[float],
                       out: str | Path, method: str = "DDT, Wei et al. 2019") -> Path:
    """A COCO folder (``out/instances.json``) with ``ds``'s images (absolute paths, not copied), their categories
    and one box each: ``boxes`` (N, 4 xyxy input px of the letterbox at ``scales``), written in the images' own
    pixels. The true boxes are not written. Atomic; returns the JSON's path."""
    root = output_dir(Path(out))
    by_id = {im.id: im for im in ds.images}
    images, anns = [], []
    for k, (image_id, box, scale) in enumerate(zip(image_ids, boxes.tolist(), scales)):
        im = by_id[image_id]
        h, w = im.height, im.width
        x1, y1, x2, y2 = (min(max(v / scale, 0.0), lim) for v, lim in zip(box, (w, h, w, h)))
        images.append({"id": image_id, "file_name": str(im.path.resolve()), "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": image_id, "category_id": ds.category_ids[int(im.labels[0])],
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": cid, "name": name} for cid, name in zip(ds.category_ids, ds.classes)]
    path = root / "instances.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats,
                                   "info": {"description": f"pseudo boxes ({method}) for PSOL training: "
                                                           "no true box was read"}}))
    return path


@torch.no_grad()
def cam_maps(model: ResNet, ds: CocoDataset, size: int, mean, std, batch_size: int = 32,
             progress: bool = False) -> dict:
    """CAM (Zhou et al. 2016) at stride 8 for every image of ``ds``: the raw maps of the predicted class and of the
    true class (N, h, w each), logits, labels and true boxes."""
    net = dilated(model, OUTPUT_STRIDE).eval()
    model = model.eval()
    weight = net.get_classifier().weight
    pred_maps, true_maps, logits, labels, gts = [], [], [], [], []
    for batch in _batches(ds, size, batch_size, progress, "CAM"):
        x = _normalise(batch.images, mean, std)
        feats, _ = _descriptors(net, x, "C5")
        lg = model(x).float()
        y = batch.labels[:, 0]
        pred_maps.append(class_activation_maps(feats, weight.float(), lg.argmax(1)))
        true_maps.append(class_activation_maps(feats, weight.float(), y))
        logits.append(lg)
        labels.append(y)
        gts.append(batch.boxes[:, 0])
    if not logits:
        raise UserError(f"none of the {len(ds)} images of {ds.json_path} could be read")
    return {"pred_maps": torch.cat(pred_maps), "true_maps": torch.cat(true_maps), "logits": torch.cat(logits),
            "labels": torch.cat(labels), "gt": torch.cat(gts)}


def loc_figures(pred_boxes: Tensor, true_boxes: Tensor, logits: Tensor, labels: Tensor, gt: Tensor) -> dict:
    """Top-1 loc, GT-known loc, mean IoU (of the true class's boxes) and top-1 cls, as fractions, with their ratio
    top-1 loc / top-1 cls (the issue's measure of how much of the classifier's reach the boxes keep)."""
    hit = logits.argmax(1) == labels
    iou_pred, iou_true = _iou(pred_boxes, gt), _iou(true_boxes, gt)
    top1_cls = float(hit.float().mean())
    top1_loc = float((hit & (iou_pred >= 0.5)).float().mean())
    return {"top1_loc": top1_loc, "gt_known_loc": float((iou_true >= 0.5).float().mean()),
            "mean_iou": float(iou_true.mean()), "top1_cls": top1_cls,
            "loc_over_cls": top1_loc / top1_cls if top1_cls else 0.0, "images": len(labels)}


def cam_protocol(held_out: dict, val: dict, size: int, thresholds=THRESHOLDS) -> dict:
    """CAM scored two ways on ``val`` (:func:`cam_maps` output): the CAM paper's 20 % rule, and Choe et al.'s, the
    threshold of ``thresholds`` with the best GT-known localisation on ``held_out`` (boxed images, never ``val``'s).
    Returns both figure sets (:func:`loc_figures`), the chosen threshold, the held-out curve and its size."""
    best, curve = choose_threshold(held_out["true_maps"], held_out["gt"], size, thresholds)

    def scored(t: float) -> dict:
        return loc_figures(map_boxes(val["pred_maps"], size, t), map_boxes(val["true_maps"], size, t),
                           val["logits"], val["labels"], val["gt"])

    return {"rule_20": scored(CAM_RULE), "choe": {**scored(best), "threshold": best},
            "held_out_images": len(held_out["labels"]), "held_out_gt_known": curve}


def offset_summary(offsets: Tensor) -> dict:
    """Median and mean (x, y) offsets in input pixels and the share of maps whose centroid is within 8 px."""
    ok = offsets[~torch.isnan(offsets).any(1)]
    if len(ok) == 0:
        return {"maps": 0}
    return {"maps": len(ok), "median_x": float(ok[:, 0].median()), "median_y": float(ok[:, 1].median()),
            "mean_x": float(ok[:, 0].mean()), "mean_y": float(ok[:, 1].mean()),
            "within_8px": float((ok.norm(dim=1) <= 8).float().mean())}


def classifier_of(path: str) -> tuple[ResNet, tuple, tuple, list[str]]:
    """(the ResNet, its input mean, std, class names) of a classifier's weights (any source ``weights.load``
    reads) or of a localiser's file (its ``body``)."""
    try:
        ckpt = load_localizer(path)
        return ckpt.model.body.eval(), ckpt.config.mean, ckpt.config.std, ckpt.classes
    except UserError:
        pass
    c = weights.load(path)
    pre = c.preprocessing.for_channels(c.model.cfg.in_chans)
    return c.model.eval(), pre.mean, pre.std, list(c.classes or [])


def run_wsol(weights_path: str, train: str, held_out: str, val: str, out: str, size: int = 128,
             per_class: bool = True, stage: str = "C4", batch_size: int = 32, progress: bool = True,
             log=print) -> dict:
    """The whole weakly supervised route on COCO folders of single scenes, the classifier at ``weights_path``
    trained with class labels only:

    1. DDT fitted on ``train``'s images (labels only); its box threshold chosen on ``held_out`` (Choe et al.'s
       protocol: say its size); pseudo boxes for every ``train`` image written to ``out/pseudo`` (PSOL's step 1:
       ``resnet50 localize train --train out/pseudo --regression scr`` is step 2);
    2. DDT's own boxes and CAM's (20 % rule and the held-out threshold) scored on ``val`` by the ILSVRC rule;
    3. the offsets of CAM's and DDT's heat centroids from the box centres on ``val``, and their histogram
       (``out/offsets.png``).

    Boxes of ``train`` are never read; those of ``held_out`` choose two thresholds; those of ``val`` only score.
    Writes ``out/wsol.json`` (atomically) and returns its contents."""
    model, mean, std, _ = classifier_of(weights_path)
    in_chans = model.cfg.in_chans
    sets = {name: CocoDataset(path, in_chans=in_chans) for name, path in (("train", train), ("held_out", held_out),
                                                                          ("val", val))}
    for ds in sets.values():
        single_objects(ds)
    num_classes = model.cfg.num_classes
    if len(sets["train"].classes) != num_classes:
        raise UserError(f"{weights_path} classifies {num_classes} classes, {train} has {len(sets['train'].classes)}; "
                        "give the classifier trained on these classes")
    root = output_dir(Path(out))
    log(f"DDT ({'per class' if per_class else 'class-agnostic'}, {stage} at stride {OUTPUT_STRIDE}) on "
        f"{len(sets['train'])} training images, labels only")
    ddt = DDT.fit(model, sets["train"], size, mean, std, num_classes, per_class, stage, batch_size, progress)
    held = ddt_maps(model, ddt, sets["held_out"], size, mean, std, batch_size, progress)
    ddt_t, ddt_curve = choose_threshold(held["true_maps"], held["gt"], size)
    tr = ddt_maps(model, ddt, sets["train"], size, mean, std, batch_size, progress)
    pseudo = write_pseudo_boxes(sets["train"], tr["image_ids"], map_boxes(tr["true_maps"], size, ddt_t),
                                tr["scales"], root / "pseudo")
    va = ddt_maps(model, ddt, sets["val"], size, mean, std, batch_size, progress)
    ddt_val = loc_figures(map_boxes(va["pred_maps"], size, ddt_t), map_boxes(va["true_maps"], size, ddt_t),
                          va["logits"], va["labels"], va["gt"])
    cam_held = cam_maps(model, sets["held_out"], size, mean, std, batch_size, progress)
    cam_val = cam_maps(model, sets["val"], size, mean, std, batch_size, progress)
    cam = cam_protocol(cam_held, cam_val, size)
    offsets = {"cam": heat_offsets(cam_val["true_maps"], cam_val["gt"], size),
               "ddt": heat_offsets(va["true_maps"], va["gt"], size)}
    picture = root / "offsets.png"
    plot_offsets(offsets, picture)
    result = {"weights": weights_path, "train": str(sets["train"].json_path), "held_out_images": len(held["labels"]),
              "val_images": len(va["labels"]), "ddt": {"per_class": per_class, "stage": stage, "threshold": ddt_t,
                                                       "held_out_gt_known": ddt_curve, "val": ddt_val},
              "cam": cam, "offsets": {k: offset_summary(v) for k, v in offsets.items()},
              "pseudo_boxes": str(pseudo), "offsets_picture": str(picture),
              "boxes_seen": "train: none; held_out: to choose the DDT and CAM thresholds; val: scoring only"}
    write_json(root / "wsol.json", result, indent=2)
    return result


def plot_offsets(offsets: dict[str, Tensor], path: Path) -> None:
    """Histograms of the x and y offsets (input px) of each map kind's heat centroid from the box centre."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, axis, name in zip(axes, (0, 1), ("x (positive: right of the box centre)", "y (positive: below it)")):
        for kind, off in offsets.items():
            v = off[:, axis][~torch.isnan(off[:, axis])].numpy()
            if len(v):
                ax.hist(v, bins=np.arange(-40, 42, 2), alpha=0.55, label=f"{kind} (median {np.median(v):+.1f} px)")
        ax.axvline(0, color="k", lw=1)
        ax.set(xlabel=f"heat centroid offset in {name}", title=f"offset in {name.split()[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("validation scenes")
    fig.tight_layout()
    save_figure(fig, path)
