"""Convolution, Deconvolution, InnerProduct, Embed and Im2col (landmarknet/layers/conv.py)
against ``reference.numpy_caffe`` (numpy re-implementations of Caffe's C++), a numpy restatement
of Caffe's im2col/col2im loops written here, and the reference Caffe (tests marked caffe_ref).

Every module is built the way the builder builds it (``layers.checker.Layer``): constructed on
the 'meta' device, shape-inferred there, moved with ``to_empty`` and filled blob by blob; the
meta top shapes must equal the CPU ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


# ----------------------------------------------------------------------------------------------
# Im2col: against a numpy restatement of Caffe's im2col_nd_core_cpu and col2im, and the real Caffe
# ----------------------------------------------------------------------------------------------

def _im2col_ref(x, axis, kernel, stride, pad, dilation):
    """im2col_layer.cpp + im2col_nd_core_cpu, restated: for every leading index (count(0, axis))
    and every column row c_col, the kernel offset (last spatial axis fastest) and the input
    element each output position reads, 0 where it lies in the padding."""
    x = np.asarray(x, np.float64)
    lead, channels, im = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    n_sp = len(im)
    out = [(im[i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
           for i in range(n_sp)]
    ksize = int(np.prod(kernel))
    flat = x.reshape((-1, channels) + tuple(im))
    y = np.zeros((flat.shape[0], channels * ksize) + tuple(out))
    for n in range(flat.shape[0]):
        for c_col in range(channels * ksize):
            offset, d_off = c_col, [0] * n_sp
            for d_i in range(n_sp - 1, -1, -1):
                if d_i < n_sp - 1:
                    offset //= kernel[d_i + 1]
                d_off[d_i] = offset % kernel[d_i]
            c_im = c_col // ksize
            for pos in np.ndindex(*out):
                src = [pos[i] * stride[i] - pad[i] + d_off[i] * dilation[i] for i in range(n_sp)]
                if all(0 <= s < im[i] for i, s in enumerate(src)):
                    y[(n, c_col) + pos] = flat[(n, c_im) + tuple(src)]
    return y.reshape(tuple(lead) + (channels * ksize,) + tuple(out))


def _col2im_ref(g, x_shape, axis, kernel, stride, pad, dilation):
    """col2im: each column element added back to the input element it was read from."""
    eye = np.eye(int(np.prod(x_shape))).reshape((-1,) + tuple(x_shape))
    # im2col is linear: its adjoint applied to g is sum_j g . im2col(e_j)
    cols = np.stack([_im2col_ref(e, axis, kernel, stride, pad, dilation) for e in eye])
    return np.tensordot(cols, np.asarray(g, np.float64), axes=g.ndim).reshape(x_shape)


IM2COL_CASES = [
    # (prototxt fields, bottom shape, axis, kernel, stride, pad, dilation)
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 6), 1, (3, 3), (2, 2), (1, 1), (1, 1)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2",
     (1, 2, 8, 5), 1, (3, 2), (2, 1), (2, 0), (2, 2)),
    ("kernel_size: 2 kernel_size: 3 dilation: 1 dilation: 2 force_nd_im2col: true",
     (2, 2, 5, 7), 1, (2, 3), (1, 1), (0, 0), (1, 2)),
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 9), 1, (3,), (2,), (1,), (1,)),  # 1-D
    ("kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 2", (1, 2, 4, 5, 3), 1,
     (2, 3, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # 3-D
    ("axis: 2 kernel_size: 2 stride: 1", (2, 3, 4, 5, 6), 2, (2, 2), (1, 1), (0, 0), (1, 1)),
    ("axis: -3 kernel_size: 2 dilation: 0", (2, 3, 4, 5), 1, (2, 2), (1, 1), (0, 0), (0, 0)),
]


@pytest.mark.parametrize("text,shape,axis,kernel,stride,pad,dilation", IM2COL_CASES,
                         ids=[f"im2col-{i}" for i in range(len(IM2COL_CASES))])
def test_im2col_matches_caffes_loop_and_col2im(text, shape, axis, kernel, stride, pad, dilation,
                                               rng):
    layer = Layer(make_spec("Im2col", f"convolution_param {{ {text} }}", [shape]), rng)
    assert layer.built.blobs == []
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    ref = _im2col_ref(x, axis, kernel, stride, pad, dilation)
    assert y.shape == ref.shape
    np.testing.assert_array_equal(y, ref.astype(np.float32))  # a pure copy: exact
    # Backward: col2im, which adds up the columns that read the same input element.
    out, (xt,) = layer(x, grad=True)
    g = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.from_numpy(g))
    close(xt.grad.numpy(), _col2im_ref(g, shape, axis, kernel, stride, pad, dilation))


def test_im2col_rows_by_hand():
    # one channel 3x3, kernel 2x2, no padding: rows are the kernel offsets (0,0) (0,1) (1,0)
    # (1,1), each a 2x2 map of the values that offset reads
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    layer = Layer(make_spec("Im2col", "convolution_param { kernel_size: 2 }", [x.shape]),
                  layer_rng())
    want = [[[0, 1], [3, 4]], [[1, 2], [4, 5]], [[3, 4], [6, 7]], [[4, 5], [7, 8]]]
    np.testing.assert_array_equal(layer(x), np.array([want], np.float32))


IM2COL_BAD = [
    ("kernel_h: 3 kernel_w: 3", (1, 2, 4, 5, 6), "kernel_h"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5), "not both"),
    ("kernel_size: 2 kernel_size: 2 kernel_size: 2", (1, 2, 5, 5), "kernel_size"),
    ("", (1, 2, 5, 5), "kernel_size"),
    ("kernel_size: 0", (1, 2, 5, 5), "positive"),
    ("kernel_size: 2 stride: 0", (1, 2, 5, 5), "stride"),
    ("kernel_size: 2 pad: 1 pad: 1 pad: 1", (1, 2, 5, 5), "pad"),
    ("kernel_size: 2 axis: 3", (1, 2, 5, 5), "no spatial axis"),
    ("kernel_size: 2 axis: 4", (1, 2, 5, 5), "axis"),
    ("kernel_size: 4 dilation: 2", (1, 2, 5, 5), "larger"),
]


@pytest.mark.parametrize("text,shape,word", IM2COL_BAD, ids=[b[2] + str(i)
                                                            for i, b in enumerate(IM2COL_BAD)])
def test_im2col_bad_parameters(text, shape, word):
    assert_bad_parameters_name_the_layer("Im2col", f"convolution_param {{ {text} }}", [shape],
                                         word)


def _caffe_im2col_net(shape, cases) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} '
            '} }\n')
    for i, fields in enumerate(cases):
        text += (f'layer {{ name: "c{i}" type: "Im2col" bottom: "data" top: "c{i}" '
                 f'convolution_param {{ {fields} }} }}\n')
    return text


IM2COL_CAFFE = {
    (2, 3, 7, 6): ["kernel_size: 3 stride: 2 pad: 1",
                   "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2",
                   "kernel_size: 2 kernel_size: 3 dilation: 1 dilation: 2 force_nd_im2col: true",
                   "kernel_size: 3 stride: 2 pad: 1 force_nd_im2col: true",
                   "kernel_size: 2 dilation: 0"],
    (2, 3, 9): ["kernel_size: 3 stride: 2 pad: 1"],
    (1, 2, 4, 5, 3): ["kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 2",
                      "axis: 2 kernel_size: 2"],
}


@pytest.mark.caffe_ref
@pytest.mark.parametrize("shape", list(IM2COL_CAFFE), ids=lambda s: f"{len(s)}d")
def test_im2col_matches_real_caffe(shape, tmp_path):
    from landmarknet.build import build_net
    from landmarknet.caffe.prototxt import parse_net
    from reference.real_caffe import caffe_forward

    cases = IM2COL_CAFFE[shape]
    text = _caffe_im2col_net(shape, cases)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    x = layer_rng().standard_normal(shape).astype(np.float32)
    names = [f"c{i}" for i in range(len(cases))]
    _, ref = caffe_forward(proto, {"data": x}, blobs=names)
    with torch.no_grad():
        ours = build_net(parse_net(text)).run({"data": x}, blobs=names)
    for name in names:
        assert ours[name].shape == ref[name].shape, name
        np.testing.assert_array_equal(ours[name].numpy(), ref[name], err_msg=name)


@pytest.mark.caffe_ref
def test_im2col_backward_matches_real_caffe(tmp_path):
    from reference.real_caffe import run_caffe

    # A learnable Scale in front makes Caffe back-propagate to x without force_backward;
    # the EuclideanLoss gives the Im2col top a diff of its own.
    text = """
layer { name: "data" type: "Input" top: "data" top: "t"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 }
                      shape { dim: 2 dim: 27 dim: 3 dim: 1 } } }
layer { name: "s" type: "Scale" bottom: "data" top: "x" scale_param { axis: 0 num_axes: 0 } }
layer { name: "c" type: "Im2col" bottom: "x" top: "y"
        convolution_param { kernel_size: 3 stride: 2 stride: 3 pad: 2 pad: 1 dilation: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    r = layer_rng()
    arrays = {"data": r.standard_normal((2, 3, 6, 5)).astype(np.float32),
              "t": r.standard_normal((2, 27, 3, 1)).astype(np.float32)}
    meta, out = run_caffe("backward", {"prototxt": str(proto)}, arrays)
    i = {n: k for k, n in enumerate(meta["blobs"])}
    x, y_ref, gy, gx_ref = (out[f"data{i['x']}"], out[f"data{i['y']}"], out[f"diff{i['y']}"],
                            out[f"diff{i['x']}"])
    spec = make_spec("Im2col", "convolution_param { kernel_size: 3 stride: 2 stride: 3 pad: 2 "
                               "pad: 1 dilation: 2 }", [x.shape])
    y, (xt,) = Layer(spec, layer_rng())(x, grad=True)
    np.testing.assert_array_equal(y.detach().numpy(), y_ref)
    y.backward(torch.from_numpy(gy))
    close(xt.grad.numpy(), gx_ref, rtol=1e-6)
