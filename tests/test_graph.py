"""Caffe's Net::Init semantics: phase/level/stage rules, in-place layers, sharing, losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.errors import GraphError
from landmarknet.graph import NetState, build_graph, layer_name_of, module_name
from landmarknet.params import net_blobs
from opencv_ref import OpenCVUnavailable, run_opencv_text

RULES = """
input: "x" input_shape { dim: 1 dim: 2 }
layer { name: "always" type: "ReLU" bottom: "x" top: "a" }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "b" include { phase: TRAIN } }
layer { name: "not_test" type: "ReLU" bottom: "x" top: "c" exclude { phase: TEST } }
layer { name: "level2" type: "ReLU" bottom: "x" top: "d" include { min_level: 2 } }
layer { name: "upto1" type: "ReLU" bottom: "x" top: "e" include { max_level: 1 } }
layer { name: "stage_deploy" type: "ReLU" bottom: "x" top: "f" include { stage: "deploy" } }
layer { name: "not_deploy" type: "ReLU" bottom: "x" top: "g" include { not_stage: "deploy" } }
layer { name: "two_rules" type: "ReLU" bottom: "x" top: "h"
        include { phase: TRAIN } include { stage: "extra" } }
"""


@pytest.mark.parametrize("state, expected", [
    (NetState("test"), ["always", "upto1", "not_deploy"]),
    (NetState("train"), ["always", "train_only", "not_test", "upto1", "not_deploy", "two_rules"]),
    (NetState("test", level=2), ["always", "level2", "not_deploy"]),
    (NetState("test", stages=("deploy",)), ["always", "upto1", "stage_deploy"]),
    (NetState("test", stages=("extra",)), ["always", "upto1", "not_deploy", "two_rules"]),
])
def test_include_exclude_rules_follow_caffe(state, expected):
    """Expected sets worked out by hand from Caffe's StateMeetsRule / FilterNet."""
    graph = build_graph(parse_net(RULES), state)
    assert [n.name for n in graph.nodes] == expected


def test_include_and_exclude_together_is_an_error():
    text = ('input: "x" input_shape { dim: 1 } layer { name: "r" type: "ReLU" bottom: "x" '
            'top: "y" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(Exception, match="include rules or exclude rules, not both"):
        build_graph(parse_net(text))


IN_PLACE = """
input: "x" input_shape { dim: 1 dim: 4 dim: 3 dim: 3 }
layer { name: "neg" type: "Power" bottom: "x" top: "y" power_param { scale: -1 } }
layer { name: "before" type: "Power" bottom: "y" top: "a" power_param { scale: 2 } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "after" type: "Power" bottom: "y" top: "b" power_param { scale: 3 } }
layer { name: "relu_again" type: "ReLU" bottom: "y" top: "y" relu_param { negative_slope: 0.5 } }
"""


def test_in_place_layers_are_versioned_in_layer_order():
    graph = build_graph(parse_net(IN_PLACE))
    before, relu, after, again = graph.nodes[1:]
    assert before.bottoms == ["y"] and relu.bottoms == ["y"]
    assert relu.tops == ["y@relu"] and after.bottoms == ["y@relu"]
    assert again.tops == ["y@relu_again"] and graph.latest["y"] == "y@relu_again"


def test_in_place_values_match_numpy_and_opencv():
    x = np.random.default_rng(0).uniform(-1, 1, (1, 4, 3, 3)).astype(np.float32)
    net = build_net(parse_net(IN_PLACE))
    out = {k: v.numpy() for k, v in net.run({"x": x}, blobs=["a", "b", "y"]).items()}
    np.testing.assert_allclose(out["a"], -2 * x, rtol=1e-6)  # saw y before the ReLU
    np.testing.assert_allclose(out["b"], 3 * np.maximum(-x, 0), rtol=1e-6)  # after it
    np.testing.assert_allclose(out["y"], np.maximum(-x, 0), rtol=1e-6)  # both ReLUs applied
    try:
        ref = run_opencv_text(IN_PLACE, None, {"x": x}, ["before", "after"])
    except OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    np.testing.assert_allclose(out["a"], ref["before"], rtol=1e-6)
    np.testing.assert_allclose(out["b"], ref["after"], rtol=1e-6)


def test_a_top_written_twice_not_in_place_is_an_error():
    text = ('input: "x" input_shape { dim: 1 }\n'
            'layer { name: "r1" type: "ReLU" bottom: "x" top: "y" }\n'
            'layer { name: "r2" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(GraphError, match="already produced by layer 'r1'"):
        build_graph(parse_net(text, path="dup.prototxt"))


def test_missing_bottom_explains_cycle_phase_and_typo():
    cycle = ('input: "x" input_shape { dim: 1 }\n'
             'layer { name: "a" type: "ReLU" bottom: "b_out" top: "a_out" }\n'
             'layer { name: "b" type: "ReLU" bottom: "a_out" top: "b_out" }')
    with pytest.raises(GraphError, match="dup.prototxt:2.*layer 'b' produces it later.*cycle"):
        build_graph(parse_net(cycle, path="dup.prototxt"))
    phase = ('input: "x" input_shape { dim: 1 }\n'
             'layer { name: "t" type: "ReLU" bottom: "x" top: "t" include { phase: TRAIN } }\n'
             'layer { name: "u" type: "ReLU" bottom: "t" top: "u" }')
    with pytest.raises(GraphError, match="excluded by its include/exclude rules"):
        build_graph(parse_net(phase))
    typo = 'input: "x" input_shape { dim: 1 } layer { name: "u" type: "ReLU" bottom: "xx" top: "u" }'
    with pytest.raises(GraphError, match="typo"):
        build_graph(parse_net(typo))


def test_module_names_are_reversible():
    reserved = frozenset({"loss", "train"})
    for name in ["conv1/7x7_s2", "a.b.c", "50%.x", "inception_3a/1x1", "loss", "train", "loss%",
                 'q"uote', "back\\slash", "new\nline", "sp ace", "ünï", "x%", "a~b"]:
        assert layer_name_of(module_name(name, reserved)) == name
        assert "." not in module_name(name, reserved)
    assert module_name("loss", reserved) != module_name("loss%", reserved)
    assert all(c.isalnum() or c in "_-/%" for c in module_name('a"\\\n b.c', reserved))


def test_layer_names_cannot_inject_code_into_generated_forward(tmp_path):
    """torch.fx writes submodule names into Python source: a crafted name must stay a name."""
    marker = tmp_path / "ran"
    evil = f'x")\nopen("{marker}", "w")\n#'
    text = ('input: "x" input_shape { dim: 1 dim: 2 }\n'
            f'layer {{ name: "{evil.replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}" '
            'type: "ReLU" bottom: "x" top: "y" }')
    net = build_net(parse_net(text))
    assert [i.node.name for i in net.layers.values()] == [evil]
    net(torch.zeros(1, 2))
    assert not marker.exists()


SHARED = """
input: "x" input_shape { dim: 2 dim: 3 }
layer { name: "fc_a" type: "InnerProduct" bottom: "x" top: "a"
        param { name: "W" lr_mult: 1 decay_mult: 1 } param { name: "B" lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc_b" type: "InnerProduct" bottom: "x" top: "b"
        param { name: "W" } param { name: "B" } inner_product_param { num_output: 4 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
layer { name: "aux" type: "Power" bottom: "a" top: "aux" loss_weight: 0.5 }
"""


def test_weight_sharing_loss_weights_and_lr_mult():
    net = build_net(parse_net(SHARED), phase="train")
    a, b = net.get_submodule("fc_a"), net.get_submodule("fc_b")
    assert a.weight is b.weight and a.bias is b.bias
    x = torch.randn(2, 3)
    out = net(x)
    # Shared weights: identical outputs, so the Euclidean loss is 0 and the objective is
    # 0.5 * sum(aux), with Caffe's default loss weight 1 on the loss layer.
    assert float(out["loss"]) == pytest.approx(0.0, abs=1e-7)
    expected = 0.5 * float(torch.nn.functional.linear(x, a.weight, a.bias).sum())
    assert float(net.loss(out)) == pytest.approx(expected, rel=1e-6)
    groups = {(g["lr_mult"], g["decay_mult"]): len(g["params"]) for g in net.param_groups()}
    assert groups == {(1.0, 1.0): 1, (2.0, 0.0): 1}  # shared tensors are optimised once
    assert [lb.name for lb in net_blobs(net)] == ["fc_a", "fc_b"]  # Caffe writes both layers


def test_missing_input_shape_names_the_input_and_how_to_give_it(zoo):
    with pytest.raises(GraphError, match=r"input 'data'.*--input-shape data="):
        build_net(zoo / "mnist_lenet/lenet_train_test.prototxt", phase="train")


@pytest.mark.parametrize("phase, other", [("train", "test"), ("test", "train")])
def test_a_bottom_of_the_other_phase_suggests_that_phase(phase, other):
    """A blob made only by a layer of the other phase: the error names the phase to try."""
    text = ('input: "data" input_shape { dim: 1 dim: 2 }\n'
            f'layer {{ name: "p" type: "ReLU" bottom: "data" top: "x" '
            f'include {{ phase: {other.upper()} }} }}\n'
            'layer { name: "q" type: "ReLU" bottom: "x" top: "y" }\n')
    with pytest.raises(GraphError, match=f"try --phase {other}"):
        build_graph(parse_net(text), NetState(phase=phase))
