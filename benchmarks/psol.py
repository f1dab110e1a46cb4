"""PSOL end to end on single scenes, boxes never read in training: a classifier trained on the scenes with class labels
only, DDT pseudo boxes from it, a class-agnostic box regressor (the ResNet paper's SCR) trained on those pseudo boxes,
scored on plain and cluttered validation scenes by the ILSVRC rule; DDT's and CAM's own figures beside (wsol.py).

    python benchmarks/psol.py --init-weights runs/demo-.../best.safetensors --out benchmarks/results/psol \\
        [--train-scenes 2500] [--classifier-minutes 8] [--regressor-minutes 6]

Steps, each a command a user can run (printed as it runs):
1. ``resnet50 localize train --box-weight 0`` on the training scenes (half cluttered, embedded train split, seed 0)
   from the classification demo's checkpoint, no validation set, final weights: the body learns the scenes from
   their class labels alone (the box head's loss is multiplied by 0, so no box reaches a gradient); its body is
   saved as a classifier (``classifier.safetensors``).
2. ``benchmarks/wsol.py`` with that classifier: DDT fitted on the training scenes' images (labels only), its box
   threshold chosen on 50 + 50 held-out boxed scenes (train split, seed 99: Choe et al.'s protocol, at most 100),
   DDT and CAM scored on 250 + 250 validation scenes (the localisation demo's: val split, seeds 1 and 8).
3. ``resnet50 localize wsol``: the same DDT writes pseudo boxes for every training scene (PSOL's step 1).
4. ``resnet50 localize train --train pseudo --regression scr`` from the classifier of step 1 (PSOL's step 2), no
   validation set, final weights.
5. ``resnet50 localize evaluate`` on the plain and the cluttered validation scenes.
Writes ``psol.json`` (hardware, versions, each step's seconds and figures; one run) next to the steps' folders.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.data.transforms import Preprocessing
from resnet50.files import output_dir, write_json
from resnet50.localize.wsol import classifier_of
from resnet50.scenes import write_mixed_scenes, write_scenes
from resnet50.weights import save


def run(cmd: list[str]) -> dict | None:
    print("$ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        print(out[-2000:])
        return None


def budget(minutes: float, steps: int = 0) -> list[str]:
    """A command's length: ``steps`` optimiser steps when given (a run of the same length on any CPU), else a time
    budget of ``minutes`` (as many steps as fit)."""
    return ["--budget-steps", str(steps)] if steps > 0 else ["--time-budget", str(minutes)]


def prepare(root: Path, init_weights: str, train_scenes: int, classifier_minutes: float,
            classifier_steps: int = 0) -> tuple[Path, Path, dict]:
    """Steps 0 and 1, shared with benchmarks/bas.py: the scenes under ``root/scenes`` (train: ``train_scenes`` per
    kind, train split, seed 0; held: 50 + 50, seed 99; val: 250 plain, seed 1, and 250 cluttered, seed 8) and the
    labels-only classifier ``root/classifier.safetensors``, trained ``classifier_steps`` optimiser steps when given
    (the length of another machine's run), else for ``classifier_minutes``. Returns (scenes folder, classifier,
    steps' seconds)."""
    data = root / "scenes"  # the layout and seeds benchmarks/wsol.py writes (it rewrites the same files)
    t0 = time.perf_counter()
    write_mixed_scenes(data / "train", "train", "single", train_scenes, 0)
    write_mixed_scenes(data / "held", "train", "single", 50, 99)
    for kind, clutter in (("plain", False), ("clutter", True)):
        write_scenes(data / "val" / kind, split="val", kind="single", count=250, seed=1 + (7 if clutter else 0),
                     clutter=clutter)
    steps: dict = {"scenes_seconds": time.perf_counter() - t0}
    t = time.perf_counter()
    r = run(["resnet50", "localize", "train", "--train", str(data / "train"), "--box-weight", "0", "--init-weights",
             init_weights, *budget(classifier_minutes, classifier_steps), "--name", "labels-only", "--no-progress",
             "--json", "--out", str(root / "runs")])
    body, mean, std, classes = classifier_of(str(root / "runs" / "labels-only" / "final.safetensors"))
    classifier = root / "classifier.safetensors"
    save(classifier, body, classes, Preprocessing(resize=128, crop=128, mean=tuple(mean), std=tuple(std)),
         "the body of a localiser trained on single scenes with box_weight 0 (class labels only)")
    steps["classifier"] = {"seconds": time.perf_counter() - t, "epochs": r and r.get("epoch"),
                           "steps": r and r.get("step")}
    return data, classifier, steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init-weights", required=True, help="the classification demo's checkpoint")
    p.add_argument("--out", default="benchmarks/results/psol")
    p.add_argument("--train-scenes", type=int, default=2500, help="per kind")
    p.add_argument("--classifier-minutes", type=float, default=8.0)
    p.add_argument("--regressor-minutes", type=float, default=6.0)
    a = p.parse_args()
    root = output_dir(Path(a.out)).resolve()
    t0 = time.perf_counter()
    data, classifier, steps = prepare(root, a.init_weights, a.train_scenes, a.classifier_minutes)
    common = ["--no-progress", "--json", "--out", str(root / "runs")]

    t = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).with_name("wsol.py")), "--weights", str(classifier), "--out",
                    str(root), "--train-scenes", str(a.train_scenes)], check=True)
    steps["wsol"] = {"seconds": time.perf_counter() - t, **json.loads((root / "wsol.json").read_text())["val"]}

    t = time.perf_counter()
    run(["resnet50", "localize", "wsol", "--weights", str(classifier), "--train", str(data / "train"),
         "--held-out", str(data / "held"), "--val", str(data / "val" / "plain"), "--out", str(root / "ddt"),
         "--no-progress", "--json"])
    steps["pseudo_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    r = run(["resnet50", "localize", "train", "--train", str(root / "ddt" / "pseudo"), "--regression", "scr",
             "--init-weights", str(classifier), "--time-budget", str(a.regressor_minutes), "--name", "psol", *common])
    steps["regressor"] = {"seconds": time.perf_counter() - t, "epochs": r and r.get("epoch")}
    psol = {}
    for kind in ("plain", "clutter"):
        psol[kind] = run(["resnet50", "localize", "evaluate", "--weights",
                          str(root / "runs" / "psol" / "final.safetensors"), "--data", str(data / "val" / kind),
                          "--json", "--no-progress"])
    model, flags = cpu_info()
    result = {"psol": psol, "steps": steps, "seconds": time.perf_counter() - t0, "cpu": model,
              "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
              "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
              "threads": torch.get_num_threads(), "runs": 1, "init_weights": a.init_weights,
              "boxes_seen": "training scenes: none (classifier: box_weight 0; regressor: DDT pseudo boxes); "
                            "held-out 100: the DDT threshold; validation: scoring only"}
    write_json(root / "psol.json", result, indent=2)
    for kind, f in psol.items():
        print(f"PSOL {kind}: " + ", ".join(f"{k} {v}" for k, v in f.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
