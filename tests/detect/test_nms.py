"""resnet50.detect.nms: NMS against a brute force and ONNX Runtime, box formats and IoU."""


import numpy as np
import pytest
import torch

from resnet50.detect.nms import batched_nms, box_iou, nms, xywh_to_xyxy, xyxy_to_xywh


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
