"""resnet50 embed: pooled features of image files or folders, with their paths (resnet50.embed)."""

import sys

from ..data.decode import MAX_PIXELS
from ..data.discover import expand_inputs
from ..embed import check_out, embed_files, load_classifier, save_embeddings
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("embed", help="pooled features (N x 2048 for ResNet-50) of images or folders, with paths")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True,
                   help="classifier weights (ours, torchvision/timm, Keras), a run or Hub-layout folder, or "
                        "published weights (tv:resnet50.v2)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="FILE.npy: float32 N x D, with the paths one a line in the sidecar FILE.paths.txt; "
                        "FILE.npz: arrays 'features' and 'paths'; FILE.parquet: columns 'path' and 'embedding' "
                        "(needs pyarrow: the extra resnet50[ray])")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass; default 32")
    p.add_argument("--workers", type=int, default=2, help="decoding threads; default 2")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda; default cpu")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (decompression bombs); default {MAX_PIXELS}")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    check_out(args.out)
    links: list = []
    files = expand_inputs(args.inputs, links)
    ckpt = load_classifier(args.weights)
    emb = embed_files(files, ckpt, args.batch_size, args.max_pixels, progress=not args.no_progress,
                      workers=args.workers, device=args.device)
    for s in [*links, *emb.skipped]:
        print(f"resnet50 embed: skipped {s.path}: {s.reason}", file=sys.stderr)
    written = save_embeddings(emb, args.out)
    n, d = emb.features.shape
    if args.json:
        print_json({"weights": str(args.weights), "arch": ckpt.arch, "count": n, "dim": d,
                    "files": [str(p) for p in written], "skipped": [{"path": s.path, "reason": s.reason}
                                                                     for s in emb.skipped]})
    else:
        print(f"{n} image(s) -> {n} x {d} features in {', '.join(map(str, written))}"
              + (f"; skipped {len(emb.skipped)} unreadable file(s)" if emb.skipped else ""))
    return 0
