"""Optimisation pieces of the training loop: parameter groups, LAMB, the learning-rate schedule, EMA, mixup/cutmix.

Everything here is a pure function of its inputs or a small object with a ``state_dict``, so a resumed run
continues exactly: the learning rate is a function of the optimiser step, never a stateful scheduler object.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .recipes import OptimSpec

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def stage_index(model: nn.Module, child: str) -> int:
    """A ResNet's top-level module ``child`` by depth: 0 the stem (conv1, bn1, ...), k for ``layerk``, and one more
    than the last stage for the classifier (``fc``) and anything after it."""
    stages = getattr(model, "stage_names", None) or []
    if child in stages:
        return stages.index(child) + 1
    return len(stages) + 1 if child == "fc" or not stages else 0


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """Groups by module type (not by name, which misses ``downsample.1``): conv and fc weights get weight decay;
    norm-layer parameters and every bias get it only when ``decay_norm_and_bias``. ``layer_lr_decay`` < 1 splits
    them further by stage (:func:`stage_index`): a stage ``d`` below the classifier has ``lr_scale`` =
    layer_lr_decay ** d, which the training loop multiplies into the group's learning rate (discriminative rates:
    Howard and Ruder 2018, fastai's ``slice(lo, hi)``; BEiT's and timm's layer-wise decay)."""
    buckets: dict[tuple[float, bool], list] = {}
    tops = list(model.named_children()) if layer_lr_decay < 1 else [("", model)]
    head = len(getattr(model, "stage_names", None) or []) + 1
    for top, child in tops:
        scale = layer_lr_decay ** (head - stage_index(model, top)) if top else 1.0
        for module in child.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                exempt = (isinstance(module, NORM_LAYERS) or name == "bias") and not decay_norm_and_bias
                buckets.setdefault((scale, exempt), []).append(p)
    groups = [{"params": ps, "weight_decay": 0.0 if exempt else weight_decay, "lr_scale": scale}
              for (scale, exempt), ps in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]
    return groups or [{"params": [], "weight_decay": weight_decay, "lr_scale": 1.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019) as timm implements it for "ResNet strikes back": Adam moments with bias correction,
    weight decay added to the update, and, for tensors with weight decay, the update scaled by the trust ratio
    ||w|| / ||update|| (1 where either norm is zero). Gradients are clipped to a global norm of ``max_grad_norm``."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float = 1.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        max_norm = self.defaults["max_grad_norm"]
        global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        clip = torch.clamp(global_norm / max_norm, min=1.0) if max_norm else torch.tensor(1.0)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad / clip
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                    # the trust ratio, as timm: only where there is weight decay (so BN and biases take Adam steps)
                    w_norm, u_norm = p.norm(), update.norm()
                    update.mul_(torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)))
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, o: OptimSpec, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``o`` names over ``model``'s trainable parameters (weight decay per :func:`param_groups`).
    AdamW uses torch's fused implementation on CPU and CUDA (one kernel over all parameters instead of a loop over
    them): its optimiser step is 1.6x faster and a training step at the demo's shapes 4.6 % faster on the 2-core
    CPU (the fused row of ``benchmarks/train_speed.py`` with AdamW, docs/benchmarks.md); for SGD the fused one measured
    no faster, so torch's default stays."""
    groups = param_groups(model, o.weight_decay, o.decay_norm_and_bias, getattr(o, "layer_lr_decay", 1.0))
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.optimizer == "adamw":
        devices = {p.device.type for g in groups for p in g["params"]}
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas, fused=True if devices <= {"cpu", "cuda"} else None)
    return Lamb(groups, lr=lr, betas=o.betas)


def lr_at(step: int, steps_per_epoch: int, o: OptimSpec, peak: float) -> float:
    """The learning rate at optimiser step ``step`` (0-based): warmup, then the schedule, as a pure function."""
    epoch = step / steps_per_epoch
    total = o.epochs
    if o.warmup_epochs and epoch < o.warmup_epochs:
        return peak * (o.warmup_start + (1 - o.warmup_start) * epoch / o.warmup_epochs)
    if o.schedule == "step":
        return peak * o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "triangular":  # FFCV: linear from 0 up to the peak, then linearly down to 0 at the end
        if epoch < o.lr_peak_epoch:
            return peak * epoch / o.lr_peak_epoch
        return peak * max(0.0, (total - epoch) / (total - o.lr_peak_epoch))
    progress = min(1.0, (epoch - o.warmup_epochs) / max(1e-9, total - o.warmup_epochs))
    if o.schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)  # linear


class ModelEMA:
    """An exponential moving average of the weights (and a copy of the buffers), updated every few steps with the
    decay raised to that power so the averaging horizon does not depend on ``every``."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.every = decay, every

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        d = self.decay ** self.every
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd)


def mix_batch(images: Tensor, targets: Tensor, o: OptimSpec, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), chosen at random when both are on, on a batch with
    soft (one-hot or smoothed) ``targets``. Randomness from torch (``generator``), so runs are reproducible."""
    if not (o.mixup or o.cutmix) or torch.rand((), generator=generator).item() >= o.mix_prob:
        return images, targets
    use_cutmix = o.cutmix > 0 and (o.mixup == 0 or torch.rand((), generator=generator).item() < 0.5)
    alpha = o.cutmix if use_cutmix else o.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = (int(torch.randint(0, n, (), generator=generator)) for n in (h, w))
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images.mul(lam).add_(images[perm], alpha=1 - lam)
    return images, targets.mul(lam).add_(targets[perm], alpha=1 - lam)


def soft_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels[:, None], 1 - smoothing + off)


def loss_fn(logits: Tensor, targets: Tensor, o: OptimSpec) -> Tensor:
    """Cross entropy with soft targets, or the binary cross entropy of "ResNet strikes back"."""
    logits = logits.float()
    if o.loss == "bce":
        if o.bce_target_thresh:
            targets = (targets > o.bce_target_thresh).to(targets.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)  # mean over batch x classes, as timm
    return torch.sum(-targets * torch.log_softmax(logits, dim=1), dim=1).mean()
