import math

import pytest
import torch

from resnet50 import UserError, create_model
from resnet50.optim import (
    Lamb,
    ModelEMA,
    loss_fn,
    lr_at,
    mix_batch,
    param_groups,
    soft_targets,
)
from resnet50.recipes import RECIPES, OptimSpec, TrainConfig, get_recipe, resolve


def test_recipes_resolve_to_their_documented_hyperparameters():
    p = get_recipe("paper")
    assert (p.model.variant, p.optim.lr, p.optim.momentum, p.optim.weight_decay, p.optim.milestones, p.optim.gamma,
            p.optim.epochs, p.data.batch_size, p.optim.schedule) == ("v1", 0.1, 0.9, 1e-4, (30, 60), 0.1, 90, 256, "step")
    assert p.optim.decay_norm_and_bias
    n = get_recipe("nvidia")
    assert (n.model.variant, n.optim.lr, n.optim.momentum, n.optim.weight_decay, n.optim.schedule,
            n.optim.label_smoothing, n.optim.epochs) == ("v1.5", 0.256, 0.875, 3.0517578125e-05, "cosine", 0.1, 90)
    assert not n.optim.decay_norm_and_bias and n.optim.warmup_epochs > 0
    t = get_recipe("torchvision-v2")
    assert (t.optim.epochs, t.optim.lr * t.data.batch_size / 256, t.optim.mixup, t.optim.cutmix, t.data.image_size,
            t.run.ema_every) == (600, 0.5, 0.2, 1.0, 176, 32)
    assert t.run.ema_decay ** 32 == pytest.approx(0.99891, abs=2e-5)  # torchvision's rescaled per-update decay
    r = get_recipe("rsb-a3")
    assert (r.optim.optimizer, r.optim.loss, r.optim.lr * r.data.batch_size / 256, r.data.image_size,
            r.data.eval_size, r.optim.epochs) == ("lamb", "bce", 8e-3, 160, 224, 100)
    f = get_recipe("fast")
    assert f.data.min_res < f.data.image_size and f.run.tta_flip and f.optim.schedule == "triangular"
    assert f.model.blurpool and not get_recipe("paper").model.blurpool
    assert f.optim.lr * f.data.batch_size / 256 == pytest.approx(1.7) and f.optim.weight_decay == 1e-4
    d = get_recipe("demo")
    assert (d.model.arch, d.model.variant, d.data.data, d.data.image_size, d.data.crop_pct, d.optim.optimizer,
            d.optim.lr, d.optim.weight_decay, d.optim.epochs, d.optim.label_smoothing, d.run.amp) == \
        ("resnet50", "v1.5", "embedded", 48, 1.0, "adamw", 0.004, 0.05, 10, 0.1, "auto")
    ft = get_recipe("finetune")  # fastai's fine_tune: one frozen epoch, slice(lr/100, lr) over six groups, 2e-3 @ 64
    assert (ft.optim.freeze_epochs, ft.optim.layer_lr_decay, ft.optim.optimizer, ft.optim.lr * 64 / 256,
            ft.optim.weight_decay, ft.data.preprocessing) == (1, 0.4, "adamw", 2e-3, 0.01, "weights")
    assert ft.optim.layer_lr_decay ** 5 == pytest.approx(0.01, rel=0.03)  # the stem at 1/100 of the head
    lp = get_recipe("linear-probe")
    assert lp.optim.freeze_until == "layer4" and lp.optim.freeze_epochs == 0
    assert set(RECIPES) == {"demo", "paper", "nvidia", "torchvision-v2", "rsb-a3", "fast", "finetune", "linear-probe"}


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = resolve("paper", {"lr": "0.2", "milestones": "10,20", "nesterov": "true", "arch": "resnet18"})
    assert cfg.optim.lr == 0.2 and cfg.optim.milestones == (10, 20) and cfg.optim.nesterov is True
    assert cfg.model.arch == "resnet18"
    with pytest.raises(UserError, match="unknown config field 'learning_rate'"):
        resolve("paper", {"learning_rate": 1})
    with pytest.raises(UserError, match="not a valid float"):
        resolve("paper", {"lr": "fast"})
    with pytest.raises(UserError, match="unknown recipe"):
        resolve("imagenet")
    with pytest.raises(UserError, match="unknown schedule"):
        resolve("paper", {"schedule": "exp"})
    # the saved form reloads to the same config, and unknown keys in a file are errors
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    bad = cfg.to_dict()
    bad["optim"]["lr_typo"] = 1
    with pytest.raises(UserError, match="lr_typo"):
        TrainConfig.from_dict(bad)


def test_schedules():
    o = OptimSpec(lr=1.0, schedule="step", milestones=(30, 60), epochs=90)
    assert [lr_at(s * 10, 10, o, 1.0) for s in (0, 29, 30, 59, 60, 89)] == pytest.approx([1, 1, .1, .1, .01, .01])
    o = OptimSpec(schedule="cosine", epochs=10, warmup_epochs=2, warmup_start=0.0)
    assert lr_at(0, 100, o, 2.0) == 0 and lr_at(100, 100, o, 2.0) == pytest.approx(1.0)  # half-way through warmup
    assert lr_at(200, 100, o, 2.0) == pytest.approx(2.0)  # peak after warmup
    assert lr_at(600, 100, o, 2.0) == pytest.approx(1.0)  # cosine half-way between epochs 2 and 10
    assert lr_at(1000, 100, o, 2.0) == pytest.approx(0.0, abs=1e-12)
    o = OptimSpec(schedule="triangular", epochs=10, lr_peak_epoch=2)
    assert [lr_at(s, 1, o, 1.0) for s in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    o = OptimSpec(schedule="linear", epochs=4)
    assert lr_at(2, 1, o, 1.0) == pytest.approx(0.5)


def test_param_groups_by_module_type():
    m = create_model("resnet50")
    decay, no_decay = param_groups(m, 1e-4, decay_norm_and_bias=False)
    # 53 conv weights + fc.weight decay; 53 BN x (weight, bias) + fc.bias do not (downsample.1 included)
    assert len(decay["params"]) == 54 and len(no_decay["params"]) == 107 and no_decay["weight_decay"] == 0
    assert any(p is m.layer1[0].downsample[1].weight for p in no_decay["params"])
    assert len(param_groups(m, 1e-4, decay_norm_and_bias=True)) == 1


def test_lamb_step_lowers_a_loss_and_respects_trust_ratio():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(20, 10))
    target = torch.randn(20, 10)
    opt = Lamb([w], lr=0.05, weight_decay=1e-6)
    losses = []
    for _ in range(20):
        loss = ((w - target) ** 2).sum()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        before = w.detach().clone()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    # the step's size is lr * ||w|| (trust ratio), whatever the gradient's scale
    assert (w.detach() - before).norm().item() == pytest.approx(0.05 * before.norm().item(), rel=1e-4)


def test_ema_update_formula():
    m = torch.nn.Linear(3, 2)
    ema = ModelEMA(m, decay=0.9, every=2)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m, step=1)  # not a multiple of every: no update
    assert torch.equal(ema.module.weight, w0)
    ema.update(m, step=2)
    d = 0.9 ** 2
    assert torch.allclose(ema.module.weight, d * w0 + (1 - d) * (w0 + 1))


def test_mixup_and_cutmix_keep_targets_normalised():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    t = soft_targets(torch.arange(8) % 4, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(8)) and t.max() == pytest.approx(0.925)
    for o in (OptimSpec(mixup=0.2), OptimSpec(cutmix=1.0)):
        xm, tm = mix_batch(x, t, o, torch.Generator().manual_seed(1))
        assert xm.shape == x.shape and torch.allclose(tm.sum(1), torch.ones(8))
        assert not torch.equal(xm, x)
    # cutmix pastes a box: each pixel comes from the image itself or its partner
    xm, _ = mix_batch(x, t, OptimSpec(cutmix=1.0), torch.Generator().manual_seed(3))
    changed = (xm != x).any(1)
    assert 0 < changed.float().mean() < 1


def test_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    ce = loss_fn(logits, onehot, OptimSpec())
    assert ce.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))))
    bce = loss_fn(logits, onehot, OptimSpec(loss="bce"))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot)
    assert bce.item() == pytest.approx(ref.item())


def test_progressive_resizing_follows_ffcv():
    from resnet50.train import train_resolution

    fast = get_recipe("fast")
    assert [train_resolution(e, fast) for e in range(16)] == [160] * 12 + [192] * 4  # 176 rounds to 192
    small = resolve("demo", {"min_res": 32, "start_ramp": 3, "end_ramp": 9, "epochs": 12})
    assert [train_resolution(e, small) for e in range(12)] == [32, 32, 32, 32, 32, 40, 40, 40, 48, 48, 48, 48]
    assert [train_resolution(e, get_recipe("demo")) for e in range(3)] == [48, 48, 48]


def test_pad_sets_the_pad_and_crop_translation_and_is_refused_with_random_resized_crops():
    from types import SimpleNamespace

    from resnet50.data import build_dataset
    from resnet50.data.transforms import build_transform

    ds = build_dataset("embedded", "train")
    img = ds[0][0]
    for pad, moved in ((0, False), (4, True)):
        train_cfg, eval_cfg = resolve("demo", {"pad": pad, "hflip": 0}).data.transforms(ds)
        assert train_cfg.train_crop == "pad" and train_cfg.pad == pad
        augment, fixed = build_transform(train_cfg, train=True), build_transform(eval_cfg, train=False)
        torch.manual_seed(0)
        same = [torch.equal(augment(img), fixed(img)) for _ in range(20)]
        assert all(same) if not moved else not all(same)  # 1 of pad 4's 81 offsets keeps the image in place
    assert resolve("demo").data.pad == 0 and resolve("paper").data.pad == 4  # the paper's CIFAR recipe: 4 px
    with pytest.raises(UserError, match="pad must be between 0"):
        resolve("demo", {"pad": -1})
    rgb = SimpleNamespace(image_size=None, mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)  # large images
    assert resolve("paper").data.transforms(rgb)[0].train_crop == "random_resized"
    with pytest.raises(UserError, match="random_resized crops; drop --pad"):
        resolve("paper", {"pad": 2}).data.transforms(rgb)
