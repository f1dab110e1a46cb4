"""Localiser inference speed on this machine (issue 22): the ResNet-50 localiser (``resnet50.localize``: classifier +
box head, PCR, 10 classes, 1 channel, as the localisation demo's) at 128 px and 224 px, batch 1 and 16, in PyTorch
eager fp32 (channels_last, inference mode: the ``eager`` backend's settings), eager under bf16 autocast (only on a CPU
with native bf16 instructions) and ONNX Runtime fp32 (``localize.predict.export_onnx``, checked against eager; the
``onnx`` backend's session options). One forward gives the logits and the boxes; box decoding is not timed.

    python benchmarks/localize_speed.py [--weights LOCALISER.safetensors] [--repeat 3] [--runs 10]

Without ``--weights`` the weights are random (speed hardly depends on their values); with it, its state is loaded
into the localiser of each size (the box head pools C5 to a fixed grid, so one set of weights runs at any size).
Method: as ``resnet50 benchmark``, interleaved in turns (per round, each backend and batch makes 2 untimed calls,
then ``--turn`` timed ones), so drift of a shared machine's load falls on every backend alike; a repeat is a fresh
set of runners. img/s = batch / median seconds of a call; each row gives the median over repeats and the min-max.
Writes benchmarks/results/localize_speed/<cpu>.json with the hardware (load average included), versions and every
call's seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnet50.backends import EagerBackend, OnnxRuntimeBackend, physical_cores
from resnet50.bench import hardware, time_backend, versions
from resnet50.cpu import has_native_bf16
from resnet50.errors import UserError
from resnet50.files import write_json
from resnet50.localize.evaluate import load_localizer
from resnet50.localize.model import Localizer, LocalizerConfig
from resnet50.localize.predict import export_onnx
from resnet50.summary import summarize


class Eager(EagerBackend):
    """The ``eager`` backend (its threads, channels_last, inference mode) for the localiser's two outputs; ``bf16``
    adds bf16 autocast."""

    def __init__(self, model: Localizer, bf16: bool = False) -> None:
        super().__init__(model)
        self.bf16 = bf16

    def __call__(self, x: np.ndarray):
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, boxes = self.model(t)
            return logits.float().numpy(), boxes.float().numpy()


def lscpu() -> dict:
    """lscpu's model name, family, model and flags (the figures depend on them)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU family", "Model", "Flags")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip() in keep}


def cpu_name() -> str:
    info = lscpu()
    name = f"{info.get('Model name', 'cpu')}-family{info.get('CPU family', '')}-model{info.get('Model', '')}"
    return "-".join("".join(c if c.isalnum() else " " for c in name).lower().split())


def localizer(size: int, state: dict | None, base: LocalizerConfig) -> Localizer:
    torch.manual_seed(0)
    model = Localizer(LocalizerConfig(**{**base.to_dict(), "image_size": size}))
    if state is not None:
        model.load_state_dict(state)
    else:  # the box head's last layer starts at zero (constant boxes): random, so the ONNX parity covers boxes
        torch.nn.init.normal_(model.box_head[-1].weight, std=0.05)
    return model.eval()


def one_repeat(models: dict[int, Localizer], backends: list[str], batches: list[int], runs: int, turn: int,
               tmp: Path) -> tuple[dict, dict]:
    runners, parity = {}, {}
    for size, model in models.items():
        for name in backends:
            if name == "onnx":
                path = tmp / f"localizer{size}.onnx"
                if not path.exists():
                    parity[size] = export_onnx(model, path)["parity"]
                runners[(name, size)] = OnnxRuntimeBackend(path, threads=physical_cores())
            else:
                runners[(name, size)] = Eager(model, bf16=name == "eager-bf16")
    inputs = {(s, b): np.random.default_rng(b).random((b, m.cfg.in_chans, s, s), dtype=np.float32)
              for s, m in models.items() for b in batches}
    for (name, size), run in runners.items():  # the first call of a shape allocates: not timed
        for b in batches:
            run(inputs[(size, b)])
    times = {(n, s, b): [] for (n, s) in runners for b in batches}
    for start in range(0, runs, turn):
        for (name, size), run in runners.items():
            for b in batches:
                times[(name, size, b)] += time_backend(run, inputs[(size, b)], 2, min(turn, runs - start))
    return times, parity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="a localiser's .safetensors (default: random weights of the demo's shape)")
    ap.add_argument("--sizes", default="128,224")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10, help="timed calls per backend, size and batch in a repeat")
    ap.add_argument("--turn", type=int, default=5)
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/localize_speed/<cpu>.json)")
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print("localize_speed.py: --sizes and --batches take comma-separated integers, e.g. 128,224", file=sys.stderr)
        return 2
    if args.repeat < 1 or args.runs < 1 or args.turn < 1:
        print("localize_speed.py: --repeat, --runs and --turn must be >= 1", file=sys.stderr)
        return 2
    if args.weights and not Path(args.weights).is_file():
        print(f"localize_speed.py: {args.weights}: no such localiser file; give one written by `resnet50 localize "
              f"train` or leave --weights out", file=sys.stderr)
        return 2
    torch.set_num_threads(physical_cores())
    base, state, source = LocalizerConfig(), None, "random weights"
    if args.weights:
        try:
            ckpt = load_localizer(args.weights)
        except UserError as e:
            print(f"localize_speed.py: {e}", file=sys.stderr)
            return 2
        base, state, source = ckpt.model.cfg, ckpt.model.state_dict(), args.weights
    backends = ["eager", *(["eager-bf16"] if has_native_bf16() else []), "onnx"]
    models = {s: localizer(s, state, base) for s in sizes}
    load_start = hardware()["load_average_1_5_15m"]
    all_times: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="localize-speed-") as tmp:
        for r in range(args.repeat):
            t0 = time.perf_counter()
            times, parity = one_repeat(models, backends, batches, args.runs, args.turn, Path(tmp))
            all_times.append(times)
            print(f"repeat {r + 1}/{args.repeat}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if parity:
                onnx_parity = parity
    rows = []
    for size in sizes:
        macs = summarize(models[size].body, size)["macs"]
        for b in batches:
            for name in backends:
                rates = [b / statistics.median(t[(name, size, b)]) for t in all_times]
                rows.append({"backend": name, "size": size, "batch": b, "img_s_median": statistics.median(rates),
                             "img_s_min": min(rates), "img_s_max": max(rates), "repeats": args.repeat,
                             "runs": args.runs, "body_macs": macs})
            eager = next(x for x in rows if x["size"] == size and x["batch"] == b and x["backend"] == "eager")
            for x in rows:
                if x["size"] == size and x["batch"] == b:
                    x["vs_eager"] = x["img_s_median"] / eager["img_s_median"]
    hw = {**hardware(), "load_average_at_start": load_start}
    result = {"what": "localiser inference img/s", "model": {"config": base.to_dict(), "weights": source},
              "threads": physical_cores(), "hardware": hw, "versions": versions(), "onnx_parity": onnx_parity,
              "rows": rows,
              "seconds": [{f"{n}/{s}/{b}": v for (n, s, b), v in t.items()} for t in all_times]}
    out = Path(args.out or Path(__file__).parent / "results" / "localize_speed" / f"{cpu_name()}.json")
    result["lscpu"] = lscpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"{'size':>5} {'batch':>5} {'backend':<11} {'img/s (median)':>15} {'min-max':>15} {'vs eager':>9}")
    for x in rows:
        print(f"{x['size']:>5} {x['batch']:>5} {x['backend']:<11} {x['img_s_median']:>15.1f} "
              f"{x['img_s_min']:>7.1f}-{x['img_s_max']:<7.1f} {x['vs_eager']:>8.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
