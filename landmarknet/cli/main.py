"""The ``landmarknet`` command: one subcommand per module of this package."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from landmarknet import __version__
from landmarknet.errors import LandmarknetError
from landmarknet.runtime import apply_cpu_policy, choose_openmp_waiting

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
    "models": "landmarknet.cli.models",
}


#: Commands that run a net for its outputs: they flush denormal numbers to zero (see
#: landmarknet.runtime) unless --keep-denormals is given.
INFERENCE_COMMANDS = frozenset({"forward", "detect", "evaluate", "bench", "export"})


def _add_runtime_options(name: str, p: argparse.ArgumentParser) -> None:
    """--threads on every command (bench has its own), --keep-denormals on inference ones."""
    g = p.add_argument_group("CPU policy")
    if not any("--threads" in a.option_strings for a in p._actions):
        g.add_argument("--threads", type=int, default=None, metavar="N",
                       help="threads for torch, OpenCV and ONNX Runtime (default: the cores "
                            "this process may use)")
    if name in INFERENCE_COMMANDS:
        g.add_argument("--keep-denormals", action="store_true",
                       help="do not flush denormal numbers to zero (flushing is the default: "
                            "they make some x86 CPUs up to 8x slower and change no result)")


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
    for name, p in sub.choices.items():
        _add_runtime_options(name, p)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


#: Commands that never run a net: no OpenMP policy to choose, no 50 ms spent choosing it.
_NO_NETS = frozenset({"models"})


def _runs_nets(argv: list[str]) -> bool:
    """Whether this command line will run a net (not help, version or a listing)."""
    if any(a in ("-h", "--help", "--version") for a in argv):
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    return command is not None and command not in _NO_NETS


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn landmarknet's errors into one clear line (exit 2)."""
    if _runs_nets(sys.argv[1:] if argv is None else argv):
        choose_openmp_waiting()  # before torch is imported by a subcommand (50 ms of sampling)
    parser = make_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if args.threads is not None and args.threads < 1:
            raise LandmarknetError(f"--threads must be at least 1, got {args.threads}")
        args.threads = apply_cpu_policy(
            args.threads, flush=not getattr(args, "keep_denormals", True))
        return int(args.func(args) or 0)
    except LandmarknetError as exc:
        print(f"landmarknet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
