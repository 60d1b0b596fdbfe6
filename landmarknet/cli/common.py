"""Argument helpers shared by subcommands: net selection, input shapes, inputs from .npy."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from landmarknet.errors import LandmarknetError


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
                   metavar="NAME=N,C,H,W", help="set or override an input's shape (repeatable)")
    p.add_argument("--lenient", action="store_true",
                   help="skip unknown prototxt fields with one warning each instead of failing")


def build_from_args(args: argparse.Namespace, extra_shapes: dict | None = None):
    """Build the net that the common arguments describe."""
    from landmarknet.build import build_net
    from landmarknet.models import resolve_prototxt
    shapes = dict(args.input_shape)
    shapes.update(extra_shapes or {})
    args.prototxt = resolve_prototxt(args.prototxt)
    return build_net(args.prototxt, phase=args.phase, level=args.level, stages=args.stage,
                     input_shapes=shapes, strict=not args.lenient,
                     seed=getattr(args, "seed", 0) or 0)


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
