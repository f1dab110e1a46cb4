"""Transforms: shapes, crop geometry and exact pixels, the 10-crop, normalisation and seeded determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50.data import (
    FASHION_MNIST,
    IMAGENET,
    CenterCrop,
    RandomCrop,
    RandomResizedCrop,
    Resize,
    TenCrop,
    ToTensor,
    TransformConfig,
    build_dataset,
    build_transform,
    default_transform_config,
    hflip,
)
from resnet50.errors import UserError


def ramp(width: int, height: int) -> Image.Image:
    """RGB image with R = column, G = row (mod 256), B = 7: every pixel says where it came from."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([xs % 256, ys % 256, np.full_like(xs, 7)], -1).astype(np.uint8))


def test_random_resized_crop_stays_in_bounds_and_keeps_area_and_ratio():
    g = torch.Generator().manual_seed(0)
    rrc = RandomResizedCrop(224)
    for width, height in [(500, 375), (375, 500), (64, 64), (300, 40), (13, 17)]:
        for _ in range(200):
            left, top, w, h = rrc.params(width, height, g)
            assert 0 <= left and 0 <= top and left + w <= width and top + h <= height and w > 0 and h > 0
    areas = []
    for _ in range(500):
        left, top, w, h = rrc.params(500, 500, g)
        areas.append(w * h / 250_000)
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert 0.075 <= min(areas) and max(areas) <= 1.0 and 0.4 < np.mean(areas) < 0.65  # mean of U(0.08, 1) is 0.54


def test_random_resized_crop_falls_back_to_a_central_crop():
    rrc = RandomResizedCrop(8, scale=(0.95, 1.0))
    # A 10 x 1000 strip: no crop of 95 % of its area has a ratio in [3/4, 4/3]; central crop of ratio 3/4.
    assert rrc.params(10, 1000, torch.Generator().manual_seed(0)) == (0, (1000 - 13) // 2, 10, 13)
    assert rrc.params(1000, 10, torch.Generator().manual_seed(0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_random_resized_crop_output_and_pixels_come_from_the_box():
    rrc = RandomResizedCrop(16, scale=(0.1, 0.1), ratio=(1.0, 1.0), interpolation="nearest")
    img = ramp(200, 100)
    left, top, w, h = rrc.params(200, 100, torch.Generator().manual_seed(5))
    out = np.asarray(rrc(img, torch.Generator().manual_seed(5)))
    assert out.shape == (16, 16, 3) and w == h == 45
    assert left <= out[..., 0].min() and out[..., 0].max() < left + w
    assert top <= out[..., 1].min() and out[..., 1].max() < top + h


def test_resize_sets_the_shorter_side():
    assert Resize(256)(ramp(500, 375)).size == (341, 256)
    assert Resize(256)(ramp(375, 500)).size == (256, 341)
    assert Resize(32)(ramp(28, 28)).size == (32, 32)


def test_center_crop_takes_exact_central_pixels():
    img = ramp(11, 8)
    out = np.asarray(CenterCrop(4)(img))
    assert out[0, 0, :2].tolist() == [4, 2]  # left round(7 / 2) = 4, top round(4 / 2) = 2
    np.testing.assert_array_equal(out, np.asarray(img)[2:6, 4:8])
    tensor = torch.arange(2 * 11 * 8).reshape(2, 8, 11)
    assert torch.equal(CenterCrop(4)(tensor), tensor[:, 2:6, 4:8])


def test_center_crop_pads_small_images_with_zeros():
    img = Image.new("L", (28, 28), 200)
    out = np.asarray(CenterCrop(32)(img))
    assert out.shape == (32, 32)
    assert (out[2:30, 2:30] == 200).all() and out[:2].sum() == out[30:].sum() == out[:, :2].sum() == 0


def test_random_crop_with_padding_shifts_by_at_most_the_padding():
    img = Image.new("L", (32, 32), 255)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        out = np.asarray(RandomCrop(32, padding=4)(img, g))
        assert out.shape == (32, 32) and (out == 255).sum() >= 28 * 28


def test_ten_crop_gives_corners_centre_and_their_mirrors():
    img = ramp(10, 8)
    crops = [np.asarray(c) for c in TenCrop(4)(img)]
    full = np.asarray(img)
    assert len(crops) == 10
    expected = [full[0:4, 0:4], full[0:4, 6:10], full[4:8, 0:4], full[4:8, 6:10], full[2:6, 3:7]]
    for crop, want in zip(crops[:5], expected):
        np.testing.assert_array_equal(crop, want)
    mirrored = full[:, ::-1]
    expected_flipped = [mirrored[0:4, 0:4], mirrored[0:4, 6:10], mirrored[4:8, 0:4], mirrored[4:8, 6:10],
                        mirrored[2:6, 3:7]]
    for crop, want in zip(crops[5:], expected_flipped):
        np.testing.assert_array_equal(crop, want)
    assert crops[5][0, 0, 0] == 9  # the mirrored image's top-left is the original's top-right column
    tensor_crops = TenCrop(4)(torch.from_numpy(full.copy()).permute(2, 0, 1))
    assert torch.equal(tensor_crops[1], torch.from_numpy(expected[1].copy()).permute(2, 0, 1))


def test_to_tensor_and_normalize_values():
    img = Image.new("RGB", (2, 2), (255, 0, 128))
    x = build_transform(dataclasses.replace(IMAGENET, image_size=2, crop_pct=1.0), train=False)(img)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(x[:, 0, 0], torch.tensor(want), atol=1e-6)
    with pytest.raises(UserError, match="1 channel.*in_chans=3"):
        ToTensor(3)(Image.new("L", (2, 2)))


def test_pipeline_shapes():
    photo = ramp(500, 375)
    assert build_transform(IMAGENET, train=True)(photo).shape == (3, 224, 224)
    assert build_transform(IMAGENET, train=False)(photo).shape == (3, 224, 224)
    assert build_transform(IMAGENET, train=False, ten_crop=True)(photo).shape == (10, 3, 224, 224)
    digit = Image.new("L", (28, 28), 255)
    for train in (True, False):
        assert build_transform(FASHION_MNIST, train=train)(digit).shape == (1, 32, 32)
    centred = build_transform(FASHION_MNIST, train=False)(digit)
    zero = (0 - 0.2860) / 0.3530
    assert torch.allclose(centred[0, 0, 0], torch.tensor(zero)) and centred[0, 2, 2] == pytest.approx((1 - 0.286) / 0.353)
    with pytest.raises(UserError, match="evaluation transform"):
        build_transform(IMAGENET, train=True, ten_crop=True)


def test_eval_size_and_draft_size():
    assert IMAGENET.eval_size == 256 and FASHION_MNIST.eval_size == 28
    assert IMAGENET.draft_size(train=False) is None
    drafted = dataclasses.replace(IMAGENET, jpeg_draft=True)
    assert drafted.draft_size(train=False) == 256 and drafted.draft_size(train=True) == 792  # 224 / sqrt(0.08)


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="need 1 value"):
        TransformConfig(in_chans=1)
    with pytest.raises(UserError, match="interpolation"):
        TransformConfig(interpolation="cubic")
    with pytest.raises(UserError, match="scale"):
        TransformConfig(scale=(0.5, 0.1))
    with pytest.raises(TypeError):
        TransformConfig(imagesize=10)  # unknown keys are errors


def test_seeded_augmentation_is_deterministic():
    t = build_transform(IMAGENET, train=True)
    photo = ramp(300, 200)
    a = t(photo, torch.Generator().manual_seed(3))
    b = t(photo, torch.Generator().manual_seed(3))
    c = t(photo, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(11)
    d = t(photo)
    torch.manual_seed(11)
    assert torch.equal(d, t(photo))


def test_hflip_mirrors_the_last_axis():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert hflip(x)[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]


def test_default_transform_config_follows_the_dataset(tmp_path, make_idx, make_folder):
    make_idx(tmp_path / "fashion-mnist", "train", np.zeros((10, 28, 28), np.uint8), np.arange(10))
    cfg = default_transform_config(build_dataset(tmp_path / "fashion-mnist", "train", val_fraction=0.0))
    assert (cfg.image_size, cfg.eval_size, cfg.train_crop, cfg.in_chans, cfg.mean) == (32, 28, "pad", 1, (0.286,))
    make_folder(tmp_path / "photos", {"a": ["1.png"]})
    photo_cfg = default_transform_config(build_dataset(tmp_path / "photos", "test"))
    assert (photo_cfg.image_size, photo_cfg.eval_size, photo_cfg.train_crop) == (224, 256, "random_resized")
