"""The ``landmarknet`` command: one subcommand per module of this package."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from landmarknet import __version__
from landmarknet.errors import LandmarknetError

#: Subcommand -> module defining ``add_parser(subparsers)``; imported lazily, in this order.
SUBCOMMANDS = {
    "build": "landmarknet.cli.build",
    "forward": "landmarknet.cli.forward",
    "convert": "landmarknet.cli.convert",
    "train": "landmarknet.cli.train",
    "evaluate": "landmarknet.cli.evaluate",
    "detect": "landmarknet.cli.detect",
    "visualize": "landmarknet.cli.visualize",
    "export": "landmarknet.cli.export",
    "bench": "landmarknet.cli.bench",
}


def make_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog="landmarknet",
        description="Caffe prototxt as the source of truth, made live in PyTorch.",
        epilog="Run 'landmarknet COMMAND --help' for a command's options and an example.")
    parser.add_argument("--version", action="version", version=f"landmarknet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn landmarknet's errors into one clear line (exit 2)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except LandmarknetError as exc:
        print(f"landmarknet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
