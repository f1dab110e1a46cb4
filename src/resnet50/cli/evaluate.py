"""resnet50 evaluate: top-1/top-5, loss, per-class accuracy and confusion matrix of weights on a dataset; with
--report the interpretation (resnet50.report), with --knn a k-NN classifier on frozen features (resnet50.embed)."""

from ..data.decode import MAX_PIXELS
from ..embed import VOTES
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
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write the interpretation into DIR: confusion_matrix.png (counts and row-normalised), "
                        "top_losses.png, classification_report.json/.csv (per-class precision, recall, F1, "
                        "support), misclassified.csv (path, actual, predicted, probability, loss)")
    p.add_argument("--top-losses", type=int, default=16, metavar="N",
                   help="images in the report's top-losses grid; default 16")
    p.add_argument("--knn", type=int, default=None, metavar="K",
                   help="also score a K-nearest-neighbour classifier on the pooled features (cosine similarity; "
                        "the train split of --data is the gallery, the evaluated split the queries); e.g. 20")
    p.add_argument("--knn-vote", default="majority", choices=VOTES,
                   help="majority: most frequent class, ties to the larger similarity sum; weighted: DINO's "
                        "exp(similarity / 0.07) votes; default majority")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    result = evaluate_weights(args.weights, args.data, args.split, tta=args.tta, batch_size=args.batch_size,
                              workers=args.workers, out=args.out, progress=not args.no_progress,
                              max_pixels=args.max_pixels, tensorboard=args.tensorboard, report=args.report,
                              top_losses=args.top_losses, knn=args.knn, knn_vote=args.knn_vote)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['samples']} images of {args.data} ({args.split}), tta {args.tta}: top-1 {result['top1']:.2%}, "
          f"top-5 {result['top5']:.2%}, loss {result['loss']:.4f}")
    worst = sorted((v, k) for k, v in result["per_class_accuracy"].items() if v is not None)[:3]
    print("weakest classes: " + ", ".join(f"{k} {v:.1%}" for v, k in worst))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable file(s)")
    if "knn" in result:
        knn = result["knn"]
        print(f"{knn['k']}-NN on pooled features ({knn['vote']} vote, {knn['gallery']} train images as the "
              f"gallery): top-1 {knn['top1']:.2%}")
    if "report" in result:
        rep = result["report"]
        print(f"macro F1 {rep['classification']['macro avg']['f1-score']:.3f}, {rep['misclassified']} misclassified; "
              f"wrote {', '.join(rep['files'].values())}")
    if args.out:
        print(f"wrote {args.out}/metrics.json, confusion.json, confusion.png")
    return 0
