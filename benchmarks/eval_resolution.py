"""A classifier evaluated at several test resolutions (FixRes, Touvron et al. 2019: a net trained with random crops
sees objects larger than at test, and a higher test resolution can make up for it), on the embedded validation
split with flip TTA, BatchNorm statistics as trained (no FixRes fine-tuning).

    python benchmarks/eval_resolution.py runs/demo-.../best.safetensors [more checkpoints] [--sizes 40 48 56 64]

Prints top-1 per size and checkpoint; the validation split only (never t10k: this is for choosing).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from resnet50 import weights
from resnet50.data import build_dataset, eval_transform
from resnet50.evaluate import predict_scores


def top1_at(path: str, size: int, batch: int = 250) -> float:
    ck = weights.load(path)
    model = ck.model.eval()
    pre = dataclasses.replace(ck.preprocessing.for_channels(1), resize=size, crop=size)
    ds = build_dataset("embedded", "val", eval_transform(pre, 1), in_chans=1)
    correct = 0
    with torch.no_grad():
        for s in range(0, len(ds), batch):
            xs, ys = zip(*(ds[i] for i in range(s, min(s + batch, len(ds)))))
            probs = predict_scores(model, torch.stack([torch.as_tensor(x) for x in xs]), "flip")
            correct += int((probs.argmax(1) == torch.as_tensor(ys)).sum())
    return correct / len(ds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+")
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 48, 56, 64])
    a = p.parse_args()
    for path in a.weights:
        print(path, " ".join(f"{s}px {top1_at(path, s):.2%}" for s in a.sizes), flush=True)


if __name__ == "__main__":
    main()
