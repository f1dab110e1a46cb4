"""Detector inference speed on this machine: RetinaNet ResNet-50 FPN (torchvision's layout, 91 classes, 3 channels,
random weights: speed does not depend on their values) at 128 px and 512 px, eager fp32, eager with bf16 autocast
(on CPUs with bf16 instructions) and ONNX Runtime fp32 (``resnet50.detect.export.export_onnx``: the network up to
the head outputs). Post-processing (decoding, top-k, per-class NMS) is torch in every case and timed on its own, on
the eager fp32 outputs with score_thresh 0.05 (on random weights few boxes pass it; a trained model's time is close).

    python benchmarks/detect_speed.py [--runs 7] [--sizes 128,512]

Each figure is the median of ``--runs`` timed runs after 2 warm-up runs; img/s = batch / median seconds. Writes
benchmarks/results/detect_speed.json with the hardware (including the load average: the cores may be shared) and
versions.
"""

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from resnet50.bench import hardware, versions
from resnet50.cpu import has_native_bf16
from resnet50.detect.export import export_onnx
from resnet50.detect.retinanet import create_detector, postprocess
from resnet50.files import write_json


def timed(fn, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,512")
    ap.add_argument("--batches", default="8,1", help="batch per size, in the order of --sizes")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detect_speed.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    load_start = hardware()["load_average_1_5_15m"]
    rows = []
    for size, batch in zip((int(s) for s in args.sizes.split(",")), (int(b) for b in args.batches.split(","))):
        torch.manual_seed(0)
        model = create_detector(image_size=size).eval()
        x = torch.rand(batch, 3, size, size)
        modes = [("eager", "fp32", None)] + ([("eager", "bf16 autocast", torch.bfloat16)] if has_native_bf16() else [])
        for backend, precision, amp in modes:
            def run(amp=amp):
                with torch.no_grad(), torch.autocast("cpu", dtype=amp) if amp else nullcontext():
                    return model(x)

            t = timed(run, args.runs)
            rows.append({"backend": backend, "precision": precision, "size": size, "batch": batch,
                         "img_s": batch / statistics.median(t), "median_ms": 1e3 * statistics.median(t),
                         "runs_ms": [round(1e3 * s, 1) for s in t]})
            print(rows[-1], flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "detector.onnx"
            export_onnx(model, path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"images": x.numpy()}
            t = timed(lambda: sess.run(None, feed), args.runs)
            onnx_cls, _ = sess.run(None, feed)
        with torch.no_grad():
            eager = model(x)
        rows.append({"backend": "onnxruntime", "precision": "fp32", "size": size, "batch": batch,
                     "img_s": batch / statistics.median(t), "median_ms": 1e3 * statistics.median(t),
                     "runs_ms": [round(1e3 * s, 1) for s in t],
                     "max_abs_diff_vs_eager": float((torch.from_numpy(onnx_cls) - eager[0]).abs().max())})
        print(rows[-1], flush=True)
        t = timed(lambda: postprocess(model, eager, (size, size)), args.runs)
        rows.append({"backend": "postprocess (torch)", "precision": "fp32", "size": size, "batch": batch,
                     "img_s": batch / statistics.median(t), "median_ms": 1e3 * statistics.median(t),
                     "runs_ms": [round(1e3 * s, 1) for s in t]})
        print(rows[-1], flush=True)
    report = {"schema": "resnet50-detect-speed/1", "model": "RetinaNet v1, ResNet-50 FPN, 91 classes, random weights",
              "threads": torch.get_num_threads(), "runs": args.runs, "hardware": hardware(),
              "load_average_at_start": load_start, "versions": versions(), "results": rows}
    write_json(args.out, report, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
