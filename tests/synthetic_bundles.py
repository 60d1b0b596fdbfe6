"""Tiny landmark model bundles whose outputs are known in closed form (for infer and CLI tests).

* ``regression_bundle``: an InnerProduct with zero weights and a bias holding fixed points, so the
  net predicts those points (as fractions of the crop) for any input.
* ``heatmap_bundle``: 5 heatmaps that are the crop's first channel shifted by known offsets
  (9x9 delta kernels), average-pooled 2x2 (stride 2): an image with one bright blob at p gives
  map k peaking at crop(p) - d_k, in heatmap pixels (u = (q - 0.5) / 2).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import read_net
from landmarknet.params import save_weights

#: Five fixed points (x, y) as fractions of the crop, the regression bundle's answer.
FRACTIONS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
#: Per-map shifts (dx, dy) in crop pixels of the heatmap bundle (its kernel is 9x9, pad 4).
SHIFTS = np.array([[0, 0], [2, 0], [-2, 0], [0, 2], [0, -2]])

REGRESSION_PROTOTXT = """name: "fixed5"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 10 } }
"""

HEATMAP_PROTOTXT = """name: "shift5"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "maps" type: "Convolution" bottom: "data" top: "maps"
        convolution_param { num_output: 5 kernel_size: 9 pad: 4 bias_term: false } }
layer { name: "pool" type: "Pooling" bottom: "maps" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
"""


def _write(folder: Path, prototxt: str, fill, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deploy.prototxt").write_text(prototxt, encoding="utf-8")
    net = build_net(folder / "deploy.prototxt")
    fill(net)
    save_weights(net, folder / "model.caffemodel", read_net(folder / "deploy.prototxt").net)
    (folder / "model.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return folder


def regression_bundle(folder: Path, fractions: np.ndarray = FRACTIONS) -> Path:
    """A fixed-points regression bundle (32 px crops, scale 1.0; 5 points unless told)."""
    import torch

    k = len(fractions)

    def fill(net):
        with torch.no_grad():
            net.blob_tensor("fc", 0).zero_()
            net.blob_tensor("fc", 1).copy_(torch.tensor(np.asarray(fractions).reshape(-1)))

    return _write(folder, REGRESSION_PROTOTXT.replace("num_output: 10", f"num_output: {2 * k}"),
                  fill, {
        "format": 1, "name": f"fixed{k}", "scheme": k,
        "input": {"blob": "data", "channels": "BGR", "mean": 127.5, "scale": 0.0078125},
        "output": {"decoding": "regression", "unit": "fraction"},
        "crop": {"size": 32, "scale": 1.0, "shift": [0, 0], "box": "landmarks"},
        "provenance": {"what": "test bundle with a constant output"}})


def heatmap_bundle(folder: Path) -> Path:
    """The shifted-copies heatmap bundle (5-point scheme, 64 px crops, stride 2)."""
    import torch

    def fill(net):
        w = torch.zeros(5, 3, 9, 9)
        for k, (dx, dy) in enumerate(SHIFTS):
            w[k, 0, 4 + dy, 4 + dx] = 1.0  # out(y, x) = in(y + dy, x + dx)
        with torch.no_grad():
            net.blob_tensor("maps", 0).copy_(w)

    return _write(folder, HEATMAP_PROTOTXT, fill, {
        "format": 1, "name": "shift5", "scheme": 5,
        "input": {"channels": "BGR", "mean": 0.0, "scale": 1 / 255},
        "output": {"blob": "pool", "decoding": "heatmap", "stride": 2, "refine": "taylor"},
        "crop": {"size": 64, "scale": 1.0},
        "box_calibration": {"mtcnn": [0.0, 0.0, 1.0, 1.0]}})


def blob_image(h: int, w: int, centre, sigma: float) -> np.ndarray:
    """A BGR uint8 image, black with one white Gaussian blob (peak 255) at ``centre``."""
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)
