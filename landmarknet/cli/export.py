"""``landmarknet export``: a net and its weights to ONNX, checked at once in ONNX Runtime.

The model is exported through PyTorch's (TorchScript) exporter at opset 19 by default (ONNX
Runtime gets ceil-mode average pooling right only from opset 19), then run in ONNX Runtime and
in landmarknet on the same seeded random input: the maximum differences are printed, and the
command fails (exit 1) when the relative difference (max |diff| / max |output|) of any output
is above --tol. Blobs that feed a saturating output (the logits before a final Softmax or
Sigmoid) are compared too, since a one-hot softmax agrees whatever the weights. ``--via caffe2onnx`` also converts with the independent caffe2onnx package and
compares the two ONNX files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landmarknet.cli.common import (UsageError, add_net_arguments, build_from_args, memory_budget)

EXAMPLE = """\
examples:
  landmarknet export prototxt/heatmap4_68/deploy.prototxt --weights heatmap4_68.pt -o hm.onnx
  landmarknet export det1.prototxt --weights det1.caffemodel -o det1.onnx --dynamic-batch
  landmarknet export deploy.prototxt --random-weights 0 -o test.onnx --opset 20
  landmarknet export det3.prototxt --weights det3.caffemodel -o det3.onnx --via caffe2onnx
      (needs: pip install --no-deps caffe2onnx)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    from landmarknet.export import DEFAULT_OPSET, DEFAULT_TOL
    p = sub.add_parser("export", help="export to ONNX and check it in ONNX Runtime",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_arguments(p)
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--weights", type=Path, help=".caffemodel, .h5 or .pt weights (all layers "
                   "with blobs must be in the file)")
    w.add_argument("--random-weights", type=int, metavar="SEED",
                   help="seeded random weights instead (to test an architecture)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset (default {DEFAULT_OPSET}, or the first later one that has "
                        "every operator the net needs; older ONNX Runtimes get ceil-mode AVE "
                        "pooling wrong below 19)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make the batch dimension of inputs and outputs symbolic (checked at "
                        "two batch sizes)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"largest relative difference accepted (default {DEFAULT_TOL:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check input")
    p.add_argument("--no-check", action="store_true", help="export only, skip the check")
    p.add_argument("--via", choices=("caffe2onnx",),
                   help="also convert with caffe2onnx and compare both ONNX files")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch exporter (dynamo needs the onnxscript package)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, load weights, export, check; exit 1 when a check fails."""
    with memory_budget(args):  # the build and the weights file's declared sizes
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from landmarknet.export import (CAFFE2ONNX_INSTALL, caffe2onnx_available,
                                    caffe2onnx_crosscheck, export_onnx)
    from landmarknet.params import load_weights, randomize

    if args.via and args.no_check:
        raise UsageError("--via caffe2onnx compares outputs; it cannot go with --no-check")
    if args.via == "caffe2onnx" and not caffe2onnx_available():
        raise UsageError("--via caffe2onnx needs the caffe2onnx package: install it with "
                         f"`{CAFFE2ONNX_INSTALL}` (--no-deps: it pins onnx==1.6.0, which does "
                         "not build on modern Python; it works with the installed onnx)")
    if args.output.suffix.lower() != ".onnx":
        raise UsageError(f"-o {args.output}: the output should end in .onnx")
    seed = args.seed
    args.seed = 0  # build_from_args reads args.seed for the fillers; weights come next anyway
    net = build_from_args(args)
    args.seed = seed
    if args.weights is not None:
        report = load_weights(net, args.weights, strict=True)
        print(f"weights: {args.weights} ({len(report.copied)} layers)")
    else:
        randomize(net, args.random_weights)
        print(f"weights: random (seed {args.random_weights})")
    rep = export_onnx(net, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                      check=not args.no_check, seed=args.seed, tol=args.tol,
                      exporter=args.exporter)
    print(rep.render())
    status = 0 if rep.ok else 1
    if args.via == "caffe2onnx":
        cross = caffe2onnx_crosscheck(net, args.prototxt, args.weights, args.output,
                                      seed=args.seed, tol=args.tol)
        print(cross.render())
        if not cross.ok:
            status = 1
    return status
