"""Detector inference speed on this machine: RetinaNet and Faster R-CNN on ResNet-50 FPN (torchvision's layouts and
test settings, 91 classes, 3 channels, random weights: speed hardly depends on their values) at 128 px and 512 px,
eager fp32, eager with bf16 autocast (on CPUs with bf16 instructions) and ONNX Runtime fp32
(``resnet50.detect.export.export_onnx``: the network up to its dense outputs, the FPN and RPN for Faster R-CNN).
Post-processing is torch in every case and timed on its own, on the eager fp32 outputs: RetinaNet's decoding,
top-k and per-class NMS; Faster R-CNN's second stage (proposals: top-n, NMS; RoIAlign, the box head, per-class
NMS), which is part of the network's compute. "end to end" rows add the two medians.

    python benchmarks/detect_speed.py [--runs 7] [--sizes 128,512] [--detectors retinanet,fasterrcnn]

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
from resnet50.detect import detectors
from resnet50.detect.export import export_onnx, onnx_outputs
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
    ap.add_argument("--detectors", default="retinanet,fasterrcnn")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detect_speed.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    load_start = hardware()["load_average_1_5_15m"]
    rows = []
    cases = [(d, int(s), int(b)) for d in args.detectors.split(",")
             for s, b in zip(args.sizes.split(","), args.batches.split(","))]
    for name, size, batch in cases:
        torch.manual_seed(0)
        model = detectors.build(name, {"image_size": size}).eval()
        x = torch.rand(batch, 3, size, size)
        modes = [("eager", "fp32", None)] + ([("eager", "bf16 autocast", torch.bfloat16)] if has_native_bf16() else [])
        for backend, precision, amp in modes:
            def run(amp=amp):
                with torch.no_grad(), torch.autocast("cpu", dtype=amp) if amp else nullcontext():
                    return model(x)

            t = timed(run, args.runs)
            rows.append({"detector": name, "backend": backend, "precision": precision, "size": size, "batch": batch,
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
            got = sess.run(None, feed)
        with torch.no_grad():
            eager = model(x)
        first = onnx_outputs(model, got)
        first = first["objectness"] if name == "fasterrcnn" else first[0]
        want = eager["objectness"] if name == "fasterrcnn" else eager[0]
        rows.append({"detector": name, "backend": "onnxruntime", "precision": "fp32", "size": size, "batch": batch,
                     "img_s": batch / statistics.median(t), "median_ms": 1e3 * statistics.median(t),
                     "runs_ms": [round(1e3 * s, 1) for s in t],
                     "max_abs_diff_vs_eager": float((first - want).abs().max())})
        print(rows[-1], flush=True)
        t = timed(lambda: model.postprocess(eager, (size, size)), args.runs)
        post = {"detector": name, "backend": "postprocess (torch)", "precision": "fp32", "size": size, "batch": batch,
                "img_s": batch / statistics.median(t), "median_ms": 1e3 * statistics.median(t),
                "runs_ms": [round(1e3 * s, 1) for s in t]}
        rows.append(post)
        print(rows[-1], flush=True)
        for r in [r for r in rows if r["detector"] == name and r["size"] == size and r["backend"] != post["backend"]
                  and "end to end" not in r["backend"]]:
            ms = r["median_ms"] + post["median_ms"]
            rows.append({**{k: r[k] for k in ("detector", "precision", "size", "batch")},
                         "backend": f"end to end: {r['backend']} + postprocess", "median_ms": ms,
                         "img_s": 1e3 * batch / ms})
            print(rows[-1], flush=True)
    report = {"schema": "resnet50-detect-speed/2",
              "model": "RetinaNet v1 and Faster R-CNN v1, ResNet-50 FPN, 91 classes, random weights, torchvision's "
                       "test settings",
              "threads": torch.get_num_threads(), "runs": args.runs, "hardware": hardware(),
              "load_average_at_start": load_start, "versions": versions(), "results": rows}
    write_json(args.out, report, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
