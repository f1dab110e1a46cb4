"""Where a classifier looks: class activation maps, their boxes, and pictures of them.

- CAM, Zhou, Khosla, Lapedriza, Oliva and Torralba, "Learning Deep Features for Discriminative Localization"
  (CVPR 2016): for a network that ends in global average pooling and a linear classifier, the score of class c is
  ``b_c + mean_xy sum_k w_ck A_k(x, y)``, so ``M_c(x, y) = sum_k w_ck A_k(x, y)`` says how much each place adds
  to it. Exact for ResNet, computed from ``fc.weight`` and the last stage.
- Grad-CAM, Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization"
  (ICCV 2017): the weights are the spatially averaged gradients of the class score, ``alpha_k = mean_xy
  d y_c / d A_k(x, y)``, so any stage can be read. On the last stage of a GAP + fc net ``alpha_k = w_ck / (h w)``:
  Grad-CAM is CAM divided by the number of positions (``tests/test_cam.py`` checks it).
- Boxes by the CAM paper's rule (section 3, used for its ILSVRC localisation figures): keep the pixels above 20 %
  of the heatmap's maximum and take the box around the largest connected component.
- Localisation accuracy as ILSVRC counts it (top-1: class right and box IoU >= 0.5) and ground-truth-known
  localisation (the box of the true class, class ignored), as Choe et al. ("Evaluating Weakly Supervised Object
  Localization Methods Right", CVPR 2020) call it.

- ``dilated``: the same network run "a trous" so the last stage keeps a finer grid (stride 8 instead of 32),
  which CAM needs on small inputs: at 128 px the plain map is 4 x 4.

Computing and drawing are separate: ``cam`` / ``grad_cam`` return tensors; ``draw_overlay`` makes the picture.
Both run the model in eval mode and give it back in the mode each of its modules was in (``_evaluating``): a model
left in train mode would otherwise rewrite its batch-norm running statistics and make one image's map depend on
its batch-mates (pytorch-grad-cam's BaseCAM calls ``model.eval()`` for the same reason).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from .errors import UserError
from .model import ResNet, ZeroPadShortcut
from .scenes import iou

__all__ = ["CamResult", "box_from_heatmap", "cam", "class_activation_maps", "connected_components", "dilated",
           "draw_overlay", "grad_cam", "iou", "localization_accuracy", "upsample_map", "upscale_factor"]

THRESHOLD = 0.2  # the CAM paper's: 20 % of the heatmap's maximum


@dataclass
class CamResult:
    """Per-image results of ``cam`` / ``grad_cam`` for a batch of N images of H x W px.

    heatmaps  (N, H, W) float32 in [0, 1], upsampled (bilinear) to the input size and normalised per image
    maps      (N, h, w) float32, the raw map at the stage's resolution: CAM ``sum_k w_ck A_k``, or Grad-CAM
              ``sum_k alpha_k A_k`` before its ReLU
    classes   (N,) int64, the class each map is for
    scores    (N,) float32, the softmax probability of that class
    boxes     (N, 4) int64, ``[x, y, w, h]`` in input pixels (``box_from_heatmap`` of each heatmap)
    logits    (N, K) float32
    """

    heatmaps: Tensor
    maps: Tensor
    classes: Tensor
    scores: Tensor
    boxes: Tensor
    logits: Tensor


def class_activation_maps(features: Tensor, weight: Tensor, classes: Tensor) -> Tensor:
    """CAM's ``M_c = sum_k w_ck A_k``: ``features`` (N, C, h, w), ``weight`` (K, C) (the fc layer's),
    ``classes`` (N,) int -> (N, h, w) float32. With GAP + fc, ``M.mean((1, 2)) + bias[c]`` is the logit of c."""
    with torch.autocast(features.device.type, enabled=False):  # fp32 whatever autocast is on outside
        return torch.einsum("nc,nchw->nhw", weight[classes].float(), features.float())


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    n, k = logits.shape
    if target is None:
        t = logits.argmax(1)
    elif isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
        if t.numel() != n:
            raise UserError(f"target holds {t.numel()} classes for {n} images; give one per image or one for all")
    if t.numel() and (t.min() < 0 or t.max() >= k):
        raise UserError(f"target class out of range: the model has {k} classes (0 .. {k - 1})")
    return t


def _finish(maps: Tensor, logits: Tensor, classes: Tensor, size: tuple[int, int], threshold: float,
            relu: bool, stride: int) -> CamResult:
    """Upsample (bilinear), normalise to [0, 1] (min-max, or ReLU and max when ``relu``), box: in fp32 on the CPU."""
    with torch.autocast(maps.device.type, enabled=False), torch.no_grad():
        maps, logits, classes = maps.detach().float().cpu(), logits.detach().float().cpu(), classes.cpu()
        up = upsample_map(maps.clamp_min(0) if relu else maps, size, stride)
        lo = torch.zeros(len(up), 1, 1) if relu else up.amin((1, 2), keepdim=True)
        hi = up.amax((1, 2), keepdim=True)
        heat = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(up))
        boxes = torch.tensor([box_from_heatmap(h, threshold) for h in heat.numpy()], dtype=torch.long).reshape(-1, 4)
        scores = logits.softmax(1).gather(1, classes[:, None])[:, 0]
    return CamResult(heat, maps, classes, scores, boxes, logits)


def _linear_classifier(model: ResNet) -> nn.Linear:
    if not isinstance(model.fc, nn.Linear):
        raise UserError("CAM needs the model's linear classifier; this model has none (num_classes=0)")
    return model.fc


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Run the body with every module of ``model`` in eval mode, then give each module back the mode it had (a
    caller may keep, say, a frozen backbone in eval inside a training model)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def cam(model: ResNet, images: Tensor, target: int | Sequence[int] | Tensor | None = None,
        threshold: float = THRESHOLD) -> CamResult:
    """Class activation maps (Zhou et al. 2016) of ``images`` (N, C, H, W), as the model takes them, for
    ``target`` (None: each image's predicted class; an int: that class for all; N ints: one per image).

    The map is the fc weights of the class over the last stage (``forward_pyramid``'s last entry: C5, stride 32
    for the ImageNet stem, so 4 x 4 at 128 px); it is upsampled to H x W (bilinear, each cell on the
    centre of its receptive field: ``upsample_map``; the authors' code resizes with half-pixel centres, which puts
    the map half a cell off what it sees) and normalised to [0, 1] by its minimum and maximum (the authors' code);
    a constant map gives zeros. For a finer map pass ``dilated(model, 8)``: the same weights, 16 x 16 at 128 px.
    The model runs in eval mode whatever mode it is in, and is given back in its own mode (``_evaluating``).
    Errors: ``UserError`` for a model without classifier or a bad target."""
    fc = _linear_classifier(model)
    with _evaluating(model):
        features = list(model.forward_pyramid(images).values())[-1]
    logits = fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))
    classes = _targets(target, logits)
    maps = class_activation_maps(features, fc.weight, classes)
    stride = feature_stride(model, model.stage_names[-1])
    return _finish(maps, logits, classes, tuple(images.shape[-2:]), threshold, relu=False, stride=stride)


def grad_cam(model: ResNet, images: Tensor, target: int | Sequence[int] | Tensor | None = None,
             stage: str = "layer4", threshold: float = THRESHOLD) -> CamResult:
    """Grad-CAM (Selvaraju et al. 2017) of ``images`` (N, C, H, W) at the output of ``stage`` (one of
    ``model.stage_names``: "layer3" is stride 16, twice CAM's resolution), for ``target`` as in ``cam``.

    ``alpha_k`` is the mean over positions of the gradient of the class's logit (before softmax, as the paper)
    with respect to the stage's channel k; the map ``sum_k alpha_k A_k`` goes through a ReLU, is upsampled to
    H x W (bilinear) and divided by its maximum (all zeros when nothing is positive). Gradients flow only to the
    stage's output: parameters' ``.grad`` are left untouched. The model runs in eval mode and is given back in its
    own mode, as in ``cam``. Errors: ``UserError`` for an unknown stage, a model without classifier or a bad
    target."""
    _linear_classifier(model)
    if stage not in model.stage_names:
        raise UserError(f"unknown stage {stage!r}; the model's stages are {', '.join(model.stage_names)}")
    captured: list[Tensor] = []
    handle = getattr(model, stage).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad(), _evaluating(model):
            logits = model(images)
            activations = captured[-1]
            classes = _targets(target, logits)
            chosen = logits.gather(1, classes[:, None]).sum()  # images are independent: one backward for all
            (grads,) = torch.autograd.grad(chosen, activations)
    finally:
        handle.remove()
    with torch.no_grad():
        maps = class_activation_maps(activations.detach(), grads.float().mean((2, 3)), torch.arange(len(grads)))
    return _finish(maps, logits, classes, tuple(images.shape[-2:]), threshold, relu=True,
                   stride=feature_stride(model, stage))


def _stage_stride(stage: nn.Module) -> int:
    return max([m.stride[0] for m in stage.modules() if isinstance(m, nn.Conv2d)] +
               [m.stride for m in stage.modules() if isinstance(m, ZeroPadShortcut)])


def _stem_stride(model: ResNet) -> int:
    return model.conv1.stride[0] * (model.maxpool.stride if isinstance(model.maxpool, nn.MaxPool2d) else 1)


def feature_stride(model: ResNet, stage: str) -> int:
    """Input pixels between neighbouring cells of ``stage``'s output, read off the modules (so 8 for layer4 of
    ``dilated(model, 8)``). Every convolution and pool of a ResNet pads ``(k - 1) / 2``, so cell ``i`` of a
    stage of stride ``s`` is centred on input pixel ``s * i``."""
    stride = _stem_stride(model)
    for name in model.stage_names[:model.stage_names.index(stage) + 1]:
        stride *= _stage_stride(getattr(model, name))
    return stride


def dilated(model: ResNet, output_stride: int = 8) -> ResNet:
    """A copy of ``model`` whose last stages keep their resolution, by the "a trous" rule of DeepLab (Chen et al.
    2017) that torchvision's ``replace_stride_with_dilation`` also follows: each stage that would take the output
    stride past ``output_stride`` gets stride 1, and every 3x3 convolution after that point dilation (and padding)
    2, 4, ... . The strides are read off the modules, so a model built with a stage unstrided works too. The
    weights and the state dict are the model's; no training is needed.

    Why for CAM: at 128 px the last stage of the ImageNet stem is 4 x 4, and a box from a 4 x 4 map upsampled
    cannot fit a 28-84 px object (IoU >= 0.5 for about a quarter of ideal maps); at output stride 8 the map is
    16 x 16. The dense map is exact where the original one is defined: for inputs whose size is a multiple of
    the model's output stride, ``C5_dilated[..., ::k, ::k] == C5`` with ``k = original stride / output_stride``
    (``tests/test_cam.py``); the positions between are the same network's answers on a shifted grid, and ``cam``
    places them between the original cells (``feature_stride``). The global average of the dense map, and so the
    logits, average those shifted answers (close to, but not, the original logits).

    Errors: ``UserError`` for an output stride that is not a power of two from the stem's stride up to the model's
    own, a model already dilated, or one with BlurPool (its blur would need dilating too)."""
    if model.cfg.blurpool:
        raise UserError("dilated() does not handle BlurPool models (the blur before each stride would need dilation)")
    if any(m.dilation != (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d)):
        raise UserError("the model is already dilated; dilate the original model")
    stride = _stem_stride(model)
    own = feature_stride(model, model.stage_names[-1])
    if output_stride not in (1, 2, 4, 8, 16, 32, 64) or not stride <= output_stride <= own:
        raise UserError(f"output stride must be a power of two from the stem's stride ({stride}) up to the "
                        f"model's own ({own}), got {output_stride}")
    dense, dilation = copy.deepcopy(model), 1
    dense.dilation_factors = {}
    for name in dense.stage_names:
        stage = getattr(dense, name)
        previous = dilation
        if _stage_stride(stage) == 2:
            if stride * 2 <= output_stride:
                stride *= 2
            else:
                dilation *= 2
        dense.dilation_factors[name] = dilation
        if dilation == 1:
            continue
        for block in stage:
            for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
                d = dilation
                if conv.stride != (1, 1):  # the block's strided conv (or projection) reads the undilated grid
                    conv.stride, d = (1, 1), previous
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (d, d), (d, d)
            for m in block.modules():
                if isinstance(m, ZeroPadShortcut):
                    m.stride = 1
    return dense


def upsample_map(maps: Tensor, size: tuple[int, int], stride: int) -> Tensor:
    """Bilinear upsampling of (N, h, w) maps of a stage of output ``stride`` to ``size`` (H, W) input pixels, each
    cell placed where its receptive field is centred: cell ``i`` on pixel ``stride * i`` (``feature_stride``).
    Pixel ``p`` reads the map at ``p / stride`` cells, clamped to the first and last cell. (``F.interpolate``'s
    ``align_corners=False`` would put cell ``i`` on pixel ``stride * (i + 0.5) - 0.5``: half a cell, 16 px at
    stride 32, away from what the cell sees.) A map of ``dilated(model, s)`` lands with its every
    ``32 / s``-th cell where the original map's cell does, so the two agree on the original grid."""
    def weights(out: int, n: int) -> Tensor:
        src = (torch.arange(out, dtype=torch.float64) / stride).clamp(0, n - 1)
        i0 = src.floor().long()
        i1 = (i0 + 1).clamp(max=n - 1)
        frac = (src - i0).float()
        w = torch.zeros(out, n)
        w[torch.arange(out), i0] += 1 - frac
        w[torch.arange(out), i1] += frac
        return w

    (h, w), (H, W) = maps.shape[-2:], size
    return torch.einsum("yh,nhw,xw->nyx", weights(H, h), maps.float(), weights(W, w))


# --- boxes ------------------------------------------------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """The horizontal runs of True in a 2-D bool mask: (row, first column, last column + 1), row by row."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)  # same row order: every run that starts also ends in its row
    return list(zip(rows_s.tolist(), starts.tolist(), ends.tolist()))


def connected_components(mask: np.ndarray) -> list[tuple[int, list[int]]]:
    """The 8-connected components of a 2-D bool mask as ``(pixel count, [x, y, w, h])``, in raster order of
    each component's first pixel. Runs of each row are joined with the overlapping runs of the row above (a
    union-find over runs), so the cost grows with the number of runs, not of pixels."""
    runs = _runs(np.asarray(mask, bool))
    parent = list(range(len(runs)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    prev: list[int] = []  # indices of the runs in the previous row
    row_start = 0
    for k, (row, s, e) in enumerate(runs):
        if k and row != runs[k - 1][0]:
            prev = list(range(row_start, k)) if runs[k - 1][0] == row - 1 else []
            row_start = k
        for j in prev:
            _, ps, pe = runs[j]
            if s <= pe and ps <= e:  # 8-connectivity: columns [s, e) and [ps - 1, pe] overlap
                ra, rb = find(k), find(j)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}  # root -> [area, x0, y0, x1, y1]
    for k, (row, s, e) in enumerate(runs):
        c = comps.setdefault(find(k), [0, s, row, e - 1, row])
        c[0] += e - s
        c[1], c[3], c[4] = min(c[1], s), max(c[3], e - 1), row
    return [(a, [x0, y0, x1 - x0 + 1, y1 - y0 + 1]) for a, x0, y0, x1, y1 in comps.values()]


def box_from_heatmap(heatmap: np.ndarray | Tensor, threshold: float = THRESHOLD) -> list[int]:
    """The CAM paper's box: ``[x, y, w, h]`` (pixels, ints) around the largest 8-connected component of the
    pixels ``>= threshold * max`` of a 2-D non-negative ``heatmap``; ties go to the first component in raster
    order. An all-zero heatmap localises nothing: the box is the whole image.
    Errors: ``UserError`` for a heatmap that is not 2-D, holds negative values or NaN, or a threshold outside
    [0, 1]."""
    h = heatmap.detach().cpu().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap)
    if h.ndim != 2 or h.size == 0:
        raise UserError(f"a heatmap is 2-D (H, W), got shape {h.shape}")
    if not 0 <= threshold <= 1:
        raise UserError(f"threshold is a fraction of the maximum in [0, 1], got {threshold}")
    if np.isnan(h).any() or h.min() < 0:
        raise UserError("heatmap values must be >= 0 and not NaN; normalise it first (cam and grad_cam do)")
    top = h.max()
    if top == 0:
        return [0, 0, h.shape[1], h.shape[0]]
    comps = connected_components(h >= threshold * top)
    best = max(range(len(comps)), key=lambda k: (comps[k][0], -k))
    return comps[best][1]


def localization_accuracy(pred_classes: Sequence[int], pred_boxes: Sequence[Sequence[float]],
                          gt_known_boxes: Sequence[Sequence[float]], labels: Sequence[int],
                          gt_boxes: Sequence[Sequence[float]], iou_threshold: float = 0.5) -> dict[str, float]:
    """ILSVRC-style localisation figures over N images with one object each, as fractions in [0, 1]:

    top1_cls      the predicted class is the label
    top1_loc      the predicted class is the label and its box (``pred_boxes``) has IoU >= ``iou_threshold``
                  with the ground truth
    gt_known_loc  the box made for the true class (``gt_known_boxes``) has IoU >= ``iou_threshold``, whatever
                  was predicted
    mean_iou      mean IoU of the ``gt_known_boxes``

    Boxes are ``[x, y, w, h]``. Errors: ``UserError`` when the sequences differ in length or are empty."""
    n = len(labels)
    if n == 0 or not all(len(s) == n for s in (pred_classes, pred_boxes, gt_known_boxes, gt_boxes)):
        raise UserError("localisation accuracy needs one prediction, box, known-class box and ground truth per image")
    right = [int(p) == int(t) for p, t in zip(pred_classes, labels)]
    pred_iou = [iou(b, g) for b, g in zip(pred_boxes, gt_boxes)]
    known_iou = [iou(b, g) for b, g in zip(gt_known_boxes, gt_boxes)]
    return {
        "top1_cls": sum(right) / n,
        "top1_loc": sum(r and v >= iou_threshold for r, v in zip(right, pred_iou)) / n,
        "gt_known_loc": sum(v >= iou_threshold for v in known_iou) / n,
        "mean_iou": sum(known_iou) / n,
    }


# --- pictures ---------------------------------------------------------------------------------------------

PRED_COLOR = (255, 255, 255)
GT_COLOR = (57, 255, 20)
MAX_PICTURE_SIDE = 4096  # no enlargement takes a picture's longer side past this (nor past the image's own)


def upscale_factor(width: int, height: int, min_side: int = 384, max_side: int = MAX_PICTURE_SIDE) -> int:
    """The integer factor that enlarges a ``width`` x ``height`` image until its shorter side is ``min_side`` px
    (labels stay legible on small images), bounded so that its longer side stays within ``max(max_side, longer
    side)``: a 1500 x 3 strip is drawn 3000 x 6, not 192,000 x 384 (a 74 GB picture). Never below 1. Every picture
    of this package (CAM overlays, detection boxes) is sized by this one rule."""
    want = math.ceil(min_side / max(1, min(width, height)))
    return max(1, min(want, max_side // max(1, width, height)))


def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans Bold (shipped with matplotlib) at ``size`` px; Pillow's default font where it cannot load."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), size)
    except OSError:
        return ImageFont.load_default()


def _as_rgb_float(image: Image.Image | np.ndarray | Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from a PIL image or a (H, W) / (H, W, 3) / (C, H, W) array: uint8 (0-255) or
    float (0-1)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32) / 255
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise UserError(f"an image is (H, W), (H, W, 3) or (C, H, W), got shape {a.shape}")
    return a.astype(np.float32) / 255 if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)


def draw_overlay(image: Image.Image | np.ndarray | Tensor, heatmap: np.ndarray | Tensor,
                 box: Sequence[float] | None, label: str, score: float | None = None,
                 gt_box: Sequence[float] | None = None, min_size: int = 384, cmap: str = "turbo") -> Image.Image:
    """A picture of a heatmap: ``image`` with ``heatmap`` (H, W) in [0, 1] blended on in ``cmap`` (more opaque
    where the heat is higher, so the object stays visible), the predicted ``box`` in white, ``gt_box`` in green,
    and a tag "label 97.3 %" (``score`` a probability) on the box. Boxes are ``[x, y, w, h]`` in image pixels.

    Images smaller than ``min_size`` on their short side are enlarged by an integer factor (bilinear) so the
    picture is legible, bounded by ``upscale_factor``; returns an RGB ``PIL.Image`` of ``factor * W`` x
    ``factor * H``.
    Errors: ``UserError`` for shapes that do not fit together."""
    from matplotlib import colormaps

    rgb = _as_rgb_float(image)
    h = heatmap.detach().cpu().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap, np.float32)
    if h.ndim != 2:
        raise UserError(f"a heatmap is 2-D (H, W), got shape {h.shape}")
    H, W = rgb.shape[:2]
    factor = upscale_factor(W, H, min_size)
    size = (W * factor, H * factor)
    base = np.asarray(Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(size, Image.Resampling.BILINEAR),
                      np.float32) / 255
    heat = np.asarray(Image.fromarray(np.clip(h, 0, 1).astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR))
    heat = np.clip(heat, 0, 1)[..., None]
    color = colormaps[cmap](heat[..., 0])[..., :3].astype(np.float32)
    alpha = 0.15 + 0.55 * heat  # the cold background stays mostly image, the hot region mostly colour
    out = (1 - alpha) * base + alpha * color
    picture = Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(picture)
    width = max(2, factor)
    for b, col in ((gt_box, GT_COLOR), (box, PRED_COLOR)):
        if b is not None:
            x, y, w, hh = (float(v) * factor for v in b)
            draw.rectangle([x, y, x + w - 1, y + hh - 1], outline=col, width=width)
    text = label if score is None else f"{label} {100 * float(score):.1f} %"
    font = label_font(max(13, min(size) // 17))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, width)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    bx, by = (float(box[0]) * factor, float(box[1]) * factor) if box is not None else (0.0, th)
    tx = min(max(0.0, bx), size[0] - tw)
    ty = by - th if by - th >= 0 else min(by + width, size[1] - th)  # above the box, or inside its top edge
    draw.rectangle([tx, ty, tx + tw, ty + th], fill=(20, 20, 20))
    draw.text((tx + pad - left, ty + pad - top), text, fill=(255, 255, 255), font=font)
    return picture
