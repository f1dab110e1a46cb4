"""resnet50 detect train|evaluate|predict|export|demo: RetinaNet or Faster R-CNN (--detector) on COCO-format data
(resnet50.detect)."""

from __future__ import annotations

from ..data.decode import MAX_PIXELS
from ..data.discover import expand_inputs
from ..detect.checkpoint import load_detector
from ..detect.demo import TRAIN_SCENES, VAL_SCENES, run_detect_demo
from ..detect.detectors import DETECTORS
from ..detect.evaluate import evaluate_weights
from ..detect.export import export_detector
from ..detect.predict import detect_files, to_coco
from ..detect.train import RECIPES, DetectTrainConfig, RCNNTrainConfig, resolve, resume_config, train
from ..engine import elastic_restart, main_process
from ..files import output_file, write_json
from ..recipes import flat_fields
from . import add_config_flags, config_overrides, print_json


def register(sub) -> None:
    p = sub.add_parser("detect", help="object detection: RetinaNet or Faster R-CNN on ResNet + FPN (train, evaluate, "
                                      "predict, export, demo)",
                       description="RetinaNet (Lin et al. 2017) and Faster R-CNN (Ren et al. 2015) with FPN, in "
                                   "torchvision's parameter layouts, on COCO-format folders (an instances JSON and its "
                                   "images). --detector chooses; --arch names the backbone ResNet, as everywhere.")
    dsub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    _register_train(dsub)
    _register_evaluate(dsub)
    _register_predict(dsub)
    _register_export(dsub)
    _register_demo(dsub)


def _common(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _detector_check(p) -> None:
    p.add_argument("--detector", default=None, choices=list(DETECTORS),
                   help="refuse weights that hold the other detector (the file says which it holds)")


def _register_train(dsub) -> None:
    p = dsub.add_parser("train", help="train a detector with a named recipe; every config field is a flag",
                        description="Train RetinaNet or Faster R-CNN (--detector) on a COCO folder (--train, --val). "
                                    "Recipes of each: coco (torchvision's schedule for it), scenes (the CPU demo). "
                                    "Every config field is a flag (Faster R-CNN's rpn_* and box_* with --detector "
                                    "fasterrcnn).")
    p.add_argument("--recipe", default="scenes", choices=sorted({r for d in RECIPES.values() for r in d}))
    p.add_argument("--resume", default=None, metavar="RUN", help="a detection run folder or last.pt to continue")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to RUN/tensorboard (needs the extra resnet50[tensorboard])")
    add_config_flags(p, DetectTrainConfig)
    add_config_flags(p, RCNNTrainConfig, skip=tuple(flat_fields(DetectTrainConfig)))
    _common(p)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    overrides = {**config_overrides(args, DetectTrainConfig), **config_overrides(args, RCNNTrainConfig)}
    # a worker that torchrun --max-restarts restarted continues its run's last checkpoint by itself
    resume = args.resume or elastic_restart(resolve(args.recipe, overrides).run)
    if resume:  # the checkpoint's config; options given now may change only what a resume allows
        cfg, checkpoint = resume_config(resume, overrides)
    else:
        cfg, checkpoint = resolve(args.recipe, overrides), None
    result = train(cfg, resume=checkpoint, progress=not args.no_progress,
                   log=(lambda *a: None) if args.json else print, tensorboard=args.tensorboard)
    if not main_process():  # torchrun's other ranks: rank 0 reports the run
        return 0
    if args.json:
        print_json({k: v for k, v in result.items() if k != "history"})
    else:
        best = f"best val mAP {result['best_map']:.3f}" if result["best_map"] >= 0 else \
            "val mAP undefined (no ground-truth boxes)" if cfg.data.val else "no validation data"
        print(f"done: {result['run_dir']}  {best}")
    return 0


def _register_evaluate(dsub) -> None:
    p = dsub.add_parser("evaluate", help="mAP@[.5:.95], mAP@.5 and per-class AP with pycocotools")
    p.add_argument("--weights", required=True, help="a detector file (ours, or a torchvision RetinaNet or Faster "
                                                    "R-CNN .pth) or run")
    p.add_argument("--data", required=True, help="a COCO folder (instances JSON + images) or the JSON")
    _detector_check(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="letterbox size; default the checkpoint's")
    p.add_argument("--score-thresh", type=float, default=None, help="default the checkpoint's (0.05)")
    p.add_argument("--bn-eps", type=float, default=None, help="torchvision's COCO v1 files need 0.0")
    p.add_argument("--class-agnostic", action="store_true",
                   help="also score the boxes with labels ignored (pycocotools' useCats=0)")
    p.add_argument("--strict", action="store_true",
                   help="refuse to measure when an image is missing or does not decode (default: measure on the "
                        "rest and say what was lost)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse images whose header claims more pixels (default {MAX_PIXELS:,})")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write the detections in COCO's results format (a JSON list of image_id, category_id, "
                        "bbox [x, y, w, h] in image pixels, score: what pycocotools' loadRes reads)")
    _common(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:

    r = evaluate_weights(args.weights, args.data, args.batch_size, progress=not args.no_progress,
                         class_agnostic=args.class_agnostic, strict=args.strict, max_pixels=args.max_pixels,
                         results_path=args.results, detector=args.detector, image_size=args.image_size,
                         score_thresh=args.score_thresh, bn_eps=args.bn_eps)
    if args.json:
        print_json(r)
        return 0
    if r["map"] is None:
        print(f"{r['images']} images of {r['data']}: mAP undefined: {r['undefined']} ({r['detections']} "
              "detections)")
    else:
        print(f"{r['images']} images of {r['data']}: mAP@[.5:.95] {r['map']:.3f}, mAP@.5 {r['map50']:.3f}, "
              f"mAP@.75 {r['map75']:.3f} ({r['detections']} detections)")
    if r["lost_images"]:
        print(f"measured on {r['images']} of {r['listed_images']} listed images: lost {r['lost_images']} "
              f"({len(r['missing'])} missing, {len(r['skipped_files'])} unreadable), e.g. "
              f"{(r['missing'] or [x['path'] + ': ' + x['reason'] for x in r['skipped_files']])[0]}; --strict "
              "refuses a partial set")
    found = r["dataset"].get("found_by_name", 0)
    if found:
        print(f"found {found} image(s) by base name inside the folder, e.g. {r['dataset']['examples']['found_by_name']}")
    if r.get("class_agnostic") and r["class_agnostic"]["map"] is not None:
        a = r["class_agnostic"]
        print(f"class-agnostic (labels ignored): mAP@[.5:.95] {a['map']:.3f}, mAP@.5 {a['map50']:.3f}, "
              f"mAP@.75 {a['map75']:.3f}")
    per = sorted((v, k) for k, v in r["per_class"].items() if v is not None)
    if per:
        print("per class AP: " + ", ".join(f"{k} {v:.3f}" for v, k in per))
    return 0


def _register_predict(dsub) -> None:
    p = dsub.add_parser("predict", help="detect objects in image files; draw boxes into PNGs, print JSON")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True, help="a detector file (ours, or a torchvision RetinaNet or Faster "
                                                    "R-CNN .pth) or run")
    _detector_check(p)
    p.add_argument("--out", default=None, help="folder for the pictures (boxes, labels, scores); default none")
    p.add_argument("--min-score", type=float, default=0.3, help="report detections scoring at least this")
    p.add_argument("--bn-eps", type=float, default=None, help="torchvision's COCO v1 files need 0.0")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--coco", default=None, metavar="FILE",
                   help="also write the detections as a COCO instances JSON (absolute file names), which detect "
                        "train and evaluate read back: pseudo labels to check, or ground truth for another model")
    _common(p)
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:

    if args.coco is not None:  # refused before any image is read, not after
        output_file(args.coco, "--coco", create_parent=True)
    ckpt = load_detector(args.weights, detector=args.detector, bn_eps=args.bn_eps)
    found = detect_files(expand_inputs(args.inputs), ckpt, args.min_score, args.batch_size, args.out)
    if args.coco is not None:
        write_json(args.coco, to_coco(found, ckpt.classes), indent=None)
    if args.json:
        print_json([f.to_dict() for f in found])
        return 0
    for f in found:
        if f.error:
            print(f"{f.file}: error: {f.error}")
            continue
        what = ", ".join(f"{d['label']} {d['score']:.2f}" for d in f.detections) or "nothing"
        print(f"{f.file}: {what}" + (f" -> {f.picture}" if f.picture else ""))
    return 0


def _register_export(dsub) -> None:
    p = dsub.add_parser("export", help="the detector's network to ONNX, checked against eager PyTorch",
                        description="Export the network part of a detector (normalisation, backbone, FPN and the "
                                    "dense heads: RetinaNet's class and box outputs, Faster R-CNN's pyramid and RPN "
                                    "outputs) to ONNX with a dynamic batch, and check ONNX Runtime's outputs against "
                                    "eager PyTorch on random images. Anchors, proposals, RoI heads and NMS stay in "
                                    "torch (resnet50.detect.export).")
    p.add_argument("--weights", required=True, help="a detector file or run folder")
    _detector_check(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    r = export_detector(load_detector(args.weights, detector=args.detector), args.out)
    if args.json:
        print_json(r)
    else:
        print(f"wrote {r['onnx']} ({r['detector']}, {r['megabytes']:.1f} MB); ONNX Runtime vs eager: largest "
              f"difference {r['max_abs_diff']:.2e} over {', '.join(r['outputs'])}")
    return 0


def _register_demo(dsub) -> None:

    p = dsub.add_parser("demo", help="fine-tune a detector on multi scenes (CPU, at most 15 minutes), report mAP on "
                                     "plain and cluttered scenes, draw its boxes")
    p.add_argument("--out", default="runs", help="where the demo folder goes (default: runs)")
    p.add_argument("--detector", default="fasterrcnn", choices=list(DETECTORS),
                   help="the detector to train (default fasterrcnn, the better of the two on this budget: "
                        "docs/benchmarks.md)")
    p.add_argument("--init-weights", default=None,
                   help="the classification demo's checkpoint (e.g. runs/demo-.../best.safetensors); default: from "
                        "scratch")
    p.add_argument("--train-scenes", type=int, default=TRAIN_SCENES)
    p.add_argument("--val-scenes", type=int, default=VAL_SCENES)
    p.add_argument("--epochs", default=None, help="the most epochs the time budget may use (default 8); with "
                   "--time-budget 0, exactly this many")
    p.add_argument("--time-budget", dest="time_budget", default=None, metavar="MINUTES",
                   help="minutes of training (default 12.5, so the demo ends within 15 minutes); 0 = --epochs")
    p.add_argument("--max-steps", default=None, help="stop training after this many steps (smoke test)")
    p.add_argument("--amp", default=None, help="auto (bf16 where the CPU has bf16 instructions), bf16 or off")
    p.add_argument("--threads", default=None, help="torch threads for training (default: all cores)")
    _common(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:

    overrides = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps),
                                   ("time_budget", args.time_budget), ("amp", args.amp), ("threads", args.threads))
                 if v is not None}
    s = run_detect_demo(args.out, args.init_weights, overrides, args.train_scenes, args.val_scenes,
                        progress=not args.no_progress, log=(lambda *a: None) if args.json else print,
                        detector=args.detector)
    if args.json:
        print_json(s)
    else:
        kinds = ", ".join(f"{k} {v['map']:.3f} / {v['map50']:.3f}" for k, v in s["by_kind"].items())
        print(f"detection demo ({s['detector']}): mAP@[.5:.95] {s['map']:.3f}, mAP@.5 {s['map50']:.3f} on "
              f"{s['val_scenes']} validation scenes ({kinds}) after {s['train_seconds'] / 60:.1f} min of training; "
              f"boxes drawn in {s['picture']}")
    return 0
