"""``landmarknet convert``: move weights between .caffemodel, Caffe HDF5 and PyTorch files.

With --prototxt the weights are loaded into that net by layer name first (a report says what
was copied), which also lets you copy some layers of one net into another (--copy-layers).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from landmarknet.cli.common import UsageError, parse_shape_arg

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
                   help="fail unless every selected layer is copied with matching shapes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert directly (Caffe formats) or through the net (.pt, --copy-layers)."""
    from landmarknet.caffe.weights import read_weights, write_weights

    pt = (".pt", ".pth")
    needs_net = args.input.suffix in pt or args.output.suffix in pt or args.copy_layers
    if needs_net and args.prototxt is None:
        raise UsageError("PyTorch files and --copy-layers need --prototxt (the net that maps "
                         "layer names to module parameters)")
    if args.prototxt is None:
        layers = read_weights(args.input)
        write_weights(args.output, layers)
        print(f"wrote {len(layers)} layer(s) to {args.output}")
        return 0

    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import read_net
    from landmarknet.params import copy_selector, load_weights, save_weights

    parsed = read_net(args.prototxt)
    net = build_net(parsed, phase=args.phase, input_shapes=dict(args.input_shape), seed=args.seed)
    select = None
    if args.copy_layers:
        spec = args.copy_layers
        if spec.startswith("upto:"):
            select = copy_selector(upto=spec[5:], net=net)
        else:
            select = copy_selector(names=[s.strip() for s in spec.split(",") if s.strip()])
    report = load_weights(net, args.input, strict=args.strict, select=select)
    print(textwrap.indent(report.render(), "  "))
    save_weights(net, args.output, parsed.net)
    print(f"wrote {args.output}")
    return 0
