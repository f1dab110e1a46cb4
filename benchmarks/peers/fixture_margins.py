"""How far the detector parity fixtures are from a decision boundary: rerun our models on each fixture's case with
every weight perturbed by a relative 1e-6 (about what another thread count or CPU vector width does to the
convolutions' rounding) and count the trials whose detections or losses would fail ``tests/detect/test_parity.py``'s
tolerances against the unperturbed run. A fixture whose outputs hinge on near-tied scores (its detections reorder,
its sampler draws other RoIs) fails here first; ``make_detect_fixtures.py`` chose its settings with this.

    OMP_NUM_THREADS=2 python benchmarks/peers/fixture_margins.py [--trials 12] [fixture ...]

Needs no torchvision: it reads the settings from ``tests/detect/fixtures/*.npz`` and the weights from
``tests/detect/parity_weights.py``. Odd trials run on 2 threads, even ones on 1. Prints one line per fixture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from resnet50.detect.fasterrcnn import FasterRCNN
from resnet50.detect.retinanet import postprocess
from tests.detect.parity_weights import parity_scene
from tests.detect.test_parity import BOX_ATOL, LOSS_RTOL, SCORE_ATOL, build, load


def run(model, images, boxes, labels, valid, size: int) -> tuple[list[dict], dict[str, float]]:
    model.eval()
    with torch.no_grad():
        out = model(images)
        dets = model.postprocess(out, (size, size)) if isinstance(model, FasterRCNN) else \
            postprocess(model, out, (size, size))
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        losses = model.loss(model(images), boxes, labels, valid, (size, size))
    return dets, {k: v.item() for k, v in losses.items()}


def same_detections(a: list[dict], b: list[dict]) -> bool:
    for x, y in zip(a, b):
        if len(x["scores"]) != len(y["scores"]) or not torch.equal(x["labels"], y["labels"]):
            return False
        if len(x["scores"]) and ((x["boxes"] - y["boxes"]).abs().max() > BOX_ATOL
                                 or (x["scores"] - y["scores"]).abs().max() > SCORE_ATOL):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*", default=["retinanet_v1", "retinanet_v2", "fasterrcnn_v1",
                                                        "fasterrcnn_v2"])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    for name in args.fixtures:
        meta, arrays = load(name)
        model = build(meta)
        images, boxes, labels = parity_scene(**meta["scene"])
        valid = torch.from_numpy(arrays["valid"])
        size = meta["scene"]["size"]
        torch.set_num_threads(1)
        base_dets, base_losses = run(model, images, boxes, labels, valid, size)
        reference = {k: v.clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(123)
        bad_dets = bad_losses = 0
        for trial in range(args.trials):
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        v.copy_(reference[k] * (1 + 1e-6 * torch.randn(v.shape, generator=g)))
            torch.set_num_threads(2 if trial % 2 else 1)
            dets, losses = run(model, images, boxes, labels, valid, size)
            bad_dets += not same_detections(dets, base_dets)
            bad_losses += any(abs(losses[k] - base_losses[k]) > LOSS_RTOL * abs(base_losses[k]) for k in losses)
        print(f"{name}: {[len(d['scores']) for d in base_dets]} detections; of {args.trials} perturbed trials "
              f"{bad_dets} changed the detections, {bad_losses} the losses")


if __name__ == "__main__":
    main()
