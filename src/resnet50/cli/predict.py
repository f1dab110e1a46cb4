"""resnet50 predict: classify image files, folders or glob patterns (resnet50.predict, resnet50.infer)."""

import sys

from ..backends import BACKENDS
from ..data.decode import MAX_PIXELS
from ..data.discover import expand_inputs
from ..infer import create_backend, load_model
from ..predict import add_cams, check_cam, predict_files, to_csv, to_text
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify images (files, folders, glob patterns): top-k classes")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True,
                   help="checkpoint (.safetensors/.pth/.h5), a Hub-layout folder, published weights (tv:resnet50.v2; "
                        "see 'resnet50 models --published') or a model from export/quantize (.onnx)")
    p.add_argument("--topk", type=int, default=5, help="classes per image; default 5")
    p.add_argument("--backend", default="auto",
                   help=f"auto (the fastest installed) or one of: {', '.join(BACKENDS)}; default auto")
    p.add_argument("--batch-size", type=int, default=16, help="images per inference call; default 16")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (decompression bombs); default {MAX_PIXELS}")
    p.add_argument("--cam", default=None, metavar="OUT_DIR",
                   help="also write a class activation map per image (heatmap, box, label, score) as PNGs into "
                        "OUT_DIR and add its box to the results (Zhou et al. 2016; needs PyTorch weights)")
    p.add_argument("--threads", type=int, default=None, help="inference threads; default: physical cores")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--csv", action="store_true", help="print the results as CSV (file, rank, index, label, ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    links: list = []
    files = expand_inputs(args.inputs, links)
    for s in links:
        print(f"resnet50 predict: note: {s.path}: {s.reason}", file=sys.stderr)
    loaded = load_model(args.weights)
    backend = create_backend(args.backend, loaded, args.threads)
    if args.cam:
        check_cam(loaded, args.cam)
    results = predict_files(files, loaded, backend, args.topk, args.batch_size, args.max_pixels, progress=True)
    if args.cam:
        add_cams(results, loaded, args.cam, args.batch_size, args.max_pixels)
    failed = sum(r.error is not None for r in results)
    if args.json:
        print_json({"backend": backend.name, "weights": args.weights, "arch": loaded.arch,
                    "files": len(results), "failed": failed, "results": [r.to_dict() for r in results]})
    elif args.csv:
        sys.stdout.write(to_csv(results))
    else:
        print(to_text(results))
    if failed:
        print(f"resnet50 predict: {failed} of {len(results)} file(s) could not be read (see above)", file=sys.stderr)
    return 1 if failed else 0
