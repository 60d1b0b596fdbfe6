#!/usr/bin/env python3
"""Speed of the R-CNN family's layers at the sizes of real nets (VGG16 Faster R-CNN, R-FCN).

    python benchmarks/bench_roi.py --threads 2 --repeats 5

Each layer is built from a one-layer prototxt and timed on seeded inputs: ROIPooling on a VGG16
conv5 map (1 x 512 x 38 x 50, a 600 x 800 image at stride 16) with 300 regions, in inference
and with the gradient (forward + backward); PSROIPooling on R-FCN's class-score map (21 classes x
7 x 7 groups) with 300 regions; the Proposal layer on the RPN outputs of the same map (9 anchors,
17,100 boxes before the cut, 6000 into the NMS, 300 out). Median milliseconds of --repeats runs
after one warm-up run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net

H, W, STRIDE, REGIONS = 38, 50, 16, 300


def _net(layer: str, inputs: dict[str, tuple[int, ...]]):
    text = "".join(f'input: "{n}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                   for n, s in inputs.items())
    return build_net(parse_net(text + layer, path="bench.prototxt")).eval()


def _regions(rng: np.random.Generator) -> torch.Tensor:
    """Regions of 16 px to half the image, inside the image."""
    img_h, img_w = H * STRIDE, W * STRIDE
    wh = rng.uniform(16, [img_w / 2, img_h / 2], (REGIONS, 2))
    xy = rng.uniform(0, 1, (REGIONS, 2)) * ([img_w, img_h] - wh)
    rows = np.concatenate([np.zeros((REGIONS, 1)), xy, xy + wh], axis=1)
    return torch.from_numpy(rows.astype(np.float32))


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rois = _regions(rng)
    rows = []

    roi = _net('layer { name: "pool5" type: "ROIPooling" bottom: "conv5" bottom: "rois" '
               'top: "pool5" roi_pooling_param { pooled_h: 7 pooled_w: 7 '
               'spatial_scale: 0.0625 } }', {"conv5": (1, 512, H, W), "rois": (REGIONS, 5)})
    conv5 = torch.from_numpy(rng.standard_normal((1, 512, H, W)).astype(np.float32))
    with torch.no_grad():
        rows.append(("ROIPooling 7x7, 512 x 38 x 50, 300 regions (inference)",
                     _time(lambda: roi(conv5, rois), args.repeats)))
    grad_in = conv5.clone().requires_grad_(True)
    rows.append(("ROIPooling, forward + backward",
                 _time(lambda: roi(grad_in, rois)["pool5"].sum().backward(), args.repeats)))

    ps = _net('layer { name: "psroi" type: "PSROIPooling" bottom: "score_map" bottom: "rois" '
              'top: "psroi" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 '
              'group_size: 7 } }', {"score_map": (1, 21 * 49, H, W), "rois": (REGIONS, 5)})
    score_map = torch.from_numpy(rng.standard_normal((1, 21 * 49, H, W)).astype(np.float32))
    with torch.no_grad():
        rows.append(("PSROIPooling 21 x 7 x 7, 1029 x 38 x 50, 300 regions",
                     _time(lambda: ps(score_map, rois), args.repeats)))

    prop = _net('layer { name: "proposal" type: "Python" bottom: "cls_prob" bottom: "bbox_pred" '
                'bottom: "im_info" top: "rois" python_param { module: "rpn.proposal_layer" '
                "layer: \"ProposalLayer\" param_str: \"'feat_stride': 16\" } }",
                {"cls_prob": (1, 18, H, W), "bbox_pred": (1, 36, H, W), "im_info": (1, 3)})
    cls_prob = torch.from_numpy(rng.uniform(0, 1, (1, 18, H, W)).astype(np.float32))
    bbox = torch.from_numpy((rng.standard_normal((1, 36, H, W)) * 0.2).astype(np.float32))
    im_info = torch.tensor([[H * STRIDE, W * STRIDE, 1.0]])
    with torch.no_grad():
        rows.append(("Proposal (py-faster-rcnn), 9 anchors x 38 x 50, 6000 -> NMS -> 300",
                     _time(lambda: prop(cls_prob, bbox, im_info), args.repeats)))

    print(f"bench_roi: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    width = max(len(r[0]) for r in rows)
    print(f"{'layer':<{width}}  median ms")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.1f}")


if __name__ == "__main__":
    main()
