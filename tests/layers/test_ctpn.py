"""CTPN's Caffe layers (tianzhi0549/CTPN): Lstm, Transpose, Reverse, and CTPN's recurrent head.

References: numpy restatements of the fork's code, written from its sources: lstm_layer.cu
(ClipAdd, ActivationForward, LSTMForward: the GPU path CTPN ran), transpose_layer.cpp
(transpose_cpu's index arithmetic) and reverse_layer.cpp (reverse_cpu's). The weights reach the
layer through a .caffemodel in the fork's blob order, so the order is tested too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.params import load_weights
from layers.checker import assert_refused, seeded, to_numpy
from reference import wire

F32 = np.float32


def _net(text: str):
    return build_net(parse_net(text, path="ctpn.prototxt"))


def _input(name: str, shape) -> str:
    return f'input: "{name}" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'


def _sigmoid(x):
    return F32(1) / (F32(1) + np.exp(-x, dtype=F32))


def fork_lstm_ref(x, w_i, w_h, b, clip=None):
    """lstm_layer.cu's Forward_gpu: pre-gates x W_i' + b; per step ClipAdd of h_{t-1} W_h',
    sigmoid for i, f, o and 2 sigmoid(2x) - 1 for g; c = clip f c' + i g; h = o tanh(c)."""
    steps, batch = x.shape[:2]
    hidden = w_h.shape[1]
    pre = x.reshape(steps, batch, -1).astype(F32) @ w_i.T + b  # (T, N, 4H)
    h = np.zeros((batch, hidden), F32)
    c = np.zeros((batch, hidden), F32)
    out = np.zeros((steps, batch, hidden), F32)
    for t in range(steps):
        k = (clip[t] if clip is not None else np.full(batch, t > 0, F32))[:, None].astype(F32)
        gates = pre[t] + k * (h @ w_h.T)
        i, f, o = (_sigmoid(gates[:, j * hidden:(j + 1) * hidden]) for j in range(3))
        g = F32(2) * _sigmoid(F32(2) * gates[:, 3 * hidden:]) - F32(1)
        c = k * f * c + i * g
        h = o * (F32(2) * _sigmoid(F32(2) * c) - F32(1))
        out[t] = h
    return out


@pytest.mark.parametrize("with_clip", [False, True])
def test_lstm_matches_the_forks_gpu_forward(tmp_path, with_clip) -> None:
    rng = seeded(41)
    steps, batch, d_in, hidden = 5, 3, 4, 6
    x = rng.standard_normal((steps, batch, 2, 2)).astype(F32)
    w_i = rng.normal(0, 0.5, (4 * hidden, d_in)).astype(F32)
    w_h = rng.normal(0, 0.5, (4 * hidden, hidden)).astype(F32)
    b = rng.normal(0, 0.5, 4 * hidden).astype(F32)
    clip = (rng.uniform(size=(steps, batch)) > 0.3).astype(F32)
    clip[0] = 0
    text = _input("x", x.shape) + (_input("clip", clip.shape) if with_clip else "") + (
        'layer { name: "lstm" type: "Lstm" bottom: "x" ' + ('bottom: "clip" ' if with_clip
                                                            else "")
        + f'top: "h" lstm_param {{ num_output: {hidden} clipping_threshold: 1 }} }}\n')
    net = _net(text)
    model = tmp_path / "lstm.caffemodel"
    model.write_bytes(wire.encode_caffemodel([("lstm", "Lstm", [w_i, w_h, b])]))  # fork order
    load_weights(net, model, strict=True)
    feeds = {"x": torch.from_numpy(x)}
    if with_clip:
        feeds["clip"] = torch.from_numpy(clip)
    with torch.no_grad():
        got = to_numpy(net.run(feeds, blobs=["h"])["h"])
    want = fork_lstm_ref(x, w_i, w_h, b, clip if with_clip else None)
    assert got.shape == (steps, batch, hidden)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # streams are independent (the fork's CPU forward would mix in stream 0's recurrent term)
    assert not np.allclose(got[1:, 1], got[1:, 0])


def transpose_ref(x, dims):
    """transpose_cpu: top index from the bottom's per-axis indices, axis i taking dims[i]."""
    shape = x.shape
    top_shape = [shape[d] for d in dims]
    from_counts = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    to_counts = [math.prod(top_shape[i + 1:]) for i in range(len(shape))]
    out = np.zeros(x.size, x.dtype)
    flat = x.reshape(-1)
    for index in range(x.size):
        rest, inds = index, []
        for count in from_counts:
            inds.append(rest // count)
            rest %= count
        out[sum(inds[dims[i]] * to_counts[i] for i in range(len(shape)))] = flat[index]
    return out.reshape(top_shape)


def reverse_ref(x, axis):
    """reverse_cpu: to_index = counts[axis] * (axis_count - 2 * ind - 1) + index."""
    counts = [math.prod(x.shape[i + 1:]) for i in range(x.ndim)]
    out = np.zeros(x.size, x.dtype)
    for index, value in enumerate(x.reshape(-1)):
        ind = (index // counts[axis]) % x.shape[axis]
        out[counts[axis] * (x.shape[axis] - 2 * ind - 1) + index] = value
    return out.reshape(x.shape)


@pytest.mark.parametrize("dims", [(3, 2, 0, 1), (2, 3, 1, 0), (0, 1, 2, 3), (1, 0, 3, 2)])
def test_transpose_matches_the_fork(dims) -> None:
    x = seeded(42).standard_normal((2, 3, 4, 5)).astype(F32)
    text = _input("x", x.shape) + (
        'layer { name: "t" type: "Transpose" bottom: "x" top: "t" transpose_param { '
        + " ".join(f"dim: {d}" for d in dims) + " } }\n")
    with torch.no_grad():
        got = to_numpy(_net(text)(x=torch.from_numpy(x))["t"])
    np.testing.assert_array_equal(got, transpose_ref(x, list(dims)))


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_reverse_matches_the_fork(axis) -> None:
    x = seeded(43).standard_normal((3, 2, 4, 5)).astype(F32)
    text = _input("x", x.shape) + (
        f'layer {{ name: "r" type: "Reverse" bottom: "x" top: "r" reverse_param {{ axis: {axis} '
        "} }\n")
    with torch.no_grad():
        got = to_numpy(_net(text)(x=torch.from_numpy(x))["r"])
    np.testing.assert_array_equal(got, reverse_ref(x, axis))


CTPN_HEAD = _input("conv5_3", (1, 8, 3, 7)) + """
layer { name: "im2col" type: "Im2col" bottom: "conv5_3" top: "im2col"
        convolution_param { pad: 1 kernel_size: 3 } }
layer { name: "im2col_transpose" type: "Transpose" bottom: "im2col" top: "im2col_transpose"
        transpose_param { dim: 3 dim: 2 dim: 0 dim: 1 } }
layer { name: "lstm_input" type: "Reshape" bottom: "im2col_transpose" top: "lstm_input"
        reshape_param { shape { dim: -1 } axis: 1 num_axes: 2 } }
layer { name: "lstm" type: "Lstm" bottom: "lstm_input" top: "lstm"
        lstm_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } clipping_threshold: 1 } }
layer { name: "lstm-reverse1" type: "Reverse" bottom: "lstm_input" top: "rlstm_input"
        reverse_param { axis: 0 } }
layer { name: "rlstm" type: "Lstm" bottom: "rlstm_input" top: "rlstm-output"
        lstm_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "lstm-reverse2" type: "Reverse" bottom: "rlstm-output" top: "rlstm"
        reverse_param { axis: 0 } }
layer { name: "merge_lstm_rlstm" type: "Concat" bottom: "lstm" bottom: "rlstm"
        top: "merge_lstm_rlstm" concat_param { axis: 2 } }
layer { name: "lstm_output_reshape" type: "Reshape" bottom: "merge_lstm_rlstm"
        top: "lstm_output_reshape" reshape_param { shape { dim: -1 dim: 1 } axis: 1 num_axes: 1 } }
layer { name: "lstm_output" type: "Transpose" bottom: "lstm_output_reshape" top: "lstm_output"
        transpose_param { dim: 2 dim: 3 dim: 1 dim: 0 } }
layer { name: "fc" type: "Convolution" bottom: "lstm_output" top: "fc"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def test_ctpn_recurrent_head_runs_each_row_as_a_sequence() -> None:
    # CTPN's deploy.prototxt between conv5_3 and its RPN heads (sizes shrunk): each row of the
    # feature map is a sequence over its columns, read both ways by two Lstm layers.
    net = _net(CTPN_HEAD)
    from landmarknet.params import randomize
    randomize(net, 3)
    x = seeded(44).standard_normal((1, 8, 3, 7)).astype(F32)
    with torch.no_grad():
        out = net.run({"conv5_3": torch.from_numpy(x)},
                      blobs=["lstm_input", "lstm", "rlstm", "lstm_output", "fc"])
    assert tuple(out["lstm_input"].shape) == (7, 3, 72)  # T = columns, N = rows, 3x3x8 values
    assert tuple(out["lstm_output"].shape) == (1, 10, 3, 7)  # both directions' 5 + 5
    assert tuple(out["fc"].shape) == (1, 4, 3, 7)
    # the backward sequence: rlstm at column t reads columns t..end, so its last column sees
    # only that column: the same as a forward Lstm with those weights run on one step
    w = {k: v for k, v in net.state_dict().items() if k.startswith("rlstm.")}
    seq = out["lstm_input"].numpy()
    last = fork_lstm_ref(seq[-1:], w["rlstm.W_xc"].numpy(), w["rlstm.W_hc"].numpy(),
                         w["rlstm.b_c"].numpy())
    np.testing.assert_allclose(out["rlstm"].numpy()[-1], last[0], rtol=1e-5, atol=1e-6)
    full = fork_lstm_ref(seq[::-1], w["rlstm.W_xc"].numpy(), w["rlstm.W_hc"].numpy(),
                         w["rlstm.b_c"].numpy())[::-1]
    np.testing.assert_allclose(out["rlstm"].numpy(), full, rtol=1e-5, atol=1e-6)


def test_bad_layers_name_the_layer_and_field() -> None:
    assert_refused("Transpose", "transpose_param { dim: 1 dim: 0 }", [(2, 3, 4)],
                   match="2 dim value")
    assert_refused("Transpose", "transpose_param { dim: 0 dim: 0 dim: 1 }", [(2, 3, 4)],
                   match="each axis")
    assert_refused("Reverse", "reverse_param { axis: 3 }", [(2, 3, 4)], match="not an axis")
    assert_refused("Reverse", "reverse_param { axis: -1 }", [(2, 3, 4)], match="not an axis")
    assert_refused("Reverse", "", [(2, 3, 4), (2,)], match="sequence lengths")
    assert_refused("Lstm", "", [(2, 3, 4)], match="num_output")
    assert_refused("Lstm", "lstm_param { num_output: 3 }", [(2, 3)], match="at least 3 axes")
    assert_refused("Lstm", "lstm_param { num_output: 3 }", [(2, 3, 4), (3, 2)],
                   match="(clip) must be (T, N)")
