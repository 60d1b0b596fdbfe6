"""``landmarknet bench``: inference speed of a net in landmarknet (eager and fast), ONNX Runtime
and OpenCV DNN, every backend with the same thread count, timed in the same rounds.

MODEL is an installed bundle's name (``landmarknet models``), a bundle folder (deploy.prototxt +
.caffemodel [+ model.json]) or a .prototxt (seeded random weights). For ONNX Runtime the net is exported to ONNX, for OpenCV DNN its weights are
read from the bundle's .caffemodel (or written to one), both in a temporary folder. Each batch
size is timed after --warmup calls per backend, --repeats rounds in which every backend runs
once; the median is reported, with the largest relative output difference from eager. A backend
that cannot run is reported as skipped, with the reason. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import sys

from landmarknet.cli.common import UsageError, add_memory_argument, memory_budget

EXAMPLE = """\
examples:
  landmarknet bench heatmap4_68
  landmarknet bench squeeze77 --batch 1,32 --threads 2 --json
  landmarknet bench prototxt/heatmap3_68/deploy.prototxt --backends eager,fast --repeats 5
  landmarknet bench heatmap4_68 --device cuda --batch 1,256 --mode fast
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    from landmarknet.bench import BACKENDS
    p = sub.add_parser("bench", help="inference speed: landmarknet eager/fast, ONNX Runtime, "
                       "OpenCV DNN", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL|NET.prototxt",
                   help="an installed bundle's name, a bundle folder, or a .prototxt (random "
                        "weights)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where landmarknet runs (ONNX Runtime and OpenCV: CPU only)")
    p.add_argument("--batch", default="1,32", metavar="1,32,...",
                   help="batch sizes (default 1,32)")
    p.add_argument("--backends", default=",".join(BACKENDS), metavar="LIST",
                   help=f"comma-separated, from {', '.join(BACKENDS)} (default all)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every backend (default: torch's, = cores)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a batch size after this long (at least one round)")
    p.add_argument("--mode", default="auto",
                   help="landmarknet fast mode: auto (default: the fastest of its candidates, "
                        "measured), auto-compile (torch.compile among them), fast, or flags "
                        "such as inference+channels_last+tune (see landmarknet.fast)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and random weights")
    p.add_argument("--json", action="store_true",
                   help='print {"rows": [{"backend", "device", "batch", "dtype", "median_ms", '
                        '"images_per_s", ...}]} instead of a table')
    p.add_argument("-v", "--verbose", action="store_true", help="say what is being done")
    add_memory_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse, benchmark, print."""
    from landmarknet.bench import (BenchError, environment, load_model, parse_batches,
                                   render_table, rows_json, run_bench)
    from landmarknet.fast import FastError, parse_mode

    try:
        batches = parse_batches(args.batch)
    except BenchError as exc:
        raise UsageError(str(exc)) from None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        raise UsageError("--backends is empty")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be at least 1 and --warmup at least 0")
    if args.mode not in ("auto", "auto-compile"):
        try:
            parse_mode(args.mode, args.device)
        except FastError as exc:
            raise UsageError(f"--mode: {exc}") from None
    log = (lambda s: print(s, file=sys.stderr)) if args.verbose else None
    with memory_budget(args):
        model = load_model(args.model, seed=args.seed)
    rows = run_bench(model, device=args.device, batches=batches, backends=backends,
                     threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                     max_seconds=args.max_seconds, mode=args.mode, seed=args.seed, log=log)
    env = environment(args.threads)
    if args.json:
        print(rows_json(rows, net=model.name, prototxt=str(model.prototxt),
                        weights=None if model.weights is None else str(model.weights),
                        macs_per_image=model.macs_per_image, environment=env))
        return 0
    weights = model.weights or f"random (seed {args.seed})"
    print(f"net {model.name}: {model.prototxt}, weights {weights}, "
          f"{model.macs_per_image / 1e9:.3g} GMACs/image")
    print(f"{env['cpu']}, {env['threads']} thread(s); torch {env['torch']}, OpenCV {env['cv2']}, "
          f"onnxruntime {env['onnxruntime']}")
    ratio = "opencv dnn" if any(r.backend == "opencv dnn" and r.median_ms for r in rows) \
        else "landmarknet eager"
    print(render_table(rows, ratio_to=ratio))
    return 0
