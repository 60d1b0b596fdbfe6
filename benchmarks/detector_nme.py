#!/usr/bin/env python
"""NME with a face detector's boxes beside NME with ground-truth boxes, and the miss rate.

For each (model bundle, data set, detector): the detector runs on every image through
landmarknet (MTCNN through our Caffe importer; OpenCV's Haar cascade), its box is matched to
the annotated face, calibrated and cropped exactly as at inference; the model's NME on those
crops is printed beside its NME on crops from the ground-truth landmarks' box. One markdown
table (the one in docs/results.md):

    python benchmarks/detector_nme.py                     # the default 68- and 5-point models
    python benchmarks/detector_nme.py --models heatmap4_68 --json out.json

Rotated faces (aligned crops, issue 15): ``--rotate DEG`` turns every image about its centre on
an expanded canvas, and its points with the same affine (copies in a temporary folder, deleted
afterwards); ``--every N`` keeps every N-th face; ``--no-align`` crops upright as before;
``--turns`` has MTCNN also search the image turned by quarter turns (faces at any roll):

    python benchmarks/detector_nme.py --models heatmap4_68_bn --detectors mtcnn --rotate 90 --turns
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from landmarknet.paths import shared_dir

#: landmark scheme (points) -> (data set, CelebA partition or None) a bundle is measured on
SETS = {68: ("ytf68/val", None), 77: ("ytf77/val", None), 5: ("cuhk5", "val")}
#: the quarter turns ``--turns`` has MTCNN search
TURNS = (0, 90, 180, 270)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="heatmap4_68_bn,heatmap4_5",
                    help="installed bundle names, comma-separated (measured on the val split "
                         "of their scheme's set: ytf68, ytf77 or cuhk5)")
    ap.add_argument("--detectors", default="mtcnn,haar")
    ap.add_argument("--limit", type=int, help="first N faces of each set (quick look)")
    ap.add_argument("--every", type=int, default=1, metavar="N",
                    help="keep every N-th face (a fixed subset: faces 0, N, 2N, ...)")
    ap.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                    help="turn every image (and its points) by DEG degrees counter-clockwise")
    ap.add_argument("--no-align", action="store_true",
                    help="upright crops from detector boxes (no eye-point alignment)")
    ap.add_argument("--turns", action="store_true",
                    help="MTCNN also searches the image turned by 90, 180 and 270 degrees")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from landmarknet.data.dataset import read_samples
    from landmarknet.detect import get_detector
    from landmarknet.detect.evaluate import detector_box_stats, nme_detector_vs_gt
    from landmarknet.models import load_bundle

    names = args.models.split(",")
    rows = []
    for name in names:
        model = load_bundle(name)
        if model.scheme.n_points not in SETS:
            ap.error(f"--models: {name} has {model.scheme.n_points} points; no val set for that")
        split, part = SETS[model.scheme.n_points]
        samples, _ = read_samples(shared_dir() / "data" / split, part, model.scheme.n_points)
        samples = samples[::args.every]
        samples = samples[:args.limit] if args.limit else samples
        with tempfile.TemporaryDirectory(prefix="rotated_") as tmp:
            if args.rotate:
                samples = rotated_samples(samples, args.rotate, Path(tmp))
            for det in args.detectors.split(","):
                turns = {"turns": TURNS} if args.turns and det == "mtcnn" else {}
                stats = detector_box_stats(samples, get_detector(det, **turns))
                res = nme_detector_vs_gt(samples, model, stats, align=not args.no_align)
                rows.append(_row(name, split, part, det, args, res))
                print(f"done {name} {split} {det}", file=sys.stderr, flush=True)
    print("| model | set | detector | turns | rotate | align | n | miss rate | NME_io GT boxes "
          "| NME_io detector boxes | AUC@0.08 GT / det | FR@0.10 GT / det |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, d = r["gt"], r.get("detector_boxes")
        det_cols = (f"{d['nme_io']:.4f} | {g['auc08']:.3f} / {d['auc08']:.3f} | "
                    f"{g['fr10']:.3f} / {d['fr10']:.3f}") if d else "- | - | -"
        print(f"| {r['model']} | {r['set']} | {r['detector']} | {'yes' if r['turns'] else 'no'} | "
              f"{r['rotate']:g} | "
              f"{'yes' if r['align'] else 'no'} | {r['n']} | {r['miss_rate']:.1%} | "
              f"{g['nme_io']:.4f} | {det_cols} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


def rotated_samples(samples: list, degrees: float, folder: Path) -> list:
    """Copies of the samples turned by ``degrees`` (expanded canvas), written under ``folder``."""
    import cv2
    import numpy as np

    from landmarknet.data.crop import rotate_expanded
    from landmarknet.data.formats import Sample
    from landmarknet.detect.images import read_image

    out = []
    for i, s in enumerate(samples):
        image, m = rotate_expanded(read_image(s.image_path).image, degrees)
        path = folder / f"{i:05d}_{s.image_path.stem}.png"
        cv2.imwrite(str(path), image)
        pts = np.asarray(s.points, np.float64) @ m[:, :2].T + m[:, 2]
        out.append(Sample(path, pts))
    return out


def _row(name: str, split: str, part, det: str, args, res: dict) -> dict:
    return {"model": name, "set": split + (" partition 1" if part else ""), "detector": det,
            "rotate": args.rotate, "align": not args.no_align, "every": args.every,
            "turns": bool(args.turns and det == "mtcnn"),
            **{k: res[k] for k in ("n", "n_found", "miss_rate")}, "gt": res["gt"],
            "detector_boxes": res.get("detector_boxes"), "gt_on_found": res.get("gt_on_found")}


if __name__ == "__main__":
    sys.exit(main())
