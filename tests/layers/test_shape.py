"""Shape layers (landmarknet/layers/shape.py) against independent references.

References: ``reference.numpy_caffe`` (numpy re-implementations of Caffe's C++) and
hand-derived literals for integer and shape rules (Reshape's, ArgMax's tie order). Every layer
is also run on the meta device, as the builder does, and must report the same top shapes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers import LayerSpec, converter_for
from layers.checker import (assert_close, assert_refused, build_layer, check_layer, layer_spec,
                            run_layer, seeded)
from reference import numpy_caffe as R


# ----------------------------------------------------------------------------------------------
# Eltwise, Concat, Slice, Split
# ----------------------------------------------------------------------------------------------

def test_eltwise_sum_prod_max() -> None:
    rng = seeded(4)
    xs = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3)]
    check_layer("Eltwise", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", xs,
                R.eltwise(xs, operation="SUM", coeff=[1, -0.5, 2]))
    check_layer("Eltwise", "", xs[:2], R.eltwise(xs[:2]))
    check_layer("Eltwise", "eltwise_param { operation: PROD }", xs, R.eltwise(xs, operation="PROD"))
    check_layer("Eltwise", "eltwise_param { operation: MAX }", xs, R.eltwise(xs, operation="MAX"))


def test_eltwise_max_routes_the_gradient_like_caffes_mask() -> None:
    # eltwise_layer.cpp: bottom 1 wins a tie with bottom 0 (a > b is strict); bottom 2 wins
    # only when strictly larger than the running max. Gradient goes to the winner only.
    a = np.array([[1.0, 2.0, 5.0, 0.0]], np.float32)
    b = np.array([[1.0, 3.0, 4.0, 0.0]], np.float32)
    c = np.array([[1.0, 3.0, 6.0, -1.0]], np.float32)
    (y,), _, xs = run_layer("Eltwise", "eltwise_param { operation: MAX }", [a, b, c], grad=True)
    y.sum().backward()
    assert_close(y, [[1, 3, 6, 0]])
    assert_close(xs[0].grad, [[0, 0, 0, 0]])
    assert_close(xs[1].grad, [[1, 1, 0, 1]])
    assert_close(xs[2].grad, [[0, 0, 1, 0]])


def test_eltwise_bad_parameters() -> None:
    assert_refused("Eltwise", "eltwise_param { coeff: 1 coeff: 2 coeff: 3 }", [(2, 3), (2, 3)],
                   match="one coeff per bottom")
    assert_refused("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }",
                   [(2, 3), (2, 3)], match="only allowed with operation SUM")
    assert_refused("Eltwise", "", [(2, 3)], match="at least 2")
    assert_refused("Eltwise", "", [(2, 3), (2, 4)], match="same shape")


def test_concat_axis_and_legacy_concat_dim() -> None:
    rng = seeded(5)
    a = rng.normal(size=(2, 3, 4)).astype(np.float32)
    b = rng.normal(size=(2, 5, 4)).astype(np.float32)
    check_layer("Concat", "", [a, b], R.concat([a, b], axis=1))
    check_layer("Concat", "concat_param { concat_dim: 1 }", [a, b], R.concat([a, b], axis=1))
    c = rng.normal(size=(2, 3, 2)).astype(np.float32)
    check_layer("Concat", "concat_param { axis: -1 }", [a, c], R.concat([a, c], axis=-1))
    check_layer("Concat", "", [a], a)
    assert_refused("Concat", "", [(2, 3, 4), (2, 3, 5)], match="every axis but 1")
    assert_refused("Concat", "concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)],
                   match="not both")
    assert_refused("Concat", "concat_param { axis: 3 }", [(2, 3), (2, 3)], match="out of range")


def test_slice_points_equal_parts_and_legacy_slice_dim() -> None:
    x = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
    outs, _, _ = run_layer("Slice", "slice_param { slice_point: 1 slice_point: 4 }", [x], n_tops=3)
    for o, r in zip(outs, R.slice_blob(x, axis=1, slice_point=[1, 4])):
        assert_close(o, r)
    assert [tuple(o.shape) for o in outs] == [(2, 1, 2), (2, 3, 2), (2, 2, 2)]
    outs, _, _ = run_layer("Slice", "", [x], n_tops=3)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 2)] * 3
    assert_close(outs[2], x[:, 4:6])
    outs, _, _ = run_layer("Slice", "slice_param { slice_dim: 2 }", [x], n_tops=2)
    assert_close(outs[0], x[:, :, :1])
    assert_close(outs[1], x[:, :, 1:])
    assert_refused("Slice", "", [(2, 6)], n_tops=4, match="equal tops")
    assert_refused("Slice", "slice_param { slice_point: 3 slice_point: 2 }", [(2, 6)], n_tops=3,
                   match="increasing")
    assert_refused("Slice", "slice_param { slice_point: 6 }", [(2, 6)], n_tops=2,
                   match="not inside")
    assert_refused("Slice", "slice_param { slice_point: 2 }", [(2, 6)], n_tops=3,
                   match="give 2 tops")


def test_split_copies_and_sums_gradients() -> None:
    x = seeded(6).normal(size=(2, 3)).astype(np.float32)
    outs, _, (xt,) = run_layer("Split", "", [x], n_tops=3, grad=True)
    for o in outs:
        assert_close(o, x)
    (outs[0] * 1 + outs[1] * 2 + outs[2] * 3).sum().backward()
    assert_close(xt.grad, np.full_like(x, 6))


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
    (y,), _, _ = run_layer("Flatten", text, [x])
    assert tuple(y.shape) == expected
    assert_close(y, x.reshape(expected))


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
    (y,), mod, _ = run_layer("Reshape", f"reshape_param {{ shape {{ {dims} }}{extra} }}", [x])
    assert tuple(y.shape) == expected
    assert R.reshape_shape(x.shape, [int(d) for d in dims.split()[1::2]], **kw) == expected
    assert_close(y, x.reshape(expected))
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
    assert_refused("Reshape", text, [(2, 3, 4, 5)], match=match)


def test_crop_offsets() -> None:
    x = seeded(7).normal(size=(2, 3, 8, 9)).astype(np.float32)
    ref = np.zeros((1, 1, 5, 4), np.float32)
    for text, kw in [("", {}), ("crop_param { offset: 2 }", dict(offset=[2])),
                     ("crop_param { offset: 1 offset: 3 }", dict(offset=[1, 3])),
                     ("crop_param { axis: 3 offset: 5 }", dict(axis=3, offset=[5]))]:
        check_layer("Crop", text, [x, ref], R.crop(x, ref, **kw))
    ref1 = np.zeros((2, 2, 5, 4), np.float32)
    check_layer("Crop", "crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }", [x, ref1],
                x[:, 1:3, 2:7, 3:7])
    assert_refused("Crop", "crop_param { offset: 4 offset: 6 }", [(2, 3, 8, 9), (1, 1, 5, 4)],
                   match="exceeds")
    assert_refused("Crop", "crop_param { offset: 1 offset: 1 offset: 1 }",
                   [(2, 3, 8, 9), (1, 1, 5, 4)], match="give 0, 1 or 2 offsets")


def test_tile() -> None:
    x = seeded(8).normal(size=(2, 3, 4)).astype(np.float32)
    for text, kw in [("tile_param { tiles: 3 }", dict(axis=1, tiles=3)),
                     ("tile_param { axis: 0 tiles: 2 }", dict(axis=0, tiles=2)),
                     ("tile_param { axis: -1 tiles: 2 }", dict(axis=-1, tiles=2))]:
        check_layer("Tile", text, [x], R.tile(x, **kw))
    assert_refused("Tile", "", [(2, 3)], match="tiles must be positive")


# ----------------------------------------------------------------------------------------------
# Softmax, Reduction, ArgMax, Silence, Parameter
# ----------------------------------------------------------------------------------------------

def test_softmax_axes() -> None:
    x = seeded(9).normal(0, 5, (2, 3, 4, 5)).astype(np.float32)
    for text, axis in [("", 1), ("softmax_param { axis: -1 }", -1),
                       ("softmax_param { axis: 0 }", 0)]:
        check_layer("Softmax", text, [x], R.softmax(x, axis=axis))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 0.5), (-1, -2.0)])
def test_reduction(op: str, axis: int, coeff: float) -> None:
    x = seeded(10).normal(size=(2, 3, 4)).astype(np.float32)
    (y,), _, _ = run_layer("Reduction", f"reduction_param {{ operation: {op} axis: {axis} "
                                        f"coeff: {coeff} }}", [x])
    expected = R.reduction(x, operation=op, axis=axis, coeff=coeff)
    assert tuple(y.shape) == x.shape[:axis % 3]  # axis 0 gives a 0-axis top
    assert_close(y, expected, rtol=2e-5)


def test_argmax_literals_with_caffes_tie_order() -> None:
    # std::partial_sort with std::greater on (value, index): equal values -> larger index first.
    x = np.array([[3.0, 1.0, 3.0, 2.0]], np.float32)
    check_layer("ArgMax", "argmax_param { top_k: 2 }", [x],
                [[[2.0, 0.0]]])  # (N, 1, top_k): at least three axes
    check_layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", [x],
                [[[2.0, 0.0, 3.0], [3.0, 3.0, 2.0]]])
    x4 = np.array([[[[1.0], [5.0]], [[5.0], [0.0]]]], np.float32)  # (1, 2, 2, 1)
    check_layer("ArgMax", "", [x4],
                np.array([2.0], np.float32).reshape(1, 1, 1, 1))  # flat indices 1 and 2 tie
    check_layer("ArgMax", "argmax_param { axis: 1 }", [x4],
                np.array([[[[1.0], [0.0]]]], np.float32))
    check_layer("ArgMax", "argmax_param { axis: 2 out_max_val: true }", [x4],
                np.array([[[[5.0]], [[5.0]]]], np.float32))


@pytest.mark.parametrize("text,kw", [
    ("", {}), ("argmax_param { top_k: 3 }", dict(top_k=3)),
    ("argmax_param { top_k: 2 out_max_val: true }", dict(top_k=2, out_max_val=True)),
    ("argmax_param { axis: 1 top_k: 2 }", dict(axis=1, top_k=2)),
    ("argmax_param { axis: -1 out_max_val: true }", dict(axis=-1, out_max_val=True))])
def test_argmax_against_reference(text: str, kw: dict) -> None:
    x = seeded(11).integers(0, 4, (3, 4, 2, 3)).astype(np.float32)  # many ties
    check_layer("ArgMax", text, [x], R.argmax(x, **kw))


def test_argmax_bad_parameters() -> None:
    assert_refused("ArgMax", "argmax_param { top_k: 7 }", [(2, 3, 2)], match="top_k 7")
    assert_refused("ArgMax", "argmax_param { axis: 1 top_k: 4 }", [(2, 3, 2)], match="top_k 4")
    assert_refused("ArgMax", "argmax_param { top_k: 0 }", [(2, 3)], match="top_k")


def test_silence_has_no_tops() -> None:
    outs, _, _ = run_layer("Silence", "", [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)],
                           n_tops=0)
    assert outs == []
    assert_refused("Silence", "", [(2, 3)], n_tops=1, match="no tops")


def test_parameter_outputs_its_learnable_blob() -> None:
    spec = layer_spec("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", [])
    built, meta_shapes = build_layer(spec, fill_blobs="filler")
    assert meta_shapes == [(2, 3)]
    assert [(s.attr, s.shape, s.filler) for s in built.blobs] == [("weight", (2, 3), None)]
    y = built.module()
    assert_close(y, np.zeros((2, 3), np.float32))  # Caffe's ParameterLayer blob starts at 0
    (y * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert_close(built.module.weight.grad, np.arange(6.0).reshape(2, 3))
    assert_refused("Parameter", "parameter_param { shape { dim: 2 dim: 0 } }", [], match="positive")


# ----------------------------------------------------------------------------------------------
# fork shape layers
# ----------------------------------------------------------------------------------------------

def test_permute() -> None:
    x = seeded(12).normal(size=(2, 3, 4, 5)).astype(np.float32)
    for order in ([0, 2, 3, 1], [0, 3], [1]):
        text = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
        check_layer("Permute", text, [x], R.permute(x, order=order))
    (y,), _, _ = run_layer("Permute", "permute_param { order: 0 order: 3 }", [x])
    assert tuple(y.shape) == (2, 5, 3, 4)  # the axes left out follow in increasing order
    assert_refused("Permute", "permute_param { order: 0 order: 0 }", [(2, 3)], match="repeats")
    assert_refused("Permute", "permute_param { order: 4 }", [(2, 3, 4, 5)], match="out of range")


def test_shuffle_channel() -> None:
    x = np.arange(2 * 6 * 2 * 2, dtype=np.float32).reshape(2, 6, 2, 2)
    (y,), _, _ = run_layer("ShuffleChannel", "shuffle_channel_param { group: 2 }", [x])
    assert_close(y, R.shuffle_channel(x, group=2))
    # by hand: channels (0 1 2 | 3 4 5) -> 0 3 1 4 2 5
    assert_close(y[:, :, 0, 0], x[:, [0, 3, 1, 4, 2, 5], 0, 0])
    assert_refused("ShuffleChannel", "shuffle_channel_param { group: 4 }", [(2, 6, 2, 2)],
                   match="groups")


def test_upsample_nearest() -> None:
    x = seeded(13).normal(size=(1, 2, 3, 4)).astype(np.float32)
    check_layer("Upsample", "upsample_param { scale: 2 }", [x], R.upsample_nearest(x, scale=2))
    (y,), _, _ = run_layer("Upsample", "upsample_param { scale: 3 }", [x])
    assert tuple(y.shape) == (1, 2, 9, 12)
    assert_close(y[0, 1, 5, 7], x[0, 1, 1, 2])
    assert_refused("Upsample", "upsample_param { scale: 2 }", [(1, 2, 3, 4), (1, 2, 3, 5)],
                   match="mask")
    assert_refused("Upsample", "upsample_param { scale: 0 }", [(1, 2, 3, 4)], match="positive")


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
    x = seeded(14).normal(size=(2, 3, 7, 6)).astype(np.float32)
    (y,), _, (xt,) = run_layer("Interp", f"interp_param {{ {text} }}", [x], grad=True)
    assert_close(y, R.interp(x, **kw), rtol=1e-5, atol=2e-6)
    y.sum().backward()  # differentiable, like Caffe's Backward
    assert xt.grad is not None and xt.grad.shape == xt.shape


def test_interp_output_sizes_by_hand() -> None:
    x = np.zeros((1, 1, 9, 5), np.float32)
    for text, hw in [("zoom_factor: 4", (33, 17)), ("shrink_factor: 4", (3, 2)),
                     ("shrink_factor: 2 zoom_factor: 2", (9, 5)),
                     ("zoom_factor: 2 pad_beg: -2", (13, 5))]:
        (y,), _, _ = run_layer("Interp", f"interp_param {{ {text} }}", [x])
        assert tuple(y.shape[2:]) == hw, text
    assert_refused("Interp", "interp_param { pad_beg: 1 zoom_factor: 2 }", [(1, 1, 9, 5)],
                   match="<= 0")
    assert_refused("Interp", "interp_param { height: 3 }", [(1, 1, 9, 5)],
                   match="needs zoom_factor")


def test_axpy() -> None:
    rng = seeded(15)
    a = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    y = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    (out,), _, ts = run_layer("Axpy", "", [a, x, y], grad=True)
    assert_close(out, a * x + y)  # axpy_layer.cpp: top = bottom[0] * bottom[1] + bottom[2]
    out.sum().backward()
    assert_close(ts[0].grad, x.sum(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-5)
    (out,), _, _ = run_layer("Axpy", "", [a.reshape(2, 3), x, y])
    assert_close(out, a * x + y)
    assert_refused("Axpy", "", [(2, 3, 2, 1), (2, 3, 4, 5), (2, 3, 4, 5)], match="(N, C, 1, 1)")
    assert_refused("Axpy", "", [(2, 3), (2, 3, 4, 5), (2, 3, 4, 4)], match="same shape")


def test_fork_layer_without_schema_field_is_a_clear_error() -> None:
    # fork_param is the one door to fork messages: a schema without the field (here the legacy
    # V1LayerParameter, which has no interp_param) gives an error naming field and layer.
    spec = LayerSpec("l", "Interp", caffe_pb2.V1LayerParameter(), [(1, 1, 4, 4)], 1)
    with pytest.raises(LayerError, match="layer 'l'.*interp_param"):
        converter_for(spec)(spec)


def test_fork_fields_that_are_not_implemented_are_refused() -> None:
    assert_refused("Upsample", "upsample_param { upsample_h: 8 upsample_w: 8 }", [(1, 2, 3, 4)],
                   match="SegNet")
    assert_refused("PriorBox", "prior_box_param { min_size: 30 offset_h: 0.5 }",
                   [(1, 8, 5, 6), (1, 3, 80, 100)], match="OpenCV extension")
    # OpenCV's pixel boxes are supported (tests/test_detection_pixel_boxes.py), but not with
    # CORNER_SIZE, which OpenCV decodes as CORNER without a word
    assert_refused("DetectionOutput",
                   "detection_output_param { num_classes: 3 normalized_bbox: false "
                   "code_type: CORNER_SIZE }",
                   [(2, 40), (2, 30), (1, 1, 40)], match="CORNER_SIZE")


# ----------------------------------------------------------------------------------------------
# BatchReindex and Filter: numpy restatements of batch_reindex_layer.cpp / filter_layer.cpp,
# and the reference Caffe
# ----------------------------------------------------------------------------------------------

def _batch_reindex_ref(x: np.ndarray, index: np.ndarray, g: np.ndarray):
    """Forward_cpu / Backward_cpu: out[i] = x[int(index[i])]; the diff of every output row is
    added to the row it came from (bottom diff zeroed first)."""
    rows = [int(v) for v in index]  # static_cast<int>: truncation toward zero
    y = np.stack([x[r] for r in rows]) if rows else np.zeros((0,) + x.shape[1:], x.dtype)
    gx = np.zeros(x.shape, np.float64)
    for i, r in enumerate(rows):
        gx[r] += g[i]
    return y, gx


def test_batch_reindex_picks_repeats_and_sums_gradients() -> None:
    rng = seeded(40)
    x = rng.normal(size=(4, 3, 2)).astype(np.float32)
    index = np.array([3, 0, 0, 2.9, 1.5, 3], np.float32)  # repeats; fractions truncate
    (y,), _, (xt, _) = run_layer("BatchReindex", "", [x, index], grad=True)
    g = rng.normal(size=(6, 3, 2)).astype(np.float32)
    y.backward(torch.from_numpy(g))
    y_ref, gx_ref = _batch_reindex_ref(x, index, g)
    np.testing.assert_array_equal(y.detach().numpy(), y_ref)
    assert_close(xt.grad, gx_ref)
    assert gx_ref[0].any() and gx_ref[3].any()  # rows read twice got two diffs added
    # an empty index gives an empty top of the same row shape
    (y0,), _, _ = run_layer("BatchReindex", "", [x, np.zeros(0, np.float32)])
    assert tuple(y0.shape) == (0, 3, 2)


@pytest.mark.parametrize("value", [-0.5, 4.0, 7.0, float("nan")])
def test_batch_reindex_out_of_range_index_is_a_clear_error(value: float) -> None:
    # Caffe CHECKs 0 <= value < N on the float (-0.5 fails although it truncates to 0; NaN fails
    # both comparisons); landmarknet raises where the values are known
    x = np.zeros((4, 2), np.float32)
    index = np.array([1, value, 0], np.float32)
    with pytest.raises(LayerError, match=r"layer 'l'.*index 1 of bottom 1 .*outside 0\.\.3"):
        run_layer("BatchReindex", "", [x, index])


def test_batch_reindex_bad_shapes() -> None:
    assert_refused("BatchReindex", "", [(4, 2), (3, 1)], match="must be 1-D")
    assert_refused("BatchReindex", "", [(4, 2)], match="2 bottom")
    assert_refused("BatchReindex", "", [(4, 2), (3,)], n_tops=2, match="1 top")


def _filter_ref(xs: list[np.ndarray], selector: np.ndarray, gs: list[np.ndarray]):
    """Reshape + Forward_cpu / Backward_cpu: the rows whose selector item is non-zero (C's
    truth: NaN too), in order; each kept row's diff goes back to it, other rows get 0."""
    keep = [n for n in range(selector.shape[0]) if bool(selector.reshape(-1)[n])]
    ys = [x[keep] for x in xs]
    grads = []
    for x, g in zip(xs, gs):
        gx = np.zeros(x.shape, np.float64)
        for k, n in enumerate(keep):
            gx[n] = g[k]
        grads.append(gx)
    return ys, grads


def test_filter_keeps_selected_rows_of_every_bottom() -> None:
    rng = seeded(41)
    a = rng.normal(size=(5, 3, 2)).astype(np.float32)
    b = rng.normal(size=(5, 4)).astype(np.float32)
    selector = np.array([[0.5], [0], [float("nan")], [-0.0], [-2]], np.float32)
    outs, module, (at, bt, _) = run_layer("Filter", "", [a, b, selector], n_tops=2, grad=True)
    gs = [rng.normal(size=tuple(o.shape)).astype(np.float32) for o in outs]
    torch.autograd.backward(outs, [torch.from_numpy(g) for g in gs])
    ys_ref, grads_ref = _filter_ref([a, b], selector, gs)
    assert [tuple(o.shape) for o in outs] == [(3, 3, 2), (3, 4)]  # rows 0, 2 (NaN), 4
    for o, y in zip(outs, ys_ref):
        np.testing.assert_array_equal(o.detach().numpy(), y)
    assert_close(at.grad, grads_ref[0])
    assert_close(bt.grad, grads_ref[1])
    # nothing selected: empty tops
    (none,), _, _ = run_layer("Filter", "", [a, np.zeros((5, 1), np.float32)])
    assert tuple(none.shape) == (0, 3, 2)


def test_filter_declares_caffes_setup_shape_to_the_builder() -> None:
    # The kept rows depend on the data: the builder gets all N rows (Caffe's first Reshape),
    # downstream layers are built on that, and a forward gives fewer rows through them.
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    net = build_net(parse_net("""
input: "x" input_shape { dim: 4 dim: 3 }
input: "s" input_shape { dim: 4 }
layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "f" }
layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip"
        inner_product_param { num_output: 2 } }
"""))
    assert net.blob_shapes["f"] == (4, 3) and net.blob_shapes["ip"] == (4, 2)
    with torch.no_grad():
        out = net.run({"x": torch.ones(4, 3), "s": torch.tensor([0.0, 1, 0, 1])},
                      blobs=["f", "ip"])
    assert tuple(out["f"].shape) == (2, 3) and tuple(out["ip"].shape) == (2, 2)


def test_filter_bad_shapes() -> None:
    assert_refused("Filter", "", [(4, 3), (4, 1)], n_tops=2, match="one top per filtered")
    assert_refused("Filter", "", [(4, 3)], n_tops=0, match="2 to")
    assert_refused("Filter", "", [(4, 3), (4, 2)], match="selector")
    assert_refused("Filter", "", [(4, 3), (5, 3), (4, 1, 1)], n_tops=2, match="bottom 1 (5, 3)")


def _caffe_blobs(tmp_path, text: str, arrays: dict, job: str = "forward"):
    """{blob: (data, diff)} of one run of the net in the reference Caffe."""
    from reference.real_caffe import run_caffe
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    request = {"prototxt": str(proto)} if job == "backward" else \
        {"prototxt": str(proto), "phase": "test", "blobs": None}
    meta, out = run_caffe(job, request, arrays)
    if job == "forward":
        return {n: (out[f"b{i}"], None) for i, n in enumerate(meta["blobs"])}
    return {n: (out[f"data{i}"], out[f"diff{i}"]) for i, n in enumerate(meta["blobs"])}


REINDEX_FILTER_NET = """
layer { name: "in" type: "Input" top: "data" top: "b" top: "idx" top: "sel" top: "t1"
        input_param { shape { dim: 4 dim: 3 dim: 2 } shape { dim: 4 dim: 5 } shape { dim: 6 }
                      shape { dim: 4 dim: 1 dim: 1 } shape { dim: 6 dim: 3 dim: 2 } } }
layer { name: "s" type: "Scale" bottom: "data" top: "x" scale_param { axis: 0 num_axes: 0 } }
layer { name: "sb" type: "Scale" bottom: "b" top: "xb" scale_param { axis: 0 num_axes: 0 } }
layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }
layer { name: "r" type: "BatchReindex" bottom: "x1" bottom: "idx" top: "r" }
layer { name: "f" type: "Filter" bottom: "x2" bottom: "xb" bottom: "sel" top: "f" top: "fb" }
layer { name: "l1" type: "EuclideanLoss" bottom: "r" bottom: "t1" top: "l1" }
layer { name: "l2" type: "Reduction" bottom: "f" top: "l2" loss_weight: 1
        reduction_param { operation: SUMSQ axis: 0 } }
layer { name: "l3" type: "Reduction" bottom: "fb" top: "l3" loss_weight: 0.5
        reduction_param { operation: SUMSQ axis: 0 } }
"""


@pytest.mark.caffe_ref
def test_batch_reindex_and_filter_match_real_caffe_forward_and_backward(tmp_path) -> None:
    # Learnable Scales in front make Caffe back-propagate to the data bottoms (never to the
    # indices or the selector, whose backward aborts); the losses give the tops diffs. The
    # Filter tops feed sums of squares, not a loss against a target: a target's fixed first
    # axis would not match the rows Caffe's reshape finds before the selector is written.
    rng = seeded(42)
    arrays = {"data": rng.normal(size=(4, 3, 2)), "b": rng.normal(size=(4, 5)),
              "idx": np.array([3, 0, 0, 2.7, 1, 3]),
              "sel": np.array([1, 0, -3, 0.25]).reshape(4, 1, 1),
              "t1": rng.normal(size=(6, 3, 2))}
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    ref = _caffe_blobs(tmp_path, REINDEX_FILTER_NET, arrays, job="backward")
    x, gx = ref["x"]
    xb, gxb = ref["xb"]
    r_ref, gr = ref["r"]
    (f_ref, gf), (fb_ref, gfb) = ref["f"], ref["fb"]

    (r,), _, (xt, _) = run_layer("BatchReindex", "", [x, arrays["idx"]], grad=True)
    np.testing.assert_array_equal(r.detach().numpy(), r_ref)
    (f, fb), _, (x2t, xbt, _) = run_layer("Filter", "", [x, xb, arrays["sel"]], n_tops=2,
                                          grad=True)
    np.testing.assert_array_equal(f.detach().numpy(), f_ref)
    np.testing.assert_array_equal(fb.detach().numpy(), fb_ref)
    torch.autograd.backward([r, f, fb], [torch.from_numpy(g) for g in (gr, gf, gfb)])
    # Caffe's x diff is the Split's sum of both consumers' diffs
    assert_close(xt.grad + x2t.grad, gx)
    assert_close(xbt.grad, gxb)


@pytest.mark.caffe_ref
def test_filter_selecting_nothing_matches_real_caffe(tmp_path) -> None:
    # (an empty BatchReindex index cannot be fed to the reference Caffe: pycaffe aborts on a
    # blob without data, so that case has only the numpy test above)
    text = """
layer { name: "in" type: "Input" top: "x" top: "sel"
        input_param { shape { dim: 3 dim: 2 } shape { dim: 3 } } }
layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "f" }
"""
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "sel": np.zeros(3, np.float32)}
    ref = _caffe_blobs(tmp_path, text, arrays)
    (f,), _, _ = run_layer("Filter", "", [arrays["x"], arrays["sel"]])
    assert tuple(f.shape) == ref["f"][0].shape == (0, 2)
