#!/usr/bin/env python3
"""Speed of SSD's DetectionOutput (decode, per-class NMS, keep_top_k) on the heads of real nets.

    python benchmarks/bench_detection_output.py --threads 2 --repeats 5

For each SSD net of ../shared/zoo (MobileNetV2-SSDLite and SSD300-VGG16, VOC's 21 classes), the
net is built with seeded random weights and run once up to its heads (mbox_loc,
mbox_conf_flatten, mbox_priorbox); DetectionOutput's ``detect`` is then timed on those arrays,
once with the greedy NMS over an overlap matrix (the default) and once comparing box by box (the
path kept for very many candidates), and both must return the same rows, bit for bit. Random
weights make a hard case: hundreds of candidates per class above the confidence threshold, where
a trained net has a few. Also timed: the whole net in landmarknet (eager) and in OpenCV DNN 4.x
with the same weights, when OpenCV is installed. Median milliseconds after one warm-up run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from landmarknet.build import build_net
from landmarknet.fast.timing import time_calls
from landmarknet.layers import detection
from landmarknet.params import randomize, save_weights
from landmarknet.paths import shared_dir

NETS = ["mobilenetv2_ssdlite_voc", "ssd300_vgg_voc"]
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


def _median_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one untimed call."""
    return 1e3 * statistics.median(time_calls({"f": fn}, repeats=repeats, warmup=1)["f"])


def _opencv_ms(proto: Path, net, x: np.ndarray, repeats: int) -> float | None:
    try:
        import cv2
        reader = cv2.dnn.readNetFromCaffe
    except (ImportError, AttributeError):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "w.caffemodel")
        save_weights(net, weights)
        cv_net = reader(str(proto), weights)

    def run():
        cv_net.setInput(x)
        cv_net.forward()
    return _median_ms(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cv2
        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    zoo = shared_dir() / "zoo"
    print(f"{'net':<26}{'candidates':>11}{'matrix ms':>11}{'box by box':>11}{'ratio':>7}"
          f"{'net ms':>9}{'OpenCV ms':>11}")
    for name in NETS:
        proto = zoo / name / "deploy.prototxt"
        net = build_net(proto).eval()
        randomize(net, 0)
        x = np.random.default_rng(0).normal(0, 1, (1, 3, 300, 300)).astype(np.float32)
        with torch.inference_mode():
            heads = net.run({"data": torch.from_numpy(x)}, blobs=HEADS)
        arrays = [heads[b].numpy() for b in HEADS]
        layer = next(m for m in net.modules() if isinstance(m, detection.DetectionOutput))
        conf = arrays[1].reshape(-1, layer.num_classes)
        candidates = int((conf > layer.confidence_threshold).sum())
        matrix_rows = layer.detect(*arrays)
        matrix_ms = _median_ms(lambda: layer.detect(*arrays), args.repeats)
        limit = detection._NMS_MATRIX_LIMIT
        detection._NMS_MATRIX_LIMIT = -1
        try:
            loop_rows = layer.detect(*arrays)
            loop_ms = _median_ms(lambda: layer.detect(*arrays), args.repeats)
        finally:
            detection._NMS_MATRIX_LIMIT = limit
        if not np.array_equal(matrix_rows, loop_rows):
            raise SystemExit(f"{name}: the two NMS paths disagree")
        with torch.inference_mode():
            net_ms = _median_ms(lambda: net(data=torch.from_numpy(x)), args.repeats)
        cv_ms = _opencv_ms(proto, net, x, args.repeats)
        cv_text = f"{cv_ms:11.1f}" if cv_ms is not None else f"{'-':>11}"
        print(f"{name:<26}{candidates:>11}{matrix_ms:11.1f}{loop_ms:11.1f}"
              f"{loop_ms / matrix_ms:7.1f}{net_ms:9.1f}{cv_text}")


if __name__ == "__main__":
    main()
