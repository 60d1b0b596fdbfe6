#!/usr/bin/env python3
"""One SSD training step: the zoo's MobileNetV2-SSDLite as its training net (MultiBoxLoss).

    python benchmarks/bench_ssd_training.py --device cpu --batch 4 --threads 2
    python benchmarks/bench_ssd_training.py --device cuda --batch 32 --amp

The deploy net's post-processing is replaced by MultiBoxLoss (SSD's settings: PER_PREDICTION
matching at 0.5, MAX_NEGATIVE mining 3:1, CENTER_SIZE), as its training net has it; seeded
random weights, random images, three random boxes per image. Timed: forward + backward + SGD
update of the whole net, and, within it, the loss layer's numpy pass (matching, mining,
encoding), which runs on the CPU whatever the device. Medians over ``--repeats`` steps after
two warm-up steps. ``--shared`` points at the folder holding zoo/ (default: ../shared).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from bench_multibox_loss import random_truth
from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net, to_text
from landmarknet.layers import multibox
from landmarknet.paths import shared_dir

HEAD_ONLY = ("mbox_conf_reshape", "mbox_conf_sigmoid", "mbox_conf_flatten", "detection_out")
LOSS_LAYERS = (
    'name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 1 '
    'dim: 8 } }',
    'name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" '
    'bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss" propagate_down: true '
    'propagate_down: true propagate_down: false propagate_down: false '
    'multibox_loss_param { num_classes: 21 share_location: true match_type: PER_PREDICTION '
    'overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0 '
    'neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE mining_type: MAX_NEGATIVE }')


def training_net_text(deploy: str, batch: int) -> str:
    """The deploy net without its post-processing, MultiBoxLoss after the heads, ``batch``
    images (the net-level input becomes an Input layer when parsed, as in Caffe)."""
    net = parse_net(deploy).net
    keep = [layer for layer in net.layer if layer.name not in HEAD_ONLY]
    del net.layer[:]
    net.layer.extend(keep)
    for layer in net.layer:
        if layer.type == "Input" and "data" in layer.top:
            layer.input_param.shape[0].dim[0] = batch
    for text in LOSS_LAYERS:
        text_format.Parse(text, net.layer.add())
    return to_text(net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--shared", type=Path, help="the folder holding zoo/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = (args.shared or shared_dir()) / "zoo"
    deploy = (zoo / "mobilenetv2_ssdlite_voc" / "deploy.prototxt").read_text()
    path = Path(tempfile.gettempdir()) / "bench_ssdlite_train.prototxt"
    path.write_text(training_net_text(deploy, args.batch))
    net = build_net(path, phase="train", seed=0).to(args.device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    rng = np.random.default_rng(0)
    images = torch.randn(args.batch, 3, 300, 300, device=args.device)
    label = torch.from_numpy(random_truth(rng, args.batch, 3)).to(args.device)
    plan_seconds: list[float] = []
    original = multibox.plan_batch

    def timed_plan(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        plan_seconds.append(time.perf_counter() - t0)
        return out
    multibox.plan_batch = timed_plan
    steps = []
    for i in range(args.repeats + 2):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp):
            loss = net.loss(net.run({"data": images, "label": label}))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            steps.append(time.perf_counter() - t0)
    multibox.plan_batch = original
    step_ms = 1e3 * statistics.median(steps)
    plan_ms = 1e3 * statistics.median(plan_seconds[2:])
    print(f"device {args.device}, batch {args.batch}, amp {args.amp}, threads {args.threads}")
    print("| step ms (fwd+bwd+SGD) | MultiBoxLoss numpy pass ms | share | images/s |")
    print("|---|---|---|---|")
    print(f"| {step_ms:.1f} | {plan_ms:.1f} | {plan_ms / step_ms:.0%} | "
          f"{args.batch / step_ms * 1e3:.1f} |")


if __name__ == "__main__":
    main()
