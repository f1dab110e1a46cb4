"""resnet50 export: ONNX / TorchScript / torch.export with a dynamic batch and a parity check (resnet50.export)."""

import sys

from ..export import FORMATS, export
from ..infer import load_model
from . import add_model_options, model_options, print_json


def register(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX, TorchScript or torch.export, then check parity with eager")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    p.add_argument("--weights", help="checkpoint to export; without it, --arch with random weights")
    add_model_options(p)
    p.add_argument("--out", default=None, help="output file; default <arch>.onnx / .torchscript.pt / .pt2")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    loaded = load_model(args.weights, args.arch, args.size, **model_options(args))
    report = export(loaded, args.format, args.out, check=args.check)
    par = report.get("parity")
    if args.json:
        print_json(report)
    else:
        print(f"wrote {report['path']} ({report['format']}, {report['bytes'] / 1e6:.1f} MB, input "
              f"N x {loaded.in_chans} x {loaded.size} x {loaded.size}, dynamic batch)")
        if par:
            diff = "n/a" if par["max_abs_diff"] is None else f"{par['max_abs_diff']:.2e}"
            print(f"parity vs eager at batch {par['batch']} (traced at {report['trace_batch']}): max |diff| {diff} "
                  f"(tolerance {par['tolerance']:.1e}): {'PASSED' if par['passed'] else 'FAILED'}")
    if par and not par["passed"]:
        print("resnet50 export: the exported model does not match eager PyTorch", file=sys.stderr)
        return 1
    return 0
