"""``landmarknet build``: build a net from its prototxt and print its per-layer table."""
from __future__ import annotations

import argparse
import gc
import textwrap
from pathlib import Path

from landmarknet.cli.common import (add_fit_arguments, add_net_arguments, build_from_args,
                                    fit_from_args, json_text, memory_budget)

EXAMPLE = """\
example:
  landmarknet build prototxt/heatmap4_68/deploy.prototxt --input-shape data=1,3,112,112
  landmarknet build deploy.prototxt --weights net.caffemodel --save net.pt --json
  landmarknet build deploy.prototxt --save net.pt --emit-python net.py   # leave with plain torch
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("build", help="build a net and print its layers, shapes and parameters",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_arguments(p)
    p.add_argument("--weights", type=Path, help=".caffemodel, .h5 or .pt weights to load by "
                   "layer name (a report says what was copied); as in Caffe, blobs that do "
                   "not fit stop the build (see the --allow-* options)")
    p.add_argument("--strict-weights", action="store_true",
                   help=argparse.SUPPRESS)  # strict is the default now; kept for old scripts
    add_fit_arguments(p)
    p.add_argument("--random-weights", type=int, metavar="SEED",
                   help="fill every blob with seeded random values of order one (for testing)")
    p.add_argument("--save", type=Path, metavar="OUT",
                   help="write the weights as .caffemodel, .h5 or .pt (by extension)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--emit-python", type=Path, metavar="OUT.py",
                   help="write a standalone PyTorch module file of the net (needs only torch; "
                   "loads the .pt that --save writes)")
    p.add_argument("--emit-stubs", action="store_true",
                   help="with --emit-python: placeholders for layer types it cannot express")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, optionally load/randomise/save weights, print the table."""
    with memory_budget(args):  # the build and the weights file's declared sizes
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Build, then report."""
    net = build_from_args(args)
    # The net lives until the command ends: keep the garbage collector from rescanning its
    # objects on every collection (on a 100,000-layer net the table alone took 2 s more);
    # they go back to the collector when the command is done (main() may run in a test).
    gc.freeze()
    try:
        return _report(args, net)
    finally:
        gc.unfreeze()


def _report(args: argparse.Namespace, net) -> int:
    """Load/randomise/save weights as asked, print the table."""
    from landmarknet.build import count_params, net_summary
    from landmarknet.params import load_weights, randomize, save_weights

    report = None
    if args.weights:
        report = load_weights(net, args.weights, fit=fit_from_args(args))
    if args.random_weights is not None:
        randomize(net, args.random_weights)
    if args.save:  # layer parameters from the prototxt as parsed for the build, not re-read
        save_weights(net, args.save, net.net_param)
    if args.emit_python:
        from landmarknet.emit import emit_python
        emit_python(net, args.emit_python, stubs=args.emit_stubs)
    rows = net_summary(net)
    inputs = {i.name: list(i.shape) for i in net.caffe_graph.inputs}
    outputs = {net.caffe_graph.blob_of[t]: list(net.blob_shapes[t])
               for t in net.caffe_graph.outputs()}
    total = count_params(net)
    if args.json:
        print(json_text({"inputs": inputs, "outputs": outputs, "layers": rows, "params": total},
                        indent=1))
    else:
        print_table(rows, total, outputs)
        if report is not None:
            print(textwrap.indent(report.render(), "  "))
        if args.save:
            print(f"saved weights to {args.save}")
        if args.emit_python:
            print(f"wrote {args.emit_python}")
    return 0


def print_table(rows: list[dict], total: int, outputs: dict) -> None:
    """The per-layer table for a terminal."""
    name_w = min(max(len(r["name"]) for r in rows), 40) if rows else 10
    type_w = max((len(r["type"]) for r in rows), default=4)
    print(f"{'layer':<{name_w}}  {'type':<{type_w}}  {'params':>10}  top shapes")
    for r in rows:
        tops = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["tops"].items())
        print(f"{r['name'][:40]:<{name_w}}  {r['type']:<{type_w}}  {r['params']:>10,}  {tops}")
    print(f"{'total':<{name_w}}  {'':<{type_w}}  {total:>10,}  "
          f"outputs: {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in outputs.items())}")
