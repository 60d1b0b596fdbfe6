"""Per-layer analysis: exact hand counts on a tiny net, shared parameters counted once, and our
conv/fc MAC totals against torch.utils.flop_counter on real nets."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from landmarknet.analyze import analyze, name_prefix
from landmarknet.build import build_net, count_params
from landmarknet.caffe.prototxt import parse_net

# Every count below is worked out by hand in the comments (batch 2).
TINY = """name: "tiny"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool1" top: "up"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "convg" type: "Convolution" bottom: "pool1" top: "convg"
        convolution_param { num_output: 4 kernel_size: 1 group: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "convg" bottom: "pool1" top: "sum" }
layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc"
        param { name: "fc_w" } param { name: "fc_b" } inner_product_param { num_output: 5 } }
layer { name: "fc_twin" type: "InnerProduct" bottom: "sum" top: "fc_twin"
        param { name: "fc_w" } param { name: "fc_b" } inner_product_param { num_output: 5 } }
"""


@pytest.fixture(scope="module")
def tiny_stats():
    net = build_net(parse_net(TINY, path="tiny.prototxt"))
    return net, analyze(net)


def test_exact_hand_counts_of_a_tiny_net(tiny_stats):
    net, st = tiny_stats
    r = {row.name: row for row in st.rows}
    # conv1: out 2x4x8x8 = 512 elements x (3/1 x 3 x 3 = 27) = 13824; params 4*27 + 4 = 112
    assert (r["conv1"].macs, r["conv1"].params, r["conv1"].memory) == (13824, 112, 512 * 4)
    # BatchNorm and Scale: one MAC per element; statistics 4 + 4 + 1 are not parameters
    assert (r["bn1"].macs, r["bn1"].params, r["bn1"].stats) == (512, 0, 9)
    assert (r["scale1"].macs, r["scale1"].params) == (512, 8)
    # in-place layers write no new memory
    assert [r[n].memory for n in ("bn1", "scale1", "relu1")] == [0, 0, 0]
    assert r["relu1"].ops == 512 and r["relu1"].macs == 0
    # pool: out 2x4x4x4 = 128 elements x window 4
    assert (r["pool1"].ops, r["pool1"].memory) == (512, 128 * 4)
    # deconvolution on the INPUT size: 128 x (C_out/g 2 x 2 x 2 = 8); params 4*2*2*2 + 2
    assert (r["up"].macs, r["up"].params, r["up"].out_shapes) == (1024, 34, [[2, 2, 8, 8]])
    # grouped 1x1: 128 x (4/2 x 1 x 1) = 256; params 4*2 + 4
    assert (r["convg"].macs, r["convg"].params) == (256, 12)
    # eltwise of 2 bottoms: 128 x 1 ops
    assert r["sum"].ops == 128
    # fc: N x K per sample = 5 x 64, batch 2; the twin shares both blobs: counted once
    assert (r["fc"].macs, r["fc"].params) == (640, 325)
    assert (r["fc_twin"].macs, r["fc_twin"].params) == (640, 0)
    assert r["fc_twin"].blobs[0]["shared_from"] == "fc[0]"
    t = st.totals
    assert t.macs == 13824 + 512 + 512 + 1024 + 256 + 640 + 640
    assert t.flops == 2 * t.macs
    assert t.params == 112 + 8 + 34 + 12 + 325 == count_params(net)
    assert t.memory == (384 + 512 + 128 + 256 + 128 + 128 + 10 + 10) * 4  # data first
    assert st.batch == 2 and st.per_sample(t.macs) == t.macs / 2


def test_in_place_layers_fold_into_their_producer_and_prefixes(tiny_stats):
    _, st = tiny_stats
    r = {row.name: row for row in st.rows}
    assert [r[n].group for n in ("bn1", "scale1", "relu1")] == ["conv1"] * 3
    assert all(r[n].in_place for n in ("bn1", "scale1", "relu1"))
    assert not r["pool1"].in_place and r["pool1"].group == "pool1"
    # subtotals by the prefix of the box a layer is drawn in: conv1 + its 3 folded layers
    assert st.prefixes["conv1"].layers == 4
    assert st.prefixes["conv1"].macs == 13824 + 512 + 512
    assert st.prefixes["fc"].layers == 2  # 'fc' and 'fc_twin'
    assert name_prefix("inception_3a/1x1") == "inception_3a"
    assert name_prefix("res2a_branch2a") == "res2a"
    assert name_prefix("conv1") == "conv1"


def test_serialisations_agree(tiny_stats):
    _, st = tiny_stats
    data = json.loads(st.to_json())
    assert data["totals"]["macs"] == st.totals.macs
    # the net-level 'input:' becomes an Input layer named 'input' (Caffe's upgrade)
    assert [row["name"] for row in data["layers"]][:3] == ["input", "conv1", "bn1"]
    rows = list(csv.DictReader(io.StringIO(st.to_csv())))
    assert rows[-1]["layer"] == "TOTAL" and int(rows[-1]["macs"]) == st.totals.macs
    assert sum(int(x["macs"]) for x in rows[:-1]) == st.totals.macs
    md = st.to_markdown()
    assert "| conv1 |" in md and f"{st.totals.macs:,}" in md


def _flop_counter_macs(net) -> int:
    """(convolution + matrix-multiply FLOPs) / 2 as torch's flop counter sees our forward."""
    xs = [torch.randn(i.shape) for i in net.caffe_graph.inputs]
    mode = FlopCounterMode(display=False)
    with torch.no_grad(), mode:
        net(*xs)
    counts = mode.get_flop_counts()["Global"]
    total = 0
    for op, n in counts.items():
        name = str(op)
        if any(k in name for k in ("convolution", "addmm", "mm", "bmm", "linear")):
            total += n
    return total // 2


CONV_FC = ("Convolution", "Deconvolution", "InnerProduct")


@pytest.mark.parametrize("path,shape", [
    pytest.param("bvlc_googlenet/deploy.prototxt", (1, 3, 224, 224), marks=pytest.mark.slow),
    ("squeezenet_v1.1/deploy.prototxt", (1, 3, 99, 99)),
    ("mtcnn_det3/det3.prototxt", None),
    ("hed/deploy.prototxt", (1, 3, 64, 64)),  # Deconvolution
    ("mobilenet_v1/mobilenet_deploy.prototxt", (1, 3, 96, 96)),  # depthwise (group = C)
])
def test_conv_fc_macs_match_torch_flop_counter(zoo, path, shape):
    net = build_net(zoo / path, input_shapes={"data": shape} if shape else None)
    net.eval()
    st = analyze(net)
    ours = sum(r.macs for r in st.rows if r.type in CONV_FC)
    assert ours > 0
    assert ours == _flop_counter_macs(net)


def test_resnet50_totals_are_the_published_ones(zoo):
    net = build_net(zoo / "resnet_50/ResNet-50-deploy.prototxt")
    st = analyze(net)
    # torchvision's resnet50 has 25,557,032 parameters; Caffe's conv1 adds a 64-value bias
    assert st.totals.params == 25_557_032 + 64
    # the original (stride in the 1x1) ResNet-50: the 3.86 GMACs usually quoted for it
    conv_fc = sum(r.macs for r in st.rows if r.type in CONV_FC)
    assert conv_fc == pytest.approx(3.86e9, rel=0.002)
    # every layer type of the net has a known cost
    assert st.uncounted_types == []
