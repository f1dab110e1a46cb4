"""The ``resnet50`` command. Each subcommand is a module in this package with ``register(subparsers)`` (its flags)
and ``run(args) -> int`` (a thin call into one library module); this file only dispatches and reports errors."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from ..errors import UserError

# Subcommand modules, in the order ``resnet50 --help`` lists them.
COMMANDS = ("demo", "models", "summary", "convert", "train", "evaluate", "experiment", "predict", "export", "quantize", "benchmark", "serve")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="resnet50", description="The ResNet-50 toolkit (He et al., 2015).")
    parser.add_argument("--version", action="version", version=f"resnet50 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def print_json(obj) -> None:
    """Every command's ``--json`` output goes through here: one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"resnet50 {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"resnet50 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
