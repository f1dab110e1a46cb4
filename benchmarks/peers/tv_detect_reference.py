"""torchvision's detection recipe (references/detection at the 0.28 branch point) on the detection demo's scenes, on a
time budget: the other half of the side-by-side in docs/benchmarks.md. Runs in the peer environment only
(``../shared/peers/``: torchvision 0.28 on the CPU torch through its shim), never in the project's tests.

    PY=~/.cache/resnet50-peers/venv/bin/python
    $PY benchmarks/peers/tv_detect_reference.py --refs ~/.cache/resnet50-peers/vision-references \\
        --scenes benchmarks-out/runs/fasterrcnn --init-weights runs/demo-.../best.safetensors \\
        --time-budget 12.5 --out benchmarks/results/detect_compare/torchvision.json

What is torchvision's and what is set to match ours:
- torchvision's: its data pipeline (``coco_utils.get_coco``, ``presets.DetectionPresetTrain`` with hflip: PIL
  images converted to RGB, flipped with p 0.5), its ``engine.train_one_epoch`` (linear warmup over min(1000, steps
  of an epoch - 1) from 1/1000 of the rate, no AMP on CPU: its autocast is CUDA's), its optimiser settings (SGD lr
  0.02 at batch 16, momentum 0.9, weight decay 1e-4 on every trained parameter), its ``engine.evaluate``
  (pycocotools through ``CocoEvaluator``, batch 1), and its model code (``torchvision.models.detection.FasterRCNN``).
- matched to ours, so that the architecture and start are the same: the demo recipe's Faster R-CNN shape (v1 heads,
  ResNet-50 body with trained BatchNorm, conv1 + layer1 frozen, a 128-channel FPN, anchors 16..256 px, the RPN's
  500 / 500 (train) and 300 / 300 (test) top-n, 128 RoIs per image), 11 classes (10 + background; the reference
  hard-codes 91 for COCO), images kept at 128 px (``min_size = max_size = 128``), Fashion-MNIST's mean and std, and
  the backbone started from the same classification checkpoint (its 1-channel conv1 repeated over RGB / 3: the same
  function of a grey image).
- the budget: the reference trains whole epochs; here its loop stops when ``--time-budget`` minutes of training are
  spent, and its step schedule (/10 at epochs 16 and 22 of 26) is applied at those fractions of the budget.

Writes the JSON: hardware, versions, steps, images, training seconds and img/s, mAP / mAP@.5 / mAP@.75 on the
validation scenes (all, plain, cluttered) and evaluation img/s; one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DROPS = (16 / 26, 22 / 26)  # the reference's --lr-steps 16 22 of --epochs 26, as fractions of the budget


class Budgeted:
    """A data loader that stops yielding when ``budget_s`` of training have passed and divides the rate by 10 at
    the DROPS fractions of the budget (for torchvision's ``train_one_epoch``, which loops over what it is given)."""

    def __init__(self, loader, optimizer, budget_s: float, start: float) -> None:
        self.loader, self.optimizer, self.budget_s, self.start = loader, optimizer, budget_s, start
        self.steps, self.images, self.done, self.drops = 0, 0, False, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, targets in self.loader:
            spent = time.perf_counter() - self.start
            if spent >= self.budget_s:
                self.done = True
                return
            while self.drops < len(DROPS) and spent >= DROPS[self.drops] * self.budget_s:
                for g in self.optimizer.param_groups:
                    g["lr"] *= 0.1
                self.drops += 1
            self.steps += 1
            self.images += len(images)
            yield images, targets


def coco_root(tmp: Path, name: str, train: Path | None, val: Path) -> Path:
    """A folder in the layout ``get_coco`` reads (train2017/, val2017/, annotations/instances_*2017.json). The
    reference's target conversion reads every annotation's ``segmentation`` even for boxes only: each box is given
    as its own 4-corner polygon (the masks are never used by a Faster R-CNN)."""
    root = tmp / name
    (root / "annotations").mkdir(parents=True)
    for split, src in (("train", train), ("val", val)):
        if src is None:
            continue
        os.symlink(src.resolve(), root / f"{split}2017")
        doc = json.loads((src / "instances.json").read_text())
        for ann in doc["annotations"]:
            x, y, w, h = ann["bbox"]
            ann.setdefault("segmentation", [[x, y, x + w, y, x + w, y + h, x, y + h]])
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return root


def build_model(init_weights: str | None):
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    body = resnet50(weights=None)  # BatchNorm2d, trained (the demo recipe's norm="batch")
    if init_weights:
        from safetensors.torch import load_file

        sd = {k: v for k, v in load_file(init_weights).items() if not k.startswith("fc.")}
        if sd["conv1.weight"].shape[1] == 1:  # a grey-image checkpoint: the same function of an RGB grey image
            sd["conv1.weight"] = sd["conv1.weight"].repeat(1, 3, 1, 1) / 3
        missing, unexpected = body.load_state_dict(sd, strict=False)
        assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}, (missing, unexpected)
    backbone = _resnet_fpn_extractor(body, trainable_layers=3)
    # torchvision's extractor fixes 256 channels; the demo recipe's FPN has 128: rebuild its pyramid at 128
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    backbone.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 128, extra_blocks=LastLevelMaxPool())
    backbone.out_channels = 128
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    model = FasterRCNN(backbone, num_classes=11, rpn_anchor_generator=anchors, min_size=128, max_size=128,
                       image_mean=[0.2860] * 3, image_std=[0.3530] * 3,
                       rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=500,
                       rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300, box_batch_size_per_image=128)
    return model, sum(p.numel() for p in model.parameters()), torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refs", required=True, help="the vision-references folder (setup.sh with VISION_REPO)")
    p.add_argument("--scenes", required=True, help="a detection demo folder (scenes-train/, scenes-val/)")
    p.add_argument("--init-weights", default=None)
    p.add_argument("--time-budget", type=float, default=12.5, help="minutes of training")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    sys.path.insert(0, str(Path(a.refs) / "detection"))
    import tvshim  # noqa: F401, I001  (first: the peer environment's import hook loads it too)
    import torch
    import torchvision
    import train as reference  # references/detection/train.py
    import utils
    from engine import evaluate, train_one_epoch

    scenes = Path(a.scenes)
    tmp = Path(tempfile.mkdtemp(prefix="tvref-"))
    root = coco_root(tmp, "all", scenes / "scenes-train", scenes / "scenes-val")
    args = reference.get_args_parser().parse_args(
        ["--data-path", str(root), "--data-augmentation", "hflip", "--batch-size", "16", "--lr", "0.02",
         "--workers", str(a.workers), "--aspect-ratio-group-factor", "-1"])  # one aspect ratio: no grouping
    dataset, _ = reference.get_dataset(True, args)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset), 16, True),
        num_workers=a.workers, collate_fn=utils.collate_fn)
    model, params, _ = build_model(a.init_weights)
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    start = time.perf_counter()
    feed = Budgeted(loader, optimizer, 60 * a.time_budget, start)
    epoch = 0
    while not feed.done:
        train_one_epoch(model, optimizer, feed, torch.device("cpu"), epoch, 50)
        epoch += 1
    train_s = time.perf_counter() - start
    figures = {}
    for kind in ("all", "plain", "clutter"):
        val = scenes / "scenes-val" if kind == "all" else scenes / "scenes-val" / kind
        r = coco_root(tmp, f"val-{kind}", None, val)
        args.data_path = str(r)
        ds, _ = reference.get_dataset(False, args)
        dl = torch.utils.data.DataLoader(ds, batch_size=1, sampler=torch.utils.data.SequentialSampler(ds),
                                         num_workers=a.workers, collate_fn=utils.collate_fn)
        t0 = time.perf_counter()
        stats = evaluate(model, dl, torch.device("cpu")).coco_eval["bbox"].stats
        figures[kind] = {"map": float(stats[0]), "map50": float(stats[1]), "map75": float(stats[2]),
                         "images": len(ds), "eval_img_s": len(ds) / (time.perf_counter() - t0)}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    result = {"recipe": "torchvision references/detection (85a1dccc8b7d), budgeted; see the script's docstring",
              "cpu": cpu, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
              "torch": torch.__version__, "torchvision": torchvision.__version__, "platform": platform.platform(),
              "params": params, "init_weights": a.init_weights, "time_budget_min": a.time_budget,
              "steps": feed.steps, "images": feed.images, "epochs": feed.images / len(dataset),
              "train_seconds": train_s, "img_s": feed.images / train_s, "lr_drops": feed.drops,
              "val": figures, "runs": 1}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("img_s", "epochs", "val")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
