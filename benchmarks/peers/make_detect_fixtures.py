"""The detector parity fixtures, produced by torchvision itself: what ``tests/detect/test_parity.py`` holds our
RetinaNet, Faster R-CNN, RoIAlign and box coding to. Run it with the peer environment (``../shared/peers``:
torchvision 0.28 on the CPU torch 2.13), from the repository root:

    bash ../shared/peers/setup.sh
    OMP_NUM_THREADS=1 ~/.cache/resnet50-peers/venv/bin/python benchmarks/peers/make_detect_fixtures.py

It imports torchvision and ``tests/detect/parity_weights.py`` (by path: torch only), not this project. For each
of ``retinanet_resnet50_fpn``, ``retinanet_resnet50_fpn_v2`` (5 classes), ``fasterrcnn_resnet50_fpn`` and
``fasterrcnn_resnet50_fpn_v2`` (6 classes, background included), built by torchvision's own builders with
``weights=None, weights_backbone=None`` (so BatchNorm2d in the body, as our ``norm="batch"``) and
``min_size = max_size = S``: every parameter and buffer is set by ``parity_weights.fill_parity_weights`` (a
function of its name), the synthetic scene of ``parity_scene`` (2 images of S x S, 4 boxes, the second image's last
box dropped) goes through the model in eval mode (detections) and in train mode under ``torch.manual_seed(0)``
(the four losses; the transform kept in eval mode so its random size choice draws nothing, and checked to resize
nothing: the normalised batch is bit-equal to ours). In train mode the BatchNorm layers use their running
statistics (``BN_EVAL``). Also: ``torchvision.ops.roi_align`` (aligned True / False, sampling ratio 2 / -1,
border and degenerate boxes, one input gradient), ``MultiScaleRoIAlign`` (boxes of every level) and ``BoxCoder``
encode / decode (weights 1 and (10, 10, 5, 5)).

BN_EVAL: batch statistics are torch's own BatchNorm2d on both sides, and their reductions round differently with
the thread count or the CPU's vector width (3e-5 in the pyramid between 1 and 2 threads); that reorders
near-tied proposals, which changes which RoIs the sampler draws (1-2 % in loss_classifier, in 5 of 6 trials of a
1e-6 weight perturbation). With running statistics, 12 such trials per fixture changed no detection and no loss
beyond the tests' tolerances (``benchmarks/peers/fixture_margins.py``, which needs no torchvision).

Faster R-CNN runs with fewer proposals and RoI samples than torchvision's defaults (``FRCNN_SETTINGS``; the
same code paths, a tenth of the CPU time); every fixture records its settings, the weight rule, the scene and
the torchvision / torch versions. Writes ``tests/detect/fixtures/*.npz`` (numpy arrays, a ``meta`` JSON string).
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models import detection as D
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import MultiScaleRoIAlign, roi_align

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "detect" / "fixtures"
_spec = importlib.util.spec_from_file_location("parity_weights", ROOT / "tests" / "detect" / "parity_weights.py")
pw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pw)

S = 128
SCENE = {"num_images": 2, "size": S, "num_boxes": 4, "num_classes": 5, "seed": 0}
VALID = [[True, True, True, True], [True, True, True, False]]  # image 1's last box is padding
FRCNN_SETTINGS = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 200,
                  "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def versions() -> dict:
    return {"torchvision": torchvision.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def save(name: str, meta: dict, arrays: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"fixture": name, "made_by": "benchmarks/peers/make_detect_fixtures.py", **versions(), **meta}
    np.savez_compressed(OUT / f"{name}.npz", meta=np.array(json.dumps(meta)), **arrays)
    print(f"{name}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in arrays.items())}")


def check_transform(model, images: torch.Tensor) -> None:
    """torchvision's transform must neither resize nor pad an S x S batch, and normalise as we do."""
    model.eval()
    batch, _ = model.transform(list(images))
    assert batch.image_sizes == [(S, S)] * len(images), batch.image_sizes
    mean, std = torch.tensor(MEAN).reshape(1, 3, 1, 1), torch.tensor(STD).reshape(1, 3, 1, 1)
    assert torch.equal(batch.tensors, (images - mean) / std), "the transform changed the pixels"
    assert list(model.transform.image_mean) == list(MEAN) and list(model.transform.image_std) == list(STD)


def detector(name: str, model, ours: dict, label_offset: int, builder: str) -> None:
    images, boxes, labels = pw.parity_scene(**SCENE)
    valid = torch.tensor(VALID)
    pw.fill_parity_weights(model)
    check_transform(model, images)
    arrays = {"gt_boxes": boxes.numpy(), "gt_labels": labels.numpy(), "valid": valid.numpy()}
    t0 = time.process_time()
    with torch.no_grad():
        dets = model(list(images))
    for i, d in enumerate(dets):
        arrays[f"boxes_{i}"] = d["boxes"].numpy()
        arrays[f"scores_{i}"] = d["scores"].numpy()
        arrays[f"labels_{i}"] = d["labels"].numpy()  # torchvision's class indices
    targets = [{"boxes": b[v], "labels": lab[v] + label_offset} for b, lab, v in zip(boxes, labels, valid)]
    model.train()
    model.transform.eval()  # training mode draws a random min_size (torch_choice) from the global generator
    for m in model.modules():  # running statistics: see BN_EVAL
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    state = torch.get_rng_state()
    model.transform(list(images), targets)
    assert torch.equal(state, torch.get_rng_state()), "the transform drew random numbers"
    torch.manual_seed(0)
    with torch.no_grad():
        losses = model(list(images), targets)
    names = sorted(losses)
    arrays["loss_names"] = np.array(names)
    arrays["loss_values"] = np.array([losses[k].item() for k in names], dtype=np.float64)
    meta = {"builder": builder, "ours": ours, "scene": SCENE, "valid": VALID, "rule": pw.RULE,
            "label_offset": label_offset, "train_seed": 0, "train_batchnorm": "eval (running statistics)",
            "cpu_seconds": round(time.process_time() - t0, 1),
            "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()}}
    save(name, meta, arrays)
    print("   ", {k: round(v.item(), 5) for k, v in losses.items()}, [len(d["scores"]) for d in dets])


def detectors() -> None:
    common = {"weights": None, "weights_backbone": None, "min_size": S, "max_size": S}
    retina = {"num_classes": 5, "image_size": S, "norm": "batch"}
    # v1 at score_thresh 0.05 keeps 243 + 300 detections whose scores lie within 1e-6 of each other here and there
    # (a 1e-6 weight perturbation changed their order in 5 of 12 trials); 0.1 keeps 7 + 71 (0 of 12)
    detector("retinanet_v1", D.retinanet_resnet50_fpn(num_classes=5, score_thresh=0.1, **common),
             {"version": "v1", "score_thresh": 0.1, **retina}, 0,
             "retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, score_thresh=0.1, "
             "min_size=S, max_size=S)")
    detector("retinanet_v2", D.retinanet_resnet50_fpn_v2(num_classes=5, **common), {"version": "v2", **retina}, 0,
             "retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5, min_size=S, max_size=S)")
    frcnn = {"num_classes": 6, "image_size": S, **FRCNN_SETTINGS}
    for version, build in (("v1", D.fasterrcnn_resnet50_fpn), ("v2", D.fasterrcnn_resnet50_fpn_v2)):
        model = build(num_classes=6, **common, **FRCNN_SETTINGS)
        detector(f"fasterrcnn_{version}", model, {"version": version, "norm": "batch", **frcnn}, 1,
                 f"{build.__name__}(weights=None, weights_backbone=None, num_classes=6, min_size=S, max_size=S, "
                 "**FRCNN_SETTINGS)")


def roi_align_fixture() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 10, 13, generator=g)
    k = 36
    xy = torch.rand(k, 2, generator=g) * 30 - 6  # in image pixels; spatial_scale 0.5 -> beyond the map's borders
    wh = torch.rand(k, 2, generator=g) * 24
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy, xy + wh], dim=1)
    rois[:6, 1:] = torch.tensor([[-4.0, -4.0, 0.6, 0.4],  # ends at the top-left border
                                 [24.0, 18.0, 28.0, 22.0],  # starts at the bottom-right border
                                 [6.0, 6.0, 6.0, 6.0],  # empty
                                 [10.0, 10.0, 6.0, 4.0],  # inverted
                                 [-2.0, -2.0, 27.0, 21.0],  # the whole map and a little more
                                 [0.0, 0.0, 1.0, 1.0]])  # under one cell
    arrays = {"input": x.numpy(), "rois": rois.numpy()}
    for aligned in (False, True):
        for ratio in (2, -1):
            arrays[f"out_aligned{int(aligned)}_ratio{ratio}"] = roi_align(x, rois, (5, 4), 0.5, ratio, aligned).numpy()
    weight = torch.randn(k, 3, 5, 4, generator=g)
    xg = x.clone().requires_grad_()
    (roi_align(xg, rois, (5, 4), 0.5, -1, True) * weight).sum().backward()
    arrays["grad_weight"], arrays["grad_aligned1_ratio-1"] = weight.numpy(), xg.grad.numpy()

    # MultiScaleRoIAlign: P2..P5 of a 128 px image, boxes of sqrt(area) from 8 to 600 px (levels 2 to 5)
    maps = [torch.randn(2, 2, S // 2 ** i, S // 2 ** i, generator=g) for i in range(2, 6)]
    sides = torch.tensor([8.0, 60.0, 111.9, 112.0, 150.0, 223.9, 224.0, 300.0, 447.9, 448.0, 600.0])
    boxes = []
    for i in range(2):
        corner = torch.rand(len(sides), 2, generator=g) * 100 - 20
        boxes.append(torch.cat([corner, corner + sides[:, None]], dim=1))
    pooled = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)({str(i): m for i, m in enumerate(maps)}, boxes,
                                                             [(S, S)] * 2)
    arrays.update({f"msra_map{i}": m.numpy() for i, m in enumerate(maps)})
    arrays.update({f"msra_boxes{i}": b.numpy() for i, b in enumerate(boxes)})
    arrays["msra_out"] = pooled.numpy()
    save("roi_align", {"output_size": [5, 4], "spatial_scale": 0.5, "msra": {"output_size": 7, "sampling_ratio": 2,
                                                                            "image_shapes": [[S, S]] * 2}}, arrays)


def box_coding_fixture() -> None:
    g = torch.Generator().manual_seed(2)
    n = 200
    xy = torch.rand(n, 2, generator=g) * 400
    anchors = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 300], dim=1)
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 300], dim=1)
    deltas = torch.randn(n, 4, generator=g) * 2
    deltas[:10, 2:] = 6.0  # beyond log(1000 / 16) = 4.135 (x 5 weight: still beyond): the clamp
    arrays = {"anchors": anchors.numpy(), "boxes": boxes.numpy(), "deltas": deltas.numpy()}
    for tag, weights in (("w1", (1.0, 1.0, 1.0, 1.0)), ("w10", (10.0, 10.0, 5.0, 5.0))):
        coder = BoxCoder(weights)
        arrays[f"encoded_{tag}"] = coder.encode_single(boxes, anchors).numpy()
        arrays[f"decoded_{tag}"] = coder.decode_single(deltas, anchors).numpy()
    save("box_coding", {"weights": {"w1": [1, 1, 1, 1], "w10": [10, 10, 5, 5]}}, arrays)


if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["ops", "detectors"]
    if "ops" in which:
        roi_align_fixture()
        box_coding_fixture()
    if "detectors" in which:
        detectors()
