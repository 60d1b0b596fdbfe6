"""Argument helpers shared by subcommands: net selection, input shapes, inputs from .npy."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from landmarknet.errors import LandmarknetError
from landmarknet.jsontext import json_text  # noqa: F401 (re-exported for the commands)


class UsageError(LandmarknetError):
    """A command line that cannot be carried out as given."""


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """'data=1,3,112,112' -> ('data', (1, 3, 112, 112))."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=N,C,H,W with positive sizes, got {text!r}")
    return name, shape


def add_net_arguments(p: argparse.ArgumentParser, *, phase_default: str = "test") -> None:
    """The prototxt and how to build it: phase, stages, level, input shapes, leniency."""
    p.add_argument("prototxt", type=Path, help="the net's .prototxt (or an installed bundle's "
                   "name or folder: its deploy.prototxt)")
    p.add_argument("--phase", choices=("train", "test"), default=phase_default,
                   help=f"Caffe phase whose layers are kept (default {phase_default})")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="a NetState stage (repeatable)")
    p.add_argument("--level", type=int, default=0, help="NetState level (default 0)")
    p.add_argument("--input-shape", action="append", default=[], type=parse_shape_arg,
                   metavar="NAME=N,C,H,W", help="set or override an input's shape "
                   "(repeatable; a data layer's other tops take the batch given)")
    p.add_argument("--lenient", action="store_true",
                   help="skip unknown prototxt fields (and enum values a fork added) with one "
                        "warning each instead of failing")
    p.add_argument("--python-path", action="append", default=[], type=Path, metavar="DIR",
                   help="a folder holding the modules of the net's own Python layers "
                   "(caffe.Layer classes), imported from there as Caffe's PYTHONPATH would "
                   "(repeatable; landmarknet imports no module a prototxt names otherwise)")
    p.add_argument("--outputs", type=_blob_list, metavar="BLOB[,BLOB]",
                   help="make these blobs the net's outputs and leave out the layers they do "
                   "not need (e.g. SSD's DetectionOutput: --outputs mbox_loc,mbox_conf_flatten,"
                   "mbox_priorbox)")
    add_memory_argument(p)


def _blob_list(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected blob names separated by commas, got {text!r}")
    return names


def _size_arg(text: str) -> int:
    from landmarknet.memory import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pixels_arg(text: str) -> int:
    """'100000000', '1e8', '100M', '50k' or 'none' -> a pixel count (0: no limit)."""
    t = text.strip().lower()
    if t in ("none", "0", "off"):
        return 0
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        value = float("nan")
    if not value >= 1 or value > 1e15 or len(t) > 32:
        raise argparse.ArgumentTypeError(f"expected a pixel count such as 1e8 or 100M ('none': "
                                         f"no limit), got {text[:32]!r}")
    return int(value)


def add_memory_argument(p: argparse.ArgumentParser) -> None:
    """--max-memory: the budget a net's weights and blobs must fit, checked before allocating."""
    p.add_argument("--max-memory", type=_size_arg, default=None, metavar="SIZE",
                   help="refuse nets whose weights and blobs need more than SIZE (e.g. 8G, "
                        "512M; 'none': no limit), checked before anything is allocated "
                        "(default: the memory available on this machine)")


def memory_budget(args: argparse.Namespace):
    """A context in which builds use --max-memory (landmarknet.memory.memory_limit)."""
    from landmarknet.memory import memory_limit
    return memory_limit(getattr(args, "max_memory", None))


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """--allow-missing / --allow-mismatch / --allow-nonfinite: imperfect weights, on purpose."""
    g = p.add_argument_group("weights that do not fit (each is an error unless allowed)")
    g.add_argument("--allow-missing", action="store_true",
                   help="layers of the net that the weights file lacks keep their fillers "
                        "(e.g. a new head when fine-tuning)")
    g.add_argument("--allow-mismatch", action="store_true",
                   help="layers whose blobs have another shape keep their fillers")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN or infinite values in the weights (reported by layer)")


def fit_from_args(args: argparse.Namespace):
    """The FitPolicy the --allow-* options describe."""
    from landmarknet.params import FitPolicy
    return FitPolicy(allow_missing=getattr(args, "allow_missing", False),
                     allow_mismatch=getattr(args, "allow_mismatch", False),
                     allow_nonfinite=getattr(args, "allow_nonfinite", False))


def graph_from_args(args: argparse.Namespace):
    """The filtered graph of the net that the common arguments describe (no torch module yet:
    for commands that look at the inputs before choosing their shapes). Kept on ``args`` so
    that build_from_args builds from it instead of parsing the file again."""
    from landmarknet.build import net_graph
    from landmarknet.models import resolve_prototxt
    args.prototxt = resolve_prototxt(args.prototxt)
    graph = net_graph(args.prototxt, phase=args.phase, level=args.level, stages=args.stage,
                      input_shapes=dict(args.input_shape), strict=not args.lenient)
    if getattr(args, "outputs", None):
        graph = graph.cut_to(args.outputs)
    if getattr(args, "python_path", None):
        from landmarknet.python_layers import load_python_layers
        load_python_layers(graph, args.python_path)
    args.graph = graph
    return graph


def build_from_args(args: argparse.Namespace, extra_shapes: dict | None = None):
    """Build the net that the common arguments describe."""
    from landmarknet.build import build_from_graph
    graph = getattr(args, "graph", None) or graph_from_args(args)
    return build_from_graph(graph, input_shapes=extra_shapes,
                            seed=getattr(args, "seed", 0) or 0,
                            max_memory=getattr(args, "max_memory", None))


def load_npy_inputs(items: list[str]) -> dict[str, np.ndarray]:
    """NAME=FILE.npy pairs -> arrays (never unpickled: allow_pickle=False)."""
    out = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input expects NAME=FILE.npy, got {item!r}")
        try:
            arr = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {name}: cannot read {file}: {exc}") from None
        if not isinstance(arr, np.ndarray):
            raise UsageError(f"--input {name}: {file} is an .npz archive; give a single .npy")
        out[name] = arr.astype(np.float32, copy=False)
    return out
