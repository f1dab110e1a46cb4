"""resnet50 evaluate: top-1/top-5, loss, per-class accuracy and confusion matrix of weights on a dataset."""

from ..data.decode import MAX_PIXELS
from ..evaluate import TTA_MODES, evaluate_weights
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate weights on a dataset: top-1/5, per-class, confusion matrix")
    p.add_argument("--weights", required=True,
                   help="weights file (ours, torchvision/timm, Keras), a run or Hub-layout folder, or published "
                        "weights (tv:resnet50.v2)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                   help="dataset path or 'embedded' (default: the Fashion-MNIST IDX files of Debian's "
                        "dataset-fashion-mnist, whose t10k split is the final test set)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="flip: average with the mirror image; "
                   "ten-crop: the paper's 10-crop testing")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (decompression bombs); default {MAX_PIXELS}")
    p.add_argument("--out", default=None, help="folder for confusion.json / confusion.png / metrics.json")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events into --out/tensorboard "
                   "(needs the extra resnet50[tensorboard])")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    result = evaluate_weights(args.weights, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
                              workers=args.workers, out=args.out, progress=not args.no_progress,
                              max_pixels=args.max_pixels, tensorboard=args.tensorboard)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['samples']} images of {args.data} ({args.split}), tta {args.tta}: top-1 {result['top1']:.2%}, "
          f"top-5 {result['top5']:.2%}, loss {result['loss']:.4f}")
    worst = sorted((v, k) for k, v in result["per_class_accuracy"].items() if v is not None)[:3]
    print("weakest classes: " + ", ".join(f"{k} {v:.1%}" for v, k in worst))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable file(s)")
    if args.out:
        print(f"wrote {args.out}/metrics.json, confusion.json, confusion.png")
    return 0
