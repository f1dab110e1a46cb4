"""Boxes: formats, areas, IoU, and non-maximum suppression, in plain torch (no compiled extension).

Boxes are ``(N, 4)`` float tensors, ``xyxy`` = (x1, y1, x2, y2) in pixels with x2 >= x1 and y2 >= y1 (the layout
torchvision's detection models use); COCO files store ``xywh`` = (x, y, width, height).

``nms`` is greedy NMS as in torchvision and ONNX Runtime: boxes in decreasing score order, each kept box removes
every later one whose IoU with it is strictly greater than the threshold. ``batched_nms`` runs it per class in one
pass: a box only removes boxes of its own class. (torchvision's offset trick, which moves each class to its own
region of the plane, changes the float32 IoUs of far-shifted boxes by rounding; masking the pairs keeps them
exact.) ``tests/test_detect.py`` checks both against a brute-force reference and against ONNX Runtime's
``NonMaxSuppression`` operator.
"""

from __future__ import annotations

import torch
from torch import Tensor


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (..., N, 4) with every box of ``b`` (..., M, 4): (..., N, M). Leading dimensions
    broadcast, so a batch of padded ground truths against one set of anchors is one call. Empty boxes give 0."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU (Rezatofighi et al. 2019) of matching rows of ``a`` and ``b`` (N, 4): IoU minus the share of the
    enclosing box that the union leaves empty. In [-1, 1]."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a) + box_area(b) - inter
    eps = 1e-7
    iou = inter / (union + eps)
    enclose_wh = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = enclose_wh[:, 0] * enclose_wh[:, 1]
    return iou - (enclose - union) / (enclose + eps)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of ``boxes`` (N, 4 xyxy) by ``scores`` (N,): the indices of the kept boxes,
    highest score first (int64). Equal scores keep their input order (a stable sort)."""
    return _greedy(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class (``labels`` (N,) int): the kept indices over all classes, highest score first."""
    return _greedy(boxes, scores, labels, iou_threshold)


def _greedy(boxes: Tensor, scores: Tensor, labels: Tensor | None, iou_threshold: float) -> Tensor:
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    if labels is None:
        return order[_greedy_sorted(boxes[order].float(), iou_threshold)]
    # suppression never crosses classes, so each class runs alone (its boxes in the global score order: the same
    # decisions as one pass over all, at a fraction of the pairs), and the kept boxes merge in that order again
    lab = labels[order]
    kept = []
    for value in torch.unique(lab):
        rank = torch.nonzero(lab == value).squeeze(1)  # positions in the global order, ascending
        kept.append(rank[_greedy_sorted(boxes[order[rank]].float(), iou_threshold)])
    return order[torch.sort(torch.cat(kept)).values]


def _greedy_sorted(b: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of boxes ``b`` (N, 4) already in score order: the kept positions, ascending."""
    # overlap[i, j]: box i (in score order) would remove box j; only i before j matters (the upper triangle)
    overlap = (box_iou(b, b) > iou_threshold).triu_(diagonal=1).cpu().numpy()
    removed = overlap[0].copy()
    keep = [0]
    for i in range(1, overlap.shape[0]):  # a box still standing when its turn comes is kept, and removes its overlaps
        if not removed[i]:
            keep.append(i)
            removed |= overlap[i]
    return torch.as_tensor(keep, dtype=torch.int64, device=b.device)
