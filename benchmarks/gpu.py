"""One prepared GPU measurement (H100/H200), under 8 minutes: training and inference img/s of ResNet-50 v1.5.

    python benchmarks/gpu.py --out gpu.json          # on the GPU machine: the whole measurement, one JSON
    python benchmarks/gpu.py --smoke                 # anywhere (CPU): the same code paths at toy sizes, seconds

Training (the toolkit's own step: resnet50.train's forward/backward/optimiser pieces), bf16 autocast,
channels_last, SGD as the nvidia recipe, batch 256 at 224 px:
  - synthetic data on the device, eager and torch.compile (compile time reported separately);
  - through the real loader (resnet50.data: JPEG decoding, RandomResizedCrop, flip) with N workers, on a folder
    of generated JPEGs, to show whether the input pipeline keeps up.
Inference: eager (channels_last, bf16 autocast and fp32), torch.compile, ONNX Runtime's CUDA provider when
onnxruntime-gpu is installed. Each figure is the median of ``--repeats`` timed windows after warm-up; the device
is synchronised only at window edges. Prints one JSON document (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet50 import create_model
from resnet50.data import IMAGENET, ImageFolder, build_loader, build_transform
from resnet50.files import write_json
from resnet50.optim import build_optimizer, loss_fn, soft_targets
from resnet50.recipes import get_recipe


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model, batches, device, steps: int, repeats: int, amp: torch.dtype | None) -> list[float]:
    """img/s of full training steps over ``repeats`` windows of ``steps`` steps (after 3 warm-up steps)."""
    o = get_recipe("nvidia").optim
    opt = build_optimizer(model, o, 0.1)
    model.train()

    def step(x, y):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), soft_targets(y, 1000, o.label_smoothing), o)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    it = iter(batches())
    for _ in range(3):
        step(*next(it))
    sync(device)
    rates = []
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        for _ in range(steps):
            x, y = next(it)
            step(x, y)
            n += x.shape[0]
        sync(device)
        rates.append(n / (time.perf_counter() - t))
    return rates


def infer_rate(fn, x, device, calls: int, repeats: int) -> list[float]:
    for _ in range(3):
        fn(x)
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn(x)
        sync(device)
        rates.append(calls * x.shape[0] / (time.perf_counter() - t))
    return rates


def synthetic(batch: int, size: int, device):
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def batches():
        while True:
            yield x, y
    return batches


def jpeg_folder(root: Path, images: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)).save(folder / f"{i}.jpg",
                                                                                              quality=90)
    return root


def real_loader(root: Path, batch: int, size: int, workers: int, device):
    import dataclasses

    ds = ImageFolder(root)
    ds.transform = build_transform(dataclasses.replace(IMAGENET, image_size=size), train=True)
    loader = build_loader(ds, batch, train=True, workers=workers, seed=0)

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for x, y, _ in loader:
                yield (x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                       y.to(device, non_blocking=True))
            epoch += 1
    return batches


def summary(rates: list[float]) -> dict:
    return {"median_img_s": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": len(rates)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on any device (what the test suite runs)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 2)))
    p.add_argument("--images", type=int, default=2560, help="JPEGs generated for the real-loader measurement")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.size, args.steps, args.repeats, args.workers, args.images = 4, 64, 2, 2, 0, 12
        args.no_compile = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "python": sys.version.split()[0], "batch": args.batch, "size": args.size,
              "amp": str(amp), "smoke": args.smoke, "repeats": args.repeats, "train": {}, "inference": {}}

    def model():
        return create_model("resnet50").to(device, memory_format=torch.channels_last)

    result["train"]["synthetic_eager"] = summary(
        train_rate(model(), synthetic(args.batch, args.size, device), device, args.steps, args.repeats, amp))
    if not args.no_compile:
        t = time.perf_counter()
        compiled = torch.compile(model())
        rates = train_rate(compiled, synthetic(args.batch, args.size, device), device, args.steps, args.repeats, amp)
        result["train"]["synthetic_compile"] = {**summary(rates), "compile_and_warmup_s": time.perf_counter() - t}
    with tempfile.TemporaryDirectory() as tmp:
        root = jpeg_folder(Path(tmp), args.images, max(args.size, 256) if not args.smoke else 80)
        rates = train_rate(model(), real_loader(root, args.batch, args.size, args.workers, device), device,
                           args.steps, args.repeats, amp)
        result["train"]["real_loader"] = {**summary(rates), "workers": args.workers}

    net = model().eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        result["inference"]["eager_fp32"] = summary(infer_rate(net, x, device, args.steps, args.repeats))
        if amp is not None:
            def bf16(t):
                with torch.autocast(device.type, dtype=amp):
                    return net(t)
            result["inference"]["eager_bf16"] = summary(infer_rate(bf16, x, device, args.steps, args.repeats))
        if not args.no_compile:
            result["inference"]["compile"] = summary(infer_rate(torch.compile(net), x, device, args.steps,
                                                                args.repeats))
    result["inference"]["onnxruntime_cuda"] = onnx_cuda(net, x, args) if device.type == "cuda" else None
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        write_json(args.out, result)
    return 0


def onnx_cuda(net, x, args) -> dict | None:
    """ONNX Runtime's CUDA provider, when onnxruntime-gpu is installed (None otherwise)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    from resnet50.export import export_onnx
    from resnet50.weights import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r50.onnx"
        export_onnx(Checkpoint(net.float().cpu().eval(), "resnet50"), path)
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        arr = x.float().cpu().numpy()
        name = sess.get_inputs()[0].name
        rates = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(args.steps):
                sess.run(None, {name: arr})
            rates.append(args.steps * arr.shape[0] / (time.perf_counter() - t))
        return summary(rates)


if __name__ == "__main__":
    sys.exit(main())
