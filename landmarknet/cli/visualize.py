"""``landmarknet visualize``: draw a net (self-contained HTML by default) with per-layer cost.

Shapes, parameters, MACs and activation memory come from the built net, for the phase asked
for. The layout uses Graphviz ``dot`` when it is on PATH and the built-in layered layout
otherwise (``--layout`` picks one); png and pdf are drawn with matplotlib, so no format needs
Graphviz or a browser.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from landmarknet.cli.common import UsageError, add_net_arguments, build_from_args

EXAMPLE = """\
formats:
  html  one offline page: zoomable graph, click a box for its prototxt, sortable table (default)
  svg   the drawing with its legend         png, pdf   the same drawing (matplotlib)
  dot   Graphviz source                     json, csv, md   the per-layer analysis

examples:
  landmarknet visualize prototxt/heatmap4_68/deploy.prototxt -o heatmap4_68.html
  landmarknet visualize train_val.prototxt --phase train --format png -o net.png
  landmarknet visualize deploy.prototxt --format md -o -        # Markdown table to stdout
  landmarknet visualize deploy.prototxt --format csv --input-shape data=1,3,160,160
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    from landmarknet.render import FORMATS
    p = sub.add_parser("visualize", help="draw a net (HTML, SVG, PNG, PDF, DOT) or tabulate its "
                       "per-layer cost (JSON, CSV, Markdown)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_arguments(p)
    p.add_argument("--format", "-f", choices=FORMATS, default=None,
                   help="output format (default: from the -o extension, else html)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file ('-' for stdout, text formats only; default: the "
                        "prototxt's name with the format's extension, in the current folder)")
    p.add_argument("--layout", choices=("auto", "dot", "builtin"), default="auto",
                   help="layout engine: Graphviz dot when installed (auto), or the built-in one")
    p.set_defaults(func=run)


def _pick_format(args: argparse.Namespace) -> str:
    from landmarknet.render import FORMATS
    if args.format:
        return args.format
    if args.output and args.output != "-":
        ext = Path(args.output).suffix.lower().lstrip(".")
        ext = {"htm": "html", "markdown": "md", "gv": "dot"}.get(ext, ext)
        if ext in FORMATS:
            return ext
        if ext:
            raise UsageError(f"cannot tell the format from '{args.output}'; give --format "
                             f"({', '.join(FORMATS)})")
    return "html"


def run(args: argparse.Namespace) -> int:
    """Build, analyse, draw, write."""
    from landmarknet.render import TEXT_FORMATS, render
    from landmarknet.render.layout import dot_available

    fmt = _pick_format(args)
    if args.output == "-" and fmt not in TEXT_FORMATS:
        raise UsageError(f"--format {fmt} is binary; give a file with -o")
    if args.layout == "dot" and not dot_available():
        raise UsageError("--layout dot: Graphviz 'dot' is not on PATH (apt-get install graphviz, "
                         "or leave --layout at auto to use the built-in layout)")
    net = build_from_args(args)
    t0 = time.perf_counter()
    data = render(net, fmt, engine=args.layout)
    seconds = time.perf_counter() - t0
    if args.output == "-":
        sys.stdout.write(data.decode())
        return 0
    out = Path(args.output) if args.output else Path(f"{Path(args.prototxt).stem}.{fmt}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:  # a folder that cannot be made, no permission, a full disk
        raise UsageError(f"-o {out}: cannot write ({exc.strerror or exc})") from None
    engine = ""
    if fmt in ("html", "svg", "png", "pdf"):
        used_dot = args.layout == "dot" or (args.layout == "auto" and dot_available())
        engine = f", layout {'dot' if used_dot else 'built-in'}"
    print(f"wrote {out} ({fmt}, {len(data):,} bytes{engine}, {seconds:.2f} s)")
    return 0
