"""MTCNN timing on the shipped sample (512x512): whole detect() and each stage.

    .venv/bin/python benchmarks/bench_mtcnn.py [--threads 2] [--repeat 20] [--image PATH]

Prints a table of median / min wall time and process CPU time per call. Never fails on a timing.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import torch

from landmarknet.detect.mtcnn import MTCNN

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int):
    wall, cpu, out = [], [], None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--image", type=Path, default=ROOT / "samples" / "astronaut.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = cv2.imread(str(args.image))
    t0 = time.perf_counter()
    det = MTCNN()
    load_s = time.perf_counter() - t0
    det.detect(image)  # warm-up: oneDNN primitives per shape
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rows = []
    w, c, faces = timed(lambda: det.detect(image), args.repeat)
    rows.append(("detect (all stages)", w, c))
    w, c, b1 = timed(lambda: det.stage1(rgb), args.repeat)
    levels = len(det.scales(*image.shape[:2]))
    rows.append((f"P-Net pyramid ({levels} levels, {len(b1)} boxes)", w, c))
    w, c, b2 = timed(lambda: det.stage2(rgb, b1), args.repeat)
    rows.append((f"R-Net ({len(b1)} crops -> {len(b2)})", w, c))
    w, c, _ = timed(lambda: det.stage3(rgb, b2), args.repeat)
    rows.append((f"O-Net ({len(b2)} crops)", w, c))
    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, torch threads "
          f"{torch.get_num_threads()}, {len(faces)} face(s); nets loaded in {load_s:.2f} s")
    print(f"{'step':<42} {'median ms':>10} {'min ms':>8} {'cpu ms':>8}")
    for name, w, c in rows:
        print(f"{name:<42} {1e3 * statistics.median(w):>10.1f} {1e3 * min(w):>8.1f} "
              f"{1e3 * statistics.median(c):>8.1f}")


if __name__ == "__main__":
    main()
