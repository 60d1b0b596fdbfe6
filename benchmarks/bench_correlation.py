#!/usr/bin/env python3
"""Speed of FlowNet's Correlation layer at FlowNetC's size.

    python benchmarks/bench_correlation.py --threads 2 --repeats 5

FlowNetC correlates two 256-channel maps of 48 x 64 (a 384 x 512 image pair at stride 8) over
21 x 21 displacements (max_displacement 20, stride_2 2, kernel 1, pad 20): 441 output channels.
MULTIPLY runs as one batched matrix product per vertical displacement; SUBTRACT (mean absolute
difference, not a product) still loops over the 441 displacements, so its time is what the
product took before. Median milliseconds of --repeats runs after one warm-up run, inference and
forward + backward.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from landmarknet.fast.timing import time_calls
from landmarknet.layers.optical_flow import Correlation


def _median_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one untimed call."""
    return 1e3 * statistics.median(time_calls({"f": fn}, repeats=repeats, warmup=1)["f"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 256, 48, 64, generator=gen)
    b = torch.randn(1, 256, 48, 64, generator=gen)
    print(f"{'correlation_type':<18}{'inference ms':>14}{'fwd+bwd ms':>12}")
    for subtract in (False, True):
        layer = Correlation(20, 1, 20, 1, 2, subtract)

        def infer():
            with torch.inference_mode():
                layer(a, b)

        def train():
            x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
            layer(x, y).sum().backward()

        name = "SUBTRACT" if subtract else "MULTIPLY"
        print(f"{name:<18}{_median_ms(infer, args.repeats):14.1f}"
              f"{_median_ms(train, args.repeats):12.1f}")


if __name__ == "__main__":
    main()
