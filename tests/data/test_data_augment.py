"""Auto-augmentation policies and random erasing: real pixel checks of the ops, the policies' sampling, wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50.data import TransformConfig, build_transform
from resnet50.data.augment import (
    RandAugment,
    RandomErasing,
    TrivialAugmentWide,
    build_auto_augment,
)
from resnet50.errors import UserError
from resnet50.recipes import get_recipe, resolve


def _img(mode="RGB", size=(48, 40), seed=0):
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode)


def test_trivial_augment_wide_has_torchvisions_table():
    ta = TrivialAugmentWide()
    names = [o[0] for o in ta.ops]
    assert names == ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                     "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]
    table = {o[0]: o[2] for o in ta.ops}
    assert len(table["Rotate"]) == 31 and table["Rotate"][-1] == 135.0 and table["TranslateX"][-1] == 32.0
    assert table["ShearX"][-1] == pytest.approx(0.99) and table["Solarize"][0] == 255 and table["Solarize"][-1] == 0
    assert table["Posterize"][0] == 8 and table["Posterize"][-1] == 2


def test_each_op_does_what_it_says():
    img = _img()
    a = np.asarray(img)
    ops = {o[0]: o[1] for o in TrivialAugmentWide().ops}
    nearest = Image.Resampling.NEAREST
    shifted = np.asarray(ops["TranslateX"](img, 5, nearest, (0, 0, 0)))
    assert (shifted[:, :-5] == a[:, 5:]).all() and (shifted[:, -5:] == 0).all()  # 5 px left, black fill
    down = np.asarray(ops["TranslateY"](img, -3, nearest, (0, 0, 0)))
    assert (down[3:] == a[:-3]).all() and (down[:3] == 0).all()
    solar = np.asarray(ops["Solarize"](img, 128, nearest, 0))
    assert (solar == np.where(a >= 128, 255 - a, a)).all()
    poster = np.asarray(ops["Posterize"](img, 2, nearest, 0))
    assert (poster == (a & 0b11000000)).all()
    assert (np.asarray(ops["Brightness"](img, 0.0, nearest, 0)) == 0).all()  # factor 0: black
    assert (np.asarray(ops["Identity"](img, 0, nearest, 0)) == a).all()
    assert (np.asarray(ops["Rotate"](img, 0.0, nearest, (0, 0, 0))) == a).all()


def test_policies_sample_their_ops_and_are_seeded():
    img = _img()
    for policy in (TrivialAugmentWide(), build_auto_augment("rand-m6-mstd0.5-inc1")):
        outs = [np.asarray(policy(img, torch.Generator().manual_seed(s))) for s in range(40)]
        changed = sum(not np.array_equal(o, np.asarray(img)) for o in outs)
        assert 20 <= changed < 40, changed  # identity (or skipped ops) sometimes, a change mostly
        again = np.asarray(policy(img, torch.Generator().manual_seed(7)))
        assert np.array_equal(again, outs[7])
    gray = _img("L")
    assert TrivialAugmentWide()(gray, torch.Generator().manual_seed(1)).mode == "L"
    assert RandAugment(10, 4)(gray, torch.Generator().manual_seed(1)).size == gray.size


def test_randaugment_levels_follow_timm():
    from resnet50.data.augment import _RAND_LEVELS

    g = torch.Generator().manual_seed(0)
    level = {name: fn for name, (_, fn) in _RAND_LEVELS.items()}
    assert level["Solarize"](2, g, 40) == 51 and level["SolarizeIncreasing"](2, g, 40) == 205
    assert level["Posterize"](5, g, 40) == 2 and level["PosterizeIncreasing"](5, g, 40) == 2
    assert level["PosterizeIncreasing"](10, g, 40) == 0 and level["SolarizeAdd"](10, g, 40) == 110
    assert abs(level["Rotate"](10, g, 40)) == 30.0 and abs(level["TranslateXRel"](10, g, 40)) == pytest.approx(18.0)
    assert level["Color"](10, g, 40) == pytest.approx(1.9) and abs(level["ColorIncreasing"](10, g, 40) - 1) == 0.9
    assert build_auto_augment("rand-m6", "bicubic").resample == Image.Resampling.BICUBIC
    img = _img()
    out = np.asarray(RandAugment(10, 1, prob=1.0)(img, torch.Generator().manual_seed(0)))
    assert out.shape == np.asarray(img).shape


def test_trivial_augment_translates_by_whole_pixels():
    ta = TrivialAugmentWide()
    img = _img()
    for seed in range(60):  # some seed draws a translation bin with a fractional value (32 * i / 30)
        g = torch.Generator().manual_seed(seed)
        out = np.asarray(ta(img, g))
        g = torch.Generator().manual_seed(seed)
        name, _, mags, _ = ta.ops[int(torch.randint(len(ta.ops), (), generator=g))]
        if name == "TranslateX":
            v = mags[int(torch.randint(ta.bins, (), generator=g))]
            v = -v if float(torch.rand((), generator=g)) < 0.5 else v
            k = int(v)
            a = np.asarray(img)
            want = np.zeros_like(a)
            if k >= 0:
                want[:, : a.shape[1] - k] = a[:, k:]
            else:
                want[:, -k:] = a[:, :k]
            assert np.array_equal(out, want), (seed, v)
            return
    pytest.fail("no TranslateX draw in 60 seeds")


def test_randaugment_strings_parse_like_timm():
    r = build_auto_augment("rand-m6-mstd0.5-inc1")
    assert (r.magnitude, r.num_ops, r.magnitude_std, r.increasing, r.prob) == (6.0, 2, 0.5, True, 0.5)
    assert "PosterizeIncreasing" in r.names and "Posterize" not in r.names
    assert build_auto_augment("rand-m9-n3").num_ops == 3 and build_auto_augment("") is None
    for bad in ("autoaugment", "rand-m11", "rand-m6-n0", "rand-q3"):
        with pytest.raises(UserError, match="unknown auto_augment"):
            build_auto_augment(bad)


def test_random_erasing_erases_one_rectangle_of_the_right_size():
    x = torch.ones(3, 40, 40)
    out = RandomErasing(p=1.0)(x.clone(), torch.Generator().manual_seed(3))
    erased = (out == 0).all(0)
    rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert erased.sum() == h * w  # one solid rectangle, every channel
    assert 0.02 * 1600 * 0.5 <= h * w <= 0.33 * 1600 * 1.5 and 0.3 / 1.5 <= h / w <= 3.3 * 1.5
    assert torch.equal(RandomErasing(p=0.0)(x.clone()), x)
    with pytest.raises(UserError, match="probability"):
        RandomErasing(p=1.5)


def test_pipeline_and_recipes_wire_them_in():
    cfg = TransformConfig(image_size=32, auto_augment="ta_wide", random_erasing=0.25)
    steps = [type(s).__name__ for s in build_transform(cfg, train=True).steps]
    assert steps == ["RandomResizedCrop", "RandomHorizontalFlip", "TrivialAugmentWide", "ToTensor", "Normalize",
                     "RandomErasing"]
    assert [type(s).__name__ for s in build_transform(cfg, train=False).steps] == ["Resize", "CenterCrop",
                                                                                    "ToTensor", "Normalize"]
    assert build_transform(cfg, train=True)(_img(), torch.Generator().manual_seed(0)).shape == (3, 32, 32)
    t, r = get_recipe("torchvision-v2"), get_recipe("rsb-a3")
    assert (t.data.auto_augment, t.data.random_erasing, t.data.repeated_aug) == ("ta_wide", 0.1, 4)
    assert (r.data.auto_augment, r.data.random_erasing, r.data.interpolation) == ("rand-m6-mstd0.5-inc1", 0.0,
                                                                                 "bicubic")
    with pytest.raises(UserError, match="unknown interpolation"):
        resolve("demo", {"interpolation": "cubic"})
    with pytest.raises(UserError, match="unknown auto_augment"):
        resolve("demo", {"auto_augment": "trivial"})
    with pytest.raises(UserError):
        TransformConfig(random_erasing=2.0)
