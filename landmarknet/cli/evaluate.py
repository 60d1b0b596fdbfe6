"""``landmarknet evaluate``: NME (inter-ocular, inter-pupil, box, thesis), AUC, FR, CED of a
model bundle on annotated faces, cropped from the ground-truth landmarks' box."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from landmarknet.cli.common import add_memory_argument, json_text, memory_budget, pixels_arg

EXAMPLE = """\
examples:
  landmarknet evaluate heatmap4_68 --data ../shared/data/ytf68/val --plot ced.png
  landmarknet evaluate heatmap4_5 --data ../shared/data/cuhk5 --partition val --json
  landmarknet evaluate runs/my_bundle --data ../shared/data/ytf68/val
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("evaluate", help="NME / AUC / failure rate / CED of a model bundle",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="an installed bundle's name (`landmarknet "
                   "models` lists them) or a bundle folder (deploy.prototxt, .caffemodel, "
                   "model.json)")
    p.add_argument("--data", type=Path, required=True,
                   help="a 300W folder (image + .pts) or a CelebA root")
    p.add_argument("--partition", default="val", help="CelebA partition: train, val, test "
                   "(default val)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|auto",
                   help="where the net runs (default cpu; auto: cuda when torch sees a GPU); "
                        "crops are cut on the CPU and go to the device once per --batch")
    p.add_argument("--batch", type=int, default=64, help="faces per forward pass")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--flip-test", choices=("on", "off"),
                   help="average with the mirrored crop's prediction (default: model.json's "
                        "output.flip_test)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the CED curve")
    p.add_argument("--save-points", type=Path, metavar="NPZ",
                   help="write predictions, ground truth and per-face NME")
    p.add_argument("--max-pixels", type=pixels_arg, default=None, metavar="N",
                   help="skip images larger than N pixels, from the file's header before "
                        "decoding (default 100000000; 'none': no limit)")
    add_memory_argument(p)
    p.set_defaults(func=run)


def evaluate_bundle(model, samples, batch: int = 64, max_pixels: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, list]:
    """Predicted and true points (N, K, 2) in image pixels, and the bad-sample messages."""
    import cv2

    from landmarknet.data.transforms import points_box
    from landmarknet.detect import ImageError
    from landmarknet.detect.images import DEFAULT_MAX_PIXELS, check_pixels, header_pixels
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    preds, gts, bad = [], [], []
    chunk: list = []

    def flush():
        if not chunk:
            return
        data = np.concatenate([c[0] for c in chunk])
        geoms = [c[1][0] for c in chunk]
        pts, _, _ = model.run(data)
        preds.append(model.to_image(pts, geoms))
        gts.append(np.stack([c[2] for c in chunk]))
        chunk.clear()

    for s in samples:
        header = header_pixels(s.image_path)
        try:
            if header is not None:
                check_pixels(s.image_path, header[0], header[1], max_pixels)
        except ImageError as exc:
            bad.append(str(exc))
            continue
        img = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        if img is not None and max_pixels and img.shape[0] * img.shape[1] > max_pixels:
            bad.append(f"{s.image_path}: {img.shape[1]} x {img.shape[0]} pixels, more than "
                       f"--max-pixels {max_pixels:,}")
            continue
        if img is None:
            bad.append(f"{s.image_path}: cannot be decoded")
            continue
        box = np.array([points_box(s.points)])
        data, geoms, _ = model.prepare(img, box)
        chunk.append((data, geoms, s.points.astype(np.float64)))
        if len(chunk) >= batch:
            flush()
    flush()
    k = model.scheme.n_points
    if not preds:
        return np.zeros((0, k, 2)), np.zeros((0, k, 2)), bad
    return np.concatenate(preds), np.concatenate(gts), bad


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (or --json) the metrics."""
    from landmarknet.data.dataset import is_celeba, read_samples
    from landmarknet.metrics import evaluate_points, nme, plot_ced
    from landmarknet.detect import resolve_device
    from landmarknet.models import load_bundle

    device = resolve_device(args.device)
    with memory_budget(args):
        model = load_bundle(args.model, device=device)
    if args.flip_test:
        model.spec.flip_test = args.flip_test == "on"
    part = args.partition if is_celeba(args.data) else None
    samples, report = read_samples(args.data, part, model.scheme.n_points)
    pred, gt, bad = evaluate_bundle(model, samples, args.batch, args.max_pixels)
    from landmarknet.data.transforms import points_box
    boxes = np.array([points_box(p) for p in gt])
    m = evaluate_points(pred, gt, model.scheme, boxes)
    m["model"] = model.name
    m["data"] = str(args.data)
    m["skipped"] = report.n_bad + len(bad)
    if args.plot:
        plot_ced({model.name: nme(pred, gt, model.scheme, "io")}, args.plot)
    if args.save_points:
        np.savez(args.save_points, pred=pred, gt=gt, nme_io=nme(pred, gt, model.scheme, "io"))
    if args.json:
        print(json_text(m, indent=1))
    else:
        print(f"{model.name} on {args.data}: {m['n']} faces ({m['skipped']} skipped)")
        for key in ("nme_io", "nme_ip", "nme_box", "nme_thesis", "auc08", "auc10", "fr08",
                    "fr10"):
            print(f"  {key:<10} {m[key]:.4f}")
        for region, v in m["per_region"].items():
            print(f"  {'  ' + region:<10} {v:.4f}")
        if args.plot:
            print(f"CED curve: {args.plot}")
    if report.n_bad and not args.json:
        print(f"data: {report.summary()}", file=sys.stderr)
    return 0
