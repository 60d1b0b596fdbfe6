"""``landmarknet forward``: run a net in the TEST phase on pictures or .npy inputs, save the blobs.

Pictures become input blobs as ``cv2.dnn.blobFromImage`` makes them (``--size``, ``--mean``,
``--scale``, ``--swap-rb``, ``--crop``: the same numbers, see landmarknet/preprocess.py), so a
net that ran under OpenCV's Caffe importer runs here with the pre-processing it had; a
detector's rows (SSD's DetectionOutput, the YOLO heads) are printed in the picture's pixels.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from landmarknet.cli.common import (UsageError, add_fit_arguments, add_net_arguments,
                                    build_from_args, fit_from_args, graph_from_args,
                                    load_npy_inputs, memory_budget)
from landmarknet.cli.pictures import (DETECTION_ROW_TYPES, draw_detections, image_inputs,
                                      print_detections, read_labels)

EXAMPLE = """\
examples:
  landmarknet forward zoo/det1.prototxt --weights det1.caffemodel \\
      --input data=face.npy --output out.npz --blobs conv1,prob1
  # OpenCV's face detector, pre-processed as blobFromImage(img, 1.0, (300, 300), (104, 177, 123))
  landmarknet forward deploy.prototxt --weights res10_300x300_ssd_iter_140000.caffemodel \\
      --image photo.jpg --size 300,300 --mean 104,177,123
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
    pictures = p.add_argument_group(
        "pictures as inputs (cv2.dnn.blobFromImage's steps: resize, subtract --mean, "
        "multiply by --scale, swap channels)")
    pictures.add_argument("--image", action="append", default=[], metavar="[NAME=]FILE",
                          help="a picture for input NAME (default: the net's first input); "
                          "repeat for a batch or for other inputs")
    pictures.add_argument("--size", type=_pair, metavar="W,H",
                          help="resize to width,height (default: the input's declared size, "
                          "else the picture's own)")
    pictures.add_argument("--mean", type=_numbers, default=[0.0], metavar="M[,M,M]",
                          help="subtracted per channel, in the blob's channel order (after "
                          "--swap-rb); one number: every channel (OpenCV's Python binding "
                          "would subtract it from the first channel only)")
    pictures.add_argument("--scale", type=float, default=1.0,
                          help="multiplies the pixels after the mean (default 1)")
    pictures.add_argument("--swap-rb", action="store_true",
                          help="BGR pictures -> RGB blobs")
    pictures.add_argument("--crop", action="store_true",
                          help="keep the aspect ratio: scale so the picture covers --size, "
                          "then cut the centre")
    pictures.add_argument("--labels", type=Path, metavar="FILE",
                          help="class names for a detector's rows: an SSD label map "
                          "(labelmap_voc.prototxt) or a list whose line i names label i")
    pictures.add_argument("--draw", type=Path, metavar="OUT.png",
                          help="write the picture with the detector's boxes (OUT_<i>.png "
                          "for several pictures)")
    pictures.add_argument("--threshold", type=float, default=0.5,
                          help="smallest score --draw draws (default 0.5)")
    p.add_argument("--output", type=Path, default=Path("forward.npz"),
                   help="where to save the blobs (default forward.npz)")
    p.add_argument("--blobs", help="comma-separated blob names to save (default: the outputs, "
                   "i.e. every top no layer consumes)")
    add_fit_arguments(p)
    p.set_defaults(func=run)


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")


def _pair(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTH,HEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"expected two positive numbers, got {text!r}")
    return w, h


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
    geometries: dict = {}
    if (args.labels or args.draw) and not args.image:
        raise UsageError("--labels and --draw name and draw a detector's boxes on pictures "
                         "given with --image")
    labels = read_labels(args.labels) if args.labels else None
    if args.image:
        graph = graph_from_args(args)
        if args.draw and not any(n.type in DETECTION_ROW_TYPES for n in graph.nodes):
            raise UsageError("--draw: the net has no detector top (DetectionOutput or a YOLO "
                             "head) whose boxes could be drawn")
        pictures, geometries, loaded = image_inputs(args, graph)
        clash = sorted(set(pictures) & set(inputs))
        if clash:
            raise UsageError(f"input {clash[0]!r} is given both by --image and by --input")
        inputs.update(pictures)
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
        extent = f"min {v.min():+.5g}  max {v.max():+.5g}" if v.size else "empty"
        print(f"{k:<30} {'x'.join(map(str, v.shape)):<18} {extent}")
    if geometries:
        rows = print_detections(net, arrays, geometries, labels)
        if args.draw:
            images = next(iter(loaded.values()))  # rows exist only with one picture input
            for path in draw_detections(args.draw, images, rows, args.threshold, labels):
                print(f"drew the boxes of score >= {args.threshold:g} on {path}")
    print(f"saved {len(arrays)} blob(s) to {args.output}")
    return 0
