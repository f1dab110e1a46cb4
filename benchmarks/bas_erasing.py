"""Where to erase, measured before BAS is trained: how much of a class's activation a fixed classifier still sees
once the true box is erased, erasing on the input pixels (blended to black) or on the C2, C3 or C4 features
(multiplied by 1 - the box's area fraction in each cell), and the same with the box shifted 8 px up and left.

    python benchmarks/bas_erasing.py --weights CLASSIFIER --scenes DIR [--images 128] [--out FILE]

BAS's background term is this ratio (the class activation of the erased image over the whole image's, the mean of
the ReLU'd CAM on C5): a place to erase where the true box still leaves much of the activation cannot teach a
generator the box. ``--scenes`` holds ``val/plain`` and ``val/clutter`` (benchmarks/psol.py's layout); the true
boxes are read, so this chooses a design, never a threshold or a weight. Writes a JSON (hardware, versions; one run).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet50.cpu import cpu_info
from resnet50.detect.coco import CocoDataset, make_batch
from resnet50.files import write_json
from resnet50.localize.bas import class_activation
from resnet50.localize.wsol import _normalise, classifier_of

PLACES = ("input", "C2", "C3", "C4")  # C2..C4: the outputs of layer1..layer3


def box_mask(boxes: torch.Tensor, size: int, shift: int) -> torch.Tensor:
    """(N, 1, size, size) ones inside each box (x1, y1, x2, y2, pixels) moved ``shift`` px up and left."""
    ys = torch.arange(size).view(1, -1, 1) + 0.5
    xs = torch.arange(size).view(1, 1, -1) + 0.5
    b = boxes[:, :, None, None] - shift
    return ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).float()[:, None]


@torch.no_grad()
def remaining(net, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> dict:
    """Per place, the mean over images of (class activation with the mask erased) / (without)."""
    stages = [getattr(net, n) for n in net.stage_names]

    def c5_from(h, start):
        for s in stages[start:]:
            h = s(h)
        return h

    full = class_activation(net, c5_from(net.stem(x), 0), labels)
    out = {}
    for place in PLACES:
        if place == "input":
            erased = x * (1 - mask) + fill.reshape(1, -1, 1, 1) * mask
            c5 = c5_from(net.stem(erased), 0)
        else:
            k = int(place[1]) - 1  # C2 = after stage 0 (layer1)
            h = net.stem(x)
            for s in stages[:k]:
                h = s(h)
            frac = F.adaptive_avg_pool2d(mask, h.shape[-2:])
            c5 = c5_from(h * (1 - frac), k)
        out[place] = float((class_activation(net, c5, labels) / full.clamp(min=1e-6)).clamp(max=1.0).mean())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a classifier trained on the scenes with labels only")
    p.add_argument("--scenes", required=True)
    p.add_argument("--images", type=int, default=128, help="per kind")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/bas/erasing.json")
    a = p.parse_args()
    net, mean, std, _ = classifier_of(a.weights)
    fill = _normalise(torch.zeros(1, net.cfg.in_chans, 1, 1), mean, std).reshape(-1)
    result: dict = {}
    for kind in ("plain", "clutter"):
        ds = CocoDataset(Path(a.scenes) / "val" / kind, in_chans=net.cfg.in_chans)
        batch = make_batch(ds, list(range(min(a.images, len(ds)))), a.size)
        x, y = _normalise(batch.images, mean, std), batch.labels[:, 0]
        result[kind] = {f"shift {s} px": remaining(net, x, y, box_mask(batch.boxes[:, 0], a.size, s), fill)
                        for s in (0, 8)}
        result[kind]["images"] = len(y)
    model, flags = cpu_info()
    write_json(Path(a.out), {"remaining_activation": result, "weights": a.weights, "size": a.size, "cpu": model,
                             "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
                             "python": sys.version.split()[0], "torch": torch.__version__,
                             "platform": platform.platform(), "runs": 1}, indent=2)
    for kind in ("plain", "clutter"):
        for s in (0, 8):
            r = result[kind][f"shift {s} px"]
            print(f"{kind}, box shifted {s} px: " + ", ".join(f"{k} {v:.1%}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
