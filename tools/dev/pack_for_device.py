#!/usr/bin/env python3
"""Copy a 300W-layout data set into .devcarry/ (git-ignored) for a device run, re-encoded smaller.

Only the repository travels to the device machine (64 MiB per call), so the JPEGs are re-encoded
at a lower quality; the .pts files are copied as they are. The copy is for the run only: it is
ignored by git and never committed (data sets stay in ../shared).

    python tools/dev/pack_for_device.py ytf68 --quality 88
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

from landmarknet.paths import shared_dir


def main() -> None:
    """Re-encode every image of the named data set's splits into .devcarry/<name>/."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="folder under ../shared/data (300W layout splits inside)")
    ap.add_argument("--quality", type=int, default=88)
    args = ap.parse_args()
    src = shared_dir() / "data" / args.name
    dst = Path(__file__).resolve().parents[2] / ".devcarry" / args.name
    total = 0
    for pts in sorted(src.rglob("*.pts")):
        out = dst / pts.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pts, out)
        image = next((pts.with_suffix(e) for e in (".jpg", ".png") if pts.with_suffix(e).exists()))
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(image)), [cv2.IMWRITE_JPEG_QUALITY,
                                                                args.quality])
        out.with_suffix(".jpg").write_bytes(buf.tobytes())
        total += len(buf) + pts.stat().st_size
    print(f"{dst}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
