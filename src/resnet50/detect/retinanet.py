"""RetinaNet (Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017) on our ResNet.

Read top to bottom, this file is the detector:

    input      (N, C, S, S) in 0..1, normalised inside the model (mean, std of the config)
    backbone   ResNet + FPN -> P3..P7, 256 channels, strides 8..128                     (fpn.py)
    anchors    per level 3 sizes (2^0, 2^1/3, 2^2/3 x base) x 3 aspect ratios = A = 9 per location
    head       classification: 4 x (3x3 conv, ReLU), 3x3 conv -> A*K logits per location
               regression:     4 x (3x3 conv, ReLU), 3x3 conv -> A*4 box deltas per location
    loss       sigmoid focal loss (alpha 0.25, gamma 2) over anchors with IoU >= 0.5 (foreground) or < 0.4
               (background), L1 on the deltas of the foreground (GIoU in v2), both / number of foreground anchors
    decoding   sigmoid scores, deltas -> boxes; then ``postprocess``: score threshold, top-k per level, per-class NMS

Parameter names and shapes are torchvision's ``retinanet_resnet50_fpn`` (``version="v1"``, 34,014,999 parameters
with 91 classes and frozen BN) and ``retinanet_resnet50_fpn_v2`` (``version="v2"``: GroupNorm in the head, P6
from C5, GIoU loss; 38,198,935 with trainable BN). Where this differs from torchvision:

- images are letterboxed to one fixed square size (``image_size``: the longer side, zero padding right and below)
  instead of torchvision's resize to an 800 px shorter side (at most 1333) padded to a multiple of 32; boxes come
  back in the input image's pixels either way;
- the forward pass returns the raw head outputs; the loss (``RetinaNet.loss``) and post-processing (``postprocess``)
  are separate calls, so the network exports to ONNX on its own;
- a ground-truth box with no overlapping anchor at all is not given every zero-IoU anchor as a "low-quality match"
  (torchvision's matcher does that when the best IoU is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import DictConfig
from ..data.stats import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..model import ARCHS, create_model
from .fpn import BackboneWithFPN, freeze_batchnorm
from .nms import batched_nms, box_iou, clip_boxes, generalized_box_iou

# exp() of a regressed log-size is clamped here (torchvision's BoxCoder): no box grows past 1000/16 x its anchor
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class DetectorConfig(DictConfig):
    """Everything that fixes a detector's shape and its decoding. Saved in every checkpoint; unknown keys are
    errors. Defaults are torchvision's ``retinanet_resnet50_fpn`` (COCO: 91 classes, ImageNet statistics)."""

    KIND: ClassVar[str] = "detector"

    # v1: the paper's RetinaNet (torchvision retinanet_resnet50_fpn). v2 (torchvision retinanet_resnet50_fpn_v2, after
    # Zhang et al. 2020, ATSS): GroupNorm(32) after each head conv (convs without bias), P6 from C5 instead of P5,
    # GIoU regression loss. torchvision reports 36.4 (v1) and 41.5 (v2) COCO box mAP at 800 px.
    version: Literal["v1", "v2"] = "v1"
    arch: str = "resnet50"
    variant: str = "v1.5"
    in_chans: int = 3
    num_classes: int = 91  # K: torchvision's COCO models use the category id as the class index (0 and gaps unused)
    norm: Literal["frozen", "batch"] = "frozen"  # the backbone's BN: frozen statistics (fine-tuning) or trained
    bn_eps: float = 1e-5  # torchvision's COCO v1 weights were trained with eps 0 (it sets 0.0 when loading them)
    fpn_channels: int = 256
    # anchors: level l (P3..P7) has sizes int(anchor_sizes[l] * s) for s in anchor_scales, each at every aspect
    # ratio (height / width): torchvision's AnchorGenerator, box corners rounded to whole pixels
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    image_size: int = 800  # inputs are letterboxed to image_size x image_size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fg_iou: float = 0.5  # anchor-to-box IoU from which an anchor is foreground ...
    bg_iou: float = 0.4  # ... and under which background; in between it is ignored by the loss
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    topk_candidates: int = 1000  # per level, before NMS
    detections_per_img: int = 300

    def __post_init__(self) -> None:
        for name in ("anchor_sizes", "anchor_scales", "aspect_ratios", "mean", "std"):
            typ = int if name == "anchor_sizes" else float
            object.__setattr__(self, name, tuple(typ(v) for v in getattr(self, name)))
        checks = [
            (self.version in ("v1", "v2"), f"unknown detector version {self.version!r}; use v1 or v2"),
            (self.arch in ARCHS and ARCHS[self.arch].defaults.get("stem", "imagenet") == "imagenet",
             f"arch {self.arch!r} is not an ImageNet-stem ResNet; use one of resnet18/34/50/101/152"),
            (self.norm in ("frozen", "batch"), f"norm must be 'frozen' or 'batch', not {self.norm!r}"),
            (len(self.anchor_sizes) == 5, "anchor_sizes needs one base size per level P3..P7 (5 values)"),
            (len(self.mean) == len(self.std) == self.in_chans,
             f"mean and std need {self.in_chans} value(s), one per input channel"),
            (self.num_classes >= 1, "num_classes must be >= 1"),
            (self.image_size >= 32, f"image_size {self.image_size} is below the 32 px minimum"),
            (0 < self.bg_iou <= self.fg_iou <= 1, "need 0 < bg_iou <= fg_iou <= 1"),
            # v2's heads use GroupNorm(32 groups): a group of one channel has no spread to normalise over on the
            # one-cell maps of P7 at batch 1 (a crash in prediction), so at least two channels a group
            (self.version != "v2" or (self.fpn_channels % 32 == 0 and self.fpn_channels >= 64),
             f"fpn_channels {self.fpn_channels} does not fit v2's GroupNorm of 32 groups; use a multiple of 32, "
             "at least 64"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.aspect_ratios)

    @property
    def num_labels(self) -> int:
        """The classes a user names (a sigmoid per class: no background class)."""
        return self.num_classes


# --- anchors and box coding --------------------------------------------------------------------------------------

def cell_anchors(cfg: DetectorConfig) -> list[Tensor]:
    """Per level, the A zero-centred anchors (A, 4 xyxy): aspect ratio major, scale minor (torchvision's order,
    which fixes the channel order of the head's outputs)."""
    out = []
    for base in cfg.anchor_sizes:
        sizes = torch.tensor([float(int(base * s)) for s in cfg.anchor_scales])
        ratios = torch.tensor(cfg.aspect_ratios)
        h_ratio = ratios.sqrt()
        ws = ((1 / h_ratio)[:, None] * sizes[None, :]).reshape(-1)
        hs = (h_ratio[:, None] * sizes[None, :]).reshape(-1)
        out.append((torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round())
    return out


def grid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The (H, W) of P3..P7 for an input of ``height`` x ``width``: every stride-2 layer of the ResNet (7x7 stem,
    3x3 max pool, strided 1x1 or 3x3 convs) and of P6/P7 maps n to ceil(n / 2)."""
    sizes, h, w = [], height, width
    for level in range(1, 8):
        h, w = -(-h // 2), -(-w // 2)
        if level >= 3:
            sizes.append((h, w))
    return sizes


def make_anchors(cfg: DetectorConfig, height: int, width: int, device=None) -> tuple[Tensor, list[int]]:
    """All anchors of an input (HWA, 4 xyxy), level by level, row-major over locations, and the count per level.
    The stride of a level is input size // grid size, the top-left corner of each cell its centre (torchvision)."""
    anchors, counts = [], []
    for (gh, gw), cell in zip(grid_sizes(height, width), cell_anchors(cfg)):
        sy, sx = height // gh, width // gw
        ys = torch.arange(gh, dtype=torch.float32) * sy
        xs = torch.arange(gw, dtype=torch.float32) * sx
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        anchors.append((shifts + cell[None]).reshape(-1, 4))
        counts.append(gh * gw * cell.shape[0])
    return torch.cat(anchors).to(device), counts


def encode_boxes(boxes: Tensor, anchors: Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets (dx, dy, dw, dh) of ``boxes`` relative to ``anchors`` (both (N, 4) xyxy): centre offsets
    in anchor widths/heights and log size ratios (R-CNN's parameterisation), times ``weights`` (torchvision's
    BoxCoder: 1 for RetinaNet and the RPN, (10, 10, 5, 5) for Faster R-CNN's box head)."""
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)],
                       dim=1)


def decode_boxes(deltas: Tensor, anchors: Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """The inverse of ``encode_boxes``: boxes (..., 4 xyxy) from deltas and anchors; sizes clamped (BBOX_XFORM_CLIP)."""
    deltas = deltas.float()
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    dx, dy, dw, dh = (d / wt for d, wt in zip(deltas.unbind(-1), weights))
    cx, cy = dx * aw + ax, dy * ah + ay
    w, h = torch.exp(dw.clamp(max=BBOX_XFORM_CLIP)) * aw, torch.exp(dh.clamp(max=BBOX_XFORM_CLIP)) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


BELOW = -1  # background
BETWEEN = -2  # ignored by the loss


def match_anchors(iou: Tensor, valid: Tensor, fg_iou: float, bg_iou: float) -> Tensor:
    """For each anchor the index of its ground-truth box, or BELOW (background) / BETWEEN (ignored).

    ``iou``: (N, G, A) for N images with up to G boxes (padded), ``valid``: (N, G) which boxes are real.
    Each anchor takes its best box: IoU >= fg_iou is a match, < bg_iou background, else ignored. Then each box's
    best anchors (all ties) are matched too, whatever their IoU (the "low-quality matches" of Faster R-CNN), so
    every box that overlaps an anchor at all trains at least one."""
    if iou.shape[1] == 0:  # no image of the batch has a box: all background
        return torch.full((iou.shape[0], iou.shape[2]), BELOW, dtype=torch.int64, device=iou.device)
    iou = torch.where(valid[:, :, None], iou, torch.full_like(iou, -1.0))
    best_iou, best_box = iou.max(dim=1)  # (N, A)
    matches = best_box.masked_fill(best_iou < fg_iou, BETWEEN).masked_fill(best_iou < bg_iou, BELOW)
    best_per_box = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
    low_quality = ((iou == best_per_box) & (best_per_box > 0) & valid[:, :, None]).any(dim=1)  # (N, A)
    return torch.where(low_quality, best_box, matches)  # elementwise throughout: no host sync


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Lin et al. eq. 5, elementwise: -alpha_t (1 - p_t)^gamma log(p_t) with p = sigmoid(logits)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return loss * (alpha * targets + (1 - alpha) * (1 - targets))


# --- the head ---------------------------------------------------------------------------------------------------

def _conv_tower(channels: int, version: str) -> nn.Sequential:
    """Four 3x3 convolutions with ReLU: ``conv.i.0`` the conv (v1 with bias; v2 without, then ``conv.i.1`` a
    GroupNorm(32)), torchvision's Conv2dNormActivation layout."""
    blocks = []
    for _ in range(4):
        if version == "v1":
            blocks.append(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)))
        else:
            blocks.append(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                        nn.GroupNorm(32, channels), nn.ReLU(inplace=True)))
    tower = nn.Sequential(*blocks)
    for m in tower.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return tower


def _flatten_levels(maps: list[Tensor], per_anchor: int) -> Tensor:
    """Per-level (N, A * per_anchor, H, W) maps -> (N, sum of H*W*A, per_anchor), locations row-major, then anchors."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.reshape(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor))
    return torch.cat(out, dim=1)


class ClassificationHead(nn.Module):
    """Per anchor K sigmoid logits. The last bias starts at -log((1 - pi) / pi) with pi = 0.01, so every anchor
    begins as background with probability 0.99 (the paper's prior; without it the focal loss of the ~100k
    background anchors swamps the first steps)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, version: str, prior: float = 0.01) -> None:
        super().__init__()
        self.conv = _conv_tower(channels, version)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))
        self.num_classes = num_classes

    def forward(self, maps: list[Tensor]) -> Tensor:
        return _flatten_levels([self.cls_logits(self.conv(m)) for m in maps], self.num_classes)

    def loss(self, logits: Tensor, labels: Tensor, matches: Tensor) -> Tensor:
        """Focal loss summed over non-ignored anchors, divided by each image's foreground count, mean over images.
        ``logits`` (N, HWA, K), ``labels`` (N, G) class indices of the matched boxes, ``matches`` (N, HWA)."""
        logits = logits.float()
        fg = matches >= 0
        cls = torch.gather(labels, 1, matches.clamp(min=0))
        target = F.one_hot(cls, self.num_classes).to(logits.dtype) * fg[..., None]  # masks, not indexing: no sync
        per_anchor = sigmoid_focal_loss(logits, target).sum(dim=2) * (matches != BETWEEN)
        return (per_anchor.sum(dim=1) / fg.sum(dim=1).clamp(min=1)).mean()

    @staticmethod
    def decode(logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())


class RegressionHead(nn.Module):
    """Per anchor 4 box deltas (dx, dy, dw, dh); zero-initialised output, so every box starts as its anchor."""

    def __init__(self, channels: int, num_anchors: int, version: str) -> None:
        super().__init__()
        self.conv = _conv_tower(channels, version)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)
        self.loss_type = "l1" if version == "v1" else "giou"

    def forward(self, maps: list[Tensor]) -> Tensor:
        return _flatten_levels([self.bbox_reg(self.conv(m)) for m in maps], 4)

    def loss(self, deltas: Tensor, boxes: Tensor, matches: Tensor, anchors: Tensor) -> Tensor:
        """L1 on the encoded deltas (v1) or 1 - GIoU of the decoded boxes (v2), over foreground anchors, divided by
        each image's foreground count, mean over images. ``boxes`` (N, G, 4) the padded ground truth."""
        deltas = deltas.float()
        fg = matches >= 0
        # every anchor's matched box (its own anchor where it has none, so the unused terms stay finite), the loss
        # masked to the foreground: fixed shapes, no host sync
        idx = matches.clamp(min=0)[..., None].expand(-1, -1, 4)
        a = anchors[None].expand_as(deltas)
        gt = torch.where(fg[..., None], torch.gather(boxes, 1, idx), a)
        d, a, gt = deltas.reshape(-1, 4), a.reshape(-1, 4), gt.reshape(-1, 4)
        if self.loss_type == "l1":
            per_anchor = (d - encode_boxes(gt, a)).abs().sum(dim=1)
        else:
            per_anchor = 1 - generalized_box_iou(decode_boxes(d, a), gt)
        per_anchor = per_anchor.reshape(fg.shape)
        per_image = torch.where(fg, per_anchor, torch.zeros_like(per_anchor)).sum(dim=1)
        return (per_image / fg.sum(dim=1).clamp(min=1)).mean()

    @staticmethod
    def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
        return decode_boxes(deltas, anchors)


class RetinaNetHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int, num_classes: int, version: str) -> None:
        super().__init__()
        self.classification_head = ClassificationHead(channels, num_anchors, num_classes, version)
        self.regression_head = RegressionHead(channels, num_anchors, version)

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.classification_head(maps), self.regression_head(maps)


# --- the detector -----------------------------------------------------------------------------------------------

class RetinaNet(nn.Module):
    """``forward(images)`` -> (cls_logits (N, HWA, K), bbox_regression (N, HWA, 4)); ``loss`` and ``postprocess``
    turn those into training losses and detections. ``images``: (N, C, H, W) floats in 0..1 (not normalised)."""

    name: ClassVar[str] = "retinanet"  # the detector's name in checkpoints and on the command line (--detector)
    # which loss terms are classification and which box regression (curves and progress lines)
    loss_groups: ClassVar[dict[str, str]] = {"classification": "cls", "bbox_regression": "box"}

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        body = create_model(cfg.arch, variant=cfg.variant, num_classes=0, in_chans=cfg.in_chans, bn_eps=cfg.bn_eps)
        if cfg.norm == "frozen":
            freeze_batchnorm(body)
        self.backbone = BackboneWithFPN(body, cfg.fpn_channels, p6_from_c5=cfg.version == "v2")
        self.head = RetinaNetHead(cfg.fpn_channels, cfg.num_anchors, cfg.num_classes, cfg.version)
        # not in the state dict: torchvision keeps them in its transform, outside the model's parameters
        self.register_buffer("mean", torch.tensor(cfg.mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).reshape(1, -1, 1, 1), persistent=False)
        self._anchor_cache: dict = {}

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.head(self.backbone(x))

    def anchors(self, height: int, width: int) -> tuple[Tensor, list[int]]:
        key = (height, width, self.mean.device)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(self.cfg, height, width, self.mean.device)
        return self._anchor_cache[key]

    def loss(self, outputs: tuple[Tensor, Tensor], boxes: Tensor, labels: Tensor, valid: Tensor,
             image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """{"classification", "bbox_regression"} for a batch whose ground truth is padded to G boxes per image:
        ``boxes`` (N, G, 4 xyxy, input pixels), ``labels`` (N, G) int64 class indices, ``valid`` (N, G) bool."""
        cls_logits, deltas = outputs
        if boxes.shape[1] == 0:  # a batch of negatives: one invalid slot, so every anchor is background
            n = boxes.shape[0]
            boxes, labels = boxes.new_zeros(n, 1, 4), labels.new_zeros(n, 1)
            valid = torch.zeros(n, 1, dtype=torch.bool, device=valid.device)
        anchors, _ = self.anchors(*image_hw)
        with torch.no_grad():
            matches = match_anchors(box_iou(boxes.float(), anchors), valid, self.cfg.fg_iou, self.cfg.bg_iou)
        return {
            "classification": self.head.classification_head.loss(cls_logits, labels, matches),
            "bbox_regression": self.head.regression_head.loss(deltas, boxes.float(), matches, anchors),
        }

    def postprocess(self, outputs: tuple[Tensor, Tensor], image_hw: tuple[int, int],
                    valid_hw: list[tuple[float, float]] | None = None) -> list[dict[str, Tensor]]:
        """Detections per image from ``forward``'s outputs: :func:`postprocess`."""
        return postprocess(self, outputs, image_hw, valid_hw)


def create_detector(**options) -> RetinaNet:
    """A RetinaNet for ``options`` (any DetectorConfig field), e.g. ``create_detector(num_classes=10, in_chans=1)``."""
    return RetinaNet(DetectorConfig.from_dict(options))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def postprocess(model: RetinaNet, outputs: tuple[Tensor, Tensor], image_hw: tuple[int, int],
                valid_hw: list[tuple[float, float]] | None = None) -> list[dict[str, Tensor]]:
    """Detections per image, as torchvision's RetinaNet makes them: per level, scores above ``score_thresh``, the
    ``topk_candidates`` best (anchor, class) pairs, their boxes decoded and clipped to the image (``valid_hw``:
    each image's unpadded (height, width) in input pixels; default the whole input); then per-class NMS at
    ``nms_thresh`` over all levels and the ``detections_per_img`` best. Returns dicts of boxes (D, 4 xyxy, input
    pixels), scores (D,) and labels (D,) int64, highest score first."""
    cfg = model.cfg
    cls_logits, deltas = outputs
    anchors, counts = model.anchors(*image_hw)
    scores_all = ClassificationHead.decode(cls_logits)
    k = cfg.num_classes
    results = []
    for i in range(cls_logits.shape[0]):
        h, w = valid_hw[i] if valid_hw is not None else image_hw
        boxes, scores, labels = [], [], []
        start = 0
        for count in counts:
            s = scores_all[i, start:start + count].reshape(-1)
            idx = torch.nonzero(s > cfg.score_thresh).squeeze(1)
            top = s[idx].topk(min(cfg.topk_candidates, idx.numel()))
            idx = idx[top.indices]
            anchor_idx = idx // k + start
            boxes.append(clip_boxes(RegressionHead.decode(deltas[i, anchor_idx], anchors[anchor_idx]), h, w))
            scores.append(top.values)
            labels.append(idx % k)
            start += count
        boxes_i, scores_i, labels_i = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes_i, scores_i, labels_i, cfg.nms_thresh)[:cfg.detections_per_img]
        results.append({"boxes": boxes_i[keep], "scores": scores_i[keep], "labels": labels_i[keep]})
    return results
