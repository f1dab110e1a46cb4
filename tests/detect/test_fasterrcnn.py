"""resnet50.detect.fasterrcnn and roi_align: torchvision's Faster R-CNN layouts and parameter counts, shapes, the
FPN level mapping, RoIAlign on maps whose answer is known, the matcher and sampler, labels in our indices, a
training step that lowers the loss, config errors. (Parity of the outputs with torchvision: test_parity.py.)"""

import pytest
import torch

from resnet50 import UserError
from resnet50.detect.fasterrcnn import (
    BELOW,
    BETWEEN,
    FasterRCNNConfig,
    create_fasterrcnn,
    match_boxes,
    sample_balanced,
)
from resnet50.detect.retinanet import num_params
from resnet50.detect.roi_align import MultiScaleRoIAlign, infer_scale, roi_align, roi_levels

from .test_retinanet import torchvision_resnet50_body


def _conv(o, i, k, bias=True):
    return {"weight": (o, i, k, k), **({"bias": (o,)} if bias else {})}


def _bn(c):
    return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}


def _under(prefix, entries):
    return {f"{prefix}.{k}": v for k, v in entries.items()}


def _fpn(norm: bool) -> dict:
    out = {}
    for i, c in enumerate((256, 512, 1024, 2048)):  # C2..C5
        for block, cin, k in ((f"inner_blocks.{i}", c, 1), (f"layer_blocks.{i}", 256, 3)):
            out.update(_under(f"backbone.fpn.{block}.0", _conv(256, cin, k, bias=not norm)))
            if norm:
                out.update(_under(f"backbone.fpn.{block}.1", _bn(256)))
    return out


PREDICTOR_91 = {**_under("roi_heads.box_predictor.cls_score", {"weight": (91, 1024), "bias": (91,)}),
                **_under("roi_heads.box_predictor.bbox_pred", {"weight": (364, 1024), "bias": (364,)})}
RPN_OUT = {**_under("rpn.head.cls_logits", _conv(3, 256, 1)), **_under("rpn.head.bbox_pred", _conv(12, 256, 1))}
# torchvision/models/detection/faster_rcnn.py, rpn.py, ops/feature_pyramid_network.py (0.28): every key outside
# backbone.body and its shape, for 91 classes (as torchvision's state_dict lists them in the peer environment)
TORCHVISION_FRCNN_V1 = {
    **_fpn(norm=False), **_under("rpn.head.conv.0.0", _conv(256, 256, 3)), **RPN_OUT,
    "roi_heads.box_head.fc6.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc6.bias": (1024,),
    "roi_heads.box_head.fc7.weight": (1024, 1024), "roi_heads.box_head.fc7.bias": (1024,), **PREDICTOR_91,
}
TORCHVISION_FRCNN_V2 = {
    **_fpn(norm=True), **_under("rpn.head.conv.0.0", _conv(256, 256, 3)),
    **_under("rpn.head.conv.1.0", _conv(256, 256, 3)), **RPN_OUT,
    **{k: v for i in range(4) for k, v in {**_under(f"roi_heads.box_head.{i}.0", _conv(256, 256, 3, bias=False)),
                                           **_under(f"roi_heads.box_head.{i}.1", _bn(256))}.items()},
    "roi_heads.box_head.5.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.5.bias": (1024,), **PREDICTOR_91,
}


def test_torchvision_layouts_and_parameter_counts():
    v1 = create_fasterrcnn()  # the defaults are torchvision's fasterrcnn_resnet50_fpn (COCO: 91 classes, frozen BN)
    assert {k: tuple(v.shape) for k, v in v1.state_dict().items()} == {**torchvision_resnet50_body(),
                                                                        **TORCHVISION_FRCNN_V1}
    v2 = create_fasterrcnn(version="v2", norm="batch")
    heads = {k: tuple(v.shape) for k, v in v2.state_dict().items() if not k.startswith("backbone.body.")}
    assert heads == TORCHVISION_FRCNN_V2
    # torchvision's counts: its weights' meta num_params (41,755,286 and 43,712,278) and, for v1 built with
    # weights_backbone=None (BatchNorm2d in the body), sum(p.numel()) = 41,808,406
    assert num_params(v1) == 41_755_286
    assert num_params(create_fasterrcnn(norm="batch")) == 41_808_406
    assert num_params(v2) == 43_712_278
    v1.load_state_dict({k: torch.zeros_like(v) for k, v in v1.state_dict().items()}, strict=True)


def test_forward_shapes():
    model = create_fasterrcnn(arch="resnet18", num_classes=4, image_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in out["features"]] == [(2, 256, 16, 16), (2, 256, 8, 8), (2, 256, 4, 4),
                                                         (2, 256, 2, 2), (2, 256, 1, 1)]
    a = 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert out["objectness"].shape == (2, a) and out["deltas"].shape == (2, a, 4)
    anchors, counts = model.anchors((64, 64), out["features"])
    assert anchors.shape == (a, 4) and counts == [768, 192, 48, 12, 3]
    # P2's first cell: the 32 px anchors of ratios 0.5, 1, 2 (height / width) centred on (0, 0), rounded
    assert anchors[:3].tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    assert anchors[3, 0].item() == anchors[0, 0].item() + 4  # the next cell, one stride (4 px) to the right


def test_level_mapping_on_hand_checked_sizes():
    # k = floor(4 + log2(sqrt(wh) / 224) + 1e-6) clamped to [2, 5], as an index from 2
    sides = torch.tensor([10.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    assert roi_levels(boxes, 2, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    wide = torch.tensor([[0.0, 0.0, 448.0, 112.0]])  # sqrt(448 * 112) = 224: P4
    assert roi_levels(wide, 2, 5).tolist() == [2]
    assert [infer_scale((h, h), (800, 800)) for h in (200, 100, 50, 25)] == [0.25, 0.125, 0.0625, 0.03125]
    assert infer_scale((7, 7), (100, 100)) == 0.0625  # 2 ** round(log2(0.07))


def test_roi_align_on_known_maps():
    # bilinear sampling is exact on a linear ramp: each bin is the ramp's value at the bin's centre
    h, w = 12, 16
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = (2 * xs + 3 * ys)[None, None]
    box = torch.tensor([[0.0, 2.0, 1.0, 10.0, 7.0]], dtype=torch.float64)  # x1, y1, x2, y2 = 2, 1, 10, 7
    out = roi_align(ramp, box, (3, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    cx = 2 - 0.5 + (torch.arange(4, dtype=torch.float64) + 0.5) * 2  # aligned: shifted half a cell
    cy = 1 - 0.5 + (torch.arange(3, dtype=torch.float64) + 0.5) * 2
    torch.testing.assert_close(out[0, 0], 2 * cx[None, :] + 3 * cy[:, None])
    # samples beyond [-1, size] read 0 but still count: a box from -6 to 2 on a map of ones, one bin, 4 x 4
    # samples at -5, -3, -1, 1 per axis, of which -1 (clamped to 0) and 1 read the map: 2 x 2 of 16
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    out = roi_align(ones, torch.tensor([[0.0, -6.0, -6.0, 2.0, 2.0]], dtype=torch.float64), 1, 1.0, 4, False)
    assert out.item() == 4 / 16
    # a list of per-image boxes is the (K, 5) form, and an empty list gives no rows
    maps = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    b = [torch.tensor([[1.0, 1.0, 5.0, 6.0]], dtype=torch.float64), torch.tensor([[0.0, 2.0, 7.0, 7.0]],
                                                                                dtype=torch.float64)]
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0], [1, 0.0, 2.0, 7.0, 7.0]], dtype=torch.float64)
    torch.testing.assert_close(roi_align(maps, b, 2, 1.0, -1), roi_align(maps, rois, 2, 1.0, -1))
    assert roi_align(maps, torch.zeros(0, 5, dtype=torch.float64), 7).shape == (0, 3, 7, 7)
    with pytest.raises(UserError, match="K, 5"):
        roi_align(maps, torch.zeros(3, 4), 7)


def test_roi_align_gradients_and_bfloat16():
    maps = torch.rand(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 5.0], [1, -1.0, 2.0, 6.5, 5.5], [1, 3.0, 3.0, 3.0, 3.0]],
                        dtype=torch.float64)
    for aligned in (False, True):
        assert torch.autograd.gradcheck(lambda m, a=aligned: roi_align(m, rois, 3, 0.5, -1, a), (maps,))
    x = torch.rand(1, 4, 16, 16)
    r = torch.tensor([[0, 100.0, 80.0, 200.0, 190.0]])  # coordinates bfloat16 would round by whole pixels
    out = roi_align(x.bfloat16(), r, 7, 1 / 16, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), roi_align(x.bfloat16().float(), r, 7, 1 / 16, 2).bfloat16().float())
    pool = MultiScaleRoIAlign()
    feats = [torch.rand(1, 4, 32 // 2 ** i, 32 // 2 ** i) for i in range(4)]
    assert pool(feats, [torch.zeros(0, 4)], [(128, 128)]).shape == (0, 4, 7, 7)


def test_matcher_is_torchvisions():
    # 2 boxes (the second padding) x 4 anchors
    iou = torch.tensor([[[0.8, 0.5, 0.1, 0.0], [0.9, 0.9, 0.9, 0.9]]])
    valid = torch.tensor([[True, False]])
    assert match_boxes(iou, valid, 0.7, 0.3, low_quality=False).tolist() == [[0, BETWEEN, BELOW, BELOW]]
    # low-quality matches: each box's best anchors (ties included) take their own best box: 0.6, 0.6 and 0.2
    iou = torch.tensor([[0.0, 0.0, 0.2], [0.6, 0.6, 0.0]])
    assert match_boxes(iou, None, 0.7, 0.3, low_quality=False).tolist() == [BETWEEN, BETWEEN, BELOW]
    assert match_boxes(iou, None, 0.7, 0.3, low_quality=True).tolist() == [1, 1, 0]
    # a box whose best IoU is 0 makes every anchor it misses a match, to its best box (torchvision's rule)
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.5, 0.0]])
    assert match_boxes(iou, None, 0.7, 0.3, low_quality=True).tolist() == [1, 1, 0]


def test_sampler_draws_like_torchvision(monkeypatch):
    calls = []
    randperm = torch.randperm

    def recording(n, **kwargs):
        calls.append(n)
        return randperm(n, **kwargs)

    monkeypatch.setattr(torch, "randperm", recording)
    labels = [torch.tensor([1, 0, 0, -1, 2, 0, 0, 0]), torch.tensor([0, 0, -1])]
    pos, neg = sample_balanced(labels, batch_size_per_image=4, positive_fraction=0.25)
    assert calls == [2, 5, 0, 2]  # per image: randperm(#foreground), then randperm(#background), full sizes
    assert [int(p.sum()) for p in pos] == [1, 0] and [int(n.sum()) for n in neg] == [3, 2]
    assert not (pos[0] & neg[0]).any() and (labels[0][pos[0]] >= 1).all() and (labels[0][neg[0]] == 0).all()


def _tiny_case():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64) * 0.2
    images[0, :, 8:40, 10:42] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    images[1, :, 20:60, 4:30] = torch.tensor([0.1, 0.9, 0.1])[:, None, None]
    boxes = torch.tensor([[[10.0, 8.0, 42.0, 40.0], [0.0, 0.0, 0.0, 0.0]], [[4.0, 20.0, 30.0, 60.0],
                                                                             [30.0, 2.0, 50.0, 18.0]]])
    labels = torch.tensor([[0, 0], [1, 2]])
    valid = torch.tensor([[True, False], [True, True]])
    return images, boxes, labels, valid


def _tiny_model(version: str):
    model = create_fasterrcnn(version=version, arch="resnet18", norm="batch", num_classes=4, image_size=64,
                              rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, box_batch_size_per_image=16)
    model.train()
    for m in model.modules():  # batch statistics of two 64 px images would make the steps noisy
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_parameter_gets_a_gradient(version):
    images, boxes, labels, valid = _tiny_case()
    model = _tiny_model(version)
    losses = model.loss(model(images), boxes, labels, valid, (64, 64))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing[:5]


def test_training_steps_lower_the_loss():
    images, boxes, labels, valid = _tiny_case()
    model = _tiny_model("v1")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for step in range(5):
        torch.manual_seed(step)
        total = sum(model.loss(model(images), boxes, labels, valid, (64, 64)).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


def test_postprocess_returns_our_labels_clipped_to_the_valid_area():
    torch.manual_seed(0)
    model = create_fasterrcnn(arch="resnet18", num_classes=3, image_size=64, box_score_thresh=0.0).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(std=0.5)  # boxes that move past the borders
        out = model(torch.rand(2, 3, 64, 64))
        dets = model.postprocess(out, (64, 64), valid_hw=[(64.0, 64.0), (40.0, 30.0)])
    assert all(len(d["scores"]) > 0 for d in dets)
    for d, (h, w) in zip(dets, [(64, 64), (40, 30)]):
        assert d["labels"].dtype == torch.int64 and set(d["labels"].tolist()) <= {0, 1}  # 2 classes of ours
        assert (d["boxes"][:, 0::2] <= w).all() and (d["boxes"][:, 1::2] <= h).all() and (d["boxes"] >= 0).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all() and len(d["scores"]) <= 100


def test_config_round_trip_and_errors():
    cfg = FasterRCNNConfig(version="v2", num_classes=11, rpn_nms_thresh=0.6)
    assert FasterRCNNConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["bbox_reg_weights"] == [10.0, 10.0, 5.0, 5.0]
    for bad, match in [({"roi_size": 7}, "unknown Faster R-CNN option"), ({"version": "v3"}, "v1 or v2"),
                       ({"num_classes": 1}, "background"), ({"anchor_sizes": (32, 64)}, "P2..P6"),
                       ({"rpn_bg_iou_thresh": 0.8}, "rpn_bg_iou_thresh"), ({"norm": "group"}, "norm"),
                       ({"arch": "resnet20"}, "ImageNet-stem"), ({"box_batch_size_per_image": 0}, ">= 1"),
                       ({"bbox_reg_weights": (10, 10, 5)}, "bbox_reg_weights"), ({"mean": (0.5,)}, "mean and std")]:
        with pytest.raises(UserError, match=match):
            create_fasterrcnn(**bad)
