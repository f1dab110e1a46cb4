"""RoIAlign (He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017) and its multi-scale form over a feature
pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, eq. 1), in plain torch.

    roi_align           each box -> output_size bins; each bin the mean of a grid of bilinear samples
    roi_levels          each box -> the pyramid level of its size: floor(4 + log2(sqrt(wh) / 224)), clamped
    MultiScaleRoIAlign  boxes in image pixels -> their level -> roi_align on that level's map at its scale

The semantics are exactly torchvision's (``torchvision.ops.roi_align``, csrc/ops/cpu/roi_align_kernel.cpp, and
``torchvision.ops.MultiScaleRoIAlign``); ``tests/detect/test_parity.py`` compares both with outputs torchvision
produced (``benchmarks/peers/make_detect_fixtures.py``). Per RoI, in feature-map cells (box x ``spatial_scale``):

- ``aligned=False`` (Faster R-CNN's): the box as given, its width and height at least 1 cell;
  ``aligned=True`` (Detectron2's): shifted by -0.5 so a sample at a cell's centre reads that cell exactly, sizes
  not forced to 1;
- each of the ``ph x pw`` bins is sampled on a ``gy x gx`` grid at the centres of equal sub-cells:
  ``sampling_ratio`` per axis, or, when it is <= 0, ceil(box size / bins) per axis (adaptive, per RoI);
- a sample above or left of -1 or beyond the map's height / width contributes 0; otherwise it is clamped into the
  map and read bilinearly; a bin is the sum of its samples / (gy * gx) (at least 1).

Written as matrix products (no Python loop per RoI): bilinear sampling and the bin mean are separable, so each RoI
is Wy @ map @ Wx^T with its weights scattered into dense (bins x H) and (bins x W) matrices; autograd
differentiates it with respect to the feature map. The boxes are treated as constants, as in torchvision (its
kernel has no gradient for them). The sums run in another order than torchvision's kernel: equal to about 1e-6.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import UserError
from .nms import box_area


def _as_rois(boxes: Tensor | list[Tensor]) -> Tensor:
    """(K, 5) rows of (image index, x1, y1, x2, y2) from either that tensor or a list of per-image (Ki, 4) boxes."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise UserError(f"roi_align boxes as one tensor need shape (K, 5) = (image, x1, y1, x2, y2), "
                            f"got {tuple(boxes.shape)}; or pass a list of (Ki, 4) boxes per image")
        return boxes
    for b in boxes:
        if b.dim() != 2 or b.shape[1] != 4:
            raise UserError(f"roi_align boxes per image need shape (Ki, 4) xyxy, got {tuple(b.shape)}")
    if not boxes:
        return torch.zeros(0, 5)
    idx = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(idx), torch.cat(boxes)], dim=1)


def _axis_samples(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int,
                  max_grid: int) -> tuple[Tensor, Tensor]:
    """One axis of every RoI's samples: for (K, bins, max_grid, 2) the map index of the low and high bilinear
    neighbour and its weight, the weight 0 for samples beyond a RoI's own grid or outside [-1, size]."""
    dtype = start.dtype
    b = torch.arange(bins, dtype=dtype, device=start.device)
    i = torch.arange(max_grid, dtype=dtype, device=start.device)
    # the kernel's expression: start + bin * bin_size + (i + 0.5) * bin_size / grid (an empty grid samples nothing)
    pos = (start[:, None, None] + b[None, :, None] * bin_size[:, None, None]) \
        + (i[None, None, :] + 0.5) * bin_size[:, None, None] / grid.clamp(min=1).to(dtype)[:, None, None]
    inside = (pos >= -1.0) & (pos <= size) & (i[None, None, :] < grid[:, None, None])
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)  # pos >= 0: the kernel's (int) truncation
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1), weights


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` in plain torch: (K, C, ph, pw) features of K boxes on ``input`` (N, C, H, W).

    ``boxes``: (K, 5) rows of (image index into N, x1, y1, x2, y2) or a list of N (Ki, 4) xyxy tensors, in the
    coordinates that ``spatial_scale`` maps onto the map (image pixels x 1/stride); ``output_size``: ph (= pw) or
    (ph, pw); ``sampling_ratio``: samples per bin and axis, <= 0 for ceil(box size / bins) per RoI;
    ``aligned``: shift by half a cell (see the module docstring). Differentiable with respect to ``input``.
    Half and bfloat16 maps are pooled in float32 and the result cast back (torchvision's autocast rule: box
    coordinates of hundreds of pixels in bfloat16 would be off by whole pixels)."""
    if input.dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(input.device.type, enabled=False):
            return roi_align(input.float(), boxes, output_size, spatial_scale, sampling_ratio,
                             aligned).to(input.dtype)
    rois = _as_rois(boxes).to(input.dtype).detach()
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    _, c, h, w = input.shape
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros(0, c, ph, pw)
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=input.dtype)
    x1, y1 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    x2, y2 = rois[:, 3] * scale - offset, rois[:, 4] * scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).to(torch.int64), torch.ceil(roi_w / pw).to(torch.int64)
    gy, gx = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    y_idx, y_wt = _axis_samples(y1, bin_h, grid_h, ph, h, gy)  # (K, ph, gy, 2)
    x_idx, x_wt = _axis_samples(x1, bin_w, grid_w, pw, w, gx)  # (K, pw, gx, 2)
    y_idx, y_wt = y_idx.reshape(k, ph, 2 * gy), y_wt.reshape(k, ph, 2 * gy)
    x_idx, x_wt = x_idx.reshape(k, pw, 2 * gx), x_wt.reshape(k, pw, 2 * gx)
    # a bin's value is separable: sum over its samples of wy(sample row) * wx(sample column) * map, so each RoI's
    # pooling is Wy (ph, H) @ map (H, W) @ Wx^T (W, pw), the bilinear weights (and the 1 / grid of the mean)
    # scattered into dense rows; the products run as GEMMs per image (cheap next to gathering 4 corners of every
    # sample: 16 reads of C channels per bin at sampling ratio 2)
    wy = input.new_zeros(k, ph, h).scatter_add_(2, y_idx, y_wt) / grid_h.clamp(min=1).to(input.dtype)[:, None, None]
    wx = input.new_zeros(k, pw, w).scatter_add_(2, x_idx, x_wt) / grid_w.clamp(min=1).to(input.dtype)[:, None, None]
    image = rois[:, 0].to(torch.int64)
    order, pieces = [], []
    with torch.autocast(input.device.type, enabled=False):  # float32 maps stay float32 under autocast
        for i in torch.unique(image).tolist():
            sel = torch.nonzero(image == i).squeeze(1)
            m = sel.numel()
            rows = wy[sel].reshape(m * ph, h) @ input[i].permute(1, 0, 2).reshape(h, c * w)  # (m ph, C W)
            rows = rows.reshape(m, ph, c, w).permute(0, 2, 1, 3).reshape(m, c * ph, w)
            pieces.append(torch.bmm(rows, wx[sel].transpose(1, 2)).reshape(m, c, ph, pw))
            order.append(sel)
    out = torch.cat(pieces)
    order = torch.cat(order)
    return out if bool((order[1:] > order[:-1]).all()) else out[torch.argsort(order)]


def roi_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
               eps: float = 1e-6) -> Tensor:
    """The FPN paper's eq. 1 as torchvision's ``LevelMapper``: for boxes (R, 4 xyxy, image pixels) the level
    k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps) clamped to [k_min, k_max], returned as
    an index from k_min (int64, (R,)). A 224 x 224 box goes to P4, 112 x 112 to P3, 448 x 448 to P5."""
    s = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


def infer_scale(feature_hw: tuple[int, int], image_hw: tuple[int, int]) -> float:
    """A map's scale relative to the image, as torchvision infers it: 2 ** round(log2(map height / image height))."""
    return 2.0 ** round(math.log2(feature_hw[0] / image_hw[0]))


class MultiScaleRoIAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign`` with Faster R-CNN's settings (7 x 7 output, sampling ratio 2,
    aligned False): each box is pooled from the pyramid level its size maps to (``roi_levels``, canonical 224 px
    at level 4). No parameters."""

    def __init__(self, output_size: int = 7, sampling_ratio: int = 2, canonical_scale: int = 224,
                 canonical_level: int = 4) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, features: list[Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """``features``: the maps to pool from, finest first (P2..P5, (N, C, Hl, Wl)); ``boxes``: per image
        (Ri, 4 xyxy, image pixels); ``image_shapes``: per image (height, width) in pixels, whose largest sets each
        map's scale (``infer_scale``), as torchvision does. Returns (sum Ri, C, 7, 7), images in order."""
        height, width = max(s[0] for s in image_shapes), max(s[1] for s in image_shapes)
        scales = [infer_scale(f.shape[-2:], (height, width)) for f in features]
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        rois = _as_rois(boxes).to(features[0].dtype)
        c = features[0].shape[1]
        result = features[0].new_zeros(rois.shape[0], c, *self.output_size)
        if rois.shape[0] == 0:
            return result
        levels = roi_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel():
                result = result.index_copy(0, idx, roi_align(feature, rois[idx], self.output_size, scale,
                                                               self.sampling_ratio, aligned=False))
        return result
