"""Peak memory of `resnet50 detect train` on a COCO-size folder: bounded, epoch 2 like epoch 1.

Writes a COCO-format folder of N 640x480 JPEGs (noise with 1-4 bright rectangles each, their boxes in an instances
JSON; made here, never stored), trains a detector on it for two epochs with loader workers, and samples the resident
memory of the training process and its workers together (the sum of RSS over the process tree, /proc) every 0.2 s.
Reports the peak of each epoch and their ratio: before the engine's loader every decoded image stayed in a cache
(34 MB per 4000x3000 photo), so epoch 2 held the whole set.

    python benchmarks/detect_memory.py --images 3000 --workers 2          # the engine issue's check
    python benchmarks/detect_memory.py --images 300 --keep DIR            # a quick look, folder kept

Prints one JSON line: images, epochs, workers, per-epoch peak RSS (MiB), the ratio, img/s, machine, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet50.detect.train import resolve, train


def write_coco_folder(root: Path, n: int, seed: int = 0, w: int = 640, h: int = 480) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n + 1):
        canvas = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = (int(v) for v in rng.integers(40, 200, 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cls = int(rng.integers(1, 3))
            canvas[y:y + bh, x:x + bw] = (220, 220, 220) if cls == 1 else (220, 60, 60)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        Image.fromarray(canvas).save(root / "images" / f"{i:05d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"images/{i:05d}.jpg", "width": w, "height": h})
    cats = [{"id": 1, "name": "white"}, {"id": 2, "name": "red"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128, help="letterbox size the detector trains at")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--keep", default=None, help="write the folder here and keep it")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep or tmp.name)
    t0 = time.perf_counter()
    write_coco_folder(root / "coco", args.images)
    write_s = time.perf_counter() - t0

    peaks: dict[int, float] = {}
    epoch = {"now": 1}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks[epoch["now"]] = max(peaks.get(epoch["now"], 0.0), tree_rss_mib(os.getpid()))
            time.sleep(0.2)

    def log(line: str) -> None:
        if line.startswith("epoch "):  # "epoch 1/2: ..." ends epoch 1
            epoch["now"] = int(line.split()[1].split("/")[0]) + 1
        print(line, flush=True)

    cfg = resolve("scenes", {"train": str(root / "coco"), "out": str(root / "runs"), "name": "mem",
                             "arch": args.arch, "in_chans": 3, "mean": "0.485,0.456,0.406",
                             "std": "0.229,0.224,0.225", "image_size": args.image_size, "epochs": 2,
                             "workers": args.workers, "batch_size": 16})
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    res = train(cfg, progress=False, log=log)
    stop.set()
    sampler.join()
    e1, e2 = peaks.get(1, 0.0), peaks.get(2, 0.0)
    print(json.dumps({
        "images": args.images, "size": "640x480 JPEG", "workers": args.workers, "arch": args.arch,
        "image_size": args.image_size, "epochs": 2, "peak_rss_mib_epoch1": round(e1), "peak_rss_mib_epoch2": round(e2),
        "ratio": round(e2 / max(e1, 1e-9), 3), "img_s": [round(r["img_s"], 1) for r in res["history"]],
        "write_s": round(write_s), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
