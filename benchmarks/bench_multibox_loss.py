#!/usr/bin/env python3
"""Speed of SSD's MultiBoxLoss at the size of a MobileNet-SSD training batch.

    python benchmarks/bench_multibox_loss.py --threads 2 --repeats 5

The priors are the zoo's MobileNetV2-SSDLite PriorBox output (1,917 boxes at 300x300); the
location and confidence predictions are random (standard normal, 21 classes), the ground truth a
few random boxes per image (VOC has about 2.5). Timed separately: the numpy pass that matches,
mines and encodes (``plan_batch``) and the whole layer forward + backward. Printed per batch
size: median milliseconds after one warm-up call, and milliseconds per image.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from landmarknet.build import build_net
from landmarknet.fast.timing import time_calls
from landmarknet.layers import multibox
from landmarknet.layers.registry import LayerSpec
from landmarknet.paths import shared_dir

PARAMS = ("multibox_loss_param { num_classes: 21 share_location: true match_type: "
          "PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true "
          "background_label_id: 0 neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE "
          "mining_type: MAX_NEGATIVE }")


def _median_ms(fn, repeats: int) -> float:
    return 1e3 * statistics.median(time_calls({"f": fn}, repeats=repeats, warmup=1)["f"])


def _priors() -> np.ndarray:
    net = build_net(shared_dir() / "zoo" / "mobilenetv2_ssdlite_voc" / "deploy.prototxt")
    with torch.inference_mode():
        out = net.run({"data": torch.zeros(1, 3, 300, 300)}, blobs=["mbox_priorbox"])
    return out["mbox_priorbox"].numpy()


def random_truth(rng: np.random.Generator, n: int, per_image: int) -> np.ndarray:
    """(1, 1, n * per_image, 8) ground-truth rows of random boxes and classes 1-20."""
    rows = []
    for i in range(n):
        for _ in range(per_image):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            w, h = rng.uniform(0.1, 0.6, 2)
            rows.append([i, rng.integers(1, 21), 0, cx - w / 2, cy - h / 2, cx + w / 2,
                         cy + h / 2, 0])
    return np.array(rows, np.float32)[None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,8,24")
    ap.add_argument("--boxes", type=int, default=3, help="ground-truth boxes per image")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = _priors()
    n_priors = prior.shape[2] // 4
    print(f"priors {n_priors}, classes 21, {args.boxes} boxes per image, "
          f"{args.threads} threads")
    print(f"{'batch':>6}{'plan ms':>10}{'fwd+bwd ms':>12}{'ms/image':>10}{'matches':>9}"
          f"{'mined':>7}")
    rng = np.random.default_rng(0)
    for n in (int(b) for b in args.batches.split(",")):
        loc = torch.randn(n, n_priors * 4, requires_grad=True)
        conf = torch.randn(n, n_priors * 21, requires_grad=True)
        label = random_truth(rng, n, args.boxes)
        spec = LayerSpec("mbox_loss", "MultiBoxLoss", _layer_param(),
                         [tuple(loc.shape), tuple(conf.shape), prior.shape,
                          label.shape], 1, "train")
        layer = multibox.multibox_loss(spec).module
        cfg = layer.cfg
        arrays = (loc.detach().numpy().reshape(n, n_priors, 1, 4),
                  conf.detach().numpy().reshape(n, n_priors, 21),
                  prior.reshape(2, n_priors, 4), label.reshape(-1, 8))
        plan = multibox.plan_batch(cfg, *arrays, "bench")
        plan_ms = _median_ms(lambda: multibox.plan_batch(cfg, *arrays, "bench"), args.repeats)

        def step():
            loss = layer(loc, conf, torch.from_numpy(prior), torch.from_numpy(label))
            loss.backward()
        total_ms = _median_ms(step, args.repeats)
        print(f"{n:>6}{plan_ms:>10.1f}{total_ms:>12.1f}{total_ms / n:>10.2f}"
              f"{plan.num_matches:>9}{plan.conf_label.size - plan.num_matches:>7}")


def _layer_param():
    from landmarknet.caffe.prototxt import parse_net
    text = ('layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "a" bottom: "b" '
            f'bottom: "c" bottom: "d" top: "mbox_loss" {PARAMS} }}')
    return parse_net(text).net.layer[0]


if __name__ == "__main__":
    main()
