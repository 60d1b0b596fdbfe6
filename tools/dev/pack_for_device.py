#!/usr/bin/env python3
"""Copy a 300W-layout data set into .devcarry/ (git-ignored) for a device run, re-encoded smaller.

Only the repository travels to the device machine (64 MiB per call), so the JPEGs are re-encoded
at a lower quality; the .pts files are copied as they are. The copy is for the run only: it is
ignored by git and never committed (data sets stay in ../shared).

    python tools/dev/pack_for_device.py ytf68 --quality 88
    python tools/dev/pack_for_device.py cuhk5 --quality 80 --scale 0.5
    python tools/dev/pack_for_device.py ytf77 --pts-only   # its images are ytf68's

``--pts-only`` copies the .pts files alone, for a set whose images another packed set already
holds (ytf77's are ytf68's, byte for byte): on the device, ``tools/dev/link_images.sh`` links
them in.

A CelebA-layout set (cuhk5) is resized by ``--scale`` (its faces are large: a 112-pixel crop
of 5 points shrinks them about 2x anyway); its landmark and box lists are rewritten to match
(pixel centres at integers: ``x' = (x + 0.5) * scale - 0.5``). NME is scale-free; the published
numbers are computed on the original files.
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
    ap.add_argument("--scale", type=float, default=1.0, help="resize factor (CelebA layout)")
    ap.add_argument("--pts-only", action="store_true", help="copy the .pts files, no images")
    args = ap.parse_args()
    src = shared_dir() / "data" / args.name
    dst = Path(__file__).resolve().parents[2] / ".devcarry" / args.name
    if (src / "list_landmarks_celeba.txt").is_file():
        pack_celeba(src, dst, args.quality, args.scale)
        return
    total = 0
    for pts in sorted(src.rglob("*.pts")):
        out = dst / pts.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pts, out)
        total += pts.stat().st_size
        if args.pts_only:
            continue
        image = next((pts.with_suffix(e) for e in (".jpg", ".png") if pts.with_suffix(e).exists()))
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(image)), [cv2.IMWRITE_JPEG_QUALITY,
                                                                args.quality])
        out.with_suffix(".jpg").write_bytes(buf.tobytes())
        total += len(buf)
    print(f"{dst}: {total / 2**20:.1f} MiB")


def pack_celeba(src: Path, dst: Path, quality: int, scale: float) -> None:
    """Resize and re-encode a CelebA root's images; rewrite the coordinate lists to match."""
    (dst / "img").mkdir(parents=True, exist_ok=True)
    total = 0
    for image in sorted((src / "img").iterdir()):
        im = cv2.imread(str(image))
        if scale != 1.0:
            im = cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])
        (dst / "img" / image.name).write_bytes(buf.tobytes())
        total += len(buf)
    for name, size_cols in (("list_landmarks_celeba.txt", False), ("list_bbox_celeba.txt", True)):
        lines = (src / name).read_text().splitlines()
        out = lines[:2]
        for line in lines[2:]:
            parts = line.split()
            if not parts:
                continue
            vals = [float(v) for v in parts[1:]]
            if size_cols:  # x, y, w, h
                vals = [(vals[0] + 0.5) * scale - 0.5, (vals[1] + 0.5) * scale - 0.5,
                        vals[2] * scale, vals[3] * scale]
            else:
                vals = [(v + 0.5) * scale - 0.5 for v in vals]
            out.append(parts[0] + " " + " ".join(f"{v:.3f}" for v in vals))
        (dst / name).write_text("\n".join(out) + "\n")
    shutil.copyfile(src / "list_eval_partition.txt", dst / "list_eval_partition.txt")
    print(f"{dst}: {total / 2**20:.1f} MiB of images")


if __name__ == "__main__":
    main()
