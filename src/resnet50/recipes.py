"""Typed training configuration and the named recipes.

One dataclass per concern (model, data, optimisation, run); a recipe is a named ``TrainConfig``. Every field can be
overridden from the command line (``--lr 0.2``, ``--epochs 5``): the flags are generated from these dataclasses, so
a field that exists is a flag and a flag that is not a field is an error. The resolved config is saved as
``config.json`` in the run folder and inside every checkpoint.

Learning rates are given per 256 images and scaled linearly with the global batch (``lr * batch / 256``, Goyal et
al. 2017), so a recipe keeps its meaning on any number of devices.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field

from .data.augment import build_auto_augment
from .data.decode import MAX_PIXELS
from .data.transforms import INTERPOLATIONS, TransformConfig, default_transform_config
from .errors import UserError
from .model import ResNet, create_model


@dataclass
class ModelSpec:
    arch: str = "resnet50"
    variant: str = "v1.5"
    shortcut: str = ""  # "" = the architecture's own (B for ImageNet nets, A for the CIFAR nets)
    stem: str = ""  # "" = the architecture's own
    zero_init_residual: bool = False
    blurpool: bool = False  # a 3x3 blur before every strided convolution (FFCV; see ResNetConfig.blurpool)
    init_weights: str = ""  # a weights file to start from (fine-tuning); its classifier is reset to the data's

    def create(self, num_classes: int, in_chans: int) -> ResNet:
        """The network this spec describes, for data with ``num_classes`` classes and ``in_chans`` channels."""
        return create_model(self.arch, variant=self.variant, shortcut=self.shortcut or None, stem=self.stem or None,
                            zero_init_residual=self.zero_init_residual, blurpool=self.blurpool,
                            num_classes=num_classes, in_chans=in_chans)


@dataclass
class DataSpec:
    data: str = "embedded"  # a dataset path (see resnet50.data) or "embedded"
    image_size: int = 224  # training resolution (the final one, with progressive resizing)
    eval_size: int = 0  # evaluation resolution; 0 = image_size
    crop_pct: float = 0.875  # evaluation resize = eval_size / crop_pct, then centre crop; 0 = the dataset default
    min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction
    train_crop: str = "auto"  # auto (the dataset's default), random_resized or pad
    # pad-and-crop: zero padding on each side before the random crop (He et al. 2015, sec. 4.2: 4 px at 32 px);
    # 0 keeps the whole image in place (no translation). Only the pad crop uses it: a value other than 0 or 4 with
    # random_resized crops is refused.
    pad: int = 4
    hflip: float = 0.5
    auto_augment: str = ""  # '' none, 'ta_wide' (TrivialAugmentWide) or RandAugment as timm spells it ('rand-m9-mstd0.5')
    random_erasing: float = 0.0  # probability of erasing one random rectangle (after normalisation)
    interpolation: str = "bilinear"  # resampling of every resize: nearest, bilinear, bicubic or lanczos
    repeated_aug: int = 1  # repeated augmentation: each image this many times per epoch slot (torchvision: 4)
    # Progressive resizing (FFCV): the training resolution grows linearly from min_res to image_size between
    # epochs start_ramp and end_ramp (multiples of 32; of 8 under 128 px). min_res 0 turns it off.
    min_res: int = 0
    start_ramp: int = 0
    end_ramp: int = 0
    batch_size: int = 256  # global batch (split over DDP processes)
    workers: int = 4
    val_fraction: float = 0.1  # held-out share of train where the files have no validation split
    max_pixels: int = MAX_PIXELS  # refuse images whose header claims more pixels (decompression bombs)
    # "weights": with --init-weights, normalise with the weights' own mean, std and interpolation (what they were
    # trained with; torchvision's weights.transforms(), timm's pretrained_cfg) where their channel count is the
    # data's; "data": the dataset's statistics
    preprocessing: str = "weights"

    def transforms(self, dataset) -> tuple[TransformConfig, TransformConfig]:
        """The training and evaluation TransformConfigs for ``dataset``: its defaults (statistics, channels, the
        pad-and-crop recipe for small images) with this spec's choices on top."""
        base = default_transform_config(dataset, self.image_size)
        over = dict(hflip=self.hflip, scale=(self.min_scale, 1.0), auto_augment=self.auto_augment,
                    random_erasing=self.random_erasing, interpolation=self.interpolation)
        if self.train_crop != "auto":
            over["train_crop"] = self.train_crop
        if over.get("train_crop", base.train_crop) == "pad":
            over["pad"] = self.pad
        elif self.pad not in (0, DataSpec.pad):  # 0 (no translation; the demo recipe's) and the default are moot
            raise UserError(f"pad {self.pad} applies to the pad-and-crop augmentation only, and this run uses "
                            "random_resized crops; drop --pad or add --train-crop pad")
        if self.crop_pct:
            over["crop_pct"] = self.crop_pct
        train = dataclasses.replace(base, **over)
        return train, dataclasses.replace(train, image_size=self.eval_size) if self.eval_size else train


@dataclass
class OptimSpec:
    optimizer: str = "sgd"  # sgd, lamb or adamw
    lr: float = 0.1  # per 256 images
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # lamb / adamw
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on BN parameters and biases
    schedule: str = "step"  # step, cosine, linear (to zero) or triangular (FFCV: up to lr_peak_epoch, then down)
    milestones: tuple[int, ...] = (30, 60)  # step: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    lr_peak_epoch: float = 2.0  # triangular
    warmup_epochs: float = 0.0  # linear warmup from warmup_start * lr
    warmup_start: float = 0.0
    epochs: int = 90
    label_smoothing: float = 0.0
    loss: str = "ce"  # ce (softmax cross entropy) or bce (sigmoid binary cross entropy, RSB)
    bce_target_thresh: float = 0.0  # bce: targets above this become 1 (RSB A3 uses 0.2); 0 = keep soft targets
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0
    mix_prob: float = 1.0  # share of batches that get mixup or cutmix when either is on
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    accum_steps: int = 1  # gradient accumulation: optimiser step every accum_steps batches
    # Fine-tuning (resnet50.train.frozen_stages): train only the classifier for the first freeze_epochs epochs
    # (fastai's fine_tune), keep the stem through stage freeze_until frozen for the whole run ("layer4": a linear
    # probe), frozen stages' BatchNorm in inference mode (Keras' transfer-learning guide); layer_lr_decay < 1 gives
    # each stage this factor of the next one's learning rate, the classifier the full rate (discriminative rates)
    freeze_epochs: int = 0
    freeze_until: str = ""  # "" (none), "stem", "layer1" .. "layer4"
    layer_lr_decay: float = 1.0


@dataclass
class RunSpec:
    out: str = "runs"  # runs are written to out/name
    name: str = ""  # default: <recipe>-<arch>-<timestamp>
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms + fixed seeds: bit-exact reruns and resumes
    device: str = "auto"  # auto, cpu, cuda
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with bf16 instructions, else fp32), bf16, fp16, off
    channels_last: bool = True  # NHWC: faster on CPU and GPU (measured in docs/benchmarks.md, training speed)
    compile: bool = False  # torch.compile the model
    # auto: on CPU, convolutions on maps of a few pixels run as matrix products (resnet50.small_maps: the same
    # function, a faster backward; measured in docs/benchmarks.md); torch: always torch's convolution
    conv_impl: str = "auto"
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 = off
    ema_every: int = 1  # EMA update every this many optimiser steps
    sync_bn: bool = False  # DDP: synchronise BN statistics across processes
    eval_every: int = 1  # epochs between validations
    tta_flip: bool = False  # validation averages the logits of the image and its mirror
    checkpoint_every: int = 0  # optimiser steps between mid-epoch checkpoints; 0 = end of each epoch only
    max_steps: int = 0  # stop after this many optimiser steps (for tests and smoke runs); 0 = no limit
    time_limit: float = 0.0  # minutes: end training after the epoch during which this budget runs out; 0 = off
    # Time-budgeted training (Li et al., "Budgeted Training", ICLR 2020): minutes of training including its
    # validations. The first steps measure the speed; the run's length is then fixed as budget_steps optimiser
    # steps (saved in config.json and last.pt: rerun with --budget-steps N to repeat it exactly) and the
    # learning-rate schedule runs over exactly those steps. 0 = off (the run is --epochs long).
    time_budget: float = 0.0
    budget_steps: int = 0
    # forward passes the caller makes after training inside the same budget (the demo's t10k evaluation with flip
    # TTA: 20,000), planned at engine.FORWARD_SHARE of a training step's per-image time; 0 = training's alone
    budget_after_images: int = 0
    threads: int = 0  # torch intra-op threads; 0 = the default


class TaskConfig:
    """What every task's config (TrainConfig, detect's DetectTrainConfig, localize's LocalizeTrainConfig) shares:
    sections of dataclasses plus a few top-level fields, saved as a dict (a section's own ``to_dict`` where it has
    one) and read back by :func:`config_from_dict`; ``COMMAND`` is the command whose --help lists the fields."""

    COMMAND: typing.ClassVar[str] = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in sections(type(self)):
            section = getattr(self, name)
            if hasattr(section, "to_dict"):
                d[name] = section.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d)


@dataclass
class TrainConfig(TaskConfig):
    COMMAND: typing.ClassVar[str] = "resnet50 train"

    recipe: str = "paper"
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    run: RunSpec = field(default_factory=RunSpec)

    def validate(self) -> None:
        validate(self)


SECTIONS = {"model": ModelSpec, "data": DataSpec, "optim": OptimSpec, "run": RunSpec}
TOP_FIELDS = ("recipe", "description")  # named, not overridable


# --- one config machinery for every task's config (TrainConfig, detect.train.DetectTrainConfig) -------------------

def sections(cfg_cls: type) -> dict[str, type]:
    """A config class's sections: its dataclass-typed fields, name -> type."""
    hints = typing.get_type_hints(cfg_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_cls) if dataclasses.is_dataclass(hints[f.name])}


def config_from_dict(cls: type, d: dict):
    """A config of class ``cls`` from its ``to_dict()``: each section from its keys (coerced to the fields' types;
    a section type's own ``from_dict`` where it has one), the top-level fields as they are; unknown keys are
    errors."""
    d = dict(d)
    built = {}
    for name, typ in sections(cls).items():
        sub = d.pop(name, {})
        if hasattr(typ, "from_dict"):
            built[name] = typ.from_dict(sub)
            continue
        known = {f.name for f in dataclasses.fields(typ)}
        unknown = set(sub) - known
        if unknown:
            raise UserError(f"unknown {name} config key(s) {sorted(unknown)}; known: {sorted(known)}")
        built[name] = typ(**{k: coerce_field(typ, k, v) for k, v in sub.items()})
    top = {f.name for f in dataclasses.fields(cls)} - set(built)
    unknown = set(d) - top
    if unknown:
        raise UserError(f"unknown config key(s) {sorted(unknown)}")
    return cls(**{k: coerce_field(cls, k, v) if k not in TOP_FIELDS else v for k, v in d.items()}, **built)


def _field_type(section: type, name: str):
    return typing.get_type_hints(section)[name]


def coerce_field(section: type, name: str, value):
    """A JSON or command-line value as the field's type (tuples from lists or comma-separated strings)."""
    typ = _field_type(section, name)
    origin = typing.get_origin(typ)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = typing.get_args(typ)[0]
            return tuple(inner(x) for x in items if str(x).strip() != "")
        if origin is typing.Literal:
            return str(value)
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        return typ(value)
    except (TypeError, ValueError) as e:
        raise UserError(f"{name}={value!r} is not a valid {getattr(typ, '__name__', typ)}") from e


def flat_fields(cfg_cls: type | None = None) -> dict[str, tuple[str, str]]:
    """Every overridable field of a config class (default TrainConfig): flag name -> (section, field name), section
    "" for a top-level field. Field names are unique across sections."""
    cfg_cls = cfg_cls or TrainConfig
    out = {f.name: ("", f.name) for f in dataclasses.fields(cfg_cls) if f.name not in TOP_FIELDS}
    for sec, typ in sections(cfg_cls).items():
        del out[sec]
        for f in dataclasses.fields(typ):
            out[f.name] = (sec, f.name)
    return out


# --- the recipes -------------------------------------------------------------------------------------------
# Each: its source, and the ImageNet top-1 that source reports for ResNet-50 (single 224 px centre crop unless
# stated). Values are the ones the sources give; where we differ, the comment says why.

def _paper() -> TrainConfig:
    # He et al. 2015, section 3.4: SGD, batch 256, lr 0.1 divided by 10 when the error plateaus (up to 60e4
    # iterations; torchvision's reference fixes it at epochs 30 and 60 of 90), momentum 0.9, weight decay 1e-4 on
    # all weights, no dropout. The paper's scale augmentation (shorter side 256-480) and colour augmentation are
    # replaced by RandomResizedCrop, as in torchvision. Reported for ResNet-50: 22.85 % top-1 / 6.71 % top-5 error
    # with 10-crop testing (Table 3), 20.74 / 5.25 % single-model multi-scale (Table 4); torchvision with this
    # recipe (v1.5): 76.13 % top-1, 92.86 % top-5 single crop (IMAGENET1K_V1).
    return TrainConfig(
        recipe="paper", description="He et al. 2015 (sec. 3.4): SGD 0.1, /10 at 30 and 60, wd 1e-4, 90 epochs",
        model=ModelSpec(variant="v1"),
        data=DataSpec(image_size=224, batch_size=256),
        optim=OptimSpec(lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(30, 60), epochs=90),
    )


def _nvidia() -> TrainConfig:
    # NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5 (README, configs.yml): SGD momentum
    # 0.875, lr 0.256 per 256 images (2.048 at their batch 2048), cosine to 0 after 8 linear warmup epochs, wd
    # 3.0517578125e-05 (1/32768) not on BN, label smoothing 0.1, 90 epochs (250 with --mixup 0.2), AMP, NHWC.
    # Reported on 8 A100: 77.12 % top-1 (90 epochs, AMP), 78.43 % (250 epochs). Their code exempts parameters
    # named "bn" only, so downsample BNs and fc.bias still decay; we exempt every norm layer and bias by type.
    return TrainConfig(
        recipe="nvidia", description="NVIDIA ResNet-50 v1.5: lr 0.256/256, cosine, warmup, ls 0.1, 90 epochs",
        model=ModelSpec(variant="v1.5"),
        data=DataSpec(image_size=224, batch_size=256),
        optim=OptimSpec(lr=0.256, momentum=0.875, weight_decay=3.0517578125e-05, decay_norm_and_bias=False,
                        schedule="cosine", warmup_epochs=8, epochs=90, label_smoothing=0.1),
    )


def _torchvision_v2() -> TrainConfig:
    # torchvision's recipe for resnet50 IMAGENET1K_V2 (80.858 % top-1; references/classification, vision #3995):
    # 600 epochs, batch 1024 (8 x 128), lr 0.5 (= 0.125 per 256), cosine, 5 linear warmup epochs from 0.01, label
    # smoothing 0.1, mixup 0.2 / cutmix 1.0 (one per batch), wd 2e-5 and none on norm layers, train crop 176, eval
    # resize 232 and crop 224, EMA every 32 steps (torchvision rescales 0.99998 to about 0.99891 per update at
    # that batch; 0.999966 ** 32 is the same), TrivialAugmentWide, random erasing 0.1 and the repeated-augmentation
    # sampler with 4 repeats.
    return TrainConfig(
        recipe="torchvision-v2", description="torchvision IMAGENET1K_V2: 600 epochs, lr 0.5/1024, mixup, cutmix, EMA",
        model=ModelSpec(variant="v1.5"),
        data=DataSpec(image_size=176, eval_size=224, crop_pct=224 / 232, batch_size=1024, auto_augment="ta_wide",
                      random_erasing=0.1, repeated_aug=4),
        optim=OptimSpec(lr=0.125, momentum=0.9, weight_decay=2e-5, decay_norm_and_bias=False, schedule="cosine",
                        warmup_epochs=5, warmup_start=0.01, epochs=600, label_smoothing=0.1, mixup=0.2,
                        cutmix=1.0, mix_prob=1.0),
        run=RunSpec(ema_decay=0.999966, ema_every=32),
    )


def _rsb_a3() -> TrainConfig:
    # Wightman, Touvron, Jégou 2021, "ResNet strikes back", procedure A3 (78.1 % top-1 at 224; timm resnet50.a3_in1k,
    # mmpretrain's reproduction 78.30 %): 100 epochs, batch 2048, LAMB lr 8e-3 (= 1e-3 per 256), wd 0.02 not on BN
    # and biases, cosine after 5 warmup epochs from 1e-4, BCE loss with targets thresholded at 0.2, no label
    # smoothing, mixup 0.1 / cutmix 1.0, RandAugment rand-m6-mstd0.5-inc1, train at 160 px, test at 224 with crop
    # 0.95 (bicubic).
    return TrainConfig(
        recipe="rsb-a3", description="ResNet strikes back A3: LAMB, BCE, 100 epochs at 160 px, test 224",
        model=ModelSpec(variant="v1.5", zero_init_residual=True),
        data=DataSpec(image_size=160, eval_size=224, crop_pct=0.95, batch_size=2048,
                      auto_augment="rand-m6-mstd0.5-inc1", interpolation="bicubic"),
        optim=OptimSpec(optimizer="lamb", lr=1e-3, weight_decay=0.02, decay_norm_and_bias=False, schedule="cosine",
                        warmup_epochs=5, warmup_start=1e-4, epochs=100, loss="bce", bce_target_thresh=0.2,
                        mixup=0.1, cutmix=1.0, mix_prob=1.0),
    )


def _fast() -> TrainConfig:
    # FFCV's ImageNet example (libffcv/ffcv-imagenet rn50_16_epochs.yaml): batch 4096 (8 x 512), lr 1.7 (= 0.10625
    # per 256), triangular ("cyclic") schedule peaking at epoch 2, SGD momentum 0.9, wd 1e-4, label smoothing 0.1,
    # progressive resizing 160 -> 192 between epochs 11 and 13, evaluation at 256 (crop ratio 224/256) averaging
    # the logits of the image and its mirror. Reported on 8 A100: 73.8 % (16 epochs, 15 min) to 78.4 % (88
    # epochs, 77 min; ramp 65 -> 76), BlurPool (a blur before every strided convolution).
    return TrainConfig(
        recipe="fast", description="FFCV-style: progressive resizing 160->192, eval 256 + flip TTA, 16 epochs",
        model=ModelSpec(variant="v1.5", blurpool=True),
        data=DataSpec(image_size=192, min_res=160, start_ramp=11, end_ramp=13, eval_size=256, crop_pct=224 / 256,
                      batch_size=4096),
        optim=OptimSpec(lr=0.10625, momentum=0.9, weight_decay=1e-4, decay_norm_and_bias=False, schedule="triangular",
                        lr_peak_epoch=2, epochs=16, label_smoothing=0.1),
        run=RunSpec(tta_flip=True),
    )


def _demo() -> TrainConfig:
    # The embedded default: ResNet-50 v1.5 on the Fashion-MNIST subset shipped in the package, on 2 CPU cores.
    # 28 px images upsampled to 48 px (crop_pct=1.0), flipped, not translated (below); the ImageNet stem takes
    # 48 -> 12 px before layer1. AdamW with a short warmup, because SGD diverged here without a long one. Every
    # choice was made on the embedded validation split or the tuning split (tools/make_tuning_set.py); the
    # alternatives tried and their figures are in docs/benchmarks.md (the demo section). Validation (and the
    # demo's test split) read with flip TTA: +0.15 pt.
    # No pad-and-crop translation (pad=0; flips kept): on the 10,000-image tuning split, 88.39 % against 85.34 %
    # with the 4 px of He et al.'s CIFAR recipe at 2.3 epochs (what a 9-minute budget buys on an AVX2-only CPU),
    # 90.87 % against 90.33 % at 10 epochs (docs/benchmarks.md, "Less augmentation").
    return TrainConfig(
        recipe="demo", description="ResNet-50 v1.5 on the embedded Fashion-MNIST subset, CPU, under 10 minutes",
        model=ModelSpec(variant="v1.5", zero_init_residual=True),
        data=DataSpec(data="embedded", image_size=48, crop_pct=1.0, pad=0, batch_size=128, workers=0),
        optim=OptimSpec(optimizer="adamw", lr=0.004, weight_decay=0.05, decay_norm_and_bias=False,
                        schedule="cosine", warmup_epochs=0.3, epochs=10, label_smoothing=0.1),
        run=RunSpec(channels_last=True, tta_flip=True),
    )


def _finetune() -> TrainConfig:
    # Fine-tuning pretrained weights (--init-weights; their preprocessing is used, data.preprocessing) on a user's
    # folder, as fastai's ``vision_learner(...).fine_tune(n)`` does it: one epoch with the body frozen and the new
    # head trained (freeze_epochs=1; frozen BatchNorm in inference mode, as Keras' transfer-learning guide keeps
    # it), then everything at discriminative rates: fastai's slice(lr / 100, lr) spread over our six groups (stem,
    # layer1..4, fc) is a factor 100 ** (1 / 5) = 0.40 a stage (layer_lr_decay). AdamW (fastai's default optimiser
    # is Adam) at fastai's base rate 2e-3 for batch 64, i.e. 8e-3 per 256 images; a warm-up of a quarter of the run,
    # then cosine to zero (fastai's fit_one_cycle: pct_start 0.25 with cosine annealing); weight decay 0.01 (fastai's
    # default), none on norms and biases; label smoothing 0.1. A milder crop than from scratch (min_scale 0.35 for
    # 0.08): the pretrained features already cover scale. 5 epochs; the transfer experiment's figures are in
    # docs/benchmarks.md.
    return TrainConfig(
        recipe="finetune", description="fine-tune pretrained weights: head first, then discriminative rates",
        model=ModelSpec(variant="v1.5"),
        data=DataSpec(image_size=224, min_scale=0.35, batch_size=64),
        optim=OptimSpec(optimizer="adamw", lr=0.008, weight_decay=0.01, decay_norm_and_bias=False,
                        schedule="cosine", warmup_epochs=1.25, warmup_start=0.04, epochs=5, label_smoothing=0.1,
                        freeze_epochs=1, layer_lr_decay=0.4),
    )


def _linear_probe() -> TrainConfig:
    # A linear probe: the pretrained features frozen (stem through layer4, BatchNorm in inference mode), only the
    # classifier trained; the standard frozen-feature baseline (Kornblith et al. 2019 train logistic regression on
    # them). AdamW at a higher rate than fine-tuning, since only a linear layer moves; light augmentation.
    return TrainConfig(
        recipe="linear-probe", description="a linear classifier on frozen pretrained features",
        model=ModelSpec(variant="v1.5"),
        data=DataSpec(image_size=224, min_scale=0.35, batch_size=64),
        optim=OptimSpec(optimizer="adamw", lr=0.04, weight_decay=0.0, schedule="cosine", warmup_epochs=0.5,
                        warmup_start=0.04, epochs=5, freeze_until="layer4"),
    )


RECIPES = {"demo": _demo, "paper": _paper, "nvidia": _nvidia, "torchvision-v2": _torchvision_v2,
           "rsb-a3": _rsb_a3, "fast": _fast, "finetune": _finetune, "linear-probe": _linear_probe}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return RECIPES[name]()


def resolve(recipe: str, overrides: dict[str, typing.Any] | None = None) -> TrainConfig:
    """The named recipe with ``overrides`` (flat field names, as on the command line) applied."""
    return apply_overrides(get_recipe(recipe), overrides)


def apply_overrides(cfg, overrides: dict[str, typing.Any] | None):
    """Set flat-named fields (``{"lr": "0.2"}``) on ``cfg`` (any task's config), converting strings to the fields'
    types (a frozen section is replaced); then the config's own ``validate``."""
    fields = flat_fields(type(cfg))
    frozen: dict[str, dict] = {}  # a frozen section (DetectorConfig) checks itself: replace it once, all fields set
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise UserError(f"unknown config field {key!r}; see '{cfg.COMMAND} --help'")
        sec, name = fields[key]
        if not sec:
            setattr(cfg, name, coerce_field(type(cfg), name, value))
            continue
        section = getattr(cfg, sec)
        value = coerce_field(type(section), name, value)
        if getattr(type(section), "__dataclass_params__").frozen:
            frozen.setdefault(sec, {})[name] = value
        else:
            setattr(section, name, value)
    for sec, values in frozen.items():
        setattr(cfg, sec, dataclasses.replace(getattr(cfg, sec), **values))
    cfg.validate()
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Every static rule of a config, checked in one place (before anything is built)."""
    o, d, r = cfg.optim, cfg.data, cfg.run
    build_auto_augment(d.auto_augment)  # a UserError naming the choices for an unknown policy
    checks = [
        (0 <= d.random_erasing <= 1, f"random_erasing is a probability in [0, 1], not {d.random_erasing}"),
        (d.repeated_aug >= 1, f"repeated_aug must be 1 (off) or more, not {d.repeated_aug}"),
        (d.interpolation in INTERPOLATIONS,
         f"unknown interpolation {d.interpolation!r}; use {', '.join(INTERPOLATIONS)}"),
        (o.optimizer in ("sgd", "lamb", "adamw"), f"unknown optimizer {o.optimizer!r}; use sgd, lamb or adamw"),
        (o.schedule in ("step", "cosine", "linear", "triangular"),
         f"unknown schedule {o.schedule!r}; use step, cosine, linear or triangular"),
        (o.loss in ("ce", "bce"), f"unknown loss {o.loss!r}; use ce or bce"),
        (r.conv_impl in ("auto", "torch"), f"unknown conv_impl {r.conv_impl!r}; use auto or torch"),
        (o.epochs >= 1, "epochs must be >= 1"),
        (o.lr > 0, "lr must be positive"),
        (o.accum_steps >= 1, "accum_steps must be >= 1"),
        (0 <= o.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (d.batch_size >= 1, "batch_size must be >= 1"),
        (d.max_pixels >= 1, f"max_pixels must be positive, not {d.max_pixels}"),
        (d.image_size >= 32, f"image_size {d.image_size} is below the 32 px minimum"),
        (d.train_crop in ("auto", "random_resized", "pad"), "train_crop must be auto, random_resized or pad"),
        (0 <= d.pad < d.image_size, f"pad must be between 0 and the image size, not {d.pad}"),
        (d.preprocessing in ("weights", "data"), f"preprocessing must be weights or data, not {d.preprocessing!r}"),
        (r.amp in ("auto", "bf16", "fp16", "off"), f"unknown amp {r.amp!r}; use auto, bf16, fp16 or off"),
        (r.device in ("auto", "cpu", "cuda"), f"unknown device {r.device!r}; use auto, cpu or cuda"),
        (0 <= r.ema_decay < 1, "ema_decay must be in [0, 1)"),
        (r.time_budget >= 0 and r.budget_steps >= 0 and r.budget_after_images >= 0,
         "time_budget, budget_steps and budget_after_images must be >= 0"),
        (o.freeze_epochs >= 0, f"freeze_epochs must be 0 or more, not {o.freeze_epochs}"),
        (0 < o.layer_lr_decay <= 1, f"layer_lr_decay must be in (0, 1], not {o.layer_lr_decay}"),
        (o.freeze_until == "" or o.freeze_until == "stem" or (o.freeze_until.startswith("layer")
                                                               and o.freeze_until[5:].isdigit()),
         f"freeze_until {o.freeze_until!r} is not a stage; use stem or layer1 .. layer4 (the network's stages)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def save_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)


def run_name(cfg: TrainConfig) -> str:
    """The default run folder name: ``<recipe>-<arch>-<YYYYmmdd-HHMMSS>``."""
    return f"{cfg.recipe}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
