"""Weakly supervised localisation on single scenes, measured: DDT boxes and CAM boxes from a classifier trained with
class labels only, scored on plain and cluttered validation scenes by the ILSVRC rule; CAM by the 20 % rule and by
Choe et al.'s threshold chosen on a held-out boxed set; the heat-centroid offsets; the pseudo boxes' own quality on
the training scenes (what a PSOL regressor would learn from).

    nice -n 5 python benchmarks/wsol.py --weights runs/demo-.../best.safetensors \\
        --out benchmarks/results/wsol [--train-scenes 1000] [--held-out 50] [--val-scenes 250]

Scenes (``resnet50.scenes``, the localisation demo's rules): training scenes from the embedded train split (seed 0,
half cluttered), the held-out set from the train split with another seed (``--held-out`` plain + as many
cluttered: at most 100 in all, the protocol's bound, said in the output), validation scenes from the val split
(seed 1, the localisation demo's). The training scenes' boxes are read only to say how good the pseudo boxes are;
nothing is fitted on them. Writes ``wsol.json`` (hardware, versions, seconds, every figure) and ``offsets.png``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from resnet50.cpu import cpu_info
from resnet50.detect.coco import CocoDataset
from resnet50.detect.nms import box_iou
from resnet50.files import output_dir, write_json
from resnet50.localize.wsol import (
    DDT,
    cam_maps,
    cam_protocol,
    choose_threshold,
    classifier_of,
    ddt_maps,
    heat_offsets,
    loc_figures,
    map_boxes,
    offset_summary,
    plot_offsets,
)
from resnet50.scenes import write_mixed_scenes, write_scenes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a classifier trained with class labels only")
    p.add_argument("--out", default="benchmarks/results/wsol")
    p.add_argument("--train-scenes", type=int, default=1000, help="per kind, for the DDT fit and pseudo boxes")
    p.add_argument("--held-out", type=int, default=50, help="per kind (<= 50: at most 100 boxed images)")
    p.add_argument("--val-scenes", type=int, default=250, help="per kind")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--stage", default="C4")
    p.add_argument("--class-agnostic", action="store_true")
    a = p.parse_args()
    if a.held_out > 50:
        p.error("--held-out is per kind and the protocol allows at most 100 boxed images: give <= 50")
    root = output_dir(Path(a.out))
    t0 = time.perf_counter()
    data = root / "scenes"
    write_mixed_scenes(data / "train", "train", "single", a.train_scenes, 0)
    write_mixed_scenes(data / "held", "train", "single", a.held_out, 99)
    for kind, clutter in (("plain", False), ("clutter", True)):
        write_scenes(data / "val" / kind, split="val", kind="single", count=a.val_scenes,
                     seed=1 + (7 if clutter else 0), clutter=clutter)  # the localisation demo's validation scenes
    model, mean, std, _ = classifier_of(a.weights)
    train, held = CocoDataset(data / "train"), CocoDataset(data / "held")
    per_class = not a.class_agnostic
    t1 = time.perf_counter()
    ddt = DDT.fit(model, train, a.size, mean, std, model.cfg.num_classes, per_class, a.stage, progress=True)
    fit_s = time.perf_counter() - t1
    h = ddt_maps(model, ddt, held, a.size, mean, std, progress=True)
    ddt_t, ddt_curve = choose_threshold(h["true_maps"], h["gt"], a.size)
    tr = ddt_maps(model, ddt, train, a.size, mean, std, progress=True)
    pseudo_iou = box_iou(map_boxes(tr["true_maps"], a.size, ddt_t), tr["gt"]).diagonal()
    cam_held = cam_maps(model, held, a.size, mean, std, progress=True)
    result = {"weights": a.weights, "held_out_images": len(h["labels"]), "train_images": len(tr["labels"]),
              "ddt": {"per_class": per_class, "stage": a.stage, "threshold": ddt_t, "held_out_curve": ddt_curve,
                      "fit_seconds": round(fit_s, 1),
                      "pseudo_boxes_on_train": {"gt_known_loc": float((pseudo_iou >= 0.5).float().mean()),
                                                "mean_iou": float(pseudo_iou.mean())}},
              "val": {}, "offsets": {}}
    offsets_all = {"cam": [], "ddt": []}
    for kind in ("plain", "clutter"):
        ds = CocoDataset(data / "val" / kind)
        v = ddt_maps(model, ddt, ds, a.size, mean, std, progress=True)
        c = cam_maps(model, ds, a.size, mean, std, progress=True)
        cam = cam_protocol(cam_held, c, a.size)
        result["val"][kind] = {
            "ddt": loc_figures(map_boxes(v["pred_maps"], a.size, ddt_t), map_boxes(v["true_maps"], a.size, ddt_t),
                               v["logits"], v["labels"], v["gt"]),
            "cam_rule_20": cam["rule_20"], "cam_choe": cam["choe"]}
        off = {"cam": heat_offsets(c["true_maps"], c["gt"], a.size), "ddt": heat_offsets(v["true_maps"], v["gt"],
                                                                                         a.size)}
        result["offsets"][kind] = {k: offset_summary(o) for k, o in off.items()}
        for k, o in off.items():
            offsets_all[k].append(o)
        f = result["val"][kind]
        print(f"{kind}: DDT top-1 loc {f['ddt']['top1_loc']:.2%} GT-known {f['ddt']['gt_known_loc']:.2%}; CAM 20 % "
              f"{f['cam_rule_20']['gt_known_loc']:.2%}, held-out threshold {f['cam_choe']['threshold']} "
              f"{f['cam_choe']['gt_known_loc']:.2%} (GT-known); top-1 cls {f['ddt']['top1_cls']:.2%}", flush=True)
    plot_offsets({k: torch.cat(v) for k, v in offsets_all.items()}, root / "offsets.png")
    result.update({"seconds": round(time.perf_counter() - t0, 1), "cpu": cpu_info()[0] or platform.processor(),
                   "cpu_flags": sorted(f for f in cpu_info()[1] if f.startswith(("avx512", "amx", "avx_vnni"))),
                   "python": sys.version.split()[0],
                   "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
                   "runs": 1, "boxes_seen": "training scenes: none (their boxes only score the pseudo boxes); held-out: "
                                            "choose the DDT and CAM thresholds; validation: scoring only"})
    write_json(root / "wsol.json", result, indent=2)
    print(f"wrote {root / 'wsol.json'} and {root / 'offsets.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
