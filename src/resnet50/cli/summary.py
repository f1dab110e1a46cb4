"""resnet50 summary: the Table 1 report of an architecture (resnet50.summary)."""

from ..model import create_model
from ..summary import format_report, summarize
from . import add_model_options, model_options, print_json


def register(sub) -> None:
    p = sub.add_parser("summary", help="the Table 1 report: stages, output shapes, layers, params, MACs")
    add_model_options(p, "input height and width in pixels (>= 32); default 224", 224)
    p.add_argument("--shortcut", choices=("A", "B", "C"), default=None, help="the paper's shortcut option")
    p.add_argument("--plain", action="store_true", default=None, help="no shortcuts (the degradation experiment)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    model = create_model(args.arch or "resnet50", shortcut=args.shortcut, plain=args.plain, **model_options(args))
    report = summarize(model, args.size)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0
