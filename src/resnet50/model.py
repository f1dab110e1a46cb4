"""The ResNet family of He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition" (2015).

Read top to bottom, this file is the paper's Table 1:

    conv1    7x7, 64, stride 2                       (stem)
             3x3 max pool, stride 2
    conv2_x  [1x1 64,  3x3 64,  1x1 256 ] x 3         layer1, output stride 4   (C2)
    conv3_x  [1x1 128, 3x3 128, 1x1 512 ] x 4         layer2, output stride 8   (C3)
    conv4_x  [1x1 256, 3x3 256, 1x1 1024] x 6         layer3, output stride 16  (C4)
    conv5_x  [1x1 512, 3x3 512, 1x1 2048] x 3         layer4, output stride 32  (C5)
             global average pool, 1000-d fc (softmax is applied by the loss / at prediction time)

ResNet-50: 1 + 3*(3+4+6+3) + 1 = 50 weighted layers; 48 of the 49 convolutions lie on the main path, and the
"B" shortcut adds 4 projection convolutions where the shape changes.

Parameter names follow the layout torchvision and timm use (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` / ``.1``, ``fc``): state-dict keys are public API, so their checkpoints load strictly.

Where this differs from torchvision's ``resnet.py``: the v1 / v1.5 stride placement is an option (torchvision is
v1.5 only), the paper's shortcut options A, B and C and a ``plain`` (no shortcut) switch exist, the CIFAR-style
networks of section 4.2 are built from the same classes, and ``conv_bias`` / ``bn_eps`` reproduce Keras'
``ResNet50`` exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import DictConfig
from .errors import UserError

Variant = Literal["v1", "v1.5"]
Shortcut = Literal["A", "B", "C"]
Stem = Literal["imagenet", "small", "cifar"]

VARIANTS = ("v1", "v1.5")
SHORTCUTS = ("A", "B", "C")
STEMS = ("imagenet", "small", "cifar")
MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class ResNetConfig(DictConfig):
    """Everything that fixes a network's shape. Saved inside every checkpoint; unknown keys are errors."""

    KIND: ClassVar[str] = "model"

    block: Literal["basic", "bottleneck"] = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    # v1 strides in the first 1x1 of a downsampling bottleneck (the paper, Caffe, Keras); v1.5 strides in the 3x3
    # (torchvision, NVIDIA). Same parameters; v1.5 is about +0.5 pt top-1 on ImageNet and about 5 % slower, since
    # the 3x3 then runs at the higher resolution (4.09 vs 3.86 GMAC for ResNet-50 at 224 px).
    variant: Variant = "v1.5"
    # The paper's section 3.3 options. A: identity, extra channels zero-padded (no parameters).
    # B: 1x1 projection where the shape changes, identity elsewhere. C: projection on every block.
    shortcut: Shortcut = "B"
    plain: bool = False  # no shortcuts at all: the "plain" nets of the degradation experiment (Fig. 1 and 4)
    # imagenet: 7x7/2 conv + 3x3/2 max pool. small: 3x3/1 conv, no pool (for 32-64 px images, keeps detail).
    # cifar: the section 4.2 stem, a 3x3/1 conv of widths[0] channels.
    stem: Stem = "imagenet"
    stem_width: int = 64
    num_classes: int = 1000
    in_chans: int = 3
    zero_init_residual: bool = False  # last BN of each block starts at 0 (Goyal et al.; about +0.2-0.3 pt)
    conv_bias: bool = False  # Keras' ResNet50 has a bias in every convolution
    bn_eps: float = 1e-5  # Keras uses 1.001e-5
    # BlurPool (Zhang 2019, as FFCV's ResNet-50 uses it): a fixed 3x3 binomial blur before every strided convolution
    # with at least 16 input channels (not the stem). No parameters and the same names, so weights load either way;
    # its 9 multiply-adds per input value (19 M for ResNet-50 at 224 px, 0.5 %) are not in the summary's MAC count.
    blurpool: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.block not in ("basic", "bottleneck"):
            raise UserError(f"unknown block type {self.block!r}; use 'basic' or 'bottleneck'")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.shortcut not in SHORTCUTS:
            raise UserError(f"unknown shortcut option {self.shortcut!r}; use A, B or C (paper section 3.3)")
        if self.stem not in STEMS:
            raise UserError(f"unknown stem {self.stem!r}; use one of {', '.join(STEMS)}")
        if len(self.layers) != len(self.widths) or not self.layers or min(self.layers) < 1:
            raise UserError("layers and widths must be non-empty lists of the same length, each stage >= 1 block")
        if self.num_classes < 0:
            raise UserError(f"num_classes must be >= 0 (0 means no classifier), got {self.num_classes}")
        if self.in_chans < 1:
            raise UserError(f"in_chans must be >= 1, got {self.in_chans}")


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)


class BlurConv2d(nn.Conv2d):
    """A convolution that first blurs its input with the [1 2 1]^T [1 2 1] / 16 filter, per channel (BlurPool's
    anti-aliasing before the stride). The filter is a non-persistent buffer: state dicts are a Conv2d's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", (k[:, None] * k[None, :] / 16).expand(self.in_channels, 1, 3, 3).clone(),
                             persistent=False)

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "BlurConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None)
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.in_channels)
        return super().forward(x)


def _apply_blurpool(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurConv2d.of(child))
        else:
            _apply_blurpool(child)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride and zero-pad the new channels. No parameters."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(cfg: ResNetConfig, cin: int, cout: int, stride: int) -> nn.Module | None:
    """The block's shortcut branch, or None for the identity (and for plain nets, which have none)."""
    if cfg.plain:
        return None
    changes_shape = stride != 1 or cin != cout
    if cfg.shortcut == "A":
        return ZeroPadShortcut(cin, cout, stride) if changes_shape else None
    if cfg.shortcut == "B" and not changes_shape:
        return None
    return nn.Sequential(conv1x1(cin, cout, stride, cfg.conv_bias), nn.BatchNorm2d(cout, eps=cfg.bn_eps))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(self, cfg: ResNetConfig, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout, bias, eps = width * self.expansion, cfg.conv_bias, cfg.bn_eps
        self.conv1, self.bn1 = conv3x3(cin, width, stride, bias), nn.BatchNorm2d(width, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(width, cout, 1, bias), nn.BatchNorm2d(cout, eps=eps)
        self.downsample = make_shortcut(cfg, cin, cout, stride)
        self.residual = not cfg.plain

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand by 4): ResNet-50/101/152."""

    expansion = 4

    def __init__(self, cfg: ResNetConfig, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout, bias, eps = width * self.expansion, cfg.conv_bias, cfg.bn_eps
        # The one place v1 and v1.5 differ: which convolution carries the block's stride (see ResNetConfig.variant).
        stride_1x1, stride_3x3 = (stride, 1) if cfg.variant == "v1" else (1, stride)
        self.conv1, self.bn1 = conv1x1(cin, width, stride_1x1, bias), nn.BatchNorm2d(width, eps=eps)
        self.conv2, self.bn2 = conv3x3(width, width, stride_3x3, bias), nn.BatchNorm2d(width, eps=eps)
        self.conv3, self.bn3 = conv1x1(width, cout, 1, bias), nn.BatchNorm2d(cout, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(cfg, cin, cout, stride)
        self.residual = not cfg.plain

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, then one stage per entry of ``cfg.layers`` (layer1..layerN), global average pool, fc."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        block = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        eps = cfg.bn_eps

        if cfg.stem == "imagenet":
            self.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 7, stride=2, padding=3, bias=cfg.conv_bias)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:  # "small" and "cifar": 3x3 stride 1, no pooling
            self.conv1 = conv3x3(cfg.in_chans, cfg.stem_width, 1, cfg.conv_bias)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(cfg.stem_width, eps=eps)
        self.relu = nn.ReLU(inplace=True)

        cin, self.stage_names, self.feature_channels = cfg.stem_width, [], []
        for i, (blocks, width) in enumerate(zip(cfg.layers, cfg.widths)):
            stride = 1 if i == 0 else 2  # the first stage follows the max pool; every later one halves the size
            stage = []
            for b in range(blocks):
                stage.append(block(cfg, cin, width, stride if b == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            self.stage_names.append(f"layer{i + 1}")
            self.feature_channels.append(cin)

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.fc: nn.Module = nn.Linear(cin, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.blurpool:
            _apply_blurpool(self)
        self.init_weights()

    def init_weights(self) -> None:
        """He (fan-out) init for convolutions, BN to identity, fc as nn.Linear; optional zero-init of last BNs."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    # --- the backbone interface ------------------------------------------------------------------------------

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """The output of every stage: {'C2': stride 4, 'C3': stride 8, 'C4': stride 16, 'C5': stride 32} for the
        ImageNet stem (the feature-pyramid names of detection backbones, Lin et al. 2017); the CIFAR nets give
        C2..C4. Shapes for ResNet-50 at (N, 3, 224, 224): C2 (N, 256, 56, 56) ... C5 (N, 2048, 7, 7)."""
        _check_input(x, self.cfg)
        x = self.stem(x)
        feats = {}
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            feats[f"C{i + 2}"] = x
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's output before pooling, as timm's ``forward_features``: (N, 2048, H/32, W/32) for
        ResNet-50 (C5). Changed in 0.2: this returned the dict of every stage, which is now :meth:`forward_pyramid`
        (callers that index the result by "C2".."C5" must call that instead)."""
        _check_input(x, self.cfg)
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """timm's ``forward_head``: global average pool of :meth:`forward_features`' output to (N, 2048), then
        the classifier (N, num_classes); ``pre_logits=True`` stops before the classifier."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward_embedding(self, x: Tensor) -> Tensor:
        """The pooled, flattened last-stage features (2048-d for ResNet-50): the input of the classifier."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    @property
    def feature_info(self) -> list[dict]:
        """timm's ``feature_info``: for each feature map ``features_only`` can return, its channels ``num_chs``,
        its ``reduction`` (output stride) and the ``module`` that makes it: the stem's ReLU (stride 2 for the
        ImageNet stem, 1 for the small and CIFAR stems), then each stage (stride 4, 8, 16, 32 for ResNet-50)."""
        reduction = 2 if self.cfg.stem == "imagenet" else 1
        info = [dict(num_chs=self.cfg.stem_width, reduction=reduction, module="relu")]
        for i, (name, chs) in enumerate(zip(self.stage_names, self.feature_channels)):
            reduction *= 2 if i > 0 or self.cfg.stem == "imagenet" else 1  # the max pool, then each stage's stride
            info.append(dict(num_chs=chs, reduction=reduction, module=name))
        return info

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc by a freshly initialised one for ``num_classes`` (0 removes it: forward gives embeddings)."""
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class FeatureInfo:
    """timm's ``FeatureInfo`` accessor over :attr:`ResNet.feature_info`: ``channels()``, ``reduction()`` and
    ``module_name()`` give the values at the output indices (or at ``idx``: an index or a list of them)."""

    def __init__(self, info: list[dict], out_indices: tuple[int, ...]) -> None:
        self.info = [dict(d, index=i) for i, d in enumerate(info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | list[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        return [self.info[i][key] for i in idx] if isinstance(idx, (list, tuple)) else self.info[idx][key]

    def get_dicts(self) -> list[dict]:
        return [self.info[i] for i in self.out_indices]

    def channels(self, idx: int | list[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | list[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | list[int] | None = None):
        return self.get("module", idx)

    def __getitem__(self, i: int) -> dict:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class FeatureListNet(nn.Module):
    """timm's ``features_only`` model: ``forward(x)`` returns the LIST of the feature maps at ``out_indices``
    (indices into :attr:`ResNet.feature_info`), shallowest first. For ResNet-50 at (N, 3, 224, 224) and timm's
    default (0, 1, 2, 3, 4): (N, 64, 112, 112) after the stem's ReLU, then layer1..layer4: (N, 256, 56, 56),
    (N, 512, 28, 28), (N, 1024, 14, 14), (N, 2048, 7, 7). Only the modules up to the deepest index are kept (no
    pool, no fc); parameter names are the ResNet's (``conv1.weight``, ``layer1.0.conv1.weight``...), as timm's."""

    def __init__(self, model: ResNet, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        info = model.feature_info
        self.feature_info = FeatureInfo(info, _out_indices(out_indices, len(info)))
        self.cfg, self.out_indices = model.cfg, self.feature_info.out_indices
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.relu, model.maxpool
        self.stage_names = model.stage_names[: max(self.out_indices)]
        for name in self.stage_names:
            setattr(self, name, getattr(model, name))

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_input(x, self.cfg)
        x = self.relu(self.bn1(self.conv1(x)))
        out = [x] if 0 in self.out_indices else []
        x = self.maxpool(x)
        for i, name in enumerate(self.stage_names, 1):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                out.append(x)
        return out


def _out_indices(out_indices: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
    """timm's spellings: None for every feature, an int k for the last k, or indices (negative from the end)."""
    if out_indices is None:
        return tuple(range(n))
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= n:
            raise UserError(f"out_indices={out_indices} asks for the last {out_indices} of {n} feature maps; "
                            f"use 1..{n}")
        return tuple(range(n - out_indices, n))
    idx = [int(i) + n if int(i) < 0 else int(i) for i in out_indices]
    if not idx or any(not 0 <= i < n for i in idx):
        raise UserError(f"out_indices {tuple(out_indices)} out of range: this model has {n} feature maps, indices "
                        f"0..{n - 1} (0 = the stem, then one per stage)")
    return tuple(sorted(set(idx)))


def _check_input(x: Tensor, cfg: ResNetConfig) -> None:
    if torch.jit.is_scripting() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != cfg.in_chans:
        raise UserError(
            f"expected input of shape (N, {cfg.in_chans}, H, W), got {tuple(x.shape)}; "
            f"convert images to {cfg.in_chans} channel(s) or build the model with in_chans={x.shape[1] if x.dim() == 4 else '?'}"
        )
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise UserError(f"input {x.shape[-2]}x{x.shape[-1]} px is below the {MIN_INPUT_SIZE} px minimum; resize it up")


# --- the named architectures -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchSpec:
    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    defaults: dict = field(default_factory=dict)
    description: str = ""


def _cifar(n: int, plain: bool) -> ArchSpec:
    kind = "plain net" if plain else "ResNet"
    return ArchSpec("basic", (n, n, n), (16, 32, 64),
                    dict(stem="cifar", stem_width=16, shortcut="A", plain=plain, num_classes=10),
                    f"CIFAR {kind} of section 4.2: 6n+2 = {6 * n + 2} layers, 3x3 stem, 16/32/64 channels"
                    + ("" if plain else ", option A shortcuts"))


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("basic", (2, 2, 2, 2), description="ImageNet ResNet-18, basic blocks"),
    "resnet34": ArchSpec("basic", (3, 4, 6, 3), description="ImageNet ResNet-34, basic blocks"),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3), description="ImageNet ResNet-50, bottleneck blocks"),
    "resnet101": ArchSpec("bottleneck", (3, 4, 23, 3), description="ImageNet ResNet-101, bottleneck blocks"),
    "resnet152": ArchSpec("bottleneck", (3, 8, 36, 3), description="ImageNet ResNet-152, bottleneck blocks"),
    "plain18": ArchSpec("basic", (2, 2, 2, 2), defaults=dict(plain=True), description="ResNet-18 without shortcuts"),
    "plain34": ArchSpec("basic", (3, 4, 6, 3), defaults=dict(plain=True), description="ResNet-34 without shortcuts"),
    **{f"resnet{6 * n + 2}_cifar": _cifar(n, False) for n in (3, 5, 7, 9, 18)},
    **{f"plain{6 * n + 2}_cifar": _cifar(n, True) for n in (3, 5, 7, 9, 18)},
}


def list_models() -> list[str]:
    """The architecture names ``create_model`` accepts."""
    return list(ARCHS)


def model_config(name: str, **options) -> ResNetConfig:
    """The resolved config of a named architecture with ``options`` (any ResNetConfig field) overriding."""
    spec = ARCHS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, ARCHS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown architecture {name!r}{hint}; choose from: {', '.join(ARCHS)}")
    d = dict(block=spec.block, layers=spec.layers, widths=spec.widths, **spec.defaults)
    d.update({k: v for k, v in options.items() if v is not None})
    return ResNetConfig.from_dict(d)


def create_model(name: str = "resnet50", *, features_only: bool = False,
                 out_indices: int | Sequence[int] | None = None, **options) -> ResNet | FeatureListNet:
    """Build a named architecture with random weights, e.g. ``create_model("resnet50", variant="v1",
    num_classes=10, in_chans=1)``; ``features_only=True`` gives timm's feature extractor (:class:`FeatureListNet`,
    ``out_indices`` as timm spells them). For weights (``pretrained=``, ``checkpoint_path=``) use
    ``resnet50.create_model`` (:mod:`resnet50.factory`), which builds through this."""
    if {"pretrained", "checkpoint_path"} & set(options):
        raise UserError("resnet50.model.create_model builds random weights; for pretrained= or checkpoint_path= "
                        "call resnet50.create_model (resnet50.factory)")
    if out_indices is not None and not features_only:
        raise UserError("out_indices selects feature maps: pass features_only=True with it")
    model = ResNet(model_config(name, **options))
    return FeatureListNet(model, out_indices) if features_only else model


def arch_name(cfg: ResNetConfig) -> str | None:
    """The registered name whose shape ``cfg`` has (ignoring class count, variant and similar options)."""
    for name, spec in ARCHS.items():
        if (spec.block, spec.layers, spec.widths) == (cfg.block, cfg.layers, cfg.widths) and \
                spec.defaults.get("plain", False) == cfg.plain:
            return name
    return None
