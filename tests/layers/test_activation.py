"""Activation layers (landmarknet/layers/activation.py) against independent references.

References: ``reference.numpy_caffe`` (numpy re-implementations of Caffe's C++), Caffe's
backward passes written out here, and hand-derived literals at the formulas' kinks. Every layer
is also run on the meta device, as the builder does, and must report the same top shapes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from layers.checker import (assert_close, assert_refused, build_layer, check_layer, layer_spec,
                            run_layer, seeded, to_numpy, with_kinks)
from reference import numpy_caffe as R

ACTIVATIONS = [
    ("ReLU", "", lambda x: R.relu(x)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: R.relu(x, negative_slope=0.1)),
    ("ELU", "", lambda x: R.elu(x)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: R.elu(x, alpha=0.5)),
    ("Sigmoid", "", R.sigmoid),
    ("TanH", "", R.tanh),
    ("AbsVal", "", R.absval),
    ("BNLL", "", R.bnll),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }",
     lambda x: R.power(x, power=2, scale=0.5, shift=1)),
    ("Power", "power_param { power: 3 }", lambda x: R.power(x, power=3)),
    ("Power", "power_param { power: 0 scale: 2 }", lambda x: R.power(x, power=0, scale=2)),
    ("Power", "power_param { power: 2 scale: 0 shift: 3 }",
     lambda x: R.power(x, power=2, scale=0, shift=3)),
    ("Exp", "", lambda x: R.exp(x)),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }",
     lambda x: R.exp(x, base=2, scale=0.5, shift=1)),
    ("Exp", "exp_param { shift: -1 scale: 0.3 }", lambda x: R.exp(x, scale=0.3, shift=-1)),
    ("Clip", "clip_param { min: -1 max: 2.5 }", lambda x: R.clip(x, min=-1, max=2.5)),
    ("Swish", "", lambda x: R.swish(x)),
    ("Swish", "swish_param { beta: 1.5 }", lambda x: R.swish(x, beta=1.5)),
    ("Threshold", "", lambda x: R.threshold(x)),
    ("Threshold", "threshold_param { threshold: 0.7 }", lambda x: R.threshold(x, threshold=0.7)),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", lambda x: R.dropout(x)),
    ("ReLU6", "", lambda x: np.minimum(np.maximum(x, 0), 6)),
]


@pytest.mark.parametrize("type_,text,ref", ACTIVATIONS, ids=lambda v: v if isinstance(v, str)
                         and v else None)
def test_activation_matches_reference(type_: str, text: str, ref) -> None:
    x = with_kinks(seeded(1), (2, 3, 4, 5))
    x[0, 0, 0, :3] = [30.0, -30.0, 7.5]  # saturation and ReLU6's clip
    (y,), mod, _ = run_layer(type_, text, [x])
    mod.eval()
    assert_close(mod(torch.tensor(x)), ref(x))


def test_log_matches_reference() -> None:
    x = np.abs(seeded(2).normal(0, 2, (2, 3, 4))).astype(np.float32) + 0.05
    for text, kw in [("", {}), ("log_param { base: 10 scale: 2 shift: 0.5 }",
                                dict(base=10, scale=2, shift=0.5)),
                     ("log_param { base: 2 }", dict(base=2))]:
        check_layer("Log", text, [x], R.log(x, **kw))


def test_prelu_per_channel_and_shared_forward_and_caffe_gradients() -> None:
    rng = seeded(3)
    x = with_kinks(rng, (2, 4, 3, 3))
    for text, shared in [("", False), ("prelu_param { channel_shared: true }", True)]:
        (y,), mod, (xt,) = run_layer("PReLU", text, [x], grad=True)
        slope = to_numpy(mod.weight)
        assert mod.weight.shape == (() if shared else (4,))
        assert_close(y, R.prelu(x, slope, channel_shared=shared))
        top_diff = rng.normal(size=x.shape).astype(np.float32)
        y.backward(torch.tensor(top_diff))
        # prelu_layer.cpp Backward_cpu: the slope gets sum(top_diff * x * (x <= 0)) per
        # channel; the bottom gets top_diff * ((x > 0) + slope_c * (x <= 0)).
        a = slope.reshape(1, -1, 1, 1) if not shared else slope
        neg = (x <= 0).astype(np.float64)
        d_slope = (top_diff * x * neg).sum(axis=(0, 2, 3))
        assert_close(mod.weight.grad, d_slope.sum() if shared else d_slope, rtol=1e-5, atol=1e-5)
        assert_close(xt.grad, top_diff * ((x > 0) + a * neg))


def test_prelu_default_filler_is_a_quarter() -> None:
    spec = layer_spec("PReLU", "", [(1, 3, 2, 2)])
    built, _ = build_layer(spec, fill_blobs="filler")
    assert_close(built.module.weight, np.full(3, 0.25, np.float32))
    spec = layer_spec("PReLU", "prelu_param { filler { type: 'constant' value: 0.1 } }",
                      [(1, 3, 2, 2)])
    built, _ = build_layer(spec, fill_blobs="filler")
    assert_close(built.module.weight, np.full(3, 0.1, np.float32))


def test_activation_gradients_at_the_kinks() -> None:
    x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    # ReLULayer::Backward: (x > 0) + slope * (x <= 0); BNLL: sigmoid(x) (0.5 at 0).
    for type_, text, expected in [
            ("ReLU", "", [0, 0, 1]),
            ("ReLU", "relu_param { negative_slope: 0.2 }", [0.2, 0.2, 1]),
            ("BNLL", "", 1 / (1 + np.exp(-x[0]))),
            ("AbsVal", "", [-1, 0, 1]),
            ("Clip", "clip_param { min: 0 max: 2 }", [0, 1, 0]),
            ("ELU", "elu_param { alpha: 2 }", [2 * np.exp(-2.0), 2, 1])]:
        (y,), _, (xt,) = run_layer(type_, text, [x], grad=True)
        y.sum().backward()
        assert_close(xt.grad, np.asarray(expected, np.float32)[None], rtol=1e-6)


def test_dropout_scales_kept_values_in_training_and_is_identity_in_eval() -> None:
    x = np.ones((4, 50, 50), np.float32)
    (_,), mod, _ = run_layer("Dropout", "dropout_param { dropout_ratio: 0.25 }", [x])
    mod.train()
    torch.manual_seed(0)
    y = to_numpy(mod(torch.tensor(x)))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    mod.eval()
    assert_close(mod(torch.tensor(x)), x)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.7, 0.1])
def test_dropout_without_scale_train_scales_at_test_as_the_fork(ratio) -> None:
    # py-faster-rcnn's caffe-fast-rcnn: kept values unscaled in training, the test output
    # times 1 / scale_ in float32 (for 0.3 one ulp off float32(0.7), OpenCV's factor)
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    text = f"dropout_param {{ dropout_ratio: {ratio} scale_train: false }}"
    (_,), mod, _ = run_layer("Dropout", text, [x])
    want = R.dropout(x, dropout_ratio=np.float32(ratio), scale_train=False)
    np.testing.assert_array_equal(to_numpy(mod.eval()(torch.from_numpy(x))), want)
    assert not np.array_equal(want, x)
    mod.train()
    torch.manual_seed(0)
    ones = to_numpy(mod(torch.ones(4, 50, 50)))
    assert set(np.unique(ones)) == {0.0, 1.0}
    assert abs((ones == 0).mean() - ratio) < 0.03


def test_activation_bad_parameters() -> None:
    assert_refused("Exp", "exp_param { base: -2 }", [(2, 3)], match="base")
    assert_refused("Log", "log_param { base: 0 }", [(2, 3)], match="base")
    assert_refused("Clip", "clip_param { min: 0 }", [(2, 3)], match="min and max")
    assert_refused("Clip", "clip_param { min: 3 max: 1 }", [(2, 3)], match="larger than max")
    assert_refused("Dropout", "dropout_param { dropout_ratio: 1 }", [(2, 3)], match="dropout_ratio")
    assert_refused("PReLU", "", [(5,)], match="2 axes")
    assert_refused("ReLU", "", [(2, 3), (2, 3)], match="bottom")
    assert_refused("ReLU6", "relu_param { negative_slope: 0.1 }", [(2, 3)], match="negative slope")


def test_dropout_without_scale_train_against_opencv(tmp_path) -> None:
    # OpenCV reads the field too and multiplies by float32(1 - ratio): the same factor as the
    # fork's 1 / scale_ at 0.5, one ulp apart at 0.3
    cv = pytest.importorskip("opencv_ref")
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    from landmarknet.params import randomize, save_weights
    text = """name: "fc_dropout"
input: "data"
input_shape { dim: 2 dim: 4 dim: 3 dim: 3 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "drop_half" type: "Dropout" bottom: "fc" top: "half"
  dropout_param { dropout_ratio: 0.5 scale_train: false } }
layer { name: "drop_third" type: "Dropout" bottom: "fc" top: "third"
  dropout_param { dropout_ratio: 0.3 scale_train: false } }
"""
    (tmp_path / "net.prototxt").write_text(text)
    net = build_net(parse_net(text, path="net.prototxt")).eval()
    randomize(net, 0)
    save_weights(net, tmp_path / "net.caffemodel", net.net_param)
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 3)).astype(np.float32)
    try:
        theirs = cv.run_opencv(tmp_path / "net.prototxt", tmp_path / "net.caffemodel",
                               {"data": x}, ["fc", "drop_half", "drop_third"])
    except cv.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    names = ["fc", "drop_half", "drop_third"]
    with torch.no_grad():
        ours = {k: to_numpy(v) for k, v in net.run_layers({"data": torch.from_numpy(x)},
                                                          names).items()}
    for name in names:  # the fc sums 36 products in another order: a few ulps of its largest
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(theirs["drop_half"], theirs["fc"] * np.float32(0.5))
    np.testing.assert_array_equal(theirs["drop_third"], theirs["fc"] * np.float32(0.7))
    np.testing.assert_array_equal(ours["drop_third"], R.dropout(ours["fc"], dropout_ratio=0.3,
                                                                 scale_train=False))


# ----------------------------------------------------------------------------------------------
# ENet's Python SpatialDropoutLayer (param_str a Python dict literal, as in ENet's prototxts)
# ----------------------------------------------------------------------------------------------

def _spatial(phase: str = "TEST", p: str = "'0.1'") -> str:
    param_str = f"{{'phase': '{phase}', 'p': {p}}}".replace("'", "\\'")
    return ('python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
            f'param_str: "{param_str}" }}')


@pytest.mark.parametrize("literal, p", [("'0.01'", "0.01"), ("'0.1'", "0.1"), ("0.3", 0.3),
                                        ("'0.5'", "0.5")])
def test_spatial_dropout_scales_by_one_over_one_minus_p_in_eval(literal, p) -> None:
    # its TEST branch multiplies by 1/(1-p): not the identity, unlike Caffe's Dropout
    x = with_kinks(np.random.default_rng(5), (2, 4, 5, 6))
    (_,), mod, _ = run_layer("Python", _spatial("TEST", literal), [x])
    y = to_numpy(mod.eval()(torch.from_numpy(x)))
    want = R.spatial_dropout_enet(x, p=p, phase="TEST")
    np.testing.assert_array_equal(y, want)
    assert not np.array_equal(want, x)


def test_spatial_dropout_drops_whole_channels_in_training() -> None:
    x = np.random.default_rng(6).uniform(0.5, 2.0, (8, 64, 3, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="phase TRAIN"):
        (_,), mod, _ = run_layer("Python", _spatial("TRAIN", "'0.25'"), [x])
    mod.train()
    torch.manual_seed(0)
    y = to_numpy(mod(torch.from_numpy(x)))
    kept = (y != 0).reshape(8, 64, -1)
    # one draw per (sample, channel): a map is dropped or kept as a whole
    assert (kept.all(axis=2) | ~kept.any(axis=2)).all()
    keep = kept.all(axis=2)
    np.testing.assert_array_equal(y, R.spatial_dropout_enet(x, p=0.25, phase="TRAIN", keep=keep))
    assert abs((~keep).mean() - 0.25) < 0.06
    assert (keep != keep[:1]).any(), "every sample drew the same channels"
    mod.eval()
    np.testing.assert_array_equal(to_numpy(mod(torch.from_numpy(x))),
                                  R.spatial_dropout_enet(x, p=0.25, phase="TEST"))


def test_spatial_dropout_phase_mismatch_warns_and_matching_phase_does_not(recwarn) -> None:
    run_layer("Python", _spatial("TEST"), [np.ones((1, 2, 3, 3), np.float32)])
    assert not [w for w in recwarn if "phase" in str(w.message)]


@pytest.mark.parametrize("param_str, match", [
    ("{'phase': 'TEST'}", "missing p"),
    ("{'phase': 'TEST', 'p': '0.1', 'seed': 3}", "unknown 'seed'"),
    ("{'phase': 'test', 'p': '0.1'}", "'TRAIN' or 'TEST'"),
    ("{'phase': 'TEST', 'p': '0'}", "strictly between 0 and 1"),
    ("{'phase': 'TEST', 'p': 1}", "strictly between 0 and 1"),
    ("{'phase': 'TEST', 'p': 'nan'}", "strictly between 0 and 1"),
    ("{'phase': 'TEST', 'p': 'ten'}", "not a number"),
    ("{'phase': 'TEST', 'p': True}", "must be a number"),
    ("__import__('os').getcwd()", "not a Python dict literal"),
    ("['TEST', 0.1]", "must be a dict"),
    ("", "must be a dict"),
])
def test_spatial_dropout_param_str_is_read_as_literals_only(param_str, match) -> None:
    text = ('python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" '
            f'param_str: "{param_str}" }}'.replace("'", "\\'"))
    text = text.replace("\\'spatial_dropout\\'", "'spatial_dropout'")
    assert_refused("Python", text, [(1, 2, 3, 3)], match=match)


def test_spatial_dropout_needs_nchw() -> None:
    assert_refused("Python", _spatial(), [(2, 3)], match="(N, C, H, W)")


def test_mish_against_opencv_and_its_formula(tmp_path) -> None:
    # YOLOv4's x * tanh(ln(1 + e^x)); OpenCV 4.x reads the type from a Caffe prototxt. Values
    # from -30 to 30 reach both tails (e^x underflowing, softplus(x) == x).
    cv = pytest.importorskip("opencv_ref")
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    text = ('input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
            'layer { name: "m" type: "Mish" bottom: "data" top: "m" }\n')
    x = np.concatenate([np.linspace(-30, 30, 60), np.random.default_rng(6).normal(0, 2, 60)])
    x = x.astype(np.float32).reshape(2, 3, 4, 5)
    (tmp_path / "net.prototxt").write_text(text)
    try:
        theirs = cv.run_opencv(tmp_path / "net.prototxt", None, {"data": x}, ["m"])["m"]
    except cv.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        ours = to_numpy(build_net(parse_net(text, path="net.prototxt"))(
            data=torch.from_numpy(x))["m"])
    exact = x.astype(np.float64) * np.tanh(np.logaddexp(0.0, x.astype(np.float64)))
    np.testing.assert_allclose(ours, exact, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)
