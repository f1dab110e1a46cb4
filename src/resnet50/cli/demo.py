"""resnet50 demo: train on the embedded data, evaluate on the test split, predict a few files (resnet50.demo)."""

from . import print_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo: train ResNet-50 on embedded Fashion-MNIST, evaluate, "
                                    "predict (about 10 minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs", help="where the run folder goes (default: runs)")
    p.add_argument("--test-data", default=None, help="Fashion-MNIST IDX folder with the t10k files "
                                                     "(default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", default=None, help="override the demo recipe's epochs")
    p.add_argument("--max-steps", default=None, help="stop training after this many steps (smoke test)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import DEFAULT_TEST_DATA, run_demo

    overrides = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps)) if v is not None}
    quiet = args.json
    summary = run_demo(args.out, args.test_data or DEFAULT_TEST_DATA, overrides, progress=not args.no_progress,
                       log=(lambda *a: None) if quiet else print)
    if args.json:
        print_json(summary)
    else:
        print(f"demo done in {summary['train_seconds'] / 60:.1f} min of training: {summary['eval_split']} top-1 "
              f"{summary['eval_top1']:.2%}; run folder {summary['run_dir']}")
    return 0
