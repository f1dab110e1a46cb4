"""The ``resnet50`` command. Each subcommand is a module in this package with ``register(subparsers)`` (its flags)
and ``run(args) -> int`` (a thin call into one library module); this file only dispatches and reports errors."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys

from .. import __version__
from ..errors import UserError
from ..model import VARIANTS
from ..recipes import TrainConfig, flat_fields

ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

# Subcommand modules, in the order ``resnet50 --help`` lists them.
COMMANDS = ("demo", "models", "summary", "convert", "train", "lr-find", "evaluate", "embed", "experiment", "predict", "batch-predict", "export", "quantize", "benchmark", "serve", "detect", "localize")


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag or value reported on one line (argparse's own error prints the whole usage first);
    the subcommands' parsers are of this class too (``add_subparsers`` makes its parent's kind)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resnet50", description="The ResNet-50 toolkit (He et al., 2015).")
    parser.add_argument("--version", action="version", version=f"resnet50 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def dashed(argv: list[str]) -> list[str]:
    """Every option is spelled with dashes (``--batch-size``); the underscore spelling of earlier versions
    (``--batch_size``, ``--batch_size=8``) still parses, rewritten here and never shown in ``--help``."""
    out = []
    for a in argv:
        if a == "--":
            out += argv[len(out):]
            break
        if a.startswith("--") and "_" in a.split("=", 1)[0]:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def add_model_options(p: argparse.ArgumentParser, size_help: str = "input height and width in pixels; default the "
                      "checkpoint's crop (224)", size_default: int | None = None) -> None:
    """The model flags that ``benchmark``, ``export`` and ``summary`` share. With --weights they must agree with
    the file (a contradiction is refused); without, they build the named architecture with random weights."""
    g = p.add_argument_group("model options")
    g.add_argument("--arch", default=None, help="architecture name (see 'resnet50 models'); default resnet50")
    g.add_argument("--variant", choices=VARIANTS, default=None, help="v1 (stride in the 1x1) or v1.5 (in the 3x3)")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs; default 1000")
    g.add_argument("--in-chans", type=int, default=None, help="input channels (1 gray, 3 RGB); default 3")
    g.add_argument("--size", type=int, default=size_default, help=size_help)


def model_options(args) -> dict:
    """The ResNetConfig fields set by :func:`add_model_options` flags (unset ones left out)."""
    return {k: v for k, v in (("variant", args.variant), ("num_classes", args.num_classes),
                              ("in_chans", args.in_chans)) if v is not None}


def add_config_flags(p: argparse.ArgumentParser, cfg_cls: type = TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a task's config (default TrainConfig: ``--lr``, ``--batch-size``, ...), for every
    command that trains; fields in ``skip`` are left to the command's own flags. Unset flags are None: the
    recipe's value stands."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    base = cfg_cls()
    for name, (sec, field_name) in flat_fields(cfg_cls).items():
        if name in skip:
            continue
        default = getattr(getattr(base, sec) if sec else base, field_name)
        g = groups.setdefault(sec, p.add_argument_group(f"{sec or 'top-level'} options"))
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                       metavar=type(default).__name__.upper(), help=f"(recipe default; base {default!r})")


def config_overrides(args, cfg_cls: type = TrainConfig, skip: tuple[str, ...] = ()) -> dict:
    """The config fields given on the command line, by field name."""
    return {k: getattr(args, k) for k in flat_fields(cfg_cls) if k not in skip and getattr(args, k, None) is not None}


def print_json(obj) -> None:
    """Every command's ``--json`` output goes through here: one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(dashed(sys.argv[1:] if argv is None else list(argv)))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, inside the handlers, not at interpreter exit
        return code
    except UserError as e:
        print(f"resnet50 {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (``resnet50 models --json | head -1``): stop quietly, as command-line tools do, with
        # the status of a process ended by SIGPIPE. stdout is pointed at /dev/null so the exit flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except KeyboardInterrupt:
        print(f"resnet50 {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        # a fault of the machine, not of the program (a disk filled up, a folder became read-only)
        print(f"resnet50 {args.command}: error: {e.strerror}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
