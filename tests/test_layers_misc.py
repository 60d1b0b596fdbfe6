"""Activation, shape, loss and detection layers against independent references.

References: ``caffe_ref`` (numpy re-implementations of Caffe's C++), small numpy references
written here from the C++ (MultinomialLogisticLoss, HingeLoss, DetectionOutput, the Caffe
backward passes), and hand-derived literals for integer and shape rules. Every layer is also run
on the meta device, as the builder does, and must report the same top shapes as on the CPU.
"""
from __future__ import annotations

import math

import caffe_ref as R
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.fillers import fill
from landmarknet.layers import LayerSpec, converter_for, registered_types

RTOL, ATOL = 1e-5, 1e-6
F32_TINY = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------------------------
# running a layer the way the builder does
# ----------------------------------------------------------------------------------------------

def _spec(type_: str, text: str, shapes, n_tops: int = 1) -> LayerSpec:
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    return LayerSpec("l", type_, param, [tuple(s) for s in shapes], n_tops)


def _build(spec: LayerSpec, seed: int = 0, fill_blobs: str = "random"):
    """(module on the CPU, top shapes learned on meta); blobs random or from their fillers."""
    with torch.device("meta"):
        meta = converter_for(spec)(spec)
    if meta.top_shapes is not None:
        meta_shapes = [tuple(s) for s in meta.top_shapes]
    else:
        with torch.no_grad():
            out = meta.module(*[torch.empty(s, device="meta") for s in spec.bottom_shapes])
        outs = list(out) if isinstance(out, tuple) else [out]
        assert all(o.device.type == "meta" for o in outs)
        meta_shapes = [tuple(o.shape) for o in outs]
    built = converter_for(spec)(spec)
    gen = torch.Generator().manual_seed(seed)
    for slot in built.blobs:
        tensor = built.module.get_parameter(slot.attr)
        assert tuple(tensor.shape) == tuple(slot.shape)
        if fill_blobs == "random":
            with torch.no_grad():
                tensor.copy_(torch.randn(slot.shape, generator=gen))
        else:
            fill(tensor, slot.filler, gen)
    return built, meta_shapes


def _run(type_: str, text: str, inputs, n_tops: int = 1, grad: bool = False, module=None):
    """Run the layer on numpy inputs; returns (outputs as numpy, module, input tensors)."""
    shapes = [np.shape(x) for x in inputs]
    spec = _spec(type_, text, shapes, n_tops)
    built, meta_shapes = _build(spec)
    mod = module or built.module
    xs = [torch.tensor(np.asarray(x, np.float32), requires_grad=grad) for x in inputs]
    out = mod(*xs)
    outs = list(out) if isinstance(out, tuple) else [out]
    assert len(outs) == n_tops
    if built.top_shapes is None:
        assert [tuple(o.shape) for o in outs] == meta_shapes, "meta and CPU shapes differ"
    return outs, mod, xs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _close(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    a = _np(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _with_kinks(rng, shape) -> np.ndarray:
    """Random values with some exact zeros and a wide range, to exercise the formulas' edges."""
    x = rng.normal(0, 3, shape).astype(np.float32)
    x.reshape(-1)[::7] = 0
    return x


def _raises(type_: str, text: str, shapes, n_tops: int = 1, match: str = "") -> None:
    spec = _spec(type_, text, shapes, n_tops)
    with pytest.raises(LayerError, match="layer 'l'") as info:
        converter_for(spec)(spec)
    assert match.lower() in str(info.value).lower(), str(info.value)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

MINE = {
    "activation": {"ReLU", "ReLU6", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power",
                   "Exp", "Log", "Clip", "Swish", "Threshold", "Dropout"},
    "shape": {"Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "Softmax",
              "Reduction", "ArgMax", "Silence", "Tile", "Parameter", "Permute",
              "ShuffleChannel", "Upsample", "Interp", "Axpy"},
    "loss": {"EuclideanLoss", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "Accuracy",
             "HingeLoss", "MultinomialLogisticLoss"},
    "detection": {"PriorBox", "DetectionOutput"},
}


def test_registry_families_origins_and_summaries() -> None:
    regs = registered_types()
    for family, types in MINE.items():
        for t in types:
            assert t in regs, t
            assert regs[t].family == family, t
            assert regs[t].summary and "\n" not in regs[t].summary, t
    for t in ("ReLU6", "Permute", "ShuffleChannel", "Upsample", "Interp", "Axpy", "PriorBox",
              "DetectionOutput"):
        assert regs[t].origin != "BVLC Caffe", t
    assert regs["PriorBox"].origin == regs["DetectionOutput"].origin == "SSD (weiliu89/caffe)"
    assert regs["Softmax"].origin == "BVLC Caffe"


@pytest.mark.parametrize("type_", ["InfogainLoss"])
def test_unimplemented_losses_are_unknown_types(type_: str) -> None:
    spec = _spec(type_, "", [(2, 3), (2,)])
    with pytest.raises(LayerError, match="unknown layer type"):
        converter_for(spec)


def test_loss_layers_default_loss_weight() -> None:
    cases = [("EuclideanLoss", [(2, 3), (2, 3)], 1.0),
             ("SoftmaxWithLoss", [(2, 3), (2,)], 1.0),
             ("SigmoidCrossEntropyLoss", [(2, 3), (2, 3)], 1.0),
             ("HingeLoss", [(2, 3), (2,)], 1.0),
             ("MultinomialLogisticLoss", [(2, 3), (2,)], 1.0),
             ("Accuracy", [(2, 3), (2,)], 0.0),
             ("ReLU", [(2, 3)], 0.0)]
    for type_, shapes, weight in cases:
        spec = _spec(type_, "", shapes)
        assert converter_for(spec)(spec).default_loss_weight == weight, type_


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------

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
    x = _with_kinks(_rng(1), (2, 3, 4, 5))
    x[0, 0, 0, :3] = [30.0, -30.0, 7.5]  # saturation and ReLU6's clip
    (y,), mod, _ = _run(type_, text, [x])
    mod.eval()
    _close(mod(torch.tensor(x)), ref(x))


def test_log_matches_reference() -> None:
    x = np.abs(_rng(2).normal(0, 2, (2, 3, 4))).astype(np.float32) + 0.05
    for text, kw in [("", {}), ("log_param { base: 10 scale: 2 shift: 0.5 }",
                                dict(base=10, scale=2, shift=0.5)),
                     ("log_param { base: 2 }", dict(base=2))]:
        (y,), _, _ = _run("Log", text, [x])
        _close(y, R.log(x, **kw))


def test_prelu_per_channel_and_shared_forward_and_caffe_gradients() -> None:
    rng = _rng(3)
    x = _with_kinks(rng, (2, 4, 3, 3))
    for text, shared in [("", False), ("prelu_param { channel_shared: true }", True)]:
        (y,), mod, (xt,) = _run("PReLU", text, [x], grad=True)
        slope = _np(mod.weight)
        assert mod.weight.shape == (() if shared else (4,))
        _close(y, R.prelu(x, slope, channel_shared=shared))
        top_diff = rng.normal(size=x.shape).astype(np.float32)
        y.backward(torch.tensor(top_diff))
        # prelu_layer.cpp Backward_cpu: the slope gets sum(top_diff * x * (x <= 0)) per
        # channel; the bottom gets top_diff * ((x > 0) + slope_c * (x <= 0)).
        a = slope.reshape(1, -1, 1, 1) if not shared else slope
        neg = (x <= 0).astype(np.float64)
        d_slope = (top_diff * x * neg).sum(axis=(0, 2, 3))
        _close(mod.weight.grad, d_slope.sum() if shared else d_slope, rtol=1e-5, atol=1e-5)
        _close(xt.grad, top_diff * ((x > 0) + a * neg))


def test_prelu_default_filler_is_a_quarter() -> None:
    spec = _spec("PReLU", "", [(1, 3, 2, 2)])
    built, _ = _build(spec, fill_blobs="filler")
    _close(built.module.weight, np.full(3, 0.25, np.float32))
    spec = _spec("PReLU", "prelu_param { filler { type: 'constant' value: 0.1 } }",
                 [(1, 3, 2, 2)])
    built, _ = _build(spec, fill_blobs="filler")
    _close(built.module.weight, np.full(3, 0.1, np.float32))


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
        (y,), _, (xt,) = _run(type_, text, [x], grad=True)
        y.sum().backward()
        _close(xt.grad, np.asarray(expected, np.float32)[None], rtol=1e-6)


def test_dropout_scales_kept_values_in_training_and_is_identity_in_eval() -> None:
    x = np.ones((4, 50, 50), np.float32)
    (_,), mod, _ = _run("Dropout", "dropout_param { dropout_ratio: 0.25 }", [x])
    mod.train()
    torch.manual_seed(0)
    y = _np(mod(torch.tensor(x)))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    mod.eval()
    _close(mod(torch.tensor(x)), x)


def test_activation_bad_parameters() -> None:
    _raises("Exp", "exp_param { base: -2 }", [(2, 3)], match="base")
    _raises("Log", "log_param { base: 0 }", [(2, 3)], match="base")
    _raises("Clip", "clip_param { min: 0 }", [(2, 3)], match="min and max")
    _raises("Clip", "clip_param { min: 3 max: 1 }", [(2, 3)], match="larger than max")
    _raises("Dropout", "dropout_param { dropout_ratio: 1 }", [(2, 3)], match="dropout_ratio")
    _raises("PReLU", "", [(5,)], match="2 axes")
    _raises("ReLU", "", [(2, 3), (2, 3)], match="bottom")
    _raises("ReLU6", "relu_param { negative_slope: 0.1 }", [(2, 3)], match="negative slope")


# ----------------------------------------------------------------------------------------------
# Eltwise, Concat, Slice, Split
# ----------------------------------------------------------------------------------------------

def test_eltwise_sum_prod_max() -> None:
    rng = _rng(4)
    xs = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3)]
    (y,), _, _ = _run("Eltwise", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
                      xs)
    _close(y, R.eltwise(xs, operation="SUM", coeff=[1, -0.5, 2]))
    (y,), _, _ = _run("Eltwise", "", xs[:2])
    _close(y, R.eltwise(xs[:2]))
    (y,), _, _ = _run("Eltwise", "eltwise_param { operation: PROD }", xs)
    _close(y, R.eltwise(xs, operation="PROD"))
    (y,), _, _ = _run("Eltwise", "eltwise_param { operation: MAX }", xs)
    _close(y, R.eltwise(xs, operation="MAX"))


def test_eltwise_max_routes_the_gradient_like_caffes_mask() -> None:
    # eltwise_layer.cpp: bottom 1 wins a tie with bottom 0 (a > b is strict); bottom 2 wins
    # only when strictly larger than the running max. Gradient goes to the winner only.
    a = np.array([[1.0, 2.0, 5.0, 0.0]], np.float32)
    b = np.array([[1.0, 3.0, 4.0, 0.0]], np.float32)
    c = np.array([[1.0, 3.0, 6.0, -1.0]], np.float32)
    (y,), _, xs = _run("Eltwise", "eltwise_param { operation: MAX }", [a, b, c], grad=True)
    y.sum().backward()
    _close(y, [[1, 3, 6, 0]])
    _close(xs[0].grad, [[0, 0, 0, 0]])
    _close(xs[1].grad, [[1, 1, 0, 1]])
    _close(xs[2].grad, [[0, 0, 1, 0]])


def test_eltwise_bad_parameters() -> None:
    _raises("Eltwise", "eltwise_param { coeff: 1 coeff: 2 coeff: 3 }", [(2, 3), (2, 3)],
            match="one coeff per bottom")
    _raises("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2, 3), (2, 3)],
            match="only allowed with operation SUM")
    _raises("Eltwise", "", [(2, 3)], match="at least 2")
    _raises("Eltwise", "", [(2, 3), (2, 4)], match="same shape")


def test_concat_axis_and_legacy_concat_dim() -> None:
    rng = _rng(5)
    a = rng.normal(size=(2, 3, 4)).astype(np.float32)
    b = rng.normal(size=(2, 5, 4)).astype(np.float32)
    (y,), _, _ = _run("Concat", "", [a, b])
    _close(y, R.concat([a, b], axis=1))
    (y,), _, _ = _run("Concat", "concat_param { concat_dim: 1 }", [a, b])
    _close(y, R.concat([a, b], axis=1))
    c = rng.normal(size=(2, 3, 2)).astype(np.float32)
    (y,), _, _ = _run("Concat", "concat_param { axis: -1 }", [a, c])
    _close(y, R.concat([a, c], axis=-1))
    (y,), _, _ = _run("Concat", "", [a])
    _close(y, a)
    _raises("Concat", "", [(2, 3, 4), (2, 3, 5)], match="every axis but 1")
    _raises("Concat", "concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)], match="not both")
    _raises("Concat", "concat_param { axis: 3 }", [(2, 3), (2, 3)], match="out of range")


def test_slice_points_equal_parts_and_legacy_slice_dim() -> None:
    x = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
    outs, _, _ = _run("Slice", "slice_param { slice_point: 1 slice_point: 4 }", [x], n_tops=3)
    for o, r in zip(outs, R.slice_blob(x, axis=1, slice_point=[1, 4])):
        _close(o, r)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 2), (2, 3, 2), (2, 2, 2)]
    outs, _, _ = _run("Slice", "", [x], n_tops=3)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 2)] * 3
    _close(outs[2], x[:, 4:6])
    outs, _, _ = _run("Slice", "slice_param { slice_dim: 2 }", [x], n_tops=2)
    _close(outs[0], x[:, :, :1])
    _close(outs[1], x[:, :, 1:])
    _raises("Slice", "", [(2, 6)], n_tops=4, match="equal tops")
    _raises("Slice", "slice_param { slice_point: 3 slice_point: 2 }", [(2, 6)], n_tops=3,
            match="increasing")
    _raises("Slice", "slice_param { slice_point: 6 }", [(2, 6)], n_tops=2, match="not inside")
    _raises("Slice", "slice_param { slice_point: 2 }", [(2, 6)], n_tops=3, match="give 2 tops")


def test_split_copies_and_sums_gradients() -> None:
    x = _rng(6).normal(size=(2, 3)).astype(np.float32)
    outs, _, (xt,) = _run("Split", "", [x], n_tops=3, grad=True)
    for o in outs:
        _close(o, x)
    (outs[0] * 1 + outs[1] * 2 + outs[2] * 3).sum().backward()
    _close(xt.grad, np.full_like(x, 6))


# ----------------------------------------------------------------------------------------------
# Flatten, Reshape, Crop, Tile
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 20)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 end_axis: -2 }", (24, 5)),
    ("flatten_param { axis: -1 }", (2, 3, 4, 5)),
])
def test_flatten_shapes(text: str, expected) -> None:
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    (y,), _, _ = _run("Flatten", text, [x])
    assert tuple(y.shape) == expected
    _close(y, x.reshape(expected))


RESHAPES = [  # bottom (2, 3, 4, 5); hand-derived from reshape_layer.cpp's rules
    ("dim: 0 dim: -1", {}, (2, 60)),
    ("dim: 0 dim: 0 dim: -1", {}, (2, 3, 20)),
    ("dim: -1", {}, (120,)),
    ("dim: 2 dim: -1 dim: 10", {}, (2, 6, 10)),
    ("dim: 0 dim: 3 dim: 0 dim: 5", {}, (2, 3, 4, 5)),
    ("dim: 3 dim: 1", {"axis": 1, "num_axes": 1}, (2, 3, 1, 4, 5)),
    ("dim: 1", {"axis": -1, "num_axes": 0}, (2, 3, 4, 5, 1)),
    ("dim: 1", {"axis": 0, "num_axes": 0}, (1, 2, 3, 4, 5)),
    ("dim: -1", {"axis": 0, "num_axes": 2}, (6, 4, 5)),
    ("dim: 0 dim: -1", {"axis": 2}, (2, 3, 4, 5)),
    ("dim: -1 dim: 2", {"axis": -3}, (2, 3, 10, 2)),
]


@pytest.mark.parametrize("dims,kw,expected", RESHAPES)
def test_reshape_shape_rules(dims: str, kw: dict, expected) -> None:
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    extra = "".join(f" {k}: {v}" for k, v in kw.items())
    (y,), mod, _ = _run("Reshape", f"reshape_param {{ shape {{ {dims} }}{extra} }}", [x])
    assert tuple(y.shape) == expected
    assert R.reshape_shape(x.shape, [int(d) for d in dims.split()[1::2]], **kw) == expected
    _close(y, x.reshape(expected))
    # the module applies the rule to the runtime shape: another batch size works too
    if dims.startswith("dim: 0"):
        assert mod(torch.zeros(7, 3, 4, 5)).shape[0] == 7


@pytest.mark.parametrize("text,match", [
    ("reshape_param { shape { dim: -1 dim: -1 } }", "more than one -1"),
    ("reshape_param { shape { dim: 7 dim: -1 } }", "cannot infer"),
    ("reshape_param { shape { dim: 2 dim: 3 } }", "elements"),
    ("reshape_param { shape { dim: 0 dim: 0 } axis: 3 }", "no axis"),
    ("reshape_param { shape { dim: 1 } axis: 2 num_axes: 3 }", "goes past"),
    ("reshape_param { shape { dim: -2 dim: -1 } }", "below -1"),
])
def test_reshape_bad_parameters(text: str, match: str) -> None:
    _raises("Reshape", text, [(2, 3, 4, 5)], match=match)


def test_crop_offsets() -> None:
    x = _rng(7).normal(size=(2, 3, 8, 9)).astype(np.float32)
    ref = np.zeros((1, 1, 5, 4), np.float32)
    for text, kw in [("", {}), ("crop_param { offset: 2 }", dict(offset=[2])),
                     ("crop_param { offset: 1 offset: 3 }", dict(offset=[1, 3])),
                     ("crop_param { axis: 3 offset: 5 }", dict(axis=3, offset=[5]))]:
        (y,), _, _ = _run("Crop", text, [x, ref])
        _close(y, R.crop(x, ref, **kw))
    ref1 = np.zeros((2, 2, 5, 4), np.float32)
    (y,), _, _ = _run("Crop", "crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }", [x, ref1])
    _close(y, x[:, 1:3, 2:7, 3:7])
    _raises("Crop", "crop_param { offset: 4 offset: 6 }", [(2, 3, 8, 9), (1, 1, 5, 4)],
            match="exceeds")
    _raises("Crop", "crop_param { offset: 1 offset: 1 offset: 1 }", [(2, 3, 8, 9), (1, 1, 5, 4)],
            match="give 0, 1 or 2 offsets")


def test_tile() -> None:
    x = _rng(8).normal(size=(2, 3, 4)).astype(np.float32)
    for text, kw in [("tile_param { tiles: 3 }", dict(axis=1, tiles=3)),
                     ("tile_param { axis: 0 tiles: 2 }", dict(axis=0, tiles=2)),
                     ("tile_param { axis: -1 tiles: 2 }", dict(axis=-1, tiles=2))]:
        (y,), _, _ = _run("Tile", text, [x])
        _close(y, R.tile(x, **kw))
    _raises("Tile", "", [(2, 3)], match="tiles must be positive")


# ----------------------------------------------------------------------------------------------
# Softmax, Reduction, ArgMax, Silence, Parameter
# ----------------------------------------------------------------------------------------------

def test_softmax_axes() -> None:
    x = _rng(9).normal(0, 5, (2, 3, 4, 5)).astype(np.float32)
    for text, axis in [("", 1), ("softmax_param { axis: -1 }", -1),
                       ("softmax_param { axis: 0 }", 0)]:
        (y,), _, _ = _run("Softmax", text, [x])
        _close(y, R.softmax(x, axis=axis))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 0.5), (-1, -2.0)])
def test_reduction(op: str, axis: int, coeff: float) -> None:
    x = _rng(10).normal(size=(2, 3, 4)).astype(np.float32)
    (y,), _, _ = _run("Reduction", f"reduction_param {{ operation: {op} axis: {axis} "
                                   f"coeff: {coeff} }}", [x])
    expected = R.reduction(x, operation=op, axis=axis, coeff=coeff)
    assert tuple(y.shape) == x.shape[:axis % 3]  # axis 0 gives a 0-axis top
    _close(y, expected, rtol=2e-5)


def test_argmax_literals_with_caffes_tie_order() -> None:
    # std::partial_sort with std::greater on (value, index): equal values -> larger index first.
    x = np.array([[3.0, 1.0, 3.0, 2.0]], np.float32)
    (y,), _, _ = _run("ArgMax", "argmax_param { top_k: 2 }", [x])
    _close(y, [[[2.0, 0.0]]])  # (N, 1, top_k): at least three axes
    (y,), _, _ = _run("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", [x])
    _close(y, [[[2.0, 0.0, 3.0], [3.0, 3.0, 2.0]]])
    x4 = np.array([[[[1.0], [5.0]], [[5.0], [0.0]]]], np.float32)  # (1, 2, 2, 1)
    (y,), _, _ = _run("ArgMax", "", [x4])
    _close(y, np.array([2.0], np.float32).reshape(1, 1, 1, 1))  # flat indices 1 and 2 tie
    (y,), _, _ = _run("ArgMax", "argmax_param { axis: 1 }", [x4])
    _close(y, np.array([[[[1.0], [0.0]]]], np.float32))
    (y,), _, _ = _run("ArgMax", "argmax_param { axis: 2 out_max_val: true }", [x4])
    _close(y, np.array([[[[5.0]], [[5.0]]]], np.float32))


@pytest.mark.parametrize("text,kw", [
    ("", {}), ("argmax_param { top_k: 3 }", dict(top_k=3)),
    ("argmax_param { top_k: 2 out_max_val: true }", dict(top_k=2, out_max_val=True)),
    ("argmax_param { axis: 1 top_k: 2 }", dict(axis=1, top_k=2)),
    ("argmax_param { axis: -1 out_max_val: true }", dict(axis=-1, out_max_val=True))])
def test_argmax_against_reference(text: str, kw: dict) -> None:
    x = _rng(11).integers(0, 4, (3, 4, 2, 3)).astype(np.float32)  # many ties
    (y,), _, _ = _run("ArgMax", text, [x])
    _close(y, R.argmax(x, **kw))


def test_argmax_bad_parameters() -> None:
    _raises("ArgMax", "argmax_param { top_k: 7 }", [(2, 3, 2)], match="top_k 7")
    _raises("ArgMax", "argmax_param { axis: 1 top_k: 4 }", [(2, 3, 2)], match="top_k 4")
    _raises("ArgMax", "argmax_param { top_k: 0 }", [(2, 3)], match="top_k")


def test_silence_has_no_tops() -> None:
    outs, _, _ = _run("Silence", "", [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)],
                      n_tops=0)
    assert outs == []
    _raises("Silence", "", [(2, 3)], n_tops=1, match="no tops")


def test_parameter_outputs_its_learnable_blob() -> None:
    spec = _spec("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", [])
    built, meta_shapes = _build(spec, fill_blobs="filler")
    assert meta_shapes == [(2, 3)]
    assert [(s.attr, s.shape, s.filler) for s in built.blobs] == [("weight", (2, 3), None)]
    y = built.module()
    _close(y, np.zeros((2, 3), np.float32))  # Caffe's ParameterLayer blob starts at 0
    (y * torch.arange(6.0).reshape(2, 3)).sum().backward()
    _close(built.module.weight.grad, np.arange(6.0).reshape(2, 3))
    _raises("Parameter", "parameter_param { shape { dim: 2 dim: 0 } }", [], match="positive")


# ----------------------------------------------------------------------------------------------
# fork shape layers
# ----------------------------------------------------------------------------------------------

def test_permute() -> None:
    x = _rng(12).normal(size=(2, 3, 4, 5)).astype(np.float32)
    for order in ([0, 2, 3, 1], [0, 3], [1]):
        text = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
        (y,), _, _ = _run("Permute", text, [x])
        _close(y, R.permute(x, order=order))
    (y,), _, _ = _run("Permute", "permute_param { order: 0 order: 3 }", [x])
    assert tuple(y.shape) == (2, 5, 3, 4)  # the axes left out follow in increasing order
    _raises("Permute", "permute_param { order: 0 order: 0 }", [(2, 3)], match="repeats")
    _raises("Permute", "permute_param { order: 4 }", [(2, 3, 4, 5)], match="out of range")


def test_shuffle_channel() -> None:
    x = np.arange(2 * 6 * 2 * 2, dtype=np.float32).reshape(2, 6, 2, 2)
    (y,), _, _ = _run("ShuffleChannel", "shuffle_channel_param { group: 2 }", [x])
    _close(y, R.shuffle_channel(x, group=2))
    # by hand: channels (0 1 2 | 3 4 5) -> 0 3 1 4 2 5
    _close(y[:, :, 0, 0], x[:, [0, 3, 1, 4, 2, 5], 0, 0])
    _raises("ShuffleChannel", "shuffle_channel_param { group: 4 }", [(2, 6, 2, 2)], match="groups")


def test_upsample_nearest() -> None:
    x = _rng(13).normal(size=(1, 2, 3, 4)).astype(np.float32)
    (y,), _, _ = _run("Upsample", "upsample_param { scale: 2 }", [x])
    _close(y, R.upsample_nearest(x, scale=2))
    (y,), _, _ = _run("Upsample", "upsample_param { scale: 3 }", [x])
    assert tuple(y.shape) == (1, 2, 9, 12)
    _close(y[0, 1, 5, 7], x[0, 1, 1, 2])
    _raises("Upsample", "upsample_param { scale: 2 }", [(1, 2, 3, 4), (1, 2, 3, 5)], match="mask")
    _raises("Upsample", "upsample_param { scale: 0 }", [(1, 2, 3, 4)], match="positive")


@pytest.mark.parametrize("text,kw", [
    ("zoom_factor: 2", dict(zoom_factor=2)),
    ("zoom_factor: 3 pad_beg: -1 pad_end: -2", dict(zoom_factor=3, pad_beg=-1, pad_end=-2)),
    ("shrink_factor: 2", dict(shrink_factor=2)),
    ("shrink_factor: 2 zoom_factor: 3", dict(shrink_factor=2, zoom_factor=3)),
    ("height: 11 width: 4", dict(height=11, width=4)),
    ("height: 1 width: 1", dict(height=1, width=1)),
    ("zoom_factor: 2 height: 3 width: 3", dict(zoom_factor=2)),  # zoom takes precedence
    ("zoom_factor: 1", dict(zoom_factor=1)),
])
def test_interp(text: str, kw: dict) -> None:
    x = _rng(14).normal(size=(2, 3, 7, 6)).astype(np.float32)
    (y,), _, (xt,) = _run("Interp", f"interp_param {{ {text} }}", [x], grad=True)
    _close(y, R.interp(x, **kw), rtol=1e-5, atol=2e-6)
    y.sum().backward()  # differentiable, like Caffe's Backward
    assert xt.grad is not None and xt.grad.shape == xt.shape


def test_interp_output_sizes_by_hand() -> None:
    x = np.zeros((1, 1, 9, 5), np.float32)
    for text, hw in [("zoom_factor: 4", (33, 17)), ("shrink_factor: 4", (3, 2)),
                     ("shrink_factor: 2 zoom_factor: 2", (9, 5)),
                     ("zoom_factor: 2 pad_beg: -2", (13, 5))]:
        (y,), _, _ = _run("Interp", f"interp_param {{ {text} }}", [x])
        assert tuple(y.shape[2:]) == hw, text
    _raises("Interp", "interp_param { pad_beg: 1 zoom_factor: 2 }", [(1, 1, 9, 5)], match="<= 0")
    _raises("Interp", "interp_param { height: 3 }", [(1, 1, 9, 5)], match="needs zoom_factor")


def test_axpy() -> None:
    rng = _rng(15)
    a = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    y = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    (out,), _, ts = _run("Axpy", "", [a, x, y], grad=True)
    _close(out, a * x + y)  # axpy_layer.cpp: top = bottom[0] * bottom[1] + bottom[2]
    out.sum().backward()
    _close(ts[0].grad, x.sum(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-5)
    (out,), _, _ = _run("Axpy", "", [a.reshape(2, 3), x, y])
    _close(out, a * x + y)
    _raises("Axpy", "", [(2, 3, 2, 1), (2, 3, 4, 5), (2, 3, 4, 5)], match="(N, C, 1, 1)")
    _raises("Axpy", "", [(2, 3), (2, 3, 4, 5), (2, 3, 4, 4)], match="same shape")


def test_fork_layer_without_schema_field_is_a_clear_error() -> None:
    # fork_param is the one door to fork messages: a schema without the field (here the legacy
    # V1LayerParameter, which has no interp_param) gives an error naming field and layer.
    spec = LayerSpec("l", "Interp", caffe_pb2.V1LayerParameter(), [(1, 1, 4, 4)], 1)
    with pytest.raises(LayerError, match="layer 'l'.*interp_param"):
        converter_for(spec)(spec)


def test_fork_fields_that_are_not_implemented_are_refused() -> None:
    _raises("Upsample", "upsample_param { upsample_h: 8 upsample_w: 8 }", [(1, 2, 3, 4)],
            match="SegNet")
    _raises("PriorBox", "prior_box_param { min_size: 30 offset_h: 0.5 }",
            [(1, 8, 5, 6), (1, 3, 80, 100)], match="OpenCV extension")
    _raises("DetectionOutput", "detection_output_param { num_classes: 3 normalized_bbox: false }",
            [(2, 40), (2, 30), (1, 2, 40)], match="normalized_bbox")


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------

def test_euclidean_loss_value_and_gradient() -> None:
    rng = _rng(16)
    a = rng.normal(size=(4, 3, 2)).astype(np.float32)
    b = rng.normal(size=(4, 6)).astype(np.float32)  # same count per sample, other shape
    (loss,), _, (at, bt) = _run("EuclideanLoss", "", [a, b], grad=True)
    assert loss.shape == ()
    _close(loss, R.euclidean_loss(a.reshape(4, 6), b))
    loss.backward()
    _close(at.grad, (a.reshape(4, 6) - b).reshape(a.shape) / 4)
    _close(bt.grad, -(a.reshape(4, 6) - b) / 4)
    _raises("EuclideanLoss", "", [(4, 6), (4, 5)], match="same count")


def _norm_text(mode: str | None, normalize: bool | None, ignore: int | None) -> str:
    parts = []
    if mode is not None:
        parts.append(f"normalization: {mode}")
    if normalize is not None:
        parts.append(f"normalize: {str(normalize).lower()}")
    if ignore is not None:
        parts.append(f"ignore_label: {ignore}")
    return f"loss_param {{ {' '.join(parts)} }}" if parts else ""


NORMALIZATIONS = [(None, None), ("FULL", None), ("VALID", None), ("BATCH_SIZE", None),
                  ("NONE", None), (None, True), (None, False), ("FULL", False)]


@pytest.mark.parametrize("mode,normalize", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss_normalizations(mode, normalize, ignore) -> None:
    rng = _rng(17)
    x = rng.normal(0, 3, (3, 4, 2, 5)).astype(np.float32)
    label = rng.integers(0, 4, (3, 1, 2, 5)).astype(np.float32)
    text = _norm_text(mode, normalize, ignore)
    (loss, prob), _, (xt, _lt) = _run("SoftmaxWithLoss", text, [x, label], n_tops=2, grad=True)
    ref = R.softmax_with_loss(x, label, ignore_label=ignore, normalization=mode,
                              normalize=normalize)
    _close(loss, ref)
    _close(prob, R.softmax(x, axis=1))
    loss.backward()
    # softmax_loss_layer.cpp Backward: (prob - onehot) for counted positions, 0 for ignored,
    # divided by the same normaliser.
    p = R.softmax(x, axis=1).astype(np.float64)
    lab = label[:, 0].astype(np.int64)
    keep = np.ones_like(lab, bool) if ignore is None else lab != ignore
    onehot = np.moveaxis(np.eye(4)[lab], -1, 1)
    expected = (p - onehot) * keep[:, None]
    total = -np.log(np.maximum(np.take_along_axis(p, lab[:, None], 1)[:, 0], F32_TINY))[keep]
    normalizer = total.sum() / float(ref) if float(ref) else 1.0
    _close(xt.grad, expected / normalizer, rtol=1e-4, atol=1e-6)


def test_softmax_with_loss_normalizer_by_hand() -> None:
    # Two positions, one ignored: VALID divides by 1, FULL by 2, BATCH_SIZE by N = 1.
    x = np.zeros((1, 2, 2), np.float32)  # p = 0.5 everywhere
    label = np.array([[0, 5]], np.float32)
    for mode, norm in [("VALID", 1), ("FULL", 2), ("BATCH_SIZE", 1), ("NONE", 1)]:
        (loss,), _, _ = _run("SoftmaxWithLoss", _norm_text(mode, None, 5), [x, label])
        _close(loss, np.float32(math.log(2) / norm))
    # every position ignored: the normaliser is max(1, 0) and the loss 0
    (loss,), _, _ = _run("SoftmaxWithLoss", _norm_text(None, None, 5), [x, np.full((1, 2), 5.0)])
    _close(loss, np.float32(0))


def test_softmax_with_loss_axis_and_underflow() -> None:
    rng = _rng(18)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    label = rng.integers(0, 4, (2, 3)).astype(np.float32)
    (loss,), _, _ = _run("SoftmaxWithLoss", "softmax_param { axis: 2 }", [x, label])
    _close(loss, R.softmax_with_loss(x, label, axis=2))
    # p[label] underflows: the value is clamped at FLT_MIN, the gradient stays (p - onehot).
    x = np.array([[0.0, 200.0]], np.float32)
    (loss,), _, (xt, _) = _run("SoftmaxWithLoss", "", [x, np.array([0.0], np.float32)], grad=True)
    _close(loss, np.float32(-math.log(F32_TINY)))
    loss.backward()
    _close(xt.grad, [[-1.0, 1.0]])


def test_softmax_with_loss_bad_label_count() -> None:
    _raises("SoftmaxWithLoss", "", [(2, 3, 4), (2, 3)], match="one label per prediction")
    _raises("SoftmaxWithLoss", "", [(2, 3), (2,)], n_tops=3, match="1 to 2 tops")


@pytest.mark.parametrize("mode,normalize", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_loss(mode, normalize, ignore) -> None:
    rng = _rng(19)
    x = _with_kinks(rng, (3, 2, 4))
    x[0, 0, :2] = [40.0, -40.0]
    t = rng.integers(0, 2, x.shape).astype(np.float32)
    if ignore is not None:
        t.reshape(-1)[::5] = ignore
    text = _norm_text(mode, normalize, ignore)
    (loss,), _, (xt, _) = _run("SigmoidCrossEntropyLoss", text, [x, t], grad=True)
    ref = R.sigmoid_cross_entropy_loss(x, t, ignore_label=ignore, normalization=mode,
                                       normalize=normalize)
    _close(loss, ref)
    loss.backward()
    # sigmoid_cross_entropy_loss_layer.cpp Backward: (sigmoid(x) - t), 0 where ignored, / norm.
    keep = np.ones(x.shape, bool) if ignore is None else t != ignore
    default = "BATCH_SIZE"
    chosen = mode or ({True: "VALID", False: "BATCH_SIZE"}[normalize] if normalize is not None
                      else default)
    norm = {"FULL": x.size, "VALID": keep.sum(), "BATCH_SIZE": 3, "NONE": 1}[chosen]
    expected = (1 / (1 + np.exp(-x.astype(np.float64))) - t) * keep / max(norm, 1)
    _close(xt.grad, expected, rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_default_is_batch_size() -> None:
    x = np.zeros((2, 3), np.float32)  # each element log(2)
    t = np.zeros((2, 3), np.float32)
    (loss,), _, _ = _run("SigmoidCrossEntropyLoss", "", [x, t])
    _close(loss, np.float32(6 * math.log(2) / 2))
    _raises("SigmoidCrossEntropyLoss", "", [(2, 3), (2, 4)], match="same count")


def test_multinomial_logistic_loss() -> None:
    rng = _rng(20)
    p = rng.uniform(0, 1, (4, 5, 1, 1)).astype(np.float32)
    p[1, 2] = 0.0  # clamped at kLOG_THRESHOLD = 1e-20
    label = np.array([0, 2, 4, 1], np.float32)
    (loss,), _, (pt, _) = _run("MultinomialLogisticLoss", "", [p, label], grad=True)
    chosen = p.reshape(4, 5)[np.arange(4), label.astype(int)].astype(np.float64)
    # multinomial_logistic_loss_layer.cpp: -sum log(max(p, 1e-20)) / num; gradient
    # -1 / max(p, 1e-20) / num at the label, 0 elsewhere.
    _close(loss, -np.log(np.maximum(chosen, 1e-20)).sum() / 4)
    loss.backward()
    expected = np.zeros((4, 5))
    expected[np.arange(4), label.astype(int)] = -1 / np.maximum(chosen, 1e-20) / 4
    _close(pt.grad.reshape(4, 5), expected, rtol=1e-5)
    _raises("MultinomialLogisticLoss", "", [(4, 5), (3,)], match="one label per sample")


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm: str) -> None:
    rng = _rng(21)
    x = rng.normal(0, 1.5, (4, 5)).astype(np.float32)
    label = np.array([0, 3, 4, 1], np.float32)
    text = "" if norm == "L1" else "hinge_loss_param { norm: L2 }"
    (loss,), _, (xt, _) = _run("HingeLoss", text, [x, label], grad=True)
    # hinge_loss_layer.cpp: diff = x with the label entry negated; max(0, 1 + diff);
    # L1: sum / num, L2: sum of squares / num. Backward: sign (L1) or 2*margin (L2), times
    # the sign flip at the label, / num.
    sign = np.ones((4, 5))
    sign[np.arange(4), label.astype(int)] = -1
    margin = np.maximum(0, 1 + sign * x)
    _close(loss, (margin.sum() if norm == "L1" else (margin ** 2).sum()) / 4)
    loss.backward()
    g = np.sign(margin) if norm == "L1" else 2 * margin
    _close(xt.grad, g * sign / 4)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("ignore", [None, 1])
def test_accuracy(top_k: int, ignore) -> None:
    rng = _rng(22)
    x = rng.integers(0, 3, (4, 5, 3)).astype(np.float32)  # ties included
    label = rng.integers(0, 5, (4, 3)).astype(np.float32)
    text = f"accuracy_param {{ top_k: {top_k}" + (f" ignore_label: {ignore}" if ignore is not None
                                                 else "") + " }"
    (acc, per_class), _, _ = _run("Accuracy", text, [x, label], n_tops=2)
    ref_acc, ref_pc = R.accuracy(x, label, top_k=top_k, ignore_label=ignore, per_class=True)
    _close(acc, ref_acc)
    _close(per_class, ref_pc)
    assert per_class.shape == (5,)


def test_accuracy_literals() -> None:
    # Ties count against: true class 0 scores 1, class 1 also 1 -> not top-1, but top-2.
    x = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
    label = np.array([0, 1], np.float32)
    (acc,), _, _ = _run("Accuracy", "", [x, label])
    _close(acc, np.float32(0.5))
    (acc,), _, _ = _run("Accuracy", "accuracy_param { top_k: 2 }", [x, label])
    _close(acc, np.float32(1.0))
    (acc,), _, _ = _run("Accuracy", "accuracy_param { ignore_label: 1 }", [x, label])
    _close(acc, np.float32(0.0))
    (acc,), _, _ = _run("Accuracy", "accuracy_param { ignore_label: 7 }",
                        [x, np.full(2, 7, np.float32)])
    _close(acc, np.float32(0.0))  # nothing counted -> 0
    _raises("Accuracy", "accuracy_param { top_k: 4 }", [(2, 3), (2,)], match="top_k")


# ----------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------

PRIORBOXES = [
    ("min_size: 30", dict(min_size=[30])),
    ("min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 clip: true variance: 0.1 "
     "variance: 0.1 variance: 0.2 variance: 0.2",
     dict(min_size=[30], max_size=[60], aspect_ratio=[2, 3], clip=True,
          variance=[0.1, 0.1, 0.2, 0.2])),
    ("min_size: 21.7 aspect_ratio: 2 aspect_ratio: 2 aspect_ratio: 0.5 flip: false step: 8 "
     "offset: 0.25", dict(min_size=[21.7], aspect_ratio=[2, 2, 0.5], flip=False, step=8,
                          offset=0.25)),
    ("min_size: 20 max_size: 50.9 aspect_ratio: 2 img_size: 300 variance: 0.2",
     dict(min_size=[20], max_size=[50.9], aspect_ratio=[2], img_size=300, variance=[0.2])),
    ("min_size: 16 img_h: 90 img_w: 120 step_h: 9 step_w: 11 aspect_ratio: 1.5",
     dict(min_size=[16], img_h=90, img_w=120, step_h=9, step_w=11, aspect_ratio=[1.5])),
]


@pytest.mark.parametrize("text,kw", PRIORBOXES)
def test_prior_box(text: str, kw: dict) -> None:
    feat = np.zeros((1, 8, 5, 6), np.float32)
    img = np.zeros((1, 3, 80, 100), np.float32)
    (y,), _, _ = _run("PriorBox", f"prior_box_param {{ {text} }}", [feat, img])
    if kw.get("max_size") and kw.get("aspect_ratio"):
        # SSD's master prior_box_layer.cpp orders each cell's priors [min, sqrt(min*max),
        # ratios...] and sizes the ratio boxes from min_size alone; compose that from two
        # reference calls, one without ratios and one without max sizes.
        no_ar = {k: v for k, v in kw.items() if k not in ("aspect_ratio", "flip")}
        no_max = {k: v for k, v in kw.items() if k != "max_size"}
        a = R.prior_box(feat, img, **no_ar).reshape(2, 30, -1, 4)
        b = R.prior_box(feat, img, **no_max).reshape(2, 30, -1, 4)
        ref = np.concatenate([a, b[:, :, 1:]], axis=2).reshape(1, 2, -1)
    else:
        ref = R.prior_box(feat, img, **kw)
    assert y.shape == ref.shape
    _close(y, ref, rtol=1e-6, atol=1e-7)


def test_prior_box_layout_by_hand() -> None:
    # One 1x2 feature map on a 100x100 image, min 20, max 80, ratio 2: 4 priors per cell in
    # the order min, sqrt(min*max), ratio 2, ratio 1/2; centres at (25, 50) and (75, 50).
    feat = np.zeros((1, 1, 1, 2), np.float32)
    img = np.zeros((1, 3, 100, 100), np.float32)
    (y,), _, _ = _run("PriorBox", "prior_box_param { min_size: 20 max_size: 80 "
                                  "aspect_ratio: 2 }", [feat, img])
    assert tuple(y.shape) == (1, 2, 2 * 4 * 4)
    boxes = _np(y)[0, 0].reshape(2, 4, 4)
    s2 = math.sqrt(2)
    _close(boxes[0, 0], [0.15, 0.4, 0.35, 0.6])  # 20 x 20 at (25, 50)
    _close(boxes[0, 1], [0.05, 0.3, 0.45, 0.7])  # sqrt(20 * 80) = 40
    _close(boxes[1, 2], [(75 - 10 * s2) / 100, (50 - 10 / s2) / 100,  # 20*sqrt2 x 20/sqrt2
                         (75 + 10 * s2) / 100, (50 + 10 / s2) / 100])
    _close(boxes[1, 3], [(75 - 10 / s2) / 100, (50 - 10 * s2) / 100,  # flipped: ratio 1/2
                         (75 + 10 / s2) / 100, (50 + 10 * s2) / 100])
    _close(_np(y)[0, 1], np.full(32, 0.1, np.float32))


def test_prior_box_bad_parameters() -> None:
    shapes = [(1, 8, 5, 6), (1, 3, 80, 100)]
    for text, match in [("", "min_size is required"),
                        ("min_size: 30 max_size: 20", "greater than min_size"),
                        ("min_size: 30 variance: 0.1 variance: 0.2", "1 or 4 variances"),
                        ("min_size: 30 img_size: 30 img_h: 30 img_w: 30", "not both"),
                        ("min_size: 30 step_h: 8", "step_h and step_w")]:
        _raises("PriorBox", f"prior_box_param {{ {text} }}", shapes, match=match)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """JaccardOverlap (bbox_util.cpp) for normalised boxes, in float32."""
    f = np.float32
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = f(min(a[2], b[2]) - max(a[0], b[0]))
    ih = f(min(a[3], b[3]) - max(a[1], b[1]))
    if not (iw > 0 and ih > 0):
        return 0.0

    def size(z):
        return f(0) if z[2] < z[0] or z[3] < z[1] else f(f(z[2] - z[0]) * f(z[3] - z[1]))
    inter = f(iw * ih)
    return float(f(inter / f(f(size(a) + size(b)) - inter)))


def _detection_output_ref(loc, conf, prior, *, num_classes, share_location=True,
                          background=0, code="CENTER_SIZE", var_in_target=False,
                          nms_threshold=0.45, top_k=-1, keep_top_k=-1, conf_threshold=None):
    """detection_output_layer.cpp Forward_cpu + bbox_util.cpp, written as plain loops."""
    f = np.float32
    n = loc.shape[0]
    num_priors = prior.shape[2] // 4
    n_loc = 1 if share_location else num_classes
    pri = prior.reshape(2, num_priors, 4)
    loc = loc.reshape(n, num_priors, n_loc, 4)
    conf = conf.reshape(n, num_priors, num_classes)
    thr = -np.finfo(np.float32).max if conf_threshold is None else conf_threshold

    def decode(p, v, b):
        if var_in_target:
            v = np.ones(4, np.float32)
        if code == "CORNER":
            return np.array([p[0] + v[0] * b[0], p[1] + v[1] * b[1], p[2] + v[2] * b[2],
                             p[3] + v[3] * b[3]], np.float32)
        pw, ph = f(p[2] - p[0]), f(p[3] - p[1])
        pcx, pcy = f(f(p[0] + p[2]) / 2), f(f(p[1] + p[3]) / 2)
        cx = f(f(f(v[0] * b[0]) * pw) + pcx)
        cy = f(f(f(v[1] * b[1]) * ph) + pcy)
        w = f(np.exp(f(v[2] * b[2])) * pw)
        h = f(np.exp(f(v[3] * b[3])) * ph)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    rows = []
    for i in range(n):
        boxes = {c: [decode(pri[0, p], pri[1, p], loc[i, p, c]) for p in range(num_priors)]
                 for c in range(n_loc)}
        indices = {}
        for c in range(num_classes):
            if c == background:
                continue
            bb = boxes[0 if share_location else c]
            scores = conf[i, :, c]
            cand = [(scores[p], p) for p in range(num_priors) if scores[p] > thr]
            cand.sort(key=lambda sp: -sp[0])  # Python's sort is stable like std::stable_sort
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, p in cand:
                if all(_iou(bb[p], bb[k]) <= f(nms_threshold) for k in kept):
                    kept.append(p)
            indices[c] = kept
        if keep_top_k > -1 and sum(map(len, indices.values())) > keep_top_k:
            pairs = sorted(((conf[i, p, c], c, p) for c in sorted(indices) for p in indices[c]),
                           key=lambda t: -t[0])[:keep_top_k]
            indices = {}
            for _, c, p in pairs:
                indices.setdefault(c, []).append(p)
        for c in sorted(indices):
            for p in indices[c]:
                rows.append([i, c, conf[i, p, c], *boxes[0 if share_location else c][p]])
    if not rows:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(n)], np.float32)[None, None]
    return np.asarray(rows, np.float32)[None, None]


def _ssd_inputs(rng, n, num_priors, num_classes, n_loc):
    centres = rng.uniform(0.2, 0.8, (num_priors, 2))
    sizes = rng.uniform(0.1, 0.4, (num_priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (num_priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)]).reshape(1, 2, -1).astype(np.float32)
    loc = rng.normal(0, 1, (n, num_priors * n_loc * 4)).astype(np.float32)
    logits = rng.normal(0, 2, (n, num_priors, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return loc, conf.reshape(n, -1).astype(np.float32), prior


@pytest.mark.parametrize("text,kw", [
    ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 } confidence_threshold: 0.05",
     dict(conf_threshold=0.05)),
    ("code_type: CENTER_SIZE nms_param { nms_threshold: 0.3 top_k: 10 } keep_top_k: 7 "
     "confidence_threshold: 0.01", dict(nms_threshold=0.3, top_k=10, keep_top_k=7,
                                        conf_threshold=0.01)),
    ("code_type: CENTER_SIZE variance_encoded_in_target: true share_location: false "
     "background_label_id: 2 nms_param { nms_threshold: 0.5 } confidence_threshold: 0.1",
     dict(var_in_target=True, share_location=False, background=2, nms_threshold=0.5,
          conf_threshold=0.1)),
    ("nms_param { nms_threshold: 0.45 } confidence_threshold: 0.1",
     dict(code="CORNER", conf_threshold=0.1)),
])
def test_detection_output_against_loop_reference(text: str, kw: dict) -> None:
    rng = _rng(23)
    num_priors, num_classes = 40, 4
    n_loc = 1 if kw.get("share_location", True) else num_classes
    loc, conf, prior = _ssd_inputs(rng, 2, num_priors, num_classes, n_loc)
    (y,), _, _ = _run("DetectionOutput", f"detection_output_param {{ num_classes: {num_classes} "
                                         f"{text} }}", [loc, conf, prior])
    ref = _detection_output_ref(loc, conf, prior, num_classes=num_classes, **kw)
    assert y.shape == ref.shape and ref.shape[2] > 2
    _close(y, ref, rtol=1e-5, atol=1e-6)


def test_detection_output_nms_and_empty_result_by_hand() -> None:
    # Two priors that overlap with IoU 0.08 / 0.24 = 1/3 (offsets 0): the weaker one is
    # suppressed at nms_threshold 0.3 and kept at 0.45. Class 0 is background.
    prior = np.array([[0.1, 0.1, 0.5, 0.5, 0.3, 0.1, 0.7, 0.5]], np.float32)
    prior = np.stack([prior[0], np.full(8, 0.1, np.float32)]).reshape(1, 2, 8)
    loc = np.zeros((1, 8), np.float32)
    conf = np.array([[0.1, 0.9, 0.3, 0.7]], np.float32)  # prior 0: 0.9, prior 1: 0.7 (class 1)
    text = "detection_output_param { num_classes: 2 code_type: CENTER_SIZE nms_param { " \
           "nms_threshold: %s } }"
    (y,), _, _ = _run("DetectionOutput", text % "0.3", [loc, conf, prior])
    _close(y, [[[[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5]]]])
    (y,), _, _ = _run("DetectionOutput", text % "0.45", [loc, conf, prior])
    _close(y, [[[[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.7, 0.3, 0.1, 0.7, 0.5]]]])
    # Nothing above the threshold: one row of -1 per image, with the image index.
    loc2, conf2 = np.zeros((2, 8), np.float32), np.tile(conf, (2, 1))
    (y,), _, _ = _run("DetectionOutput", "detection_output_param { num_classes: 2 "
                      "confidence_threshold: 0.95 }", [loc2, conf2, prior])
    _close(y, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])


def test_detection_output_declares_caffes_setup_shape_and_checks_bottoms() -> None:
    spec = _spec("DetectionOutput", "detection_output_param { num_classes: 3 }",
                 [(2, 40), (2, 30), (1, 2, 40)])
    built, meta_shapes = _build(spec)
    assert meta_shapes == [(1, 1, 1, 7)]
    out = built.module(*[torch.empty(s, device="meta") for s in spec.bottom_shapes])
    assert out.device.type == "meta" and tuple(out.shape) == (1, 1, 1, 7)
    _raises("DetectionOutput", "detection_output_param { }", spec.bottom_shapes,
            match="num_classes")
    _raises("DetectionOutput", "detection_output_param { num_classes: 4 }", spec.bottom_shapes,
            match="confidences")
    _raises("DetectionOutput", "detection_output_param { num_classes: 3 share_location: false }",
            spec.bottom_shapes, match="locations")
    _raises("DetectionOutput", "detection_output_param { num_classes: 3 nms_param { eta: 0 } }",
            spec.bottom_shapes, match="eta")
