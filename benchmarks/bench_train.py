#!/usr/bin/env python
"""Training throughput: the full input pipeline against data already in GPU memory.

For one solver and data folder, times ``Trainer.step`` (forward, backward, Caffe update; bf16
autocast and channels_last on CUDA) fed three ways, in one process:

* ``resident``: one batch made beforehand and fed again and again (no input work at all: the
  ceiling the pipeline is compared with);
* ``device``: crops warped and augmented on the GPU (data/device_pipeline.py);
* ``cpu``: the DataLoader with ``--workers`` processes (OpenCV decode, warp, augment).

A mode with ``+compile`` (e.g. ``resident+compile``) also wraps the net in ``torch.compile``.

Prints one table (median of ``--repeats`` timed windows of ``--steps`` steps, after warm-up)
and the pipeline / resident ratios. Example (H200):

    python benchmarks/bench_train.py --solver prototxt/heatmap4_68/solver.prototxt \\
        --data ../shared/data/ytf68/train --device cuda --batch 32,128 --workers 14
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from landmarknet.data.transforms import Augment
from landmarknet.train import TrainConfig, Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(tr: Trainer, batches, steps: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per step of ``repeats`` windows of ``steps`` steps each."""
    for _ in range(warmup):
        tr.step(0, batches)
    out = []
    for _ in range(repeats):
        sync(tr.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.step(0, batches)
        sync(tr.device)
        out.append((time.perf_counter() - t0) / steps)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solver", type=Path, default=Path("prototxt/heatmap4_68/solver.prototxt"))
    ap.add_argument("--data", type=Path, required=True, help="training folder (300W or CelebA)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="32", help="comma-separated batch sizes")
    ap.add_argument("--workers", type=int, default=14, help="CPU pipeline's loader processes")
    ap.add_argument("--steps", type=int, default=50, help="steps per timed window")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--modes", default="resident,device,cpu")
    ap.add_argument("--limit", type=int, help="use only the first N training samples")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        for spec in args.modes.split(","):
            mode, _, extra = spec.partition("+")
            cfg = TrainConfig(solver=args.solver, data=args.data, val=None, device=args.device,
                              amp=cuda, channels_last=cuda, batch_size=batch,
                              workers=args.workers, progress=False, bundle=False,
                              pipeline="cpu" if mode == "cpu" else "device",
                              augment=Augment(), train_limit=args.limit,
                              compile=extra == "compile",
                              out=Path("/tmp/bench_train"))
            tr = Trainer(cfg)
            feed = iter(tr.batch_source())
            if mode == "resident":
                fixed = next(feed)
                feed = itertools.repeat(fixed)
            per_step = time_steps(tr, feed, args.steps, args.repeats, args.warmup)
            med = statistics.median(per_step)
            rows.append({"batch": batch, "mode": spec, "ms_per_step": med * 1e3,
                         "images_per_s": batch / med,
                         "spread": (max(per_step) - min(per_step)) / med})
            del tr, feed
            if cuda:
                torch.cuda.empty_cache()
    print(f"\ntraining throughput: {args.solver} on {args.data}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    print("| batch | input | ms/step (median) | images/s | vs resident | spread |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = next((q for q in rows if q["batch"] == r["batch"] and q["mode"] == "resident"),
                    None)
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
        print(f"| {r['batch']} | {r['mode']} | {r['ms_per_step']:.2f} | "
              f"{r['images_per_s']:.0f} | {ratio} | {r['spread']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
