"""Fit the detector -> landmarks-box calibrations stored in landmarknet/detect/evaluate.py.

Runs each detector on the TRAIN splits only (never val), matches detections by the points'
centroid, and prints the median centre shift and size ratios as BoxCalibration literals, plus
miss rates and IoU after calibration.

    .venv/bin/python tools/dev/fit_box_calibration.py [--every 3] [--cuhk-every 5]
"""
from __future__ import annotations

import argparse
import json

from landmarknet.data.formats import read_300w_folder, read_celeba
from landmarknet.detect import get_detector
from landmarknet.detect.evaluate import detector_box_stats, fit_box_calibration
from landmarknet.paths import shared_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--every", type=int, default=3, help="use every Nth YTF sample")
    ap.add_argument("--cuhk-every", type=int, default=5, help="use every Nth CUHK sample")
    ap.add_argument("--detectors", default="mtcnn,haar")
    args = ap.parse_args()
    data = shared_dir() / "data"
    sets = {
        68: read_300w_folder(data / "ytf68" / "train", check_images=False)[0][::args.every],
        77: read_300w_folder(data / "ytf77" / "train", check_images=False)[0][::args.every],
        5: read_celeba(data / "cuhk5", partition=0)[0][::args.cuhk_every],
    }
    out = {}
    for name in args.detectors.split(","):
        det = get_detector(name)
        for k, samples in sets.items():
            st = detector_box_stats(samples, det, calibration="none", match="centroid",
                                    max_size_ratio=None, progress=True)
            cal = fit_box_calibration(st)
            after = detector_box_stats(samples, det, calibration=cal)
            row = {"n": st.n, "centroid_miss_rate": st.miss_rate, "calibration": cal.to_list(),
                   "miss_rate": after.miss_rate, "median_iou": after.median_iou,
                   "sec_per_img": st.summary()["seconds_per_image"]}
            out[f"{name}/{k}"] = row
            values = ", ".join(f"{v:.4f}" for v in cal.to_list())
            print(f'    ("{name}", {k}): BoxCalibration({values}),'
                  f"  # {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    main()
