"""Batch inference on Ray Data against plain ``predict``: images/s on the same images, side by side, on one machine.

    python benchmarks/ray_predict.py [--runs 3] [--images 2000] [--size 64] [--out benchmarks/results/ray_predict.json]

The images: the embedded Fashion-MNIST validation split (2,000 28 x 28 gray images) written as PNG files. The
model: ResNet-50 v1.5 with random weights for 1 channel and 10 classes at ``--size`` px (resize and crop to the
size; the demo checkpoint's inputs are 48 px, no checkpoint is shipped), backend eager, top-5.

Paths, each run in turn within one round (so drift on a shared machine hits all alike), ``--runs`` rounds:

    predict        load_model + create_backend (eager, all CPUs as threads) + predict_files: one process
    ray 1x{cpus}   batch-predict with 1 actor of all CPUs (the overhead Ray adds on one node, same compute)
    ray {cpus}x1   batch-predict with one 1-CPU actor per CPU (Ray's data-parallel form)

A Ray job's time covers planning, starting its actors (each loads the model), reading, inference and writing the
Parquet files; Ray itself is started once (its start-up is reported separately). The figure is the median run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from resnet50 import weights
from resnet50.batch_predict import batch_predict, start_ray
from resnet50.data.formats import embedded_dataset
from resnet50.data.transforms import Preprocessing
from resnet50.files import write_json
from resnet50.infer import create_backend, load_model
from resnet50.model import create_model
from resnet50.predict import predict_files


def make_inputs(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """``n`` embedded validation images as PNGs in ``root/images`` and a random-weight checkpoint."""
    images = root / "images"
    images.mkdir()
    ds = embedded_dataset("val")
    for i in range(n):
        img, _ = ds[i]
        (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).save(images / f"{i:05d}.png")
    ckpt = root / "resnet50-random.safetensors"
    torch.manual_seed(0)
    weights.save(ckpt, create_model("resnet50", num_classes=10, in_chans=1), [str(c) for c in range(10)],
                 Preprocessing(size, size, mean=(0.5,), std=(0.25,)), "benchmarks/ray_predict.py: random init")
    return images, ckpt


def time_predict(images: Path, ckpt: Path, cpus: int) -> float:
    t0 = time.perf_counter()
    loaded = load_model(ckpt)
    backend = create_backend("eager", loaded, cpus)
    results = predict_files(sorted(images.iterdir()), loaded, backend, k=5, batch_size=64, workers=2)
    seconds = time.perf_counter() - t0
    assert all(r.error is None for r in results)
    return seconds


def time_ray(images: Path, ckpt: Path, out: Path, actors: int, cpus_per_actor: int) -> float:
    res = batch_predict([str(images)], str(ckpt), out, backend="eager", k=5, batch_size=64, actors=actors,
                        cpus_per_actor=cpus_per_actor)
    shutil.rmtree(out)
    assert res.errors == 0
    return res.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/ray_predict.json")
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, ckpt = make_inputs(root, args.images, args.size)
        t0 = time.perf_counter()
        start_ray(num_cpus=cpus)
        ray_start_s = time.perf_counter() - t0
        paths = {"predict": lambda i: time_predict(images, ckpt, cpus),
                 f"ray 1x{cpus}": lambda i: time_ray(images, ckpt, root / f"a{i}", 1, cpus),
                 f"ray {cpus}x1": lambda i: time_ray(images, ckpt, root / f"b{i}", cpus, 1)}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for i in range(args.runs):
            for name, fn in paths.items():
                times[name].append(fn(i))
                print(f"round {i + 1}: {name}: {args.images / times[name][-1]:.1f} img/s", file=sys.stderr)
        ray.shutdown()
    base = statistics.median(times["predict"])
    rows = {name: {"seconds": t, "median_s": statistics.median(t),
                   "img_s": args.images / statistics.median(t), "vs_predict": base / statistics.median(t)}
            for name, t in times.items()}
    per_actor = rows[f"ray {cpus}x1"]["img_s"] / cpus
    result = {"images": args.images, "size": args.size, "runs": args.runs, "cpus": cpus, "ray_start_s": ray_start_s,
              "paths": rows, "per_1cpu_actor_img_s": per_actor,
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": torch.__version__, "ray": importlib.metadata.version("ray")}}
    write_json(args.out, result, indent=2)
    print(json.dumps({k: round(v["img_s"], 1) for k, v in rows.items()} | {"ray_start_s": round(ray_start_s, 1)}))


if __name__ == "__main__":
    main()
