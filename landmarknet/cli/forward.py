"""``landmarknet forward``: run a net in the TEST phase on .npy inputs, save the blobs."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from landmarknet.cli.common import (UsageError, add_fit_arguments, add_net_arguments,
                                    build_from_args, fit_from_args, load_npy_inputs, memory_budget)

EXAMPLE = """\
example:
  landmarknet forward zoo/det1.prototxt --weights det1.caffemodel \\
      --input data=face.npy --output out.npz --blobs conv1,prob1
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("forward", help="run a net on .npy inputs and save its outputs (.npz)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_arguments(p)
    p.add_argument("--weights", type=Path, help="weights (.caffemodel, .h5, .pt); as in Caffe, "
                   "blobs that do not fit are an error (see the --allow-* options)")
    p.add_argument("--random-weights", type=int, metavar="SEED",
                   help="seeded random weights instead of --weights (for testing)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input blob from a .npy file (repeatable); its shape is the input's")
    p.add_argument("--output", type=Path, default=Path("forward.npz"),
                   help="where to save the blobs (default forward.npz)")
    p.add_argument("--blobs", help="comma-separated blob names to save (default: the outputs, "
                   "i.e. every top no layer consumes)")
    add_fit_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build with the inputs' shapes, load weights, run, save."""
    with memory_budget(args):  # the build and the weights file's declared sizes
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from landmarknet.params import load_weights, randomize

    if args.weights is None and args.random_weights is None:
        raise UsageError("give --weights FILE (or --random-weights SEED to test a net)")
    inputs = load_npy_inputs(args.input)
    net = build_from_args(args, {k: v.shape for k, v in inputs.items()})
    if args.weights is not None:
        report = load_weights(net, args.weights, fit=fit_from_args(args))
        if not report.ok:  # allowed imperfections are still shown
            print(report.render())
    if args.random_weights is not None:
        randomize(net, args.random_weights)
    blobs = [b.strip() for b in args.blobs.split(",")] if args.blobs else None
    with torch.inference_mode():
        out = net.run(inputs, blobs=blobs)
    arrays = {k: v.detach().cpu().numpy() for k, v in out.items()}
    np.savez(args.output, **arrays)
    for k, v in arrays.items():
        print(f"{k:<30} {'x'.join(map(str, v.shape)):<18} min {v.min():+.5g}  max {v.max():+.5g}")
    print(f"saved {len(arrays)} blob(s) to {args.output}")
    return 0
