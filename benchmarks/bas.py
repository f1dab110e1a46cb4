"""BAS (Wu et al., CVPR 2022) on single scenes, boxes never read in training, then PSOL's box regressor on its
pseudo boxes: each step a command a user can run (printed as it runs).

    python benchmarks/bas.py --init-weights runs/demo-.../best.safetensors --out benchmarks/results/bas \\
        [--train-scenes 2000] [--classifier-minutes 7] [--steps 200] [--area-weight 1.5] [--regressor-minutes 6]
        [--classifier-steps 345 --regressor-steps 289]   # the Zen 4 run's lengths, on a slower CPU
    python benchmarks/bas.py --weights CLASSIFIER --scenes DIR --out DIR ...   # reuse benchmarks/psol.py's
    python benchmarks/bas.py --weights CLASSIFIER --scenes DIR --generator G --out DIR ...  # score a trained one

Steps:
0. (with ``--init-weights``) benchmarks/psol.py's steps 0 and 1: the scenes under ``OUT/scenes`` (``train``: mixed
   single scenes, ``held``: 50 + 50 boxed scenes, ``val/plain``, ``val/clutter``: 250 each) and the classifier
   trained on ``train`` with class labels only (``OUT/classifier.safetensors``);
1. ``resnet50 localize bas``: the generator trained on the fixed classifier (labels only), the threshold chosen on
   ``held`` (Choe et al.'s protocol), BAS's own boxes scored on both validation kinds, pseudo boxes written;
2. (``--regressor-minutes`` > 0) ``resnet50 localize train --train OUT/bas/pseudo --regression scr`` from the
   classifier, no validation set, final weights; ``resnet50 localize evaluate`` on both validation kinds.
With ``--hidden-items IDX`` (Fashion-MNIST's t10k files: the final evaluation's split, never chosen on) both steps
are also scored on 250 + 250 hidden scenes made from its items by benchmarks/localize_hidden.py's rule (seed 1).
Writes ``bas_psol.json`` (hardware, versions, each step's seconds and figures; one run).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from psol import budget, prepare, run  # benchmarks/psol.py, beside this script

from resnet50.cpu import cpu_info
from resnet50.files import output_dir, write_json
from resnet50.scenes import write_mixed_scenes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init-weights", help="the classification demo's checkpoint: make the scenes and the classifier")
    p.add_argument("--weights", help="instead: a classifier trained on --scenes with labels only")
    p.add_argument("--scenes", help="with --weights: a folder of benchmarks/psol.py's layout")
    p.add_argument("--out", default="benchmarks/results/bas")
    p.add_argument("--train-scenes", type=int, default=2000, help="per kind")
    p.add_argument("--classifier-minutes", type=float, default=7.0)
    p.add_argument("--classifier-steps", type=int, default=0,
                   help="train the classifier this many steps instead of --classifier-minutes (the Zen 4 run's: 345)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--area-weight", type=float, default=1.5)
    p.add_argument("--regressor-minutes", type=float, default=0.0)
    p.add_argument("--regressor-steps", type=int, default=0,
                   help="with --regressor-minutes > 0: this many steps instead (the Zen 4 run's: 289)")
    p.add_argument("--generator", help="score this generator.safetensors of an earlier run instead of training")
    p.add_argument("--hidden-items", help="an IDX folder with t10k files: score on hidden scenes of its items too")
    a = p.parse_args()
    if bool(a.init_weights) == bool(a.weights and a.scenes):
        p.error("give --init-weights, or --weights with --scenes")
    root, prep = output_dir(Path(a.out)).resolve(), {}
    if a.init_weights:
        data, classifier, prep = prepare(root, a.init_weights, a.train_scenes, a.classifier_minutes,
                                        a.classifier_steps)
        a.weights = str(classifier)
    else:
        data = Path(a.scenes).resolve()
    kinds = [("plain", data / "val" / "plain"), ("clutter", data / "val" / "clutter")]
    if a.hidden_items:
        write_mixed_scenes(root / "hidden", "test", "single", 250, 1, items_from=a.hidden_items)
        kinds += [("hidden plain", root / "hidden" / "plain"), ("hidden clutter", root / "hidden" / "clutter")]
    vals = [str(path) for _, path in kinds]
    t = time.perf_counter()
    bas = run(["resnet50", "localize", "bas", "--weights", a.weights, "--train", str(data / "train"), "--held-out",
               str(data / "held"), "--val", *vals, "--out", str(root / "bas"),
               *(["--generator", a.generator] if a.generator else
                 ["--steps", str(a.steps), "--area-weight", str(a.area_weight)]), "--no-progress", "--json"])
    steps: dict = {**prep, "bas_seconds": time.perf_counter() - t}
    psol = {}
    if a.regressor_minutes > 0:
        t = time.perf_counter()
        r = run(["resnet50", "localize", "train", "--train", bas["pseudo_boxes"], "--regression", "scr",
                 "--init-weights", a.weights, *budget(a.regressor_minutes, a.regressor_steps), "--name", "bas-psol",
                 "--out", str(root / "runs"), "--no-progress", "--json"])
        steps["regressor"] = {"seconds": time.perf_counter() - t, "epochs": r.get("epoch"), "steps": r.get("step")}
        for (kind, _), path in zip(kinds, vals):
            psol[kind] = run(["resnet50", "localize", "evaluate", "--weights",
                              str(root / "runs" / "bas-psol" / "final.safetensors"), "--data", path, "--json",
                              "--no-progress"])
    model, flags = cpu_info()
    write_json(root / "bas_psol.json", {
        "bas": bas, "psol": psol, "steps": steps, "cpu": model,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "threads": torch.get_num_threads(), "runs": 1, "weights": a.weights,
        "init_weights": a.init_weights, "hidden_items": a.hidden_items and f"{a.hidden_items} (t10k)",
        "boxes_seen": "training scenes: none (generator: labels only; regressor: BAS pseudo boxes); held-out 100: "
                      "the threshold; validation: scoring only"}, indent=2)
    for (kind, _), path in zip(kinds, vals):
        f = bas["val"][path]
        print(f"BAS {kind}: top-1 loc {f['top1_loc']:.2%} ({f['loc_over_cls']:.2f} of cls), GT-known "
              f"{f['gt_known_loc']:.2%}")
        if kind in psol:
            g = psol[kind]
            print(f"BAS + PSOL regressor {kind}: top-1 loc {g['top1_loc']:.2%} (cls {g['top1_cls']:.2%}), GT-known "
                  f"{g['gt_known_loc']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
