"""resnet50.detect: NMS against a brute force and ONNX Runtime, torchvision's RetinaNet layout loading strictly,
anchors and box coding, pycocotools on a hand-checked case, a short training run that lowers its loss and resumes
exactly, bad COCO files, eager vs ONNX outputs, and the CLI."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet50 import UserError
from resnet50.cli import main
from resnet50.detect.checkpoint import COCO_CLASSES, load_detector, save_detector, upgrade_torchvision_keys
from resnet50.detect.coco import CocoDataset, coco_evaluate, letterbox, make_batch
from resnet50.detect.export import export_onnx
from resnet50.detect.nms import batched_nms, box_iou, nms, xywh_to_xyxy, xyxy_to_xywh
from resnet50.detect.retinanet import (
    BELOW,
    BETWEEN,
    RetinaNet,
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
from resnet50.detect.train import resolve, train

# --- NMS -----------------------------------------------------------------------------------------------------------


def random_boxes(n: int, seed: int, span: float = 100.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * span / 3 + 1
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return torch.cat([xy, xy + wh], dim=1), scores, labels


def brute_force_nms(boxes, scores, labels, thresh):
    """Greedy NMS in plain Python floats: the reference."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    b, s, lab = boxes.tolist(), scores.tolist(), labels.tolist()
    order = sorted(range(len(s)), key=lambda i: -s[i])
    keep = []
    for i in order:
        if all(lab[k] != lab[i] or iou(b[k], b[i]) <= thresh for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_batched_nms_matches_brute_force(seed, thresh):
    boxes, scores, labels = random_boxes(300, seed)
    assert batched_nms(boxes, scores, labels, thresh).tolist() == brute_force_nms(boxes, scores, labels, thresh)
    same = torch.zeros_like(labels)
    assert nms(boxes, scores, thresh).tolist() == brute_force_nms(boxes, scores, same, thresh)


def test_nms_edge_cases():
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).tolist() == []
    box = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    assert nms(box, torch.tensor([0.5, 0.9, 0.1]), 0.5).tolist() == [1, 2]  # identical boxes: the higher score stays
    # IoU exactly at the threshold is kept (only strictly greater suppresses): [0,0,10,10] vs [0,0,10,5] is 0.5
    half = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def onnx_nms(boxes, scores, labels, thresh, classes=4):
    """ONNX Runtime's NonMaxSuppression (per class): scores of other classes set below score_threshold."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["selected"],
                            center_point_box=0)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes, None]),
         helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("score_thr", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    per_class = np.full((1, classes, len(scores)), -1.0, np.float32)
    per_class[0, labels.numpy(), np.arange(len(scores))] = scores.numpy()
    # ONNX boxes are [y1, x1, y2, x2] when center_point_box = 0
    yx = boxes[:, [1, 0, 3, 2]].numpy()[None].astype(np.float32)
    (selected,) = sess.run(None, {"boxes": yx, "scores": per_class, "max_out": np.array([len(scores)], np.int64),
                                  "iou": np.array([thresh], np.float32), "score_thr": np.array([0.0], np.float32)})
    return selected[:, 2].tolist()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_batched_nms_matches_onnxruntime(seed, thresh):
    pytest.importorskip("onnxruntime")
    boxes, scores, labels = random_boxes(400, 100 + seed)
    ours = batched_nms(boxes, scores, labels, thresh).tolist()
    theirs = onnx_nms(boxes, scores, labels, thresh)
    assert sorted(ours) == sorted(theirs)
    # the same order once ONNX Runtime's per-class lists are merged by score
    assert ours == sorted(theirs, key=lambda i: -float(scores[i]))


def test_box_formats_and_iou():
    xywh = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert xywh_to_xyxy(xywh).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert xyxy_to_xywh(xywh_to_xyxy(xywh)).tolist() == xywh.tolist()
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    assert box_iou(a, b).tolist() == [[pytest.approx(50 / 150), 0.0, 0.0]]


# --- the torchvision layout ----------------------------------------------------------------------------------------

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


# --- anchors, box coding, matching ---------------------------------------------------------------------------------

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


# --- COCO data and evaluation ----------------------------------------------------------------------------------

def write_coco(root: Path, images: list[dict], annotations: list[dict], categories=None, make_files=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for im in images:
        if make_files:
            (root / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((im["height"], im["width"]), np.uint8)).save(root / im["file_name"])
    cats = categories if categories is not None else [{"id": 1, "name": "square"}, {"id": 2, "name": "stripes"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": cats}))
    return root


def test_coco_evaluation_on_a_hand_checked_case():
    gt = {"images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "square"}]}
    # image 1: exact (IoU 1); image 2: IoU 0.72 (a hit at thresholds .50-.70, a miss at .75-.95)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 7.2], "score": 0.8}]
    r = coco_evaluate(gt, dets)
    # at .50-.70 both hit: AP 1. At .75-.95 the first hit (recall .5, precision 1) then a false positive: of the
    # 101 recall points 0, .01, ..., 1 the 51 up to .5 have precision 1, the rest 0: AP 51/101.
    assert r["map50"] == pytest.approx(1.0)
    assert r["map"] == pytest.approx((5 * 1.0 + 5 * 51 / 101) / 10)
    assert r["per_class"] == {"square": pytest.approx(r["map"])}
    assert coco_evaluate(gt, [])["map"] == 0.0
    # the same boxes with a wrong label: per class AP 0 for both categories; labels ignored, the figures above
    gt2 = dict(gt, categories=gt["categories"] + [{"id": 2, "name": "disc"}])
    wrong = [dict(d, category_id=2) for d in dets]
    r2 = coco_evaluate(gt2, wrong)
    assert r2["map50"] == 0.0 and r2["per_class"] == {"square": 0.0, "disc": None}
    agnostic = coco_evaluate(gt2, wrong, use_cats=False)
    assert agnostic["map50"] == pytest.approx(1.0) and agnostic["map"] == pytest.approx(r["map"])
    assert agnostic["per_class"] == {}


def test_bad_coco_inputs_are_one_line_errors(tmp_path):
    ok_image = {"id": 1, "file_name": "a.png", "width": 20, "height": 20}
    cases = {
        "not json": ("{nope", r"instances.json is not a COCO instances JSON \(not JSON"),
        "not coco": ('{"info": {}}', r"needs 'images', 'annotations' and 'categories'"),
        "unknown category": ({"images": [ok_image], "annotations": [
            {"id": 7, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]}]},
            r"instances.json: annotation 7 has category_id 99, which is not in 'categories'"),
        "unknown image": ({"images": [ok_image], "annotations": [
            {"id": 8, "image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5]}]}, r"annotation 8 has image_id 5"),
        "bad bbox": ({"images": [ok_image], "annotations": [
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5]}]}, r"annotation 9 needs 'bbox' as 4"),
        "bad image entry": ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []},
                            r"images\[0\] needs an integer 'id'"),
        "duplicate image": ({"images": [ok_image, ok_image], "annotations": []}, r"image id 1 appears twice"),
    }
    for name, (content, pattern) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        root.mkdir()
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "a.png")
        if isinstance(content, dict):
            content = json.dumps({**content, "categories": [{"id": 1, "name": "square"}]})
        (root / "instances.json").write_text(content)
        with pytest.raises(UserError, match=pattern) as e:
            CocoDataset(root)
        assert "\n" not in str(e.value) and str(root / "instances.json") in str(e.value)


def test_coco_skips_and_repairs_are_counted(tmp_path):
    images = [{"id": i, "file_name": f"images/{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10]},  # zero area: skipped
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [35, 20, 20, 20]},  # partly outside: clipped
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [50, 50, 5, 5]},  # wholly outside: skipped
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]}]  # its image is missing
    root = write_coco(tmp_path / "d", images, anns)
    (root / "images" / "3.png").unlink()
    ds = CocoDataset(root)
    s = ds.stats
    assert (s.images, s.boxes, s.zero_area_boxes, s.outside_boxes, s.clipped_boxes, s.missing_images,
            s.images_without_boxes) == (2, 2, 1, 1, 1, 1, 1)
    assert "annotation 2" in s.examples["zero_area_boxes"] and "3.png" in s.examples["missing_images"]
    assert ds.images[0].boxes.tolist() == [[5, 5, 15, 15], [35, 20, 40, 30]]
    assert [a["image_id"] for a in ds.ground_truth()["annotations"]] == [1, 1]
    (root / "images" / "2.png").write_bytes(b"not a png")
    batch = make_batch(ds, [0, 1], 64)
    assert batch.image_ids == [1] and len(batch.skipped) == 1 and "2.png" in batch.skipped[0].path
    for i in (1, 2):
        (root / "images" / f"{i}.png").unlink()
    with pytest.raises(UserError, match="none of its 3 image files exist"):
        CocoDataset(root)


def test_letterbox_and_flip():
    pixels = np.zeros((30, 60), np.uint8)
    pixels[:, :10] = 255
    x, scale = letterbox(pixels, 64)
    assert scale == pytest.approx(64 / 60) and x.shape == (1, 64, 64)
    assert x[0, 40:].abs().sum() == 0  # padding below
    assert x[0, 5, 2] > 0.9 and x[0, 5, 60] < 0.1


# --- training, resume, evaluation, export, CLI ------------------------------------------------------------------


def shapes_dataset(root: Path, n: int, seed: int, size: int = 64) -> Path:
    """Gray images with 1-2 rectangles each: class "square" filled, class "stripes" striped horizontally."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        canvas = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            w, h = (int(v) for v in rng.integers(12, 28, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            cls = int(rng.integers(1, 3))
            patch = np.full((h, w), 230, np.uint8)
            if cls == 2:
                patch[::4] = 40
            canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], patch)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        Image.fromarray(canvas).save(root / "images" / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"images/{i:03d}.png", "width": size, "height": size})
    return write_coco(root, images, anns, make_files=False)


TINY = dict(arch="resnet18", image_size=64, batch_size=8, eval_batch_size=16, epochs=2, amp="off",
            channels_last=False, lr=0.01, warmup_epochs=0, schedule="cosine", grad_clip=10.0, threads=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return shapes_dataset(root / "train", 32, 0), shapes_dataset(root / "val", 16, 1)


def batch_loss(model, ds, size=64) -> float:
    """The loss on all of ``ds`` in one batch, with batch statistics (on a copy: BN's running stats stay)."""
    batch = make_batch(ds, list(range(len(ds))), size)
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        losses = model.loss(model(batch.images), batch.boxes, batch.labels, batch.valid, (size, size))
    return float(losses["classification"] + losses["bbox_regression"])


def test_training_lowers_the_loss_and_resumes_exactly(shapes, tmp_path):
    train_dir, val_dir = shapes

    def cfg(name, **kw):
        return resolve("scenes", {**TINY, "train": str(train_dir), "out": str(tmp_path), "name": name, **kw})

    full = train(cfg("full", val=str(val_dir)), progress=False, log=lambda *a: None)
    ds = CocoDataset(train_dir)
    torch.manual_seed(0)  # train() seeds the same way before it builds the model: this is its starting point
    start = RetinaNet(dataclasses.replace(cfg("x").model, num_classes=2))
    trained = load_detector(Path(full["run_dir"]) / "final.safetensors")
    before, after = batch_loss(start, ds), batch_loss(trained.model, ds)
    assert after < 0.8 * before, (before, after)  # 2.09 -> 1.18 measured
    run = Path(full["run_dir"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 8
    assert 0 <= rows[-1]["val_map"] <= 1 and (run / "curves.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 2

    # stop mid-epoch 2 (step 6 of 8), resume: the same weights as the uninterrupted run
    cut = train(cfg("cut", max_steps=6), progress=False, log=lambda *a: None)
    assert cut["step"] == 6
    with pytest.raises(UserError, match="resuming a run with lr"):
        train(cfg("cut", lr=0.02), resume=cut["run_dir"], progress=False, log=lambda *a: None)
    resumed = train(cfg("cut", max_steps=0), resume=cut["run_dir"], progress=False, log=lambda *a: None)
    assert resumed["step"] == 8
    a = load_detector(Path(resumed["run_dir"]) / "final.safetensors").model.state_dict()
    for k, v in trained.model.state_dict().items():
        assert torch.allclose(v, a[k], atol=1e-6), k


def test_a_time_budget_fixes_the_steps_and_resumes_exactly(shapes, tmp_path, monkeypatch):
    import itertools

    import resnet50.engine as classification
    from resnet50.optim import lr_at

    ticks = itertools.count()  # the budget's clock ticks 1 s a reading: start 0, calibration steps 3 and 13 at 1, 2
    monkeypatch.setattr(classification, "clock", lambda: float(next(ticks)))
    train_dir, _ = shapes
    quiet = dict(progress=False, log=lambda *a: None)

    def cfg(name, **kw):  # 4 steps an epoch; the warm-up (16 steps) covers the calibration
        return resolve("scenes", {**TINY, "train": str(train_dir), "out": str(tmp_path), "name": name, "epochs": 20,
                                  "warmup_epochs": 4.0, "schedule": "linear", **kw})

    cut = train(cfg("b", time_budget=0.05, max_steps=16), **quiet)  # 3 s: 2 gone, 1 s of 0.1 s steps (+5 %)
    steps = json.loads((Path(cut["run_dir"]) / "config.json").read_text())["run"]["budget_steps"]
    assert steps == classification.plan_budget(3, 2, 13, 0.1 * classification.BUDGET_MARGIN, 0, 4, 1, 80) == 22
    assert torch.load(Path(cut["run_dir"]) / "last.pt", weights_only=True)["config"]["run"]["budget_steps"] == 22
    done = train(cfg("b", time_budget=0.05), resume=cut["run_dir"], **quiet)
    assert done["step"] == 22 and done["epoch"] == 6  # 5 epochs and 2 steps: the budget ends the sixth
    ref = train(cfg("ref", budget_steps=22), **quiet)
    rows = [json.loads(line) for line in (Path(ref["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    o = cfg("x").optim
    assert rows[-1]["lr"] == pytest.approx(lr_at(21, 4, dataclasses.replace(o, epochs=22 / 4), o.lr * 8 / 256))  # linear to 0 at 22
    a = load_detector(Path(done["run_dir"]) / "final.safetensors").model.state_dict()
    b = load_detector(Path(ref["run_dir"]) / "final.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def test_cli_evaluate_and_predict(shapes, tmp_path, capsys):
    train_dir, val_dir = shapes
    model = create_detector(arch="resnet18", image_size=64, num_classes=2, in_chans=1, mean=(0.3,), std=(0.3,),
                            score_thresh=0.0)
    save_detector(tmp_path / "det.safetensors", model, ["square", "stripes"])
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(val_dir),
                 "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 16 and set(r["per_class"]) == {"square", "stripes"} and 0 <= r["map"] <= 1
    assert "class_agnostic" not in r
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "det.safetensors"), "--data", str(val_dir),
                 "--json", "--no-progress", "--class-agnostic"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["map"] == r["map"] and 0 <= a["class_agnostic"]["map"] <= 1 and set(a["class_agnostic"]) == {
        "map", "map50", "map75"}
    (tmp_path / "broken.png").write_bytes(b"nope")
    assert main(["detect", "predict", str(val_dir / "images" / "001.png"), str(tmp_path / "broken.png"),
                 "--weights", str(tmp_path / "det.safetensors"), "--out", str(tmp_path / "pics"),
                 "--min-score", "0", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["picture"] and Path(found[0]["picture"]).is_file() and found[0]["detections"]
    assert {"label", "score", "box", "class_index"} <= set(found[0]["detections"][0])
    assert found[1]["error"] and found[1]["detections"] == []
    assert main(["detect", "evaluate", "--weights", str(tmp_path / "missing.pt"), "--data", str(val_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err


def test_detect_demo_command_runs_end_to_end(tmp_path, capsys):
    # the README's detection demo, shrunk: 32 training and 8 validation scenes, 2 steps, no time budget
    assert main(["detect", "demo", "--out", str(tmp_path), "--train-scenes", "32", "--val-scenes", "8",
                 "--max-steps", "2", "--time-budget", "0", "--amp", "off", "--threads", "2", "--json",
                 "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 2 and s["train_scenes"] == 32 and s["val_scenes"] == 8 and 0 <= s["map"] <= 1
    assert Path(s["picture"]).stat().st_size > 0 and len(s["per_class"]) == 10
    assert set(s["class_agnostic"]) == {"map", "map50", "map75"}
    cfg = json.loads((Path(s["run_dir"]) / "config.json").read_text())
    assert cfg["run"]["time_budget"] == 0 and cfg["optim"]["epochs"] == 8  # the flag took effect, the cap is the demo's
    assert cfg["run"]["amp"] == "off" and cfg["run"]["threads"] == 2
    assert main(["detect", "demo", "--out", str(tmp_path / "bad"), "--time-budget", "-1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "bad").exists()  # refused before writing
    assert main(["detect", "demo", "--out", str(tmp_path / "bad"), "--init-weights", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no.pt does not exist" in err and not (tmp_path / "bad").exists()


def test_resuming_the_other_kind_of_checkpoint_names_the_right_command(tmp_path, capsys):
    torch.save({"kind": "detector", "config": {}, "model": {}}, tmp_path / "det.pt")
    torch.save({"config": {}, "model": {}}, tmp_path / "cls.pt")
    assert main(["train", "--resume", str(tmp_path / "det.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a detector's training checkpoint" in err
    assert "'resnet50 detect train --resume" in err
    assert main(["detect", "train", "--resume", str(tmp_path / "cls.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a classifier's training checkpoint" in err and "'resnet50 train --resume" in err
