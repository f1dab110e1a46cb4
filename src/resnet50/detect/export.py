"""A detector's network to ONNX: images (N, C, S, S) in 0..1 -> its dense outputs, normalisation inside the graph.

    RetinaNet     cls_logits (N, HWA, K), bbox_regression (N, HWA, 4)
    Faster R-CNN  p2..p6 (N, F, S/4 .. S/64, ...) (the pyramid), objectness (N, sum HWA), rpn_deltas (N, sum HWA, 4)

Anchors, decoding, proposals, Faster R-CNN's RoIAlign and box heads, and NMS stay in torch (``model.postprocess``,
which takes ONNX Runtime's outputs as they are: :func:`onnx_outputs` turns them back into ``forward``'s structure).
``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, opset 18) with a dynamic batch dimension; the
image size is fixed, as the anchors are. :func:`export_detector` also checks ONNX Runtime against eager.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..files import atomic_path, output_file
from .checkpoint import DetectorCheckpoint
from .detectors import Detector

INPUT, OUTPUTS = "images", ("cls_logits", "bbox_regression")
RCNN_OUTPUTS = ("p2", "p3", "p4", "p5", "p6", "objectness", "rpn_deltas")
PARITY_TOL = 1e-3  # largest |ONNX - eager| allowed, relative to the output's largest magnitude (at least 1)


class _DenseRCNN(nn.Module):
    """A Faster R-CNN's forward as a flat tuple (the exporter's outputs): the five maps, objectness, deltas."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return (*out["features"], out["objectness"], out["deltas"])


def output_names(model: Detector) -> tuple[str, ...]:
    return RCNN_OUTPUTS if model.name == "fasterrcnn" else OUTPUTS


def onnx_outputs(model: Detector, arrays: list[np.ndarray]):
    """ONNX Runtime's outputs (in ``output_names`` order) as ``model.forward`` returns them, for ``postprocess``."""
    t = [torch.from_numpy(np.asarray(a)) for a in arrays]
    if model.name == "fasterrcnn":
        return {"features": t[:5], "objectness": t[5], "deltas": t[6]}
    return t[0], t[1]


def export_onnx(model: Detector, path: str | os.PathLike, batch: int = 2, opset: int = 18) -> None:
    """Write ``model``'s network (see the module docstring) to ``path`` (atomically). Raises UserError when the
    exporter fails."""
    model = model.eval()
    size = model.cfg.image_size
    example = torch.rand(batch, model.cfg.in_chans, size, size)
    net = (_DenseRCNN(model) if model.name == "fasterrcnn" else model).eval()
    try:
        program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT],
                                    output_names=list(output_names(model)),
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    except Exception as e:  # the exporter raises many types; its first line says what failed
        raise UserError(f"ONNX export of the detector failed: {str(e).splitlines()[0][:200]}") from e
    with atomic_path(path) as tmp:
        program.save(str(tmp))


def export_detector(ckpt: DetectorCheckpoint, path: str | os.PathLike, batch: int = 2) -> dict:
    """Export ``ckpt``'s network to ``path`` and run ONNX Runtime (extra ``onnx``) and eager on the same random
    images of another batch size (the batch is dynamic): the largest difference per output, and whether the
    detections after ``postprocess`` agree (same count and labels, boxes within 1e-2 px). Raises UserError when an
    output differs by more than PARITY_TOL of its magnitude."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX Runtime is not installed: pip install 'resnet50[onnx]'") from None
    path = output_file(path, "--out")
    model = ckpt.model.eval()
    export_onnx(model, path, batch)
    cfg = model.cfg
    x = torch.rand(batch + 1, cfg.in_chans, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT: x.numpy()})
    with torch.no_grad():
        eager = model(x)
        want = _DenseRCNN(model)(x) if model.name == "fasterrcnn" else eager
    names = output_names(model)
    diffs = {n: float(np.abs(g - w.numpy()).max()) for n, g, w in zip(names, got, want)}
    scales = {n: max(1.0, float(w.abs().max())) for n, w in zip(names, want)}
    worst = max(names, key=lambda n: diffs[n] / scales[n])
    if diffs[worst] > PARITY_TOL * scales[worst]:
        raise UserError(f"the ONNX detector's {worst} differs from eager by {diffs[worst]:.2g}; report it with the "
                        "model's config")
    hw = (cfg.image_size, cfg.image_size)
    a, b = model.postprocess(onnx_outputs(model, got), hw), model.postprocess(eager, hw)
    same = all(len(p["labels"]) == len(q["labels"]) and bool((p["labels"] == q["labels"]).all())
               and bool(((p["boxes"] - q["boxes"]).abs() <= 1e-2).all()) for p, q in zip(a, b))
    return {"onnx": str(path), "detector": model.name, "megabytes": path.stat().st_size / 2 ** 20,
            "outputs": list(names), "max_abs_diff": max(diffs.values()), "per_output": diffs,
            "detections_agree": same, "checked_batch": batch + 1}
