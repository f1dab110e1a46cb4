"""resnet50 summary: the Table 1 report of an architecture (resnet50.summary)."""

from ..model import VARIANTS, create_model
from ..summary import format_report, summarize
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("summary", help="the Table 1 report: stages, output shapes, layers, params, MACs")
    p.add_argument("--arch", default="resnet50", help="architecture name (see 'resnet50 models'); default resnet50")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="v1 (stride in the 1x1) or v1.5 (the default)")
    p.add_argument("--shortcut", choices=("A", "B", "C"), default=None, help="the paper's shortcut option")
    p.add_argument("--plain", action="store_true", default=None, help="no shortcuts (the degradation experiment)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels (>= 32); default 224")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    model = create_model(args.arch, variant=args.variant, shortcut=args.shortcut, plain=args.plain,
                         num_classes=args.num_classes, in_chans=args.in_chans)
    report = summarize(model, args.size)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0
