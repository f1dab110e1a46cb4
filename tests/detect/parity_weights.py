"""The deterministic weights and scenes of the detector parity fixtures, shared by the script that makes them with
torchvision (``benchmarks/peers/make_detect_fixtures.py``, which loads this file by path) and by the tests that
compare our models with them (``test_parity.py``). Only torch is imported, so both environments run it.

Every state-dict entry is a function of its name and shape alone (no module types): a generator seeded from the
SHA-256 of the name draws it, so torchvision's model and ours, which share the names, get identical tensors:

    conv / linear weight (>= 2-d)   N(0, 1) x sqrt(2 / fan_in) x the gain of the first GAINS pattern
                                    matching the name (default 1: He init)
    norm weight (1-d ".weight")     U(0.5, 1.0)        BN / GroupNorm scales under 1: activations stay bounded
    bias                            N(0, 0.05) + the mean of the first BIAS_MEANS pattern matching
    running_mean                    N(0, 0.1)
    running_var                     U(0.5, 1.5)
    num_batches_tracked             0

GAINS sets the spread of the heads' outputs so the detectors make tens of detections with distinct scores (logits
of a few units, box deltas of a few tenths); their values are in every fixture's settings (``RULE``).
"""

from __future__ import annotations

import fnmatch
import hashlib

import torch
from torch import nn

RULE_VERSION = 1
# (fnmatch pattern of the name, gain) of conv / linear weights, the first match wins; others have gain 1
GAINS = (
    ("backbone.fpn.*", 0.35),  # two convs in series per level: P2..P7 of std ~1 instead of ~10
    ("rpn.head.cls_logits.weight", 0.5),  # objectness logits
    ("rpn.head.bbox_pred.weight", 0.1),  # RPN deltas (box coder weights 1)
    ("roi_heads.box_predictor.cls_score.weight", 1.5),  # Fast R-CNN class logits
    ("roi_heads.box_predictor.bbox_pred.weight", 0.5),  # Fast R-CNN deltas (/ (10, 10, 5, 5))
    ("head.classification_head.cls_logits.weight", 0.5),  # RetinaNet class logits
    ("head.regression_head.bbox_reg.weight", 0.1),  # RetinaNet deltas
)
# (pattern, mean) of biases, first match wins; others have mean 0
BIAS_MEANS = (
    ("head.classification_head.cls_logits.bias", -4.0),  # RetinaNet: most anchors under the 0.05 score threshold
)
RULE = {"version": RULE_VERSION, "gains": [list(g) for g in GAINS], "bias_means": [list(b) for b in BIAS_MEANS],
        "conv_linear": "N(0,1) * sqrt(2/fan_in) * gain", "norm_weight": "U(0.5,1)", "bias": "mean + N(0,0.05)",
        "running_mean": "N(0,0.1)", "running_var": "U(0.5,1.5)"}


def _generator(name: str) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(seed)


def parity_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 tensor of state-dict entry ``name`` (int64 zeros for ``num_batches_tracked``)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    g = _generator(name)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "bias":
        mean = next((m for pattern, m in BIAS_MEANS if fnmatch.fnmatchcase(name, pattern)), 0.0)
        return mean + 0.05 * torch.randn(shape, generator=g)
    if leaf == "weight" and len(shape) == 1:
        return 0.5 + 0.5 * torch.rand(shape, generator=g)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    gain = next((g for pattern, g in GAINS if fnmatch.fnmatchcase(name, pattern)), 1.0)
    return torch.randn(shape, generator=g) * (gain * (2.0 / fan_in) ** 0.5)


@torch.no_grad()
def fill_parity_weights(model: nn.Module) -> nn.Module:
    """Overwrite every parameter and buffer in ``model``'s state dict with ``parity_value`` (in place)."""
    for name, t in model.state_dict().items():
        t.copy_(parity_value(name, tuple(t.shape)).to(t.dtype))
    return model


def parity_scene(num_images: int = 2, size: int = 128, num_boxes: int = 4, num_classes: int = 5,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed synthetic batch: images (N, 3, size, size) in 0..1 (multiples of 1/255: a colour gradient plus
    noise, with ``num_boxes`` flat rectangles of random colour), their boxes (N, num_boxes, 4 xyxy pixels, whole
    numbers) and labels (N, num_boxes) in 0..num_classes-1."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    images, boxes, labels = [], [], []
    for _ in range(num_images):
        tint = torch.rand(3, 1, 1, generator=g)
        down = 0.3 * ramp[None, :, None] * torch.rand(3, 1, 1, generator=g)
        across = 0.3 * ramp[None, None, :] * torch.rand(3, 1, 1, generator=g)
        img = 0.3 * tint + down + across + 0.1 * torch.rand(3, size, size, generator=g)
        bxs = []
        for _ in range(num_boxes):
            w, h = (torch.randint(size // 8, size // 2, (2,), generator=g)).tolist()
            x = torch.randint(0, size - w, (1,), generator=g).item()
            y = torch.randint(0, size - h, (1,), generator=g).item()
            img[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
            bxs.append([x, y, x + w, y + h])
        images.append((img.clamp(0, 1) * 255).round() / 255)
        boxes.append(torch.tensor(bxs, dtype=torch.float32))
        labels.append(torch.randint(0, num_classes, (num_boxes,), generator=g))
    return torch.stack(images), torch.stack(boxes), torch.stack(labels)
