"""resnet50 models: the architectures create_model accepts, and the published weights by name."""

from ..model import ARCHS
from ..published import PUBLISHED, cache_dir
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the available architectures (--published: the weights by name)")
    p.add_argument("--published", action="store_true",
                   help="list the published weights usable as --weights NAME (URL, hash, licence, accuracy)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.published:
        rows = [{"name": e.name, "arch": e.arch, "top1": e.top1, "top5": e.top5, "url": e.url, "digest": e.digest,
                 "license": e.license, "preprocessing": e.preprocessing.to_dict(), "origin": e.origin,
                 "cached": (cache_dir() / e.filename).is_file()} for e in PUBLISHED.values()]
        fmt = "{name:<24} {arch:<10} top-1 {top1:6.3f} %  {license}"
    else:
        rows = [{"name": n, "block": s.block, "layers": list(s.layers), "description": s.description}
                for n, s in ARCHS.items()]
        fmt = "{name:<18} {description}"
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(fmt.format(**r))
    return 0
