#!/usr/bin/env python
"""CPU batch-1 latency of every heatmap variant (the speed column of the variant table).

Eager landmarknet, float32, ``torch.inference_mode``, random weights (speed does not depend on
them), the same thread count for all; median of ``--repeats`` after ``--warmup`` calls.

    python benchmarks/bench_variants.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NETS = ["heatmap4_68", "heatmap3_68", "heatmap4_68_dilated", "heatmap4_68_residual",
        "heatmap4_68_head", "heatmap4_68_hourglass", "heatmap4_68_160", "heatmap4_68_bn"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    from landmarknet.build import build_net, count_params
    torch.set_num_threads(args.threads)
    print(f"| net | parameters | CPU batch 1 (ms, median, {args.threads} threads) |")
    print("|---|---|---|")
    for name in NETS:
        net = build_net(ROOT / "prototxt" / name / "deploy.prototxt", phase="test", seed=0).eval()
        x = torch.randn(*net.caffe_graph.inputs[0].shape)
        times = []
        with torch.inference_mode():
            for i in range(args.warmup + args.repeats):
                t0 = time.perf_counter()
                net(x)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
        print(f"| {name} | {count_params(net):,} | {statistics.median(times) * 1e3:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
