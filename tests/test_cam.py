"""CAM and Grad-CAM on networks whose answer is known, the box rule on hand-made heatmaps, the overlay."""

from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import create_model
from resnet50.cam import (
    GT_COLOR,
    PRED_COLOR,
    upsample_map,
    box_from_heatmap,
    cam,
    connected_components,
    dilated,
    draw_overlay,
    grad_cam,
    iou,
    localization_accuracy,
)
from resnet50.errors import UserError


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def spot_model():
    """ResNet-18 whose last stage is a subsampled copy of its stem, by construction: every residual branch ends in a
    zeroed BN (zero_init_residual), option A shortcuts only subsample and zero-pad, and conv1's channel 0 is a 7x7
    box filter. So C5 channel 0 at cell (i, j) is the input's brightness around pixel (32 i, 32 j), and fc gives
    class 2 exactly that channel: a bright spot drives class 2 at one cell."""
    model = create_model("resnet18", num_classes=3, in_chans=1, shortcut="A", zero_init_residual=True).eval()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[0, 0] = 1 / 49
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[2, 0] = 1.0
    return model


def test_cam_of_a_known_network_peaks_at_the_spot(spot_model):
    x = torch.zeros(1, 1, 128, 192)  # 4 x 6 cells of 32 px; not square, so rows and columns cannot be swapped
    x[0, 0, 60:69, 124:133] = 1.0  # a 9 x 9 spot around pixel (64, 128): cell (2, 4)
    r = cam(spot_model, x)
    assert r.classes.tolist() == [2]
    expected = torch.zeros(4, 6)
    expected[2, 4] = 1.0  # the 7x7 box filter fits inside the spot there; no other cell sees it
    torch.testing.assert_close(r.maps[0], expected)
    assert r.logits[0].tolist() == pytest.approx([0.0, 0.0, 1 / 24], rel=1e-4)  # the GAP of the map (BN eps: 1e-5)
    assert r.scores[0].item() == pytest.approx(np.exp(1 / 24) / (2 + np.exp(1 / 24)), rel=1e-4)
    # upsampled, the one-hot cell is a bilinear tent on what the cell sees: the spot, pixel (64, 128). (Half-pixel
    # resizing, as F.interpolate or cv2.resize, would centre it on (80, 144): half a cell off.)
    h = r.heatmaps[0]
    assert h.shape == (128, 192) and h.max() <= 1 and h.min() == 0
    ys, xs = torch.nonzero(h == h.max(), as_tuple=True)
    assert ys.tolist() == [64] and xs.tolist() == [128]
    # the tent 1 - |d| / 32 is >= 20 % of its peak for |d| <= 25.6 px: pixels 103..153 and 39..89
    assert r.boxes[0].tolist() == [103, 39, 51, 51]


def test_cam_for_a_class_the_spot_does_not_drive(spot_model):
    x = torch.zeros(2, 1, 128, 128)
    x[:, 0, 60:69, 60:69] = 1.0
    r = cam(spot_model, x, target=0)  # class 0 has zero weights: a constant map, nothing localised
    assert r.classes.tolist() == [0, 0]
    assert torch.equal(r.heatmaps, torch.zeros(2, 128, 128))
    assert r.boxes.tolist() == [[0, 0, 128, 128]] * 2


def test_cam_maps_add_up_to_the_logits():
    model = _randomise_bn(create_model("resnet18", num_classes=5, in_chans=1))
    x = torch.randn(3, 1, 64, 96)
    r = cam(model, x, target=[4, 0, 2])
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(r.logits, logits, rtol=1e-5, atol=1e-5)
    assert r.maps.shape == (3, 2, 3) and r.heatmaps.shape == (3, 64, 96) and r.boxes.shape == (3, 4)
    assert r.classes.tolist() == [4, 0, 2]
    torch.testing.assert_close(r.maps.mean((1, 2)) + model.fc.bias[r.classes].detach(), logits[[0, 1, 2], [4, 0, 2]],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r.scores, logits.softmax(1)[[0, 1, 2], [4, 0, 2]])
    assert torch.allclose(r.heatmaps.amax((1, 2)), torch.ones(3)) and torch.all(r.heatmaps.amin((1, 2)) == 0)
    assert cam(model, x).classes.tolist() == logits.argmax(1).tolist()


def test_grad_cam_on_layer4_is_cam_over_the_number_of_positions():
    model = _randomise_bn(create_model("resnet18", num_classes=4, in_chans=1))
    x = torch.randn(2, 1, 96, 64)
    c = cam(model, x)
    g = grad_cam(model, x, stage="layer4")
    assert g.classes.tolist() == c.classes.tolist()
    torch.testing.assert_close(g.maps * (3 * 2), c.maps, rtol=1e-4, atol=1e-5)  # alpha_k = w_ck / (h w)
    # the heatmaps differ only by the papers' normalisations: Grad-CAM's ReLU and max, CAM's min and max
    up = upsample_map(c.maps.clamp_min(0), (96, 64), 32)
    torch.testing.assert_close(g.heatmaps, up / up.amax((1, 2), keepdim=True), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_on_an_earlier_stage_has_its_resolution():
    model = _randomise_bn(create_model("resnet18", num_classes=3, in_chans=1))
    r = grad_cam(model, torch.randn(2, 1, 64, 64), target=1, stage="layer3")
    assert r.maps.shape == (2, 4, 4) and r.heatmaps.shape == (2, 64, 64) and r.classes.tolist() == [1, 1]
    assert torch.all((r.heatmaps >= 0) & (r.heatmaps <= 1))


@pytest.mark.parametrize("arch,options", [("resnet50", {}), ("resnet50", {"variant": "v1"}),
                                          ("resnet18", {"shortcut": "A"})])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_model_reproduces_the_map_on_its_grid(arch, options, output_stride):
    model = _randomise_bn(create_model(arch, num_classes=3, in_chans=1, **options))
    x = torch.randn(2, 1, 64, 96)
    dense = dilated(model, output_stride)
    with torch.no_grad():
        c5 = model.forward_pyramid(x)["C5"]
        d5 = dense.forward_pyramid(x)["C5"]
    k = 32 // output_stride
    assert d5.shape[-2:] == (64 // output_stride, 96 // output_stride)
    torch.testing.assert_close(d5[..., ::k, ::k], c5, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(d5[..., 1::k, ::k], c5[..., : d5[..., 1::k, ::k].shape[-2], :], atol=1e-2)
    assert dense.state_dict().keys() == model.state_dict().keys()
    assert model.layer4[0].conv2.stride == (2, 2) or model.layer4[0].conv1.stride == (2, 2)  # the original is kept
    assert cam(dense, x).maps.shape == (2, 64 // output_stride, 96 // output_stride)


def test_dilated_reads_the_strides_off_the_modules():
    model = _randomise_bn(create_model("resnet50", num_classes=3, in_chans=1))
    for m in model.layer4[0].modules():  # a network built at output stride 16: layer4 unstrided, not dilated
        if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
    x = torch.randn(1, 1, 64, 64)
    dense = dilated(model, 8)
    assert dense.dilation_factors == {"layer1": 1, "layer2": 1, "layer3": 2, "layer4": 2}
    with torch.no_grad():
        c5, d5 = model.forward_pyramid(x)["C5"], dense.forward_pyramid(x)["C5"]
    assert c5.shape[-1] == 4 and d5.shape[-1] == 8
    torch.testing.assert_close(d5[..., ::2, ::2], c5, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="already dilated"):
        dilated(dense, 4)


def test_upsampling_places_each_cell_on_its_receptive_field_and_a_dense_map_on_its_originals_grid():
    coarse = torch.randn(2, 4, 6)
    up = upsample_map(coarse, (128, 192), 32)
    torch.testing.assert_close(up[:, ::32, ::32], coarse)  # cell (i, j) lands on pixel (32 i, 32 j)
    torch.testing.assert_close(up[:, 16, 48], coarse[:, :2, 1:3].mean((1, 2)))  # halfway: the mean of four cells
    torch.testing.assert_close(up[:, 100:, 170:], coarse[:, 3:, 5:].expand(2, 28, 22))  # past the last cell: edge
    # a 4x denser map (stride 8) holding the coarse map's own bilinear values: cell 4i is coarse cell i
    u = (torch.arange(16) / 4).clamp(max=3)
    v = (torch.arange(24) / 4).clamp(max=5)
    wy = (1 - (u[:, None] - torch.arange(4)[None]).abs()).clamp_min(0)
    wx = (1 - (v[:, None] - torch.arange(6)[None]).abs()).clamp_min(0)
    dense = torch.einsum("yh,nhw,xw->nyx", wy, coarse, wx)
    torch.testing.assert_close(upsample_map(dense, (128, 192), 8), up)


def test_dilated_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match="power of two"):
        dilated(create_model("resnet18", num_classes=2), 12)
    with pytest.raises(UserError, match="BlurPool"):
        dilated(create_model("resnet50", num_classes=2, blurpool=True), 8)


def test_cam_errors():
    no_fc = create_model("resnet18", num_classes=0, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with pytest.raises(UserError, match="classifier"):
        cam(no_fc, x)
    model = create_model("resnet18", num_classes=3, in_chans=1).eval()
    with pytest.raises(UserError, match="out of range"):
        cam(model, x, target=3)
    with pytest.raises(UserError, match="one per image"):
        cam(model, x, target=[0, 1])
    with pytest.raises(UserError, match="stage"):
        grad_cam(model, x, stage="layer9")


def test_cam_under_bf16_autocast_gives_fp32_results():
    model = create_model("resnet18", num_classes=3, in_chans=1).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = cam(model, torch.randn(2, 1, 64, 64))
    assert r.heatmaps.dtype == r.maps.dtype == r.scores.dtype == torch.float32 and r.boxes.dtype == torch.long


# --- the box rule -----------------------------------------------------------------------------------------

def test_box_takes_the_largest_component_not_the_hottest():
    h = np.zeros((40, 60))
    h[2:5, 2:5] = 1.0  # small and hottest
    h[20:30, 30:40] = 0.5  # large, above 20 % of the maximum
    assert box_from_heatmap(h) == [30, 20, 10, 10]
    assert box_from_heatmap(h, threshold=0.6) == [2, 2, 3, 3]  # now the large one is below the threshold
    h[20:30, 30:40] = 0.19  # below 20 %: gone at the paper's threshold
    assert box_from_heatmap(h) == [2, 2, 3, 3]
    h[20:30, 30:40] = 0.2  # exactly 20 % counts
    assert box_from_heatmap(torch.from_numpy(h)) == [30, 20, 10, 10]


def test_box_components_are_8_connected():
    h = np.zeros((10, 10))
    for k in range(5):
        h[2 + k, 1 + k] = 1.0  # a diagonal line: one component with 8-connectivity, five with 4
    h[0, 8] = h[1, 8] = h[0, 9] = 1.0  # three pixels, apart
    assert box_from_heatmap(h) == [1, 2, 5, 5]
    assert sorted(a for a, _ in connected_components(h > 0)) == [3, 5]


def test_box_ties_go_to_the_first_component_and_zero_maps_to_the_whole_image():
    h = np.zeros((8, 12))
    h[5, 9:11] = 1.0
    h[1, 2:4] = 1.0
    assert box_from_heatmap(h) == [2, 1, 2, 1]
    assert box_from_heatmap(np.zeros((8, 12))) == [0, 0, 12, 8]


def _components_bfs(mask):
    """A flood fill, the obvious way: (area, [x, y, w, h]) of each 8-connected component."""
    seen, out = np.zeros_like(mask, bool), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0], queue, pix = True, deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pix.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
        ys, xs = zip(*pix)
        out.append((len(pix), [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]))
    return sorted(out)


def test_connected_components_match_a_flood_fill():
    rng = np.random.default_rng(0)
    for k in range(60):
        mask = rng.random((int(rng.integers(1, 25)), int(rng.integers(1, 35)))) < rng.uniform(0.2, 0.7)
        assert sorted(connected_components(mask)) == _components_bfs(mask), k


def test_box_errors():
    with pytest.raises(UserError, match="2-D"):
        box_from_heatmap(np.zeros((2, 3, 4)))
    with pytest.raises(UserError, match=">= 0"):
        box_from_heatmap(np.array([[0.5, -0.1]]))
    with pytest.raises(UserError, match=">= 0"):
        box_from_heatmap(np.array([[0.5, np.nan]]))
    with pytest.raises(UserError, match="threshold"):
        box_from_heatmap(np.ones((2, 2)), threshold=20)


# --- scores -----------------------------------------------------------------------------------------------

def test_iou_known_boxes():
    assert iou([10, 10, 20, 20], [10, 10, 20, 20]) == 1.0
    assert iou([0, 0, 10, 10], [5, 5, 10, 10]) == pytest.approx(25 / 175)
    assert iou([0, 0, 10, 10], [20, 0, 5, 5]) == 0.0


def test_localization_accuracy_counts_by_the_ilsvrc_rule():
    gt = [[0, 0, 10, 10]] * 4
    good, bad = [0, 0, 10, 10], [5, 5, 10, 10]  # IoU 1 and 25 / 175
    acc = localization_accuracy(pred_classes=[1, 1, 2, 2], pred_boxes=[good, bad, good, bad],
                                gt_known_boxes=[good, bad, good, good], labels=[1, 1, 1, 1], gt_boxes=gt)
    assert acc["top1_cls"] == 0.5
    assert acc["top1_loc"] == 0.25  # class right and box right: only the first
    assert acc["gt_known_loc"] == 0.75  # the true class's box, whatever was predicted
    assert acc["mean_iou"] == pytest.approx((3 + 25 / 175) / 4)
    with pytest.raises(UserError):
        localization_accuracy([1], [good], [good], [1, 2], gt[:2])


# --- the picture ------------------------------------------------------------------------------------------

def test_overlay_is_an_enlarged_rgb_picture_with_its_boxes():
    image = np.zeros((128, 128), np.uint8)
    image[40:80, 50:90] = 200
    heat = np.zeros((128, 128), np.float32)
    heat[40:80, 50:90] = 1.0
    pic = draw_overlay(image, heat, box=[50, 40, 40, 40], label="Trouser", score=0.973, gt_box=[10, 90, 20, 20])
    assert isinstance(pic, Image.Image) and pic.mode == "RGB" and pic.size == (384, 384)  # 3x: >= 384 px
    a = np.asarray(pic)
    assert tuple(a[3 * 60, 3 * 50]) == PRED_COLOR  # the left edge of the predicted box, scaled
    assert tuple(a[3 * 100, 3 * 10]) == GT_COLOR
    hot, cold = a[3 * 70, 3 * 70].astype(int), a[3 * 20, 3 * 110].astype(int)
    assert hot[0] > hot[2] + 50 and cold[2] > cold[0]  # turbo: red where hot, blue where cold
    assert not np.array_equal(a[3 * 40 - 20:3 * 40, 3 * 50:3 * 50 + 100], np.zeros((20, 100, 3)))  # the tag


@pytest.mark.parametrize("shape,size", [((28, 28), (392, 392)), ((100, 150), (600, 400)), ((400, 500), (500, 400))])
def test_overlay_size(shape, size):
    img = Image.fromarray(np.full(shape + (3,), 90, np.uint8))
    pic = draw_overlay(img, torch.rand(shape), box=None, label="Bag")
    assert pic.size == size and pic.mode == "RGB"


@pytest.mark.parametrize("fn", [cam, grad_cam])
def test_cam_on_a_train_mode_model_runs_in_eval_and_gives_the_mode_back(fn):
    """A model left in train mode (CAM pictures made during training): the maps are the eval-mode maps, no
    batch-norm statistic moves, one image's map does not depend on its batch-mates, and each module keeps its mode
    (a frozen part in eval stays in eval)."""
    torch.manual_seed(0)
    model = _randomise_bn(create_model("resnet18", num_classes=3))
    img, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64) * 3
    expected = fn(model, img)  # eval mode: the reference
    model.train()
    model.layer1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alone, pair = fn(model, img), fn(model, torch.cat([img, other]))
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])] == []
    assert model.training and model.layer4.training and not model.layer1.training
    assert not any(m.training for m in model.layer1.modules())
    torch.testing.assert_close(alone.heatmaps, expected.heatmaps)
    torch.testing.assert_close(alone.logits, expected.logits)
    torch.testing.assert_close(pair.heatmaps[0], expected.heatmaps[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair.logits[0], expected.logits[0], atol=1e-5, rtol=1e-5)
