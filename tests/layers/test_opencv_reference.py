"""Our layers against OpenCV DNN directly: two batteries over many layer types at once.

1. The reference net of test_caffe_ref, built by us. test_caffe_ref.py pins ~65 single-layer
   configurations (every layer type OpenCV implements the way Caffe's C++ does) and the numpy
   references to OpenCV. Here the same prototxt and the same caffemodel bytes go through
   landmarknet, and each layer's output must match OpenCV's.
2. Sixteen convolution, pooling and normalisation layers in one net, with blobs built the way the
   builder builds them (``layers.checker.Layer``), against OpenCV's run of the same net.

Where OpenCV differs from Caffe (see docs/caffe_compat.md) the layer tests use the numpy
references instead. Both batteries run one OpenCV subprocess for many types, so they live
together here rather than in the family files.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.params import load_weights
from layers.checker import Layer, bn_blobs, close, layer_rng, make_spec
from reference import wire
from test_caffe_ref import AGREE, B_IP, W_IP, X, _net, agree_outputs  # noqa: F401 (fixture)

rng = pytest.fixture(layer_rng, name="rng")


@pytest.fixture(scope="module")
def our_outputs(tmp_path_factory):
    layers = "\n".join(spec[0] for spec in AGREE.values()) + "\n"
    plain = [(name, "", spec[1]) for name, spec in AGREE.items()
             if isinstance(spec[1], list) and spec[1]]
    legacy = [(name, "", [W_IP.reshape(1, 1, 5, -1), B_IP]) for name, spec in AGREE.items()
              if spec[1] == "legacy"]
    model = tmp_path_factory.mktemp("w") / "net.caffemodel"
    # wire.encode_caffemodel is an independent encoder: our reader must read what it writes.
    model.write_bytes(wire.encode_caffemodel(plain)
                      + wire.encode_caffemodel(legacy, legacy_shape=True))
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


# ----------------------------------------------------------------------------------------------
# sixteen conv/pool/norm layers in one net, our blobs written with the wire codec
# ----------------------------------------------------------------------------------------------

# Each layer reads the input directly. Two known OpenCV departures from Caffe's C++ are avoided:
# OpenCV's LRN ignores `k` (it uses 1; lrn_layer.cpp starts the scale at k) and OpenCV's MVN
# divides by sqrt(var + eps) (mvn_layer.cpp adds eps after the square root), so the LRN below
# has k 1 and the MVN the default eps 1e-9, where the two agree to float precision.
OPENCV_LAYERS = [
    ("conv", "Convolution",
     "convolution_param { num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1 dilation: 2 }"),
    ("conv_asym", "Convolution", "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 "
     "stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }"),
    ("deconv", "Deconvolution",
     "convolution_param { num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 }"),
    ("pool_ave_pad", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
    ("pool_max_ceil", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("pool_ave_ceil", "Pooling", "pooling_param { pool: AVE kernel_size: 2 stride: 2 }"),
    ("pool_ave_pad2", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }"),
    ("pool_max_pad2", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 2 }"),
    ("pool_global", "Pooling", "pooling_param { pool: AVE global_pooling: true }"),
    ("lrn_across", "LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"),
    ("lrn_within", "LRN",
     "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL }"),
    ("bn", "BatchNorm", "batch_norm_param { use_global_stats: true eps: 0.001 }"),
    ("scale", "Scale", "scale_param { bias_term: true }"),
    ("mvn", "MVN", ""),
    ("mvn_across", "MVN", "mvn_param { across_channels: true }"),
    ("ip", "InnerProduct", "inner_product_param { num_output: 5 }"),
]



def test_layers_agree_with_opencv(rng):
    from opencv_ref import OpenCVUnavailable, run_opencv_text
    shape = (2, 4, 9, 8)
    proto = 'name: "t"\ninput: "data"\ninput_shape { dim: 2 dim: 4 dim: 9 dim: 8 }\n'
    layers, weights = {}, []
    for name, type_, text in OPENCV_LAYERS:
        proto += f'layer {{ name: "{name}" type: "{type_}" bottom: "data" top: "{name}" {text} }}\n'
        values = None
        if type_ == "BatchNorm":
            values = bn_blobs(rng, 4, 2.5)
        layer = Layer(make_spec(type_, text, [shape], name=name), rng, blob_values=values)
        layers[name] = layer
        weights.append((name, type_, layer.blobs))
    x = rng.standard_normal(shape).astype(np.float32)
    try:
        cv = run_opencv_text(proto, wire.encode_caffemodel(weights), {"data": x}, list(layers))
    except OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    for name, layer in layers.items():
        close(layer(x), cv[name], rtol=2e-5)

