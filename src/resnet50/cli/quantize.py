"""resnet50 quantize: INT8 static quantisation with ONNX Runtime, accuracy before and after (resnet50.quantize)."""

from ..quantize import CALIB_METHODS, quantize
from . import print_json


def register(sub) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training quantisation (ONNX Runtime QDQ) with an accuracy report")
    p.add_argument("--weights", required=True,
                   help="fp32 checkpoint (.safetensors/.pth/.h5), published weights (tv:resnet50.v2) or fp32 .onnx "
                        "export")
    p.add_argument("--calib", required=True, metavar="DIR", help="folder of calibration images (class folders allowed)")
    p.add_argument("--eval", default=None, metavar="DIR",
                   help="held-out images for the accuracy report; default: every 5th image of --calib, left out of "
                        "calibration. Class folders named after the model's classes give top-1 accuracy")
    p.add_argument("--out", required=True, help="output INT8 model (.onnx)")
    p.add_argument("--calib-count", type=int, default=300, help="calibration images used (spread evenly); default 300")
    p.add_argument("--method", choices=CALIB_METHODS, default="minmax", help="calibration method; default minmax")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights for AVX2 CPUs without VNNI; auto: on when this CPU lacks VNNI")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    reduce_range = {"auto": None, "on": True, "off": False}[args.reduce_range]
    r = quantize(args.weights, args.calib, args.out, args.eval, args.calib_count, args.method, reduce_range,
                 progress=True)
    if args.json:
        print_json(r)
        return 0
    e = r["evaluation"]
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.1f} MB; fp32 {r['fp32_bytes'] / 1e6:.1f} MB), "
          f"{r['settings']['calibration']} calibration on {r['calibration']['images']} images, "
          f"reduce_range={r['settings']['reduce_range']}")
    print(f"held-out set: {e['images']} images from {e['folder']}: top-1 agreement INT8 vs fp32 "
          f"{e['top1_agreement']:.1%}")
    if e["top1_fp32"] is not None:
        print(f"top-1 accuracy: fp32 {e['top1_fp32']:.1%}, INT8 {e['top1_int8']:.1%}")
    else:
        print(f"top-1 accuracy: not measured ({e['labels']})")
    return 0
