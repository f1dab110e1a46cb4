"""resnet50 models: the architectures create_model accepts."""

from ..model import ARCHS
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the available architectures")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    rows = [{"name": n, "block": s.block, "layers": list(s.layers), "description": s.description}
            for n, s in ARCHS.items()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<18} {r['description']}")
    return 0
