#!/usr/bin/env python
"""NME with a face detector's boxes beside NME with ground-truth boxes, and the miss rate.

For each (model bundle, data set, detector): the detector runs on every image through
landmarknet (MTCNN through our Caffe importer; OpenCV's Haar cascade), its box is matched to
the annotated face, calibrated and cropped exactly as at inference; the model's NME on those
crops is printed beside its NME on crops from the ground-truth landmarks' box. One markdown
table (the one in docs/results.md):

    python benchmarks/detector_nme.py                     # the default 68- and 5-point models
    python benchmarks/detector_nme.py --models heatmap4_68 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from landmarknet.paths import shared_dir

#: bundle -> (data set, CelebA partition or None) it is measured on
SETS = {"heatmap4_68_bn": ("ytf68/val", None), "heatmap4_68": ("ytf68/val", None),
        "heatmap4_5": ("cuhk5", "val")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="heatmap4_68_bn,heatmap4_5",
                    help=f"installed bundle names, comma-separated (known: {', '.join(SETS)})")
    ap.add_argument("--detectors", default="mtcnn,haar")
    ap.add_argument("--limit", type=int, help="first N faces of each set (quick look)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from landmarknet.data.dataset import read_samples
    from landmarknet.detect.evaluate import detector_box_stats, nme_detector_vs_gt
    from landmarknet.models import load_bundle

    names = args.models.split(",")
    unknown = [n for n in names if n not in SETS]
    if unknown:
        ap.error(f"--models: no data set known for {', '.join(unknown)} (known: {', '.join(SETS)})")
    rows = []
    for name in names:
        split, part = SETS[name]
        model = load_bundle(name)
        samples, _ = read_samples(shared_dir() / "data" / split, part, model.scheme.n_points)
        samples = samples[:args.limit] if args.limit else samples
        for det in args.detectors.split(","):
            stats = detector_box_stats(samples, det)
            res = nme_detector_vs_gt(samples, model, stats)
            rows.append({"model": name, "set": split + (" partition 1" if part else ""),
                         "detector": det, **{k: res[k] for k in ("n", "n_found", "miss_rate")},
                         "gt": res["gt"], "detector_boxes": res["detector_boxes"],
                         "gt_on_found": res["gt_on_found"]})
            print(f"done {name} {split} {det}", file=sys.stderr, flush=True)
    print("| model | set | detector | n | miss rate | NME_io GT boxes | NME_io detector boxes "
          "| AUC@0.08 GT / det | FR@0.10 GT / det |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, d = r["gt"], r["detector_boxes"]
        print(f"| {r['model']} | {r['set']} | {r['detector']} | {r['n']} | "
              f"{r['miss_rate']:.1%} | {g['nme_io']:.4f} | {d['nme_io']:.4f} | "
              f"{g['auc08']:.3f} / {d['auc08']:.3f} | {g['fr10']:.3f} / {d['fr10']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
