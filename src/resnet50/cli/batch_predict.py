"""resnet50 batch-predict: classify many images on Ray Data, locally or on a cluster, into Parquet (resnet50.batch_predict)."""

import sys

from ..backends import BACKENDS
from ..batch_predict import FORMATS, batch_predict
from ..data.decode import MAX_PIXELS
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("batch-predict", help="classify many images on Ray Data (local or RAY_ADDRESS) into Parquet",
                       description="Offline batch inference on Ray Data: a pool of actors, each with one model, "
                                   "writes path, top-k classes and scores (and embeddings) as Parquet. Starts a "
                                   "local Ray, or joins the cluster RAY_ADDRESS names. Needs the 'ray' extra.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files/folders/globs, a list file (.txt), WebDataset shards (.tar, brace pattern, "
                        "URL) or a Parquet file/folder")
    p.add_argument("--weights", required=True,
                   help="checkpoint (.safetensors/.pth/.h5), a Hub-layout folder, published weights (tv:resnet50.v2) "
                        "or an exported .onnx model")
    p.add_argument("--out", required=True, help="a new folder for the Parquet files (on shared storage for a cluster)")
    p.add_argument("--input-format", choices=FORMATS, default="auto", help="default: from the input's name")
    p.add_argument("--column", default=None, help="Parquet: the column of image paths or bytes; default image/path")
    p.add_argument("--id-column", default=None, help="Parquet of image bytes: the column naming each row")
    p.add_argument("--backend", default="auto", help=f"auto or one of: {', '.join(BACKENDS)}; default auto")
    p.add_argument("--topk", type=int, default=5, help="classes per image; default 5")
    p.add_argument("--embeddings", action="store_true",
                   help="also write the pooled features (2048-d for ResNet-50; runs the PyTorch model)")
    p.add_argument("--batch-size", type=int, default=32, help="images per actor call; default 32")
    p.add_argument("--actors", type=int, default=1, help="actors (model copies) in the pool; default 1")
    p.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs reserved per actor (its threads); default 1")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs per actor (runs the model on it); default 0")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray this command starts (ignored with RAY_ADDRESS); default all")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"largest image in pixels; default {MAX_PIXELS}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    res = batch_predict(args.inputs, args.weights, args.out, input_format=args.input_format, column=args.column,
                        id_column=args.id_column, backend=args.backend, k=args.topk, batch_size=args.batch_size,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                        embeddings=args.embeddings, max_pixels=args.max_pixels, num_cpus=args.num_cpus,
                        progress=not args.no_progress)
    if args.json:
        print_json(res.to_dict())
    else:
        print(f"{res.rows} images -> {res.out} ({res.images_per_s:.1f} img/s on {res.cluster}, {res.actors} "
              f"actor(s), backend {res.backend})")
    if res.errors:
        print(f"resnet50 batch-predict: {res.errors} of {res.rows} image(s) could not be read (the rows with an "
              "'error')", file=sys.stderr)
    return 0
