"""Our layers against OpenCV DNN directly: the reference net of test_caffe_ref, built by us.

test_caffe_ref.py pins ~65 single-layer configurations (every layer type OpenCV implements
the way Caffe's C++ does) and the numpy references to OpenCV. Here the same prototxt and the
same caffemodel bytes go through landmarknet, and each layer's output must match OpenCV's.
Where OpenCV differs from Caffe (see docs/caffe_compat.md) the layer tests use the numpy
references instead.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe_ref as cr
from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.params import load_weights
from test_caffe_ref import AGREE, B_IP, W_IP, X, _net, agree_outputs  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def our_outputs(tmp_path_factory):
    layers = "\n".join(spec[0] for spec in AGREE.values()) + "\n"
    plain = [(name, "", spec[1]) for name, spec in AGREE.items()
             if isinstance(spec[1], list) and spec[1]]
    legacy = [(name, "", [W_IP.reshape(1, 1, 5, -1), B_IP]) for name, spec in AGREE.items()
              if spec[1] == "legacy"]
    model = tmp_path_factory.mktemp("w") / "net.caffemodel"
    # cr.encode_caffemodel is an independent encoder: our reader must read what it writes.
    model.write_bytes(cr.encode_caffemodel(plain) + cr.encode_caffemodel(legacy, legacy_shape=True))
    with pytest.warns(UserWarning, match="ceil_mode"):
        parsed = parse_net(_net({"data": X.shape}, layers))
    net = build_net(parsed)
    report = load_weights(net, model, strict=True)
    # Legacy 4-D IP weights and 1-element blobs stored for Caffe's 0-axis shared scalars.
    assert "ip_legacy[0]: [1, 1, 5, 168] -> [5, 168]" in report.reshaped
    assert "prelu_shared[0]: [1] -> []" in report.reshaped
    with torch.no_grad():
        return {k: v.numpy() for k, v in net.run_layers({"data": X}, list(AGREE)).items()}


@pytest.mark.parametrize("name", list(AGREE))
def test_layer_matches_opencv(our_outputs, agree_outputs, name):  # noqa: F811
    ours, ref = our_outputs[name], agree_outputs[name]
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max()) / max(float(np.abs(ref).max()), 1e-12)
    assert err <= 1e-5, f"{name}: relative error {err:.3g}"
