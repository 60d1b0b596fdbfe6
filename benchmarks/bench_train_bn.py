#!/usr/bin/env python
"""Training step cost of Caffe's BatchNorm: the fused kernel against the written-out formula.

``CaffeBatchNorm`` in TRAIN mode normalises with PyTorch's fused batch norm (one kernel forward,
one backward) and adds the batch statistics to Caffe's blobs. This times a forward + backward of
a train net (random inputs and targets; bf16 autocast and channels_last on CUDA) with that
implementation and with the formula written out in tensor operations (``(x - mean) /
sqrt(var + eps)``, mean and biased variance by reductions: what landmarknet did before), and
the same net without BatchNorm for scale. Median of ``--repeats`` windows of ``--steps`` steps.

    python benchmarks/bench_train_bn.py --device cuda --batch 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from landmarknet.layers.norm import CaffeBatchNorm

ROOT = Path(__file__).resolve().parents[1]


def formula_forward(self: CaffeBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """TRAIN-mode BatchNorm as tensor operations (the reference being timed against)."""
    dims = [0] + list(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dim=dims)
    var = (x - mean.view(view)).square().mean(dim=dims)
    m = x.numel() // x.shape[1]
    self._accumulate(mean, var * (m / (m - 1)))
    return (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)


def time_net(net_name: str, batch: int, device: torch.device, steps: int, repeats: int,
             warmup: int) -> float:
    from landmarknet.build import build_net
    path = ROOT / "prototxt" / net_name / "train_val.prototxt"
    probe = build_net(path, phase="train", seed=0)
    shapes = {i.name: (batch,) + tuple(i.shape[1:]) for i in probe.caffe_graph.inputs}
    net = build_net(path, phase="train", input_shapes=shapes, seed=0, device=device).train()
    cuda = device.type == "cuda"
    if cuda:
        net.to(memory_format=torch.channels_last)
    inputs = [torch.rand(s, device=device) for s in shapes.values()]
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    def step():
        with ctx():
            loss = net.loss(net(*inputs))
        loss.backward()
        net.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t0) / steps)
    return statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fused = CaffeBatchNorm.forward
    rows = []
    for label, net, impl in (("heatmap4_68 (no BatchNorm)", "heatmap4_68", fused),
                             ("heatmap4_68_bn, formula", "heatmap4_68_bn", formula_forward),
                             ("heatmap4_68_bn, fused", "heatmap4_68_bn", fused)):
        CaffeBatchNorm.forward = impl
        try:
            t = time_net(net, args.batch, device, args.steps, args.repeats, args.warmup)
        finally:
            CaffeBatchNorm.forward = fused
        rows.append((label, t))
    base = rows[0][1]
    print(f"| net, BatchNorm | ms per step (fwd+bwd, batch {args.batch}, {device}) | "
          "vs no BatchNorm |")
    print("|---|---|---|")
    for label, t in rows:
        print(f"| {label} | {t * 1e3:.1f} | {t / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
