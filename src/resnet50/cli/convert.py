"""resnet50 convert: weights from one layout to another (resnet50.weights)."""

from dataclasses import asdict

from ..errors import UserError
from ..model import VARIANTS
from ..weights import convert
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert weights: torchvision/timm .pth/.safetensors, Keras .h5 -> ours",
                       description="Read SRC (our .safetensors, a torchvision/timm state dict in .pth or "
                                   ".safetensors, or Keras ResNet50 .h5/.weights.h5) and write DST: .safetensors "
                                   "(ours, with metadata) or .pth (a plain state dict in the torchvision layout).")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", default=None, help="expected architecture; default: read it off the file")
    p.add_argument("--variant", choices=VARIANTS, default=None,
                   help="v1 or v1.5 for state dicts (the tensors cannot tell them apart); default v1.5")
    p.add_argument("--classes", default=None, help="a text file with one class name per line, stored in the metadata")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    classes = None
    if args.classes:
        try:
            with open(args.classes, encoding="utf-8") as f:
                classes = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read class names from {args.classes}: {e.strerror}") from e
    ckpt = convert(args.src, args.dst, args.arch, classes, variant=args.variant)
    info = {"src": args.src, "dst": args.dst, "arch": ckpt.arch, "config": ckpt.config.to_dict(),
            "classes": len(ckpt.classes) if ckpt.classes else None, "preprocessing": asdict(ckpt.preprocessing),
            "source": ckpt.source}
    if args.json:
        print_json(info)
    else:
        cfg = ckpt.config
        print(f"wrote {args.dst}: {ckpt.arch} {cfg.variant}, {cfg.num_classes} classes, {cfg.in_chans} input "
              f"channel(s), from {ckpt.source}")
    return 0
