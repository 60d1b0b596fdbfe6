"""landmarknet.netspec: building NetParameters in Python and writing readable prototxt."""
from __future__ import annotations

import json

import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.prototxt import parse_net, parse_solver
from landmarknet.layers.landmark import parse_index_ranges
from landmarknet.netspec import (GENERATOR_COMMAND, NetSpec, NetSpecError, assign, gaussian,
                                 generated_header, index_ranges, solver_text)


def _tiny() -> NetSpec:
    ns = NetSpec("tiny")
    ns.comment("inputs")
    data = ns.input("data", (2, 3, 16, 16))
    x = ns.conv_relu("conv1_1", data, 8)
    x = ns.pool("pool1", x)
    x = ns.fire("fire2", x, 4, 8)
    x = ns.deconv("up", x, 4, 4, stride=2, pad=1)
    x = ns.pool("gap", x, method="AVE", global_pooling=True)
    ns.inner_product("fc", x, 10)
    return ns


def test_layer_fields_from_dicts():
    ns = NetSpec("n")
    ns.input("data", (1, 3, 8, 8))
    ns.conv("c", "data", 4, 5, stride=2, dilation=2)
    c = ns.net.layer[1]
    cp = c.convolution_param
    assert (c.type, list(c.bottom), list(c.top)) == ("Convolution", ["data"], ["c"])
    # scalars given for repeated fields become one-element lists; 'same' pad for odd kernels
    assert (list(cp.kernel_size), list(cp.stride), list(cp.pad), list(cp.dilation)) == \
        ([5], [2], [4], [2])
    assert (cp.weight_filler.type, cp.weight_filler.std) == ("gaussian", pytest.approx(0.01))
    assert [(p.lr_mult, p.decay_mult) for p in c.param] == [(1, 1), (2, 0)]
    ns.pool("p", "c", method="AVE")
    assert ns.net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_assign_refuses_unknown_fields_and_enum_values():
    lp = caffe_pb2.LayerParameter()
    with pytest.raises(NetSpecError, match="no field 'kernel'"):
        assign(lp, {"convolution_param": {"kernel": 3}})
    with pytest.raises(NetSpecError, match="MEDIAN"):
        assign(lp, {"pooling_param": {"pool": "MEDIAN"}})
    ns = NetSpec("n")
    ns.input("data", (1, 3, 8, 8))
    with pytest.raises(NetSpecError):
        ns.layer("Pooling", "p", "data", pooling_param={"pool": "MEDIAN"})
    assert len(ns.net.layer) == 1 and "p" not in ns.blobs()  # nothing half-added
    ns.pool("p", "data")


def test_relu_is_in_place_and_named_after_the_conv():
    ns = NetSpec("n")
    ns.input("data", (1, 3, 8, 8))
    top = ns.conv_relu("conv2_1", "data", 4)
    relu = ns.net.layer[-1]
    assert (relu.name, relu.type, list(relu.bottom), list(relu.top), top) == \
        ("relu2_1", "ReLU", ["conv2_1"], ["conv2_1"], "conv2_1")


def test_bookkeeping_errors():
    ns = NetSpec("n")
    ns.input("data", (1, 3, 8, 8))
    ns.input("label", (1, 2), phase="train")
    with pytest.raises(NetSpecError, match="'nope' is not produced"):
        ns.conv("c", "nope", 4)
    ns.conv("c", "data", 4)
    with pytest.raises(NetSpecError, match="used twice"):
        ns.conv("c", "data", 4)
    with pytest.raises(NetSpecError, match="already produced"):
        ns.conv("c2", "data", 4, top="c")
    with pytest.raises(NetSpecError, match="phase TEST"):  # label exists in TRAIN only
        ns.euclidean_loss("loss", "c", "label")
    # per-phase inputs may produce the same top
    ns2 = NetSpec("m")
    ns2.input("data", (4, 3, 8, 8), layer="in_train", phase="train")
    ns2.input("data", (2, 3, 8, 8), layer="in_test", phase="test")
    ns2.conv("c", "data", 4)


def test_text_round_trips_and_reads_well():
    ns = _tiny()
    text = ns.to_text(header=["tiny: a test net.", "second line"])
    assert text.startswith("# tiny: a test net.\n# second line\n\nname: \"tiny\"\n")
    assert "\n# inputs\nlayer {\n  name: \"data\"\n" in text
    assert "\n\nlayer {\n  name: \"fire2/squeeze1x1\"\n" in text  # blank line between layers
    parsed = parse_net(text)
    assert parsed.net == ns.net
    assert "lr_mult" in text and "0.00999" not in text  # shortest float forms


def test_fire_module_structure():
    ns = _tiny()
    names = [(lp.name, lp.type) for lp in ns.net.layer if lp.name.startswith("fire2")]
    assert names == [("fire2/squeeze1x1", "Convolution"), ("fire2/relu_squeeze1x1", "ReLU"),
                     ("fire2/expand1x1", "Convolution"), ("fire2/relu_expand1x1", "ReLU"),
                     ("fire2/expand3x3", "Convolution"), ("fire2/relu_expand3x3", "ReLU"),
                     ("fire2/concat", "Concat")]
    concat = ns.net.layer[[lp.name for lp in ns.net.layer].index("fire2/concat")]
    assert list(concat.bottom) == ["fire2/expand1x1", "fire2/expand3x3"]
    e3 = ns.net.layer[[lp.name for lp in ns.net.layer].index("fire2/expand3x3")]
    assert list(e3.convolution_param.pad) == [1]


def test_built_tiny_net_and_macs():
    """landmarknet.analyze's MACs of the built net against hand counts (per image; the net's
    batch of 2 divided out)."""
    from landmarknet.analyze import analyze

    net = build_net(parse_net(_tiny().to_text()))
    out = net(torch.zeros(2, 3, 16, 16))
    assert out["fc"].shape == (2, 10)
    stats = analyze(net)
    assert stats.batch == 2
    m = {r.name: r.macs // 2 for r in stats.rows if r.macs and not r.is_input}
    assert all(r.macs % 2 == 0 for r in stats.rows)
    assert m["conv1_1"] == 8 * 16 * 16 * 3 * 3 * 3
    assert m["fire2/squeeze1x1"] == 4 * 8 * 8 * 8
    assert m["fire2/expand1x1"] == 8 * 8 * 8 * 4
    assert m["fire2/expand3x3"] == 8 * 8 * 8 * 4 * 9
    assert m["up"] == 16 * 8 * 8 * 4 * 4 * 4  # input elements x (C_out x k x k)
    assert m["fc"] == 4 * 10
    assert set(m) == {"conv1_1", "fire2/squeeze1x1", "fire2/expand1x1", "fire2/expand3x3", "up",
                      "fc"}


def test_bilinear_upsampling_is_fixed_and_exact():
    ns = NetSpec("u")
    ns.input("data", (1, 2, 4, 4))
    ns.upsample_bilinear("up", "data", 2)
    lp = ns.net.layer[-1]
    assert [(p.lr_mult, p.decay_mult) for p in lp.param] == [(0, 0)]
    assert lp.convolution_param.group == 2 and not lp.convolution_param.bias_term
    net = build_net(parse_net(ns.to_text()))
    x = torch.ones(1, 2, 4, 4)
    y = net(x)["up"]
    assert y.shape == (1, 2, 8, 8)
    assert torch.allclose(y[:, :, 1:-1, 1:-1], torch.ones(1, 2, 6, 6))  # interior keeps 1
    assert net.param_groups(0.1)[0]["lr"] == 0


def test_python_layer_param_str_and_loss_weight():
    ns = NetSpec("p")
    ns.input("a", (2, 4))
    ns.input("b", (2, 4))
    ns.python("loss", "RegionWeightedEuclideanLoss", ["a", "b"], "loss",
              params={"regions": {"x": "0-1"}}, loss_weight=1.0)
    lp = ns.net.layer[-1]
    assert lp.type == "Python" and list(lp.loss_weight) == [1.0]
    assert lp.python_param.module == "landmarknet.layers.landmark"
    assert json.loads(lp.python_param.param_str) == {"regions": {"x": "0-1"}}


def test_index_ranges_round_trip():
    for idx in ([0, 1, 2, 5], [3], list(range(17)), [0, 2, 4, 5, 6, 9]):
        assert parse_index_ranges(index_ranges(idx)) == sorted(idx)
    assert index_ranges([0, 1, 2, 5]) == "0-2,5"


def test_solver_text_keeps_order_and_parses():
    text = solver_text({"net": "prototxt/x/train_val.prototxt", "type": "Adam", "base_lr": 1e-4,
                        "lr_policy": "multistep", "stepvalue": [10, 20], "max_iter": 30},
                       header=generated_header("src.py", "fn()", "x: solver."))
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("net:") and lines[1] == 'type: "Adam"'
    assert f"`{GENERATOR_COMMAND}`" in text
    sp = parse_solver(text)
    assert (sp.type, list(sp.stepvalue), sp.max_iter) == ("Adam", [10, 20], 30)
    assert sp.base_lr == pytest.approx(1e-4)


def test_gaussian_helper():
    assert gaussian(0.01) == {"type": "gaussian", "std": 0.01}
    assert gaussian(0.1, mean=1.0)["mean"] == 1.0
