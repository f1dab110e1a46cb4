"""resnet50.detect.retinanet: torchvision's RetinaNet layout loading strictly, the v2 names, the backbone from a
classification checkpoint, anchors and box coding, matching, post-processing, eager vs ONNX outputs."""

import numpy as np
import pytest
import torch

from resnet50 import UserError
from resnet50.detect.checkpoint import (
    COCO_CLASSES,
    load_detector,
    upgrade_torchvision_keys,
)
from resnet50.detect.export import export_onnx
from resnet50.detect.retinanet import (
    BELOW,
    BETWEEN,
    cell_anchors,
    create_detector,
    decode_boxes,
    encode_boxes,
    grid_sizes,
    make_anchors,
    match_anchors,
    num_params,
    postprocess,
)

# torchvision/models/detection/retinanet.py (retinanet_resnet50_fpn, 0.13+ names), ops/feature_pyramid_network.py and
# backbone_utils.py, for 91 classes and 9 anchors: every key outside backbone.body and its shape.
TORCHVISION_RETINANET_V1 = {
    "backbone.fpn.inner_blocks.0.0.weight": (256, 512, 1, 1), "backbone.fpn.inner_blocks.0.0.bias": (256,),
    "backbone.fpn.inner_blocks.1.0.weight": (256, 1024, 1, 1), "backbone.fpn.inner_blocks.1.0.bias": (256,),
    "backbone.fpn.inner_blocks.2.0.weight": (256, 2048, 1, 1), "backbone.fpn.inner_blocks.2.0.bias": (256,),
    **{f"backbone.fpn.layer_blocks.{i}.0.{t}": (256, 256, 3, 3) if t == "weight" else (256,)
       for i in range(3) for t in ("weight", "bias")},
    "backbone.fpn.extra_blocks.p6.weight": (256, 256, 3, 3), "backbone.fpn.extra_blocks.p6.bias": (256,),
    "backbone.fpn.extra_blocks.p7.weight": (256, 256, 3, 3), "backbone.fpn.extra_blocks.p7.bias": (256,),
    **{f"head.{h}_head.conv.{i}.0.{t}": (256, 256, 3, 3) if t == "weight" else (256,)
       for h in ("classification", "regression") for i in range(4) for t in ("weight", "bias")},
    "head.classification_head.cls_logits.weight": (9 * 91, 256, 3, 3),
    "head.classification_head.cls_logits.bias": (9 * 91,),
    "head.regression_head.bbox_reg.weight": (9 * 4, 256, 3, 3), "head.regression_head.bbox_reg.bias": (9 * 4,),
}


def torchvision_resnet50_body() -> dict[str, tuple]:
    """torchvision's resnet50 names (models/resnet.py: Bottleneck conv1/bn1/conv2/bn2/conv3/bn3, downsample.0/.1 in
    each stage's first block) under backbone.body, with FrozenBatchNorm2d's four buffers and no fc."""
    out = {"conv1.weight": (64, 3, 7, 7), **{f"bn1.{b}": (64,) for b in ("weight", "bias", "running_mean",
                                                                           "running_var")}}
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            shapes = {"conv1": (width, cin, 1, 1), "conv2": (width, width, 3, 3), "conv3": (4 * width, width, 1, 1)}
            for i, (conv, shape) in enumerate(shapes.items(), start=1):
                out[p + conv + ".weight"] = shape
                out.update({f"{p}bn{i}.{t}": (shape[0],) for t in ("weight", "bias", "running_mean", "running_var")})
            if b == 0:
                out[p + "downsample.0.weight"] = (4 * width, cin, 1, 1)
                out.update({f"{p}downsample.1.{t}": (4 * width,) for t in ("weight", "bias", "running_mean",
                                                                             "running_var")})
            cin = 4 * width
    return {f"backbone.body.{k}": v for k, v in out.items()}


def test_torchvision_retinanet_layout_loads_strictly(tmp_path):
    expected = {**torchvision_resnet50_body(), **TORCHVISION_RETINANET_V1}
    model = create_detector()  # the defaults are torchvision's retinanet_resnet50_fpn
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    # torchvision's published parameter counts (weights meta num_params): v1 with frozen BN, v2 with BatchNorm2d
    assert num_params(model) == 34_014_999
    assert num_params(create_detector(version="v2", norm="batch")) == 38_198_935

    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape in expected.items()}
    model.load_state_dict(sd, strict=True)
    # the pre-0.13 names of torchvision's COCO v1 file: conv.{0,2,4,6} in the towers, no .0 in the FPN blocks
    legacy = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias") if ".fpn." in k and "_blocks." in k
              else k: v for k, v in sd.items()}
    for h in ("classification", "regression"):
        for i in range(4):
            for t in ("weight", "bias"):
                legacy[f"head.{h}_head.conv.{2 * i}.{t}"] = legacy.pop(f"head.{h}_head.conv.{i}.0.{t}")
    assert "backbone.fpn.inner_blocks.0.weight" in legacy and "head.classification_head.conv.6.weight" in legacy
    assert upgrade_torchvision_keys(legacy).keys() == sd.keys()
    torch.save(legacy, tmp_path / "retinanet_resnet50_fpn_coco.pth")
    ckpt = load_detector(tmp_path / "retinanet_resnet50_fpn_coco.pth", bn_eps=0.0)
    assert ckpt.config.version == "v1" and ckpt.config.num_classes == 91 and ckpt.classes == COCO_CLASSES
    assert len(COCO_CLASSES) == 91 and COCO_CLASSES[1] == "person" and COCO_CLASSES[90] == "toothbrush"
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_v2_layout_names():
    sd = create_detector(version="v2").state_dict()
    assert tuple(sd["backbone.fpn.extra_blocks.p6.weight"].shape) == (256, 2048, 3, 3)  # P6 from C5
    assert tuple(sd["head.classification_head.conv.0.1.weight"].shape) == (256,)  # GroupNorm
    assert "head.classification_head.conv.0.0.bias" not in sd


def test_backbone_initialises_from_a_classification_checkpoint(tmp_path):
    from resnet50 import create_model, weights
    from resnet50.detect.fpn import init_body

    clf = create_model("resnet18", num_classes=10, in_chans=3)
    weights.save(tmp_path / "clf.safetensors", clf, [str(i) for i in range(10)])
    det = create_detector(arch="resnet18", in_chans=1, num_classes=3, mean=(0.5,), std=(0.5,))
    init_body(det.backbone.body, str(tmp_path / "clf.safetensors"))
    body = det.backbone.body.state_dict()
    assert torch.allclose(body["conv1.weight"], clf.conv1.weight.sum(1, keepdim=True))  # RGB stem summed for gray
    assert torch.equal(body["layer4.1.bn2.running_var"], clf.layer4[1].bn2.running_var)
    with pytest.raises(UserError, match="same architecture"):
        init_body(create_detector(arch="resnet50").backbone.body, str(tmp_path / "clf.safetensors"))


def test_anchors_are_torchvisions():
    cfg = create_detector().cfg
    cells = cell_anchors(cfg)
    # sizes (32, 40, 50) at ratios 0.5, 1, 2 (height / width), corners rounded: AnchorGenerator's values
    assert cells[0][0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    assert cells[0][3].tolist() == [-16.0, -16.0, 16.0, 16.0]
    assert cells[0][8].tolist() == [-18.0, -35.0, 18.0, 35.0]
    assert grid_sizes(128, 128) == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors, counts = make_anchors(cfg, 128, 128)
    assert counts == [16 * 16 * 9, 64 * 9, 16 * 9, 4 * 9, 9] and anchors.shape == (sum(counts), 4)
    assert anchors[9].tolist() == [8.0 - 23, -11.0, 8.0 + 23, 11.0]  # the second location of P3 is x + 8
    model = create_detector(arch="resnet18", image_size=96)
    maps = model.backbone(torch.zeros(1, 3, 96, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == grid_sizes(96, 96)


def test_box_coding_round_trips():
    anchors = torch.tensor([[0.0, 0, 32, 32], [10, 20, 50, 40]])
    boxes = torch.tensor([[2.0, 3, 30, 40], [12, 18, 60, 44]])
    assert torch.allclose(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes, atol=1e-5)
    assert encode_boxes(anchors, anchors).abs().max() == 0


def test_matching_thresholds_and_low_quality_matches():
    # one image, two boxes, four anchors; IoU rows per box
    iou = torch.tensor([[[0.7, 0.45, 0.2, 0.1], [0.1, 0.3, 0.35, 0.0]]])
    m = match_anchors(iou, torch.tensor([[True, True]]), 0.5, 0.4)
    # anchor 0: box 0; anchor 1: between; anchor 2: box 1's best anchor (0.35, a low-quality match); anchor 3: below
    assert m.tolist() == [[0, BETWEEN, 1, BELOW]]
    assert match_anchors(iou, torch.tensor([[True, False]]), 0.5, 0.4).tolist() == [[0, BETWEEN, BELOW, BELOW]]
    assert match_anchors(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 0.5, 0.4).eq(BELOW).all()


def test_postprocess_gives_clipped_sorted_detections():
    model = create_detector(arch="resnet18", image_size=64, num_classes=3, score_thresh=0.0,
                            detections_per_img=20).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    dets = postprocess(model, out, (64, 64), [(64.0, 64.0), (32.0, 48.0)])
    assert len(dets) == 2 and all(len(d["scores"]) == 20 for d in dets)
    assert (dets[1]["boxes"][:, 2] <= 48).all() and (dets[1]["boxes"][:, 3] <= 32).all()
    assert (dets[0]["scores"][:-1] >= dets[0]["scores"][1:]).all()
    assert dets[0]["labels"].max() < 3


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = create_detector(arch="resnet18", image_size=64, num_classes=3, norm="batch").eval()
    x = torch.rand(3, 3, 64, 64)
    export_onnx(model, tmp_path / "det.onnx")
    sess = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    cls_onnx, box_onnx = sess.run(None, {"images": x.numpy()})  # batch 3; exported at 2: the batch is dynamic
    assert sess.run(None, {"images": x[:1].numpy()})[0].shape == (1, *cls_onnx.shape[1:])
    with torch.no_grad():
        cls_eager, box_eager = model(x)
    assert np.abs(cls_onnx - cls_eager.numpy()).max() < 1e-4
    assert np.abs(box_onnx - box_eager.numpy()).max() < 1e-4
