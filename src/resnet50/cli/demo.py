"""resnet50 demo: train on the embedded data, evaluate on the test split, predict a few files (resnet50.demo)."""

from ..demo import DEFAULT_TEST_DATA, run_demo
from . import add_config_flags, config_overrides, print_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo: train ResNet-50 on embedded Fashion-MNIST, evaluate, "
                                    "predict (about 10 minutes on 2 CPU cores)",
                       description="Train the demo recipe on the embedded Fashion-MNIST subset, evaluate on the "
                                   "official test split, classify a few files. Every training config field is a "
                                   "flag, as in 'resnet50 train' (--epochs, --max-steps, --lr, ...).")
    p.add_argument("--test-data", default=None, help="Fashion-MNIST IDX folder with the t10k files "
                                                     f"(default: {DEFAULT_TEST_DATA})")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = config_overrides(args)
    summary = run_demo(overrides.pop("out", "runs"), args.test_data or DEFAULT_TEST_DATA, overrides,
                       progress=not args.no_progress, log=(lambda *a: None) if args.json else print)
    if args.json:
        print_json(summary)
    else:
        print(f"demo done in {summary['train_seconds'] / 60:.1f} min of training: {summary['eval_split']} top-1 "
              f"{summary['eval_top1']:.2%}; run folder {summary['run_dir']}")
    return 0
