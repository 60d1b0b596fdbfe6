"""``landmarknet convert``: move weights between .caffemodel, Caffe HDF5 and PyTorch files.

With --prototxt the weights are loaded into that net by layer name first (a report says what
was copied), which also lets you copy some layers of one net into another (--copy-layers).
As in Caffe, weights that do not fit the net stop the conversion: a blob of another shape, a
selected layer the file lacks, a file that fits no layer, NaN or infinite values; the --allow-*
options accept them on purpose (the layers concerned keep the fillers of --seed).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from landmarknet.cli.common import (UsageError, add_fit_arguments, add_memory_argument,
                                    fit_from_args, memory_budget, parse_shape_arg)

EXAMPLE = """\
examples:
  landmarknet convert net.caffemodel net.h5
  landmarknet convert net.caffemodel net.pt --prototxt deploy.prototxt
  landmarknet convert sq68.caffemodel sq77_init.caffemodel --prototxt sq77_train.prototxt \\
      --phase train --copy-layers upto:fire9/concat
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("convert", help="convert weights between .caffemodel, .h5 and .pt",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="weights to read (.caffemodel, .h5/.hdf5, .pt/.pth)")
    p.add_argument("output", type=Path, help="weights to write, format by extension")
    p.add_argument("--prototxt", type=Path, help="the net the weights belong to (needed for .pt, "
                   "for --copy-layers, and to store layer parameters in a .caffemodel)")
    p.add_argument("--phase", choices=("train", "test"), default="test")
    p.add_argument("--input-shape", action="append", default=[], type=parse_shape_arg,
                   metavar="NAME=N,C,H,W", help="input shape where the prototxt lacks one")
    p.add_argument("--copy-layers", metavar="A,B,...|upto:NAME",
                   help="copy only these layers (by name), or every layer up to NAME")
    p.add_argument("--seed", type=int, default=0, help="filler seed for layers not copied")
    p.add_argument("--strict", action="store_true",
                   help=argparse.SUPPRESS)  # strict is the default now; kept for old scripts
    add_fit_arguments(p)
    add_memory_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert directly (Caffe formats) or through the net (.pt, --copy-layers)."""
    with memory_budget(args):  # the net's build and an HDF5 file's declared sizes
        return _convert(args)


def _convert(args: argparse.Namespace) -> int:
    from landmarknet.params import convert_weights

    pt = (".pt", ".pth")
    needs_net = args.input.suffix in pt or args.output.suffix in pt or args.copy_layers
    if needs_net and args.prototxt is None:
        raise UsageError("PyTorch files and --copy-layers need --prototxt (the net that maps "
                         "layer names to module parameters)")
    done = convert_weights(args.input, args.output, prototxt=args.prototxt, phase=args.phase,
                           input_shapes=dict(args.input_shape), copy_layers=args.copy_layers,
                           seed=args.seed, fit=fit_from_args(args), max_memory=args.max_memory)
    if done.report is None:
        print(f"wrote {done.layers} layer(s) to {args.output}")
    else:
        print(textwrap.indent(done.report.render(), "  "))
        print(f"wrote {args.output}")
    return 0
