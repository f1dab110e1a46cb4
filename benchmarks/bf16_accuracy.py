"""Accuracy of the bf16 inference backends against fp32 eager, on a trained checkpoint and a labelled split.

    python benchmarks/bf16_accuracy.py --weights runs/demo-.../best.safetensors [--data embedded --split val]

Every backend sees the same preprocessed images (the checkpoint's own preprocessing); the script prints top-1 for
each, the share of top-1 predictions that agree with fp32 eager, and the largest logit difference relative to the
largest fp32 logit. Writes JSON with --json.
"""

import argparse
import sys

import numpy as np

from resnet50.backends import available_backends
from resnet50.data import build_dataset, eval_transform
from resnet50.errors import UserError
from resnet50.files import write_json
from resnet50.infer import create_backend, load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--split", default="val")
    ap.add_argument("--backends", default=",".join(b for b in available_backends() if b == "onnx" or
                                                   b.endswith("-bf16")),
                    help="compared with fp32 eager, which always runs as the reference")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    im = load_model(args.weights)
    ds = build_dataset(args.data, args.split)
    tf = eval_transform(im.preprocessing, im.in_chans)
    x = np.stack([tf(ds[i][0]).numpy() for i in range(len(ds))])
    y = np.array([ds[i][1] for i in range(len(ds))])
    logits = {}
    for name in ["eager"] + [b for b in args.backends.split(",") if b and b != "eager"]:
        try:
            be = create_backend(name, im)
        except UserError as e:
            print(f"bf16_accuracy.py: {e}", file=sys.stderr)
            return 2
        logits[name] = np.concatenate([be(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    ref = logits["eager"]
    rows = []
    for name, z in logits.items():
        rows.append({"backend": name, "top1": float((z.argmax(1) == y).mean()),
                     "agree_with_eager": float((z.argmax(1) == ref.argmax(1)).mean()),
                     "max_rel_logit_diff": float(np.abs(z - ref).max() / np.abs(ref).max())})
        r = rows[-1]
        print(f"{name:<14} top-1 {r['top1']:.2%}  agrees with eager {r['agree_with_eager']:.2%}  "
              f"max |logit diff| / max |logit| {r['max_rel_logit_diff']:.2e}")
    result = {"weights": args.weights, "data": args.data, "split": args.split, "samples": int(len(y)), "rows": rows}
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
