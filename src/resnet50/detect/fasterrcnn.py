"""Faster R-CNN (Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015) with a feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017) on our ResNet.

Read top to bottom, this file is the detector:

    input      (N, C, S, S) in 0..1, normalised inside the model (mean, std of the config)
    backbone   ResNet -> C2..C5 -> FPN -> P2..P5, 256 channels, strides 4..32; P6 = P5 subsampled by 2 ("pool")
    anchors    one size per level (32, 64, 128, 256, 512 px on P2..P6) x 3 aspect ratios = A = 3 per location
    rpn        3x3 conv + ReLU (v2: two), then 1x1 convs -> A objectness logits and A*4 box deltas per location
    proposals  per level the pre_nms_top_n best anchors, decoded, clipped, boxes under 1e-3 px dropped, NMS at 0.7
               within each level, the post_nms_top_n best                                      (no gradient)
    roi pool   each proposal -> the level of its size (FPN eq. 1: 224 px at P4) -> RoIAlign 7x7    (roi_align.py)
    box head   v1: fc6, fc7 (1024, ReLU); v2: 4 x (3x3 conv, BN, ReLU), fc 1024 + ReLU
    predictor  cls_score: K logits (class 0 = background), bbox_pred: 4 deltas per class, weights (10, 10, 5, 5)
    loss       RPN: binary cross entropy on 256 sampled anchors per image (at most half foreground: IoU >= 0.7 or
               a box's best anchor; background IoU < 0.3), smooth L1 (beta 1/9) on the foreground deltas
               RoI: cross entropy on 512 sampled proposals + ground truth per image (at most a quarter foreground:
               IoU >= 0.5), smooth L1 (beta 1/9) on the foreground's deltas of its class; both / sampled count
    decoding   softmax, per-class boxes, clipped, score > 0.05, boxes under 1e-2 px dropped, per-class NMS at 0.5,
               the 100 best                                                                     (``postprocess``)

Parameter names and shapes are torchvision's ``fasterrcnn_resnet50_fpn`` (``version="v1"``: 41,755,286
parameters with 91 classes and frozen BN, as torchvision publishes) and ``fasterrcnn_resnet50_fpn_v2``
(``version="v2"``: RPN head with two convs, the 4-conv-1-fc box head, BatchNorm in the FPN and the box head;
43,712,278 with trainable BN in the body, ``norm="batch"``). The computations are torchvision's, step for step: the
same sampling draws (``torch.randperm`` in the same order and sizes), matcher, box coding, thresholds; under one
``torch.manual_seed`` this model and torchvision's, with the same weights, give the same losses and detections
(``tests/detect/test_parity.py``; fixtures made by torchvision itself, ``benchmarks/peers/make_detect_fixtures.py``).
Where this differs from torchvision:

- classes: ``num_classes`` counts the background, as torchvision's (91 for COCO: its weights load), but the labels
  this model takes and returns are ours, 0..num_classes-2: our label L is torchvision's class L + 1;
- images are letterboxed to one fixed square size (``image_size``) instead of torchvision's resize to an 800 px
  shorter side; the scales of the maps are inferred from the input size, and training clips proposals to the whole
  input (torchvision: to each image's unpadded size; ``postprocess`` takes them as ``valid_hw``);
- the forward pass returns the network's dense outputs (pyramid, objectness, deltas); proposals, sampling, RoI
  pooling and the box head run in ``FasterRCNN.loss`` (always at the training settings: pre/post NMS top-n
  2000/2000) and ``FasterRCNN.postprocess`` (the test settings, 1000/1000), whatever ``module.training`` is;
- NMS masks pairs of different levels / classes instead of the coordinate offsets torchvision uses for up to 1,000
  boxes on CPU, whose float rounding can flip a decision at the threshold (``nms.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import DictConfig
from ..data.stats import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..model import ARCHS, ResNet, create_model
from .fpn import FeaturePyramidNetwork, freeze_batchnorm
from .nms import batched_nms, box_iou, clip_boxes
from .retinanet import _flatten_levels, cell_anchors, decode_boxes, encode_boxes
from .roi_align import MultiScaleRoIAlign

REPRESENTATION_SIZE = 1024  # the box head's width (torchvision's TwoMLPHead and FastRCNNConvFCHead)
RPN_MIN_SIZE = 1e-3  # proposals narrower or lower than this (pixels) are dropped (torchvision's RPN)
BOX_MIN_SIZE = 1e-2  # and detections (torchvision's RoIHeads)
SMOOTH_L1_BETA = 1 / 9  # both box losses (torchvision, after Detectron)


@dataclass(frozen=True)
class FasterRCNNConfig(DictConfig):
    """Everything that fixes a Faster R-CNN's shape, training targets and decoding. Unknown keys are errors.
    Defaults and option names are torchvision's ``fasterrcnn_resnet50_fpn`` (its ``FasterRCNN`` keyword
    arguments: ``rpn_*`` for the proposal network, ``box_*`` for the RoI heads)."""

    KIND: ClassVar[str] = "Faster R-CNN"

    # v1: torchvision fasterrcnn_resnet50_fpn (37.0 COCO box mAP). v2: fasterrcnn_resnet50_fpn_v2 (Li et al. 2021,
    # "Benchmarking Detection Transfer Learning with Vision Transformers"; 46.7 mAP): two 3x3 convs in the RPN
    # head, box head of 4 x (3x3 conv, BN, ReLU) + one fc, BatchNorm after every FPN conv (convs without bias).
    version: Literal["v1", "v2"] = "v1"
    arch: str = "resnet50"
    variant: str = "v1.5"
    in_chans: int = 3
    num_classes: int = 91  # including the background (class 0), torchvision's meaning: our label L is class L + 1
    norm: Literal["frozen", "batch"] = "frozen"  # the body's BN: frozen (torchvision with weights; v1) or trained
    bn_eps: float = 1e-5  # torchvision's COCO v1 weights were trained with eps 0 (it sets 0.0 when loading them)
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one anchor size per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width, at each size
    image_size: int = 800  # inputs are letterboxed to image_size x image_size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    rpn_pre_nms_top_n_train: int = 2000  # per level, before NMS
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000  # per image, after NMS
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)  # (x, y, w, h) of the box head's deltas

    def __post_init__(self) -> None:
        for name in ("anchor_sizes", "aspect_ratios", "mean", "std", "bbox_reg_weights"):
            typ = int if name == "anchor_sizes" else float
            object.__setattr__(self, name, tuple(typ(v) for v in getattr(self, name)))
        checks = [
            (self.version in ("v1", "v2"), f"unknown Faster R-CNN version {self.version!r}; use v1 or v2"),
            (self.arch in ARCHS and ARCHS[self.arch].defaults.get("stem", "imagenet") == "imagenet",
             f"arch {self.arch!r} is not an ImageNet-stem ResNet; use one of resnet18/34/50/101/152"),
            (self.norm in ("frozen", "batch"), f"norm must be 'frozen' or 'batch', not {self.norm!r}"),
            (len(self.anchor_sizes) == 5, "anchor_sizes needs one size per level P2..P6 (5 values)"),
            (len(self.aspect_ratios) >= 1, "aspect_ratios needs at least one value"),
            (len(self.mean) == len(self.std) == self.in_chans,
             f"mean and std need {self.in_chans} value(s), one per input channel"),
            (self.num_classes >= 2,
             f"num_classes counts the background too (torchvision's meaning): at least 2, not {self.num_classes}"),
            (self.image_size >= 32, f"image_size {self.image_size} is below the 32 px minimum"),
            (self.fpn_channels >= 1, "fpn_channels must be >= 1"),
            (0 <= self.rpn_bg_iou_thresh <= self.rpn_fg_iou_thresh <= 1,
             "need 0 <= rpn_bg_iou_thresh <= rpn_fg_iou_thresh <= 1"),
            (0 <= self.box_bg_iou_thresh <= self.box_fg_iou_thresh <= 1,
             "need 0 <= box_bg_iou_thresh <= box_fg_iou_thresh <= 1"),
            (0 < self.rpn_positive_fraction <= 1 and 0 < self.box_positive_fraction <= 1,
             "rpn_positive_fraction and box_positive_fraction must be in (0, 1]"),
            (min(self.rpn_pre_nms_top_n_train, self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_train,
                 self.rpn_post_nms_top_n_test, self.rpn_batch_size_per_image, self.box_batch_size_per_image,
                 self.box_detections_per_img) >= 1,
             "the rpn_*_top_n_*, *_batch_size_per_image and box_detections_per_img options must be >= 1"),
            (len(self.bbox_reg_weights) == 4 and min(self.bbox_reg_weights) > 0,
             "bbox_reg_weights needs 4 positive values (x, y, w, h)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def anchor_scales(self) -> tuple[float, ...]:
        """One scale per level (torchvision's sizes ((32,), (64,), ...)): what ``retinanet.cell_anchors`` reads."""
        return (1.0,)

    @property
    def num_anchors(self) -> int:
        return len(self.aspect_ratios)

    @property
    def num_labels(self) -> int:
        """The classes a user names: ``num_classes`` less the background."""
        return self.num_classes - 1


# --- the backbone: ResNet + FPN over C2..C5, and the "pool" level ------------------------------------------------

def _conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """torchvision's Conv2dNormActivation(norm_layer=BatchNorm2d, activation_layer=None): ``.0`` conv (no bias),
    ``.1`` BatchNorm2d."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class FeaturePyramidNetworkBN(FeaturePyramidNetwork):
    """v2's pyramid: each lateral 1x1 and output 3x3 conv without bias and followed by BatchNorm2d
    (``inner_blocks.i.{0,1}``, ``layer_blocks.i.{0,1}``: torchvision's FPN with ``norm_layer=BatchNorm2d``)."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.inner_blocks = nn.ModuleList(_conv_bn(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(_conv_bn(out_channels, out_channels, 3) for _ in in_channels)


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by 2 (a 1x1 max pool of stride 2: torchvision's LastLevelMaxPool, the "pool" map).
    No parameters: only the RPN sees this level (anchors of 512 px)."""

    def forward(self, p5: Tensor) -> Tensor:
        return F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)


class RCNNBackboneWithFPN(nn.Module):
    """``body`` (a ResNet with the ImageNet stem) -> C2..C5 -> ``fpn`` -> P2..P5 -> ``fpn.extra_blocks`` -> P6.
    ``forward`` returns the five maps, strides 4 to 64, each with ``out_channels`` channels. The layout of
    torchvision's ``_resnet_fpn_extractor`` (``backbone.body.*``, ``backbone.fpn.*``); ``fpn.BackboneWithFPN`` is
    RetinaNet's (C3..C5, P6/P7 convs)."""

    def __init__(self, body: ResNet, out_channels: int = 256, fpn_norm: bool = False) -> None:
        super().__init__()
        if body.cfg.stem != "imagenet" or len(body.stage_names) != 4:
            raise UserError(f"a detection backbone needs a 4-stage ResNet with the ImageNet stem (strides 4..32); "
                            f"got stem {body.cfg.stem!r} with {len(body.stage_names)} stages")
        body.avgpool, body.fc = nn.Identity(), nn.Identity()
        self.body = body
        fpn_class = FeaturePyramidNetworkBN if fpn_norm else FeaturePyramidNetwork
        self.fpn = fpn_class(list(body.feature_channels), out_channels)
        self.fpn.extra_blocks = LastLevelMaxPool()
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        c = self.body.forward_pyramid(x)
        p = self.fpn([c["C2"], c["C3"], c["C4"], c["C5"]])
        return p + [self.fpn.extra_blocks(p[-1])]


# --- the region proposal network ---------------------------------------------------------------------------------

class RPNHead(nn.Module):
    """Shared over levels: ``conv`` (``conv_depth`` x (3x3 conv, ReLU): ``conv.i.0``), then 1x1 convs to A
    objectness logits (``cls_logits``) and A*4 deltas (``bbox_pred``); N(0, 0.01) weights, zero biases."""

    def __init__(self, channels: int, num_anchors: int, conv_depth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                                    for _ in range(conv_depth)))
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(objectness (N, sum HWA), deltas (N, sum HWA, 4)): levels in order, locations row-major, then anchors."""
        t = [self.conv(m) for m in maps]
        return (_flatten_levels([self.cls_logits(x) for x in t], 1).squeeze(2),
                _flatten_levels([self.bbox_pred(x) for x in t], 4))


class RegionProposalNetwork(nn.Module):
    """Holds the head (``rpn.head.*``); anchors, proposals and the RPN loss are FasterRCNN's methods below."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.head = RPNHead(cfg.fpn_channels, cfg.num_anchors, conv_depth=1 if cfg.version == "v1" else 2)


def make_anchors(cfg: FasterRCNNConfig, image_hw: tuple[int, int], grid_hw: list[tuple[int, int]],
                 device=None) -> Tensor:
    """All anchors of an input (sum HWA, 4 xyxy), level by level, row-major over locations: per level the cell
    anchors (aspect ratio major) at each cell's top-left corner, the stride being input size // grid size
    (torchvision's AnchorGenerator)."""
    out = []
    for (gh, gw), cell in zip(grid_hw, cell_anchors(cfg)):
        sy, sx = image_hw[0] // gh, image_hw[1] // gw
        yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32) * sy, torch.arange(gw, dtype=torch.float32) * sx,
                                indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + cell[None]).reshape(-1, 4))
    return torch.cat(out).to(device)


BELOW = -1  # background
BETWEEN = -2  # ignored by the loss


def match_boxes(iou: Tensor, valid: Tensor | None, fg_iou: float, bg_iou: float, low_quality: bool) -> Tensor:
    """torchvision's Matcher over a padded batch: ``iou`` (..., G, M) of G boxes with M anchors or proposals,
    ``valid`` (..., G) which boxes are real (None: all). Each of the M takes its best box (the first on ties):
    IoU >= fg_iou a match, < bg_iou BELOW, else BETWEEN. With ``low_quality`` (the RPN) each box's best anchors,
    all ties, take their own best box whatever its IoU, zero included (torchvision's rule). Returns (..., M)."""
    if valid is not None:
        iou = torch.where(valid[..., None], iou, torch.full_like(iou, -1.0))
    best_iou, best_box = iou.max(dim=-2)
    matches = best_box.masked_fill((best_iou >= bg_iou) & (best_iou < fg_iou), BETWEEN)
    matches = matches.masked_fill(best_iou < bg_iou, BELOW)
    if low_quality:
        top = iou == iou.max(dim=-1, keepdim=True).values
        if valid is not None:
            top &= valid[..., None]
        matches = torch.where(top.any(dim=-2), best_box, matches)
    return matches


def sample_balanced(labels: list[Tensor], batch_size_per_image: int,
                    positive_fraction: float) -> tuple[list[Tensor], list[Tensor]]:
    """torchvision's BalancedPositiveNegativeSampler: per image (labels >= 1 foreground, 0 background, -1 ignored)
    up to batch_size x positive_fraction foreground and the rest background, each a ``torch.randperm`` draw, in
    torchvision's order and sizes (per image: foreground, then background), so a seed gives torchvision's
    samples. Returns per image the (M,) bool masks of the sampled foreground and background."""
    pos_masks, neg_masks = [], []
    for lab in labels:
        positive = torch.nonzero(lab >= 1).squeeze(1)
        negative = torch.nonzero(lab == 0).squeeze(1)
        num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
        num_neg = min(negative.numel(), batch_size_per_image - num_pos)
        pos = positive[torch.randperm(positive.numel(), device=lab.device)[:num_pos]]
        neg = negative[torch.randperm(negative.numel(), device=lab.device)[:num_neg]]
        pos_mask = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
        neg_mask = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
        pos_masks.append(pos_mask.index_fill_(0, pos, True))
        neg_masks.append(neg_mask.index_fill_(0, neg, True))
    return pos_masks, neg_masks


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes (M, 4 xyxy) whose width and height are both >= ``min_size``."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((w >= min_size) & (h >= min_size)).squeeze(1)


# --- the RoI heads -----------------------------------------------------------------------------------------------

class TwoMLPHead(nn.Module):
    """v1's box head: the flattened 256 x 7 x 7 RoI features -> fc6 -> ReLU -> fc7 -> ReLU (1024 each)."""

    def __init__(self, in_features: int, width: int = REPRESENTATION_SIZE) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, width)
        self.fc7 = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNConvFCHead(nn.Sequential):
    """v2's box head: 4 x (3x3 conv without bias, BatchNorm2d, ReLU) at 256 channels (``i.0``, ``i.1``), flatten,
    one fc to 1024 and ReLU (``5``): torchvision's FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024])."""

    def __init__(self, channels: int, resolution: int, width: int = REPRESENTATION_SIZE) -> None:
        blocks: list[nn.Module] = []
        cin = channels
        for _ in range(4):
            blocks.append(nn.Sequential(nn.Conv2d(cin, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                        nn.ReLU(inplace=True)))
            cin = 256
        super().__init__(*blocks, nn.Flatten(), nn.Linear(cin * resolution ** 2, width), nn.ReLU(inplace=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class FastRCNNPredictor(nn.Module):
    """Per RoI K class logits (``cls_score``, background first) and K x 4 deltas (``bbox_pred``)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """RoIAlign over P2..P5 (``box_roi_pool``, no parameters), ``box_head``, ``box_predictor``."""

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.box_roi_pool = MultiScaleRoIAlign(output_size=7, sampling_ratio=2)
        if cfg.version == "v1":
            self.box_head: nn.Module = TwoMLPHead(cfg.fpn_channels * 7 * 7)
        else:
            self.box_head = FastRCNNConvFCHead(cfg.fpn_channels, 7)
        self.box_predictor = FastRCNNPredictor(REPRESENTATION_SIZE, cfg.num_classes)

    def forward(self, maps: list[Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """``maps`` P2..P5, ``proposals`` per image (Ri, 4): (class logits (R, K), deltas (R, K * 4))."""
        return self.box_predictor(self.box_head(self.box_roi_pool(maps, proposals, image_shapes)))


# --- the detector ------------------------------------------------------------------------------------------------

class FasterRCNN(nn.Module):
    """``forward(images)`` -> {"features": [P2..P6], "objectness": (N, sum HWA), "deltas": (N, sum HWA, 4)}, the
    dense part; ``loss`` and ``postprocess`` run the proposals and the RoI heads on it. ``images``: (N, C, H, W)
    floats in 0..1 (not normalised)."""

    name: ClassVar[str] = "fasterrcnn"  # the detector's name in checkpoints and on the command line (--detector)
    # which loss terms are classification and which box regression (curves and progress lines)
    loss_groups: ClassVar[dict[str, str]] = {"loss_objectness": "cls", "loss_rpn_box_reg": "box", "loss_classifier": "cls",
                   "loss_box_reg": "box"}

    def __init__(self, cfg: FasterRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        body = create_model(cfg.arch, variant=cfg.variant, num_classes=0, in_chans=cfg.in_chans, bn_eps=cfg.bn_eps)
        if cfg.norm == "frozen":
            freeze_batchnorm(body)
        self.backbone = RCNNBackboneWithFPN(body, cfg.fpn_channels, fpn_norm=cfg.version == "v2")
        self.rpn = RegionProposalNetwork(cfg)
        self.roi_heads = RoIHeads(cfg)
        # not in the state dict: torchvision keeps them in its transform, outside the model's parameters
        self.register_buffer("mean", torch.tensor(cfg.mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).reshape(1, -1, 1, 1), persistent=False)
        self._anchor_cache: dict = {}

    def forward(self, images: Tensor) -> dict:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self.backbone(x)
        objectness, deltas = self.rpn.head(features)
        return {"features": features, "objectness": objectness, "deltas": deltas}

    def anchors(self, image_hw: tuple[int, int], features: list[Tensor]) -> tuple[Tensor, list[int]]:
        """The anchors of an input (sum HWA, 4 xyxy) and their count per level, from the maps' sizes."""
        grid = [tuple(f.shape[-2:]) for f in features]
        key = (tuple(image_hw), tuple(grid), features[0].device)
        if key not in self._anchor_cache:
            anchors = make_anchors(self.cfg, image_hw, grid, features[0].device)
            self._anchor_cache[key] = anchors, [h * w * self.cfg.num_anchors for h, w in grid]
        return self._anchor_cache[key]

    def box_outputs(self, features: list[Tensor], rois: list[Tensor], image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The RoI heads on P2..P5 for per-image ``rois`` (Ri, 4): (class logits (R, K), deltas (R, K * 4)). They
        run at the pyramid's precision: under autocast (``forward`` in bf16 / fp16) the features are half precision
        and so is this step, inside or outside the caller's autocast region (the loss and ``postprocess`` are
        called outside it)."""
        dtype = features[0].dtype
        half = dtype in (torch.bfloat16, torch.float16)
        with torch.autocast(features[0].device.type, dtype=dtype if half else torch.bfloat16, enabled=half):
            return self.roi_heads(features[:4], rois, [tuple(image_hw)] * len(rois))

    @torch.no_grad()
    def proposals(self, outputs: dict, image_hw: tuple[int, int], training: bool,
                  valid_hw: list[tuple[float, float]] | None = None) -> list[Tensor]:
        """Per image the RPN's proposals (P, 4 xyxy, input pixels), best first: per level the pre-NMS top-n by
        objectness, decoded (weights 1), clipped to the image (``valid_hw``: each image's unpadded (height, width);
        default the whole input), boxes under 1e-3 px and objectness (sigmoid) under ``rpn_score_thresh``
        dropped, NMS within each level, the post-NMS top-n. ``training`` picks the *_train or *_test top-n."""
        cfg = self.cfg
        pre = cfg.rpn_pre_nms_top_n_train if training else cfg.rpn_pre_nms_top_n_test
        post = cfg.rpn_post_nms_top_n_train if training else cfg.rpn_post_nms_top_n_test
        objectness = outputs["objectness"].detach().float()
        anchors, counts = self.anchors(image_hw, outputs["features"])
        boxes = decode_boxes(outputs["deltas"].detach(), anchors[None])
        levels = torch.cat([torch.full((c,), i, dtype=torch.int64, device=anchors.device)
                            for i, c in enumerate(counts)])
        top, start = [], 0
        for ob in objectness.split(counts, dim=1):
            top.append(ob.topk(min(pre, ob.shape[1]), dim=1).indices + start)
            start += ob.shape[1]
        top = torch.cat(top, dim=1)
        batch = torch.arange(objectness.shape[0], device=top.device)[:, None]
        scores, levels, boxes = torch.sigmoid(objectness[batch, top]), levels[top], boxes[batch, top]
        out = []
        for i in range(boxes.shape[0]):
            h, w = valid_hw[i] if valid_hw is not None else image_hw
            b, s, lvl = clip_boxes(boxes[i], h, w), scores[i], levels[i]
            keep = remove_small_boxes(b, RPN_MIN_SIZE)
            b, s, lvl = b[keep], s[keep], lvl[keep]
            keep = torch.nonzero(s >= cfg.rpn_score_thresh).squeeze(1)
            b, s, lvl = b[keep], s[keep], lvl[keep]
            out.append(b[batched_nms(b, s, lvl, cfg.rpn_nms_thresh)[:post]])
        return out

    def loss(self, outputs: dict, boxes: Tensor, labels: Tensor, valid: Tensor,
             image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """torchvision's four losses, {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
        for a batch whose ground truth is padded to G boxes per image: ``boxes`` (N, G, 4 xyxy, input pixels),
        ``labels`` (N, G) int64, OUR class indices 0..num_classes-2 (class L + 1 of the box head; 0 is the
        background), ``valid`` (N, G) bool. Draws the RPN's samples, then the RoI heads' (``sample_balanced``),
        from torch's global generator."""
        cfg = self.cfg
        features, objectness, deltas = outputs["features"], outputs["objectness"].float(), outputs["deltas"].float()
        n = objectness.shape[0]
        boxes = boxes.float()
        if boxes.shape[1] == 0:  # a batch of negatives: one invalid slot, so every anchor is background
            boxes, labels = boxes.new_zeros(n, 1, 4), labels.new_zeros(n, 1)
            valid = torch.zeros(n, 1, dtype=torch.bool, device=valid.device)
        anchors, _ = self.anchors(image_hw, features)
        proposals = self.proposals(outputs, image_hw, training=True)

        # the RPN: every anchor labelled 1 (foreground), 0 (background) or -1 (ignored), a sample of them trained
        with torch.no_grad():
            matches = match_boxes(box_iou(boxes, anchors), valid, cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh,
                                  low_quality=True)  # (N, A)
            rpn_labels = (matches >= 0).float().masked_fill(matches == BETWEEN, -1.0)
            pos, neg = sample_balanced(list(rpn_labels), cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction)
            pos = torch.nonzero(torch.cat(pos)).squeeze(1)  # indices into the N x A anchors of the batch
            sampled = torch.cat([pos, torch.nonzero(torch.cat(neg)).squeeze(1)])
            a = anchors.shape[0]
            gt = boxes[pos // a, matches.reshape(-1)[pos]]
            rpn_targets = encode_boxes(gt, anchors[pos % a])
        loss_rpn_box_reg = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], rpn_targets, beta=SMOOTH_L1_BETA,
                                            reduction="sum") / sampled.numel()
        loss_objectness = F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled],
                                                             rpn_labels.reshape(-1)[sampled])

        # the RoI heads: proposals and the ground truth itself, labelled with a class (0: background) or -1
        with torch.no_grad():
            rois, roi_labels, roi_gt = [], [], []
            for i in range(n):
                gt_i, lab_i = boxes[i][valid[i]], labels[i][valid[i]] + 1
                rois_i = torch.cat([proposals[i], gt_i])
                if gt_i.shape[0] == 0:
                    m = torch.zeros(rois_i.shape[0], dtype=torch.int64, device=rois_i.device)
                    lab, gt_i = torch.zeros_like(m), rois_i.new_zeros(1, 4)
                else:
                    m = match_boxes(box_iou(gt_i, rois_i), None, cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
                                    low_quality=False)
                    lab = lab_i[m.clamp(min=0)].masked_fill(m == BELOW, 0).masked_fill(m == BETWEEN, -1)
                    m = m.clamp(min=0)
                rois.append(rois_i)
                roi_labels.append(lab)
                roi_gt.append(gt_i[m])
            pos, neg = sample_balanced(roi_labels, cfg.box_batch_size_per_image, cfg.box_positive_fraction)
            keep = [torch.nonzero(p | q).squeeze(1) for p, q in zip(pos, neg)]
            rois = [r[k] for r, k in zip(rois, keep)]
            roi_labels = torch.cat([lab[k] for lab, k in zip(roi_labels, keep)])
            roi_targets = encode_boxes(torch.cat([g[k] for g, k in zip(roi_gt, keep)]), torch.cat(rois),
                                       cfg.bbox_reg_weights)
        class_logits, box_regression = self.box_outputs(features, rois, image_hw)
        class_logits, box_regression = class_logits.float(), box_regression.float()
        loss_classifier = F.cross_entropy(class_logits, roi_labels)
        fg = torch.nonzero(roi_labels > 0).squeeze(1)
        box_regression = box_regression.reshape(box_regression.shape[0], -1, 4)
        loss_box_reg = F.smooth_l1_loss(box_regression[fg, roi_labels[fg]], roi_targets[fg], beta=SMOOTH_L1_BETA,
                                        reduction="sum") / roi_labels.numel()
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg,
                "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    @torch.no_grad()
    def postprocess(self, outputs: dict, image_hw: tuple[int, int],
                    valid_hw: list[tuple[float, float]] | None = None) -> list[dict[str, Tensor]]:
        """Detections per image, as torchvision's eval path makes them: the RPN's proposals at the test settings,
        the RoI heads, softmax, each class's box decoded (weights ``bbox_reg_weights``) and clipped to the image
        (``valid_hw``: each image's unpadded (height, width) in input pixels; default the whole input), the
        background dropped, scores above ``box_score_thresh``, boxes under 1e-2 px dropped, per-class NMS at
        ``box_nms_thresh``, the ``box_detections_per_img`` best. Returns dicts of boxes (D, 4 xyxy, input
        pixels), scores (D,) and labels (D,) int64 in OUR indices (box-head class - 1), highest score first."""
        cfg = self.cfg
        proposals = self.proposals(outputs, image_hw, training=False, valid_hw=valid_hw)
        n = len(proposals)
        class_logits, box_regression = self.box_outputs(outputs["features"], proposals, image_hw)
        k = class_logits.shape[1]
        boxes_all = decode_boxes(box_regression.float().reshape(-1, k, 4), torch.cat(proposals)[:, None, :],
                                 cfg.bbox_reg_weights)
        scores_all = F.softmax(class_logits.float(), dim=-1)
        results = []
        for i, (boxes, scores) in enumerate(zip(boxes_all.split([len(p) for p in proposals]),
                                                scores_all.split([len(p) for p in proposals]))):
            h, w = valid_hw[i] if valid_hw is not None else image_hw
            boxes = clip_boxes(boxes, h, w)[:, 1:].reshape(-1, 4)
            labels = torch.arange(k, device=scores.device).expand_as(scores)[:, 1:].reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.nonzero(scores > cfg.box_score_thresh).squeeze(1)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, BOX_MIN_SIZE)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, cfg.box_nms_thresh)[:cfg.box_detections_per_img]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep] - 1})
        return results


def create_fasterrcnn(**options) -> FasterRCNN:
    """A Faster R-CNN for ``options`` (any FasterRCNNConfig field), e.g. ``create_fasterrcnn(num_classes=11)`` for
    10 classes of ours plus the background, ``create_fasterrcnn(version="v2", norm="batch")`` for torchvision's
    ``fasterrcnn_resnet50_fpn_v2`` layout."""
    return FasterRCNN(FasterRCNNConfig.from_dict(options))

