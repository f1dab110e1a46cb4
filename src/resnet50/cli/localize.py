"""resnet50 localize train|evaluate|predict|export|demo|wsol|bas: one object per image, its class and box
(resnet50.localize; wsol: resnet50.localize.wsol; bas: resnet50.localize.bas)."""

from __future__ import annotations

from ..data.decode import MAX_PIXELS
from ..data.discover import expand_inputs
from ..detect.coco import CocoDataset
from ..engine import elastic_restart, main_process
from ..errors import UserError
from ..localize.bas import AREA_WEIGHT, BAS_BATCH, BAS_LR, BAS_STEPS, run_bas
from ..localize.demo import TRAIN_SCENES, VAL_SCENES, run_localize_demo
from ..localize.evaluate import evaluate, load_localizer
from ..localize.predict import export_onnx, locate_files
from ..localize.train import RECIPES, LocalizeTrainConfig, resolve, resume_config, single_objects, train
from ..localize.wsol import run_wsol
from . import add_config_flags, config_overrides, print_json


def register(sub) -> None:
    p = sub.add_parser("localize", help="object localisation: a classifier with box regression (train, evaluate, "
                                        "predict, export, demo)",
                       description="Single-object localisation as the ResNet paper's ILSVRC task: a ResNet classifier "
                                   "with per-class (PCR) or class-agnostic (SCR) box regression, measured by top-1 / "
                                   "top-5 localisation and GT-known localisation (IoU >= 0.5).")
    lsub = p.add_subparsers(dest="localize_command", metavar="ACTION", required=True)
    t = lsub.add_parser("train", help="train a localiser on a COCO folder with one box per image")
    t.add_argument("--recipe", default="scenes", choices=list(RECIPES))
    t.add_argument("--resume", default=None, metavar="RUN", help="a localisation run folder or last.pt to continue")
    add_config_flags(t, LocalizeTrainConfig)
    _common(t, run_train)
    e = lsub.add_parser("evaluate", help="top-1 / top-5 / GT-known localisation and mean IoU on a COCO folder")
    e.add_argument("--weights", required=True, help="a localiser's .safetensors or its run folder")
    e.add_argument("--data", required=True, help="a COCO folder (one box per image) or its instances JSON")
    e.add_argument("--batch-size", type=int, default=64)
    _common(e, run_evaluate)
    r = lsub.add_parser("predict", help="class and box per image file; PNGs with the box drawn")
    r.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    r.add_argument("--weights", required=True, help="a localiser's .safetensors or its run folder")
    r.add_argument("--out", default=None, help="folder for the pictures (box, label, score); default none")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (default 64 Mi)")
    _common(r, run_predict)
    x = lsub.add_parser("export", help="ONNX export (dynamic batch) with a parity check against eager")
    x.add_argument("--weights", required=True)
    x.add_argument("--out", required=True, help="the .onnx file to write")
    _common(x, run_export)
    d = lsub.add_parser("demo", help="single scenes (plain and cluttered) -> a localiser in 15 minutes -> figures")
    d.add_argument("--out", default="runs")
    d.add_argument("--init-weights", default=None, help="the classification demo's best.safetensors (default: from "
                                                        "scratch)")
    d.add_argument("--train-scenes", type=int, default=TRAIN_SCENES, help="per kind (plain, cluttered)")
    d.add_argument("--val-scenes", type=int, default=VAL_SCENES, help="per kind")
    for flag in ("epochs", "time_budget", "max_steps", "amp", "threads", "arch"):
        d.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None)
    _common(d, run_demo)
    _register_wsol(lsub)


def _register_wsol(lsub) -> None:
    w = lsub.add_parser("wsol", help="weakly supervised boxes from a classifier: DDT pseudo boxes (PSOL), CAM by "
                                     "the 20 %% rule and by Choe et al.'s held-out threshold, heat offsets",
                        description="Boxes never read in training: DDT (Wei et al. 2019) on the training images' "
                                    "descriptors (labels only) writes pseudo boxes for PSOL (then: resnet50 localize "
                                    "train --train OUT/pseudo --regression scr); CAM and DDT are scored on --val; "
                                    "--held-out (a few boxed images, e.g. 100) chooses their thresholds.")
    w.add_argument("--weights", required=True, help="a classifier trained with class labels (or a localiser: its "
                                                    "classifier)")
    w.add_argument("--train", required=True, help="COCO folder of single-object images: DDT reads their labels")
    w.add_argument("--held-out", required=True, help="COCO folder of a few boxed images that choose the thresholds")
    w.add_argument("--val", required=True, help="COCO folder scored (its boxes are read only to score)")
    w.add_argument("--out", required=True, help="folder for pseudo/, wsol.json and offsets.png")
    w.add_argument("--image-size", type=int, default=128, help="letterbox side the classifier reads (default 128)")
    w.add_argument("--class-agnostic", action="store_true", help="one DDT component for all classes")
    w.add_argument("--stage", choices=("C4", "C5"), default="C4", help="descriptor stage (default C4, layer3)")
    w.add_argument("--batch-size", type=int, default=32)
    _common(w, run_wsol_cmd)
    b = lsub.add_parser("bas", help="weakly supervised boxes by background activation suppression (BAS, Wu et al. "
                                    "2022): a foreground generator on a fixed classifier, labels only",
                        description="Trains a foreground-map generator on a fixed classifier from class labels only "
                                    "(BAS: what the classifier still sees once the map's region is erased from the "
                                    "image, plus the map's area), chooses the box threshold on --held-out (a few boxed "
                                    "images, e.g. 100), scores every --val folder by the ILSVRC rule and writes pseudo "
                                    "boxes of the training images for a box regressor (then: resnet50 localize train "
                                    "--train OUT/pseudo --regression scr).")
    b.add_argument("--weights", required=True, help="a classifier trained with class labels (or a localiser: its "
                                                    "classifier); it is not changed")
    b.add_argument("--train", required=True, help="COCO folder of single-object images: their labels train it")
    b.add_argument("--held-out", required=True, help="COCO folder of a few boxed images that choose the threshold")
    b.add_argument("--val", required=True, nargs="+", help="COCO folder(s) scored (boxes read only to score)")
    b.add_argument("--out", required=True, help="folder for generator.safetensors, pseudo/, bas.json, maps.png")
    b.add_argument("--image-size", type=int, help="letterbox side the classifier reads (default 128; with "
                                                   "--generator, the generator's own)")
    b.add_argument("--steps", type=int, help=f"generator training steps (default {BAS_STEPS})")
    b.add_argument("--batch-size", type=int, help=f"training batch (default {BAS_BATCH})")
    b.add_argument("--lr", type=float, help=f"AdamW peak rate, cosine to zero (default {BAS_LR})")
    b.add_argument("--area-weight", type=float, help=f"weight of the map's area (default {AREA_WEIGHT})")
    b.add_argument("--generator", help="score this generator.safetensors of an earlier run instead of training one "
                                       "(with the same --weights; training flags refused)")
    b.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    b.add_argument("--seed", type=int, default=0)
    _common(b, run_bas_cmd)


def _common(p, func) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=func)


def run_train(args) -> int:
    overrides = config_overrides(args, LocalizeTrainConfig)
    resume = args.resume or elastic_restart(resolve(args.recipe, overrides).run)
    cfg, checkpoint = resume_config(resume, overrides) if resume else (resolve(args.recipe, overrides), None)
    result = train(cfg, resume=checkpoint, progress=not args.no_progress, log=(lambda *a: None) if args.json else print)
    if not main_process():  # torchrun's other ranks: rank 0 reports the run
        return 0
    if args.json:
        print_json({k: v for k, v in result.items() if k != "history"})
    else:
        best = f"best val top-1 loc {result['best_top1_loc']:.2%}" if result["best_top1_loc"] >= 0 else "no validation"
        print(f"done: {result['run_dir']}  {best}")
    return 0


def run_evaluate(args) -> int:
    ckpt = load_localizer(args.weights)
    ds = CocoDataset(args.data, in_chans=ckpt.config.in_chans)
    negatives = single_objects(ds)
    r = {"weights": args.weights, "data": str(ds.json_path), "images_without_box": negatives,
         **evaluate(ckpt.model, ds, args.batch_size, progress=not args.no_progress)}
    if args.json:
        print_json(r)
        return 0
    print(f"{r['images']} images of {r['data']}: top-1 loc {r['top1_loc']:.2%} (error {r['top1_loc_err']:.2%}), "
          f"top-5 loc {r['top5_loc']:.2%}, GT-known loc {r['gt_known_loc']:.2%}, mean IoU {r['mean_iou']:.3f}, "
          f"top-1 cls {r['top1_cls']:.2%}" + (f"; skipped {negatives} without a box" if negatives else ""))
    return 0


def run_predict(args) -> int:
    found = locate_files(expand_inputs(args.inputs), load_localizer(args.weights), args.batch_size, args.out,
                         args.max_pixels)
    if args.json:
        print_json([f.to_dict() for f in found])
        return 0
    for f in found:
        print(f"{f.file}: error: {f.error}" if f.error else
              f"{f.file}: {f.label} {f.score:.2f} box {f.box} (input px {f.box_input})" +
              (f" -> {f.picture}" if f.picture else ""))
    return 0


def run_export(args) -> int:
    r = export_onnx(load_localizer(args.weights).model, args.out)
    print_json(r) if args.json else print(f"wrote {r['path']}" + (f"; ONNX Runtime vs eager: {r['parity']}"
                                                                   if r["parity"] else ""))
    return 0


def run_demo(args) -> int:
    overrides = {k: getattr(args, k) for k in ("epochs", "time_budget", "max_steps", "amp", "threads", "arch")
                 if getattr(args, k) is not None}
    s = run_localize_demo(args.out, args.init_weights, overrides, args.train_scenes, args.val_scenes,
                          progress=not args.no_progress, log=(lambda *a: None) if args.json else print)
    if args.json:
        print_json(s)
    else:
        p, c = s["plain"], s["cluttered"]
        print(f"localisation demo: plain top-1 loc {p['top1_loc']:.2%} (GT-known {p['gt_known_loc']:.2%}), cluttered "
              f"{c['top1_loc']:.2%} ({c['gt_known_loc']:.2%}) after {s['train_seconds'] / 60:.1f} min; boxes drawn "
              f"in {s['picture']}")
    return 0


def run_wsol_cmd(args) -> int:
    r = run_wsol(args.weights, args.train, args.held_out, args.val, args.out, args.image_size,
                 not args.class_agnostic, args.stage, args.batch_size, progress=not args.no_progress,
                 log=(lambda *a: None) if args.json else print)
    if args.json:
        print_json(r)
        return 0
    d, c = r["ddt"], r["cam"]
    print(f"DDT (threshold {d['threshold']} from {r['held_out_images']} held-out images): top-1 loc "
          f"{d['val']['top1_loc']:.2%}, GT-known {d['val']['gt_known_loc']:.2%} on {r['val_images']} images")
    print(f"CAM 20 % rule: top-1 loc {c['rule_20']['top1_loc']:.2%}, GT-known {c['rule_20']['gt_known_loc']:.2%}; "
          f"held-out threshold {c['choe']['threshold']}: {c['choe']['top1_loc']:.2%}, {c['choe']['gt_known_loc']:.2%}")
    o = r["offsets"]["cam"]
    if o.get("maps"):
        print(f"CAM heat centroid offset: median x {o['median_x']:+.1f} px, y {o['median_y']:+.1f} px")
    print(f"pseudo boxes: {r['pseudo_boxes']}; offsets histogram: {r['offsets_picture']}")
    return 0


def run_bas_cmd(args) -> int:
    training = {"--steps": args.steps, "--batch-size": args.batch_size, "--lr": args.lr,
                "--area-weight": args.area_weight}
    given = [k for k, v in training.items() if v is not None]
    if args.generator and given:
        raise UserError(f"--generator scores a trained generator, so {', '.join(given)} would have no effect; drop "
                        f"{'it' if len(given) == 1 else 'them'} or drop --generator to train")
    r = run_bas(args.weights, args.train, args.held_out, args.val, args.out, args.image_size,
                _default(args.steps, BAS_STEPS), _default(args.batch_size, BAS_BATCH), _default(args.lr, BAS_LR),
                _default(args.area_weight, AREA_WEIGHT), amp=args.amp, seed=args.seed,
                progress=not args.no_progress, log=(lambda *a: None) if args.json else print,
                generator=args.generator)
    if args.json:
        print_json({k: v for k, v in r.items() if k != "history"})
        return 0
    print(f"BAS generator: {r['steps']} steps in {r['train_seconds'] / 60:.1f} min; threshold {r['threshold']} from "
          f"{r['held_out_images']} held-out images")
    for path, f in r["val"].items():
        print(f"{path}: top-1 loc {f['top1_loc']:.2%} ({f['loc_over_cls']:.2f} of top-1 cls {f['top1_cls']:.2%}), "
              f"GT-known {f['gt_known_loc']:.2%}, mean IoU {f['mean_iou']:.3f} on {f['images']} images")
    print(f"pseudo boxes: {r['pseudo_boxes']} ({r['pseudo_box_iou50']:.1%} at IoU >= 0.5); maps: {r['picture']}; "
          f"offsets: {r['offsets_picture']}")
    return 0


def _default(value, default):
    return default if value is None else value
