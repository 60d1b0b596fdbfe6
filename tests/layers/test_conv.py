"""Convolution, Deconvolution, InnerProduct and Embed (landmarknet/layers/conv.py) against
``reference.numpy_caffe`` (numpy re-implementations of Caffe's C++).

Every module is built the way the builder builds it (``layers.checker.Layer``): constructed on
the 'meta' device, shape-inferred there, moved with ``to_empty`` and filled blob by blob; the
meta top shapes must equal the CPU ones.
"""
from __future__ import annotations

import numpy as np
import pytest

from layers.checker import (Layer, assert_bad_parameters_name_the_layer, assert_gradients_flow,
                            assert_meta_shapes_equal_cpu, close, layer_rng, make_spec)
from reference import numpy_caffe as R

rng = pytest.fixture(layer_rng, name="rng")

def test_convolution_grouped_dilated_asymmetric(rng):
    text = """convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2
              stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2 weight_filler { type: "xavier" } }"""
    spec = make_spec("Convolution", text, [(2, 4, 9, 8)])
    layer = Layer(spec, rng)
    w_slot, b_slot = layer.built.blobs
    assert (w_slot.attr, w_slot.shape) == ("weight", (6, 2, 3, 2))  # (O, C/g, kh, kw)
    assert w_slot.filler.type == "xavier"
    assert (b_slot.attr, b_slot.shape, b_slot.filler) == ("bias", (6,), None)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    y = layer(x)
    # H: (9 + 2 - (2*2+1)) // 2 + 1 = 4; W: (8 - (2*1+1)) // 1 + 1 = 6
    assert y.shape == (2, 6, 4, 6)
    ref = R.convolution(x, layer.blobs[0], layer.blobs[1], stride_h=2, stride_w=1, pad_h=1,
                        pad_w=0, dilation=2, group=2)
    close(y, ref)


def test_convolution_without_bias_and_two_bottoms(rng):
    text = "convolution_param { num_output: 3 kernel_size: 3 pad: 1 bias_term: false }"
    spec = make_spec("Convolution", text, [(1, 2, 5, 5), (1, 2, 5, 5)], n_tops=2)
    layer = Layer(spec, rng)
    assert [s.attr for s in layer.built.blobs] == ["weight"]
    a = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    b = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    ya, yb = layer(a, b)
    close(ya, R.convolution(a, layer.blobs[0], None, pad=1))
    close(yb, R.convolution(b, layer.blobs[0], None, pad=1))


def test_deconvolution_group_and_stride(rng):
    text = """convolution_param { num_output: 6 group: 3 kernel_size: 4 stride: 2 pad: 1
              bias_filler { type: "constant" value: 0.5 } }"""
    spec = make_spec("Deconvolution", text, [(2, 6, 5, 4)])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape) for s in layer.built.blobs] == [("weight", (6, 2, 4, 4)),
                                                              ("bias", (6,))]
    assert layer.built.blobs[1].filler.value == pytest.approx(0.5)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 6, 10, 8)  # 2*(5-1) + 4 - 2 = 10, 2*(4-1) + 4 - 2 = 8
    close(y, R.deconvolution(x, layer.blobs[0], layer.blobs[1], stride=2, pad=1, group=3))


def test_deconvolution_dilated_rectangular(rng):
    text = """convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2
              pad_h: 2 pad_w: 0 dilation: 2 }"""
    spec = make_spec("Deconvolution", text, [(1, 3, 4, 5)])
    layer = Layer(spec, rng)
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    y = layer(x)
    assert y.shape == (1, 2, 10, 11)  # 3*3 + 2*2 + 1 - 4 = 10; 2*4 + 2*1 + 1 - 0 = 11
    close(y, R.deconvolution(x, layer.blobs[0], layer.blobs[1], stride_h=3, stride_w=2,
                             pad_h=2, pad_w=0, dilation=2))


@pytest.mark.parametrize("axis,transpose,shape,wshape,out", [
    (1, False, (2, 3, 4, 5), (7, 60), (2, 7)),
    (2, True, (2, 3, 4, 5), (20, 7), (2, 3, 7)),
    (-1, False, (2, 3, 4, 5), (7, 5), (2, 3, 4, 7)),
    (1, True, (4, 6), (6, 7), (4, 7)),
])
def test_inner_product_axis_and_transpose(axis, transpose, shape, wshape, out, rng):
    text = (f"inner_product_param {{ num_output: 7 axis: {axis} "
            f"transpose: {str(transpose).lower()} }}")
    spec = make_spec("InnerProduct", text, [shape])
    layer = Layer(spec, rng)
    assert [s.shape for s in layer.built.blobs] == [wshape, (7,)]
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    assert y.shape == out
    close(y, R.inner_product(x, layer.blobs[0], layer.blobs[1], axis=axis, transpose=transpose))


def test_embed_looks_up_rows(rng):
    spec = make_spec("Embed", "embed_param { num_output: 4 input_dim: 10 }", [(2, 3)])
    layer = Layer(spec, rng)
    assert [s.shape for s in layer.built.blobs] == [(10, 4), (4,)]
    idx = np.array([[0, 3, 9], [9, 2.0, 5]], np.float32)
    y = layer(idx)
    # embed_layer.cpp: top[n] = weight[static_cast<int>(bottom[n])] + bias
    expected = layer.blobs[0][idx.astype(int)] + layer.blobs[1]
    assert y.shape == (2, 3, 4)
    close(y, expected)


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------

GRAD_CASES = [
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 group: 2 pad: 1 }",
     [(2, 4, 5, 5)]),
    ("Deconvolution", "convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 }",
     [(2, 4, 3, 3)]),
    ("InnerProduct", "inner_product_param { num_output: 3 axis: 2 transpose: true }",
     [(2, 3, 4, 2)]),
    ("Embed", "embed_param { num_output: 3 input_dim: 4 }", [(5,)]),
]


@pytest.mark.parametrize("type_,text,shapes", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_flow(type_, text, shapes, rng):
    assert_gradients_flow(type_, text, shapes, rng)


# ----------------------------------------------------------------------------------------------
# meta device
# ----------------------------------------------------------------------------------------------

META_CASES = [
    ("Convolution", "convolution_param { num_output: 5 kernel_size: 3 stride: 2 dilation: 2 }",
     [(1, 3, 17, 13)]),
    ("Deconvolution", "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }",
     [(1, 3, 7, 5)]),
    ("InnerProduct", "inner_product_param { num_output: 4 }", [(2, 3, 2, 2)]),
]


@pytest.mark.parametrize("type_,text,shapes", META_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(META_CASES)])
@pytest.mark.parametrize("train", [False, True])
def test_meta_shapes_equal_cpu_shapes(type_, text, shapes, train, rng):
    assert_meta_shapes_equal_cpu(type_, text, shapes, train, rng)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

BAD = [
    ("Convolution", "convolution_param { kernel_size: 3 }", [(1, 3, 5, 5)], "num_output"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 group: 2 }",
     [(1, 3, 5, 5)], "group"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 axis: 2 }",
     [(1, 3, 5, 5)], "axis"),
    ("Convolution", "convolution_param { num_output: 4 }", [(1, 3, 5, 5)], "kernel_size"),
    ("Convolution", "convolution_param { num_output: 4 kernel_size: 7 }", [(1, 3, 5, 5)],
     "larger"),
    ("Deconvolution", "convolution_param { num_output: 3 kernel_size: 2 group: 2 }",
     [(1, 4, 5, 5)], "group"),
    ("InnerProduct", "inner_product_param { }", [(2, 3)], "num_output"),
    ("Embed", "embed_param { num_output: 3 }", [(4,)], "input_dim"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_parameters_raise_layer_error(type_, text, shapes, word):
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)
