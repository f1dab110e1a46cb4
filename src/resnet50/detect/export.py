"""The detector network to ONNX: images (N, C, S, S) in 0..1 -> cls_logits (N, HWA, K), bbox_regression (N, HWA, 4).

Normalisation is inside the graph; anchors, decoding and NMS stay in torch (``retinanet.postprocess``), which takes
ONNX Runtime's outputs as they are. ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, opset 18)
with a dynamic batch dimension; the image size is fixed, as the anchors are.
"""

from __future__ import annotations

import os

import torch

from ..errors import UserError
from .retinanet import RetinaNet

INPUT, OUTPUTS = "images", ("cls_logits", "bbox_regression")


def export_onnx(model: RetinaNet, path: str | os.PathLike, batch: int = 2, opset: int = 18) -> None:
    model = model.eval()
    size = model.cfg.image_size
    example = torch.rand(batch, model.cfg.in_chans, size, size)
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=[INPUT],
                                    output_names=list(OUTPUTS), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    except Exception as e:  # the exporter raises many types; its first line says what failed
        raise UserError(f"ONNX export of the detector failed: {str(e).splitlines()[0][:200]}") from e
    program.save(str(path))
