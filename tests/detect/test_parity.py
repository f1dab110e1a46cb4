"""Our detectors and their box operations against outputs that torchvision 0.28 itself produced: RoIAlign and
MultiScaleRoIAlign, box coding, RetinaNet v1 / v2 and Faster R-CNN v1 / v2 detections (eval mode) and training
losses (train mode, one torch seed: the same samples drawn). The fixtures (``fixtures/*.npz``) were made by
``benchmarks/peers/make_detect_fixtures.py`` in the peer environment; the weights are not stored: both sides set
every state-dict entry from its name with ``parity_weights.py``. torchvision is not imported here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet50.detect.fasterrcnn import FasterRCNN, FasterRCNNConfig
from resnet50.detect.retinanet import DetectorConfig, RetinaNet, decode_boxes, encode_boxes, postprocess
from resnet50.detect.roi_align import MultiScaleRoIAlign, roi_align

from .parity_weights import fill_parity_weights, parity_scene

FIXTURES = Path(__file__).parent / "fixtures"
BOX_ATOL, SCORE_ATOL, LOSS_RTOL, OP_ATOL = 1e-3, 1e-4, 1e-4, 1e-5  # pixels, probability, relative, feature units


def load(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def build(meta: dict, **overrides) -> RetinaNet | FasterRCNN:
    options = {**meta["ours"], **overrides}
    if meta["fixture"].startswith("fasterrcnn"):
        model: RetinaNet | FasterRCNN = FasterRCNN(FasterRCNNConfig.from_dict(options))
    else:
        model = RetinaNet(DetectorConfig.from_dict(options))
    return fill_parity_weights(model)


def scene(meta: dict, arrays: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, boxes, labels = parity_scene(**meta["scene"])
    np.testing.assert_array_equal(boxes.numpy(), arrays["gt_boxes"])  # the scene is the one torchvision saw
    np.testing.assert_array_equal(labels.numpy(), arrays["gt_labels"])
    return images, boxes, labels, torch.from_numpy(arrays["valid"])


CASES = [("retinanet_v1", "batch"), ("retinanet_v2", "batch"), ("fasterrcnn_v1", "batch"), ("fasterrcnn_v2", "batch"),
         ("fasterrcnn_v1", "frozen")]


@pytest.mark.parametrize("name,norm", CASES)
def test_detector_matches_torchvision(name, norm):
    """One model per case, three checks: (1) the state dict has torchvision's names and shapes; (2) eval mode:
    the same detections as torchvision's, boxes within 1e-3 px, scores within 1e-4, labels and order equal;
    (3) train mode under torch.manual_seed(0): the losses within 1e-4 (relative) of torchvision's, which for Faster
    R-CNN needs the same anchors, proposals, matches and randperm draws of both samplers. BatchNorm uses its
    running statistics in (3), as it did for the fixture (see make_detect_fixtures.py, BN_EVAL). With
    norm="frozen", FrozenBatchNorm2d's arithmetic stands in for torchvision's BatchNorm2d."""
    meta, arrays = load(name)
    model = build(meta, norm=norm).eval()
    if norm == meta["ours"]["norm"]:
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == meta["state_dict"]
    images, boxes, labels, valid = scene(meta, arrays)
    size = meta["scene"]["size"]
    with torch.no_grad():
        outputs = model(images)
        dets = model.postprocess(outputs, (size, size)) if isinstance(model, FasterRCNN) else \
            postprocess(model, outputs, (size, size))
    assert sum(len(d["scores"]) for d in dets) >= 30  # tens of detections: the comparison is not vacuous
    for i, d in enumerate(dets):
        np.testing.assert_array_equal(d["labels"].numpy() + meta["label_offset"], arrays[f"labels_{i}"])
        np.testing.assert_allclose(d["boxes"].numpy(), arrays[f"boxes_{i}"], rtol=0, atol=BOX_ATOL)
        np.testing.assert_allclose(d["scores"].numpy(), arrays[f"scores_{i}"], rtol=0, atol=SCORE_ATOL)

    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(meta["train_seed"])
    with torch.no_grad():
        losses = model.loss(model(images), boxes, labels, valid, (size, size))
    names = list(arrays["loss_names"])
    assert sorted(losses) == names
    np.testing.assert_allclose([losses[k].item() for k in names], arrays["loss_values"], rtol=LOSS_RTOL, atol=0)


def test_roi_align_matches_torchvision():
    meta, arrays = load("roi_align")
    x, rois = torch.from_numpy(arrays["input"]), torch.from_numpy(arrays["rois"])
    for aligned in (False, True):
        for ratio in (2, -1):
            out = roi_align(x, rois, tuple(meta["output_size"]), meta["spatial_scale"], ratio, aligned)
            np.testing.assert_allclose(out.numpy(), arrays[f"out_aligned{int(aligned)}_ratio{ratio}"], rtol=0,
                                       atol=OP_ATOL)
    xg = x.clone().requires_grad_()
    out = roi_align(xg, rois, tuple(meta["output_size"]), meta["spatial_scale"], -1, True)
    (out * torch.from_numpy(arrays["grad_weight"])).sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), arrays["grad_aligned1_ratio-1"], rtol=0, atol=OP_ATOL)


def test_multiscale_roi_align_matches_torchvision():
    """Boxes from 8 to 600 px, on both sides of every level boundary (112, 224, 448 px), pooled from P2..P5."""
    meta, arrays = load("roi_align")
    maps = [torch.from_numpy(arrays[f"msra_map{i}"]) for i in range(4)]
    boxes = [torch.from_numpy(arrays[f"msra_boxes{i}"]) for i in range(2)]
    msra = meta["msra"]
    pool = MultiScaleRoIAlign(msra["output_size"], msra["sampling_ratio"])
    out = pool(maps, boxes, [tuple(s) for s in msra["image_shapes"]])
    np.testing.assert_allclose(out.numpy(), arrays["msra_out"], rtol=0, atol=OP_ATOL)


@pytest.mark.parametrize("tag", ["w1", "w10"])
def test_box_coding_matches_torchvision(tag):
    """encode_boxes / decode_boxes against torchvision's BoxCoder (weights 1: RetinaNet, the RPN; (10, 10, 5, 5):
    Faster R-CNN's box head), including deltas beyond the log(1000 / 16) size clamp."""
    meta, arrays = load("box_coding")
    weights = tuple(float(w) for w in meta["weights"][tag])
    anchors, boxes, deltas = (torch.from_numpy(arrays[k]) for k in ("anchors", "boxes", "deltas"))
    np.testing.assert_allclose(encode_boxes(boxes, anchors, weights).numpy(), arrays[f"encoded_{tag}"], rtol=1e-6,
                               atol=OP_ATOL)
    np.testing.assert_allclose(decode_boxes(deltas, anchors, weights).numpy(), arrays[f"decoded_{tag}"], rtol=1e-6,
                               atol=OP_ATOL)
