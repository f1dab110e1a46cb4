"""The detection backbone: our ResNet with a feature pyramid on top (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017), in the layout of torchvision's ``BackboneWithFPN``:

    body    the ResNet without avgpool and fc: conv1, bn1, layer1..layer4         -> C3 (stride 8), C4 (16), C5 (32)
    fpn     inner_blocks.i.0   1x1 conv, C_i -> 256 (the lateral connections)
            layer_blocks.i.0   3x3 conv, 256 -> 256 after the top-down sum       -> P3, P4, P5
            extra_blocks.p6    3x3/2 conv on P5 (RetinaNet v1) or on C5 (v2)      -> P6 (stride 64)
            extra_blocks.p7    ReLU, 3x3/2 conv                                    -> P7 (stride 128)

Key names are public API: ``backbone.body.*`` are exactly our (and torchvision's, and timm's) ResNet names, so
classification checkpoints initialise the body directly, and torchvision's detection checkpoints load strictly.
Checkpoints written before torchvision 0.13 name the FPN convolutions ``inner_blocks.i.weight`` (no ``.0``);
``resnet50.detect.checkpoint.upgrade_torchvision_keys`` renames them, as torchvision's own loading hook does.

Batch norm in the body is frozen by default (``FrozenBatchNorm2d``: fixed statistics and affine terms, as buffers),
as torchvision does for detection, where a few images per batch give poor batch statistics; ``norm="batch"``
keeps ordinary BatchNorm2d (needed to train the body from scratch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import weights
from ..errors import UserError
from ..model import ResNet


class FrozenBatchNorm2d(nn.Module):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with all four as buffers (no gradient, no
    statistics update): the state dict of torchvision's ``FrozenBatchNorm2d`` (a BatchNorm2d's, less
    ``num_batches_tracked``, which is dropped on load)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d holding its current values (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.of(child))
        else:
            freeze_batchnorm(child)
    return module


class FeaturePyramidNetwork(nn.Module):
    """Lateral 1x1 convolutions, a top-down path (nearest-neighbour upsampling and sum), a 3x3 convolution per level.
    Each convolution sits in a one-element Sequential (``inner_blocks.i.0``), torchvision's layout since 0.13."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """``feats``: backbone maps from fine to coarse (C3, C4, C5); returns (P3, P4, P5) of ``out_channels``."""
        inner = self.inner_blocks[-1](feats[-1])
        out = [self.layer_blocks[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            out.insert(0, self.layer_blocks[i](inner))
        return out


class LastLevelP6P7(nn.Module):
    """P6 = 3x3/2 conv of P5 (v1; ``in_channels`` = the FPN width) or of C5 (v2; ``in_channels`` = C5's channels);
    P7 = 3x3/2 conv of ReLU(P6). RetinaNet's two coarsest levels, for the largest objects."""

    def __init__(self, in_channels: int, out_channels: int, from_c5: bool) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.from_c5 = from_c5

    def forward(self, p5: Tensor, c5: Tensor) -> list[Tensor]:
        # In fp32 even under autocast: these maps are a few cells (1x1 at the P7 of a 128 px input), and torch
        # 2.13's bf16 CPU convolution backward returns non-finite weight gradients at random for 1x1 inputs
        # (measured: 2 of 40 seeded trials of a 128-channel 3x3/2 conv; none at 2x2 and above), which ended bf16
        # training runs at step 1. The cost is under 0.1 % of the detector's multiply-adds.
        with torch.autocast(p5.device.type, enabled=False):
            p6 = self.p6((c5 if self.from_c5 else p5).float())
            return [p6, self.p7(F.relu(p6))]


class BackboneWithFPN(nn.Module):
    """``body`` (a ResNet with the ImageNet stem) -> C3..C5 -> ``fpn`` -> P3..P5 -> ``extra_blocks`` -> P6, P7.
    ``forward`` returns the five maps, strides 8 to 128, each with ``out_channels`` channels."""

    def __init__(self, body: ResNet, out_channels: int = 256, p6_from_c5: bool = False) -> None:
        super().__init__()
        if body.cfg.stem != "imagenet" or len(body.stage_names) != 4:
            raise UserError(f"a detection backbone needs a 4-stage ResNet with the ImageNet stem (strides 4..32); "
                            f"got stem {body.cfg.stem!r} with {len(body.stage_names)} stages")
        body.avgpool, body.fc = nn.Identity(), nn.Identity()  # no parameters either way; C5 is the last output
        self.body = body
        c3, c4, c5 = body.feature_channels[1:]
        self.fpn = FeaturePyramidNetwork([c3, c4, c5], out_channels)
        self.fpn.extra_blocks = LastLevelP6P7(c5 if p6_from_c5 else out_channels, out_channels, p6_from_c5)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        c = self.body.forward_pyramid(x)
        feats = [c["C3"], c["C4"], c["C5"]]
        p = self.fpn(feats)
        return p + self.fpn.extra_blocks(p[-1], feats[-1])


def set_trainable_layers(body: ResNet, trainable: int) -> None:
    """torchvision's ``trainable_backbone_layers``: train only the last ``trainable`` of (conv1, layer1, layer2,
    layer3, layer4); 5 trains all (bn1 too), 0 none. Frozen stages also skip their backward pass."""
    if not 0 <= trainable <= 5:
        raise UserError(f"trainable_layers must be 0..5 (of conv1, layer1..layer4), not {trainable}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
    for name, p in body.named_parameters():
        p.requires_grad_(any(name == t or name.startswith(t + ".") for t in train))


def init_body(body: ResNet, path: str) -> str:
    """Start a detector's backbone ``body`` from a classification checkpoint (``weights.init_from``: ours, or a
    torchvision/timm ResNet; everything but ``fc``; the stem adapted to any channel count). Returns a one-line
    description of what was loaded."""
    ckpt = weights.init_from(body, path)
    return f"{ckpt.arch} weights from {path} ({ckpt.source or 'no source recorded'})"
