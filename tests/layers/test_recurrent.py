"""BVLC Caffe's LSTM, RNN and LSTMUnit (landmarknet/layers/recurrent.py) against independent
references.

References:
* the reference Caffe (tests/reference/real_caffe.py): forward of every configuration (static
  input, exposed states, cont with zeros mid-sequence and a non-binary value, T = 1 and T > 1,
  N > 1, inputs of more than 3 axes) with Caffe's own random weights loaded by position from
  the .caffemodel it saved; our weights written as a .caffemodel and run by Caffe; Caffe's
  backward (parameter, input and exposed-state diffs); the shapes Caffe refuses;
* a numpy restatement of Caffe's unrolled nets, written here from lstm_layer.cpp,
  rnn_layer.cpp and lstm_unit_layer.cpp layer by layer (Scale by cont, InnerProduct, Eltwise
  SUM, LSTMUnit's per-element loop, TanH), in float64, for machines without Caffe;
* central differences (torch.autograd.gradcheck in float64) for the gradients;
* ONNX Runtime for the exported graph, and the emitted file run as its own module.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.analyze import analyze
from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.emit import emit_python
from landmarknet.errors import LayerError
from landmarknet.export import export_onnx
from landmarknet.params import load_weights, randomize, save_weights
from layers.checker import assert_refused
from reference.compare import rel_err
from reference.real_caffe import CaffeFailed, caffe_forward, caffe_load, run_caffe

F64 = np.float64
#: max |ours - Caffe| / max |Caffe| for every blob (float32 against float32)
CAFFE_TOL = 1e-5


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str], params: str = "") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {params} }}\n'


def _rp(hidden: int, expose: bool = False, extra: str = "") -> str:
    return (f"recurrent_param {{ num_output: {hidden}"
            + (" expose_hidden: true" if expose else "") + f" {extra} }}")


def _net(text: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_net(parse_net(text))


def _blobs(net, layer: str) -> list[np.ndarray]:
    """The layer's Caffe blobs, in Caffe's order, as float64 arrays."""
    module = next(m for m, i in net.layers.items() if i.node.name == layer)
    n = len(net.layers[module].blobs)
    return [net.blob_tensor(module, i).detach().numpy().astype(F64) for i in range(n)]


def _run(net, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.run({k: torch.from_numpy(v) for k, v in inputs.items()}, blobs=names)
    return {k: v.numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# numpy restatement of Caffe's unrolled nets (float64)
# ----------------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit_tanh(x):
    """lstm_unit_layer.cpp's tanh: 2 * sigmoid(2x) - 1."""
    return 2.0 * _sigmoid(2.0 * x) - 1.0


def np_lstm_unit(c_prev, gates, cont):
    """LSTMUnitLayer::Forward_cpu for (N, D) c_prev, (N, 4D) gates and (N,) cont."""
    n, d = c_prev.shape
    c, h = np.zeros((n, d)), np.zeros((n, d))
    for s in range(n):
        x = gates[s]
        i = _sigmoid(x[:d])
        f = np.zeros(d) if cont[s] == 0 else cont[s] * _sigmoid(x[d:2 * d])
        o = _sigmoid(x[2 * d:3 * d])
        g = _unit_tanh(x[3 * d:])
        c[s] = f * c_prev[s] + i * g
        h[s] = o * _unit_tanh(c[s])
    return c, h


def _inner(x, w, b=None):
    """InnerProduct: x (M, K) times w (N_out, K) transposed, plus the bias."""
    y = x @ w.T
    return y if b is None else y + b


def np_lstm(x, cont, blobs, x_static=None, h0=None, c0=None):
    """The unrolled LSTM net of lstm_layer.cpp: (h (T, N, H), h_T, c_T)."""
    x, cont = np.asarray(x, F64), np.asarray(cont, F64)
    t_steps, n = cont.shape
    w_xc, b_c = blobs[0], blobs[1]
    w_static = blobs[2] if x_static is not None else None
    w_hc = blobs[-1]
    hidden = w_hc.shape[1]
    w_xc_x = _inner(x.reshape(t_steps * n, -1), w_xc, b_c).reshape(t_steps, n, -1)
    static = None if x_static is None else _inner(np.asarray(x_static, F64).reshape(n, -1),
                                                  w_static)
    h = np.zeros((n, hidden)) if h0 is None else np.asarray(h0, F64).reshape(n, hidden)
    c = np.zeros((n, hidden)) if c0 is None else np.asarray(c0, F64).reshape(n, hidden)
    hs = []
    for t in range(t_steps):
        h_conted = h * cont[t][:, None]                       # Scale, axis 0
        gate = _inner(h_conted, w_hc) + w_xc_x[t]              # Eltwise SUM, bottoms in order
        if static is not None:
            gate = gate + static
        c, h = np_lstm_unit(c, gate, cont[t])
        hs.append(h)
    return np.stack(hs), h[None], c[None]


def np_rnn(x, cont, blobs, x_static=None, h0=None):
    """The unrolled RNN net of rnn_layer.cpp: (o (T, N, H), h_T)."""
    x, cont = np.asarray(x, F64), np.asarray(cont, F64)
    t_steps, n = cont.shape
    w_xh, b_h = blobs[0], blobs[1]
    w_static = blobs[2] if x_static is not None else None
    w_hh, w_ho, b_o = blobs[-3], blobs[-2], blobs[-1]
    hidden = w_hh.shape[0]
    w_xh_x = _inner(x.reshape(t_steps * n, -1), w_xh, b_h).reshape(t_steps, n, -1)
    static = None if x_static is None else _inner(np.asarray(x_static, F64).reshape(n, -1),
                                                  w_static)
    h = np.zeros((n, hidden)) if h0 is None else np.asarray(h0, F64).reshape(n, hidden)
    os_ = []
    for t in range(t_steps):
        h_conted = h * cont[t][:, None]
        pre = _inner(h_conted, w_hh) + w_xh_x[t]
        if static is not None:
            pre = pre + static
        h = np.tanh(pre)                                       # h_neuron (TanH)
        os_.append(np.tanh(_inner(h, w_ho, b_o)))              # W_ho_h, o_neuron
    return np.stack(os_), h[None]


# ----------------------------------------------------------------------------------------------
# One net with every configuration (shared by the Caffe and the numpy tests)
# ----------------------------------------------------------------------------------------------

T, N, H, HR = 4, 3, 5, 6           # LSTM hidden H, RNN hidden HR (D, Ds, H, HR all differ)
X_SHAPE = (T, N, 2, 4)             # D = 8: x has 4 axes, flattened from axis 2
XS_SHAPE = (N, 7)                  # D_static = 7
UNIT_D = 3

ALL_NET = (
    _input("x", X_SHAPE) + _input("cont", (T, N)) + _input("xs", XS_SHAPE)
    + _input("h0", (1, N, H)) + _input("c0", (1, N, H)) + _input("rh0", (1, N, HR))
    + _input("x1", (1, 2, 5)) + _input("cont1", (1, 2))
    + _input("uc", (1, N, UNIT_D)) + _input("ug", (1, N, 4 * UNIT_D)) + _input("ucont", (1, N))
    + _layer("lstm", "LSTM", ["x", "cont"], ["h_plain"], _rp(H))
    + _layer("lstm_s", "LSTM", ["x", "cont", "xs"], ["h_s"], _rp(H))
    + _layer("lstm_e", "LSTM", ["x", "cont", "h0", "c0"], ["h_e", "hT_e", "cT_e"], _rp(H, True))
    + _layer("lstm_se", "LSTM", ["x", "cont", "xs", "h0", "c0"], ["h_se", "hT_se", "cT_se"],
             _rp(H, True))
    + _layer("lstm_t1", "LSTM", ["x1", "cont1"], ["h_t1"], _rp(H))
    + _layer("rnn", "RNN", ["x", "cont"], ["o_plain"], _rp(HR))
    + _layer("rnn_s", "RNN", ["x", "cont", "xs"], ["o_s"], _rp(HR))
    + _layer("rnn_e", "RNN", ["x", "cont", "rh0"], ["o_e", "hT_re"], _rp(HR, True))
    + _layer("rnn_se", "RNN", ["x", "cont", "xs", "rh0"], ["o_se", "hT_rse"], _rp(HR, True))
    + _layer("rnn_t1", "RNN", ["x1", "cont1"], ["o_t1"], _rp(HR))
    + _layer("unit", "LSTMUnit", ["uc", "ug", "ucont"], ["uc1", "uh1"])
)
TOPS = ["h_plain", "h_s", "h_e", "hT_e", "cT_e", "h_se", "hT_se", "cT_se", "h_t1",
        "o_plain", "o_s", "o_e", "hT_re", "o_se", "hT_rse", "o_t1", "uc1", "uh1"]
#: Caffe's blob order and shapes (as ALL_NET's Caffe saved them; test_blob_order checks it)
BLOB_SHAPES = {
    "lstm": [(4 * H, 8), (4 * H,), (4 * H, H)],
    "lstm_s": [(4 * H, 8), (4 * H,), (4 * H, 7), (4 * H, H)],
    "rnn": [(HR, 8), (HR,), (HR, HR), (HR, HR), (HR,)],
    "rnn_s": [(HR, 8), (HR,), (HR, 7), (HR, HR), (HR, HR), (HR,)],
}


def _all_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.float32
    # cont: stream 0 starts at 0 and restarts at step 2; stream 1 continues from the (zero or
    # exposed) initial state; stream 2 has a non-binary 0.5, which Caffe multiplies in.
    cont = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0.5], [1, 0, 1]], f)
    return {
        "x": rng.normal(0, 1, X_SHAPE).astype(f), "cont": cont,
        "xs": rng.normal(0, 1, XS_SHAPE).astype(f),
        "h0": rng.normal(0, 0.5, (1, N, H)).astype(f),
        "c0": rng.normal(0, 1.5, (1, N, H)).astype(f),
        "rh0": rng.normal(0, 0.5, (1, N, HR)).astype(f),
        "x1": rng.normal(0, 1, (1, 2, 5)).astype(f), "cont1": np.array([[0, 1]], f),
        "uc": rng.normal(0, 1.5, (1, N, UNIT_D)).astype(f),
        "ug": rng.normal(0, 2, (1, N, 4 * UNIT_D)).astype(f),
        "ucont": np.array([[1, 0, 1]], f),
    }


def _numpy_tops(net, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every top of ALL_NET from the numpy restatement, with the net's blobs."""
    i = inputs
    out = {}
    out["h_plain"] = np_lstm(i["x"], i["cont"], _blobs(net, "lstm"))[0]
    out["h_s"] = np_lstm(i["x"], i["cont"], _blobs(net, "lstm_s"), i["xs"])[0]
    out["h_e"], out["hT_e"], out["cT_e"] = np_lstm(i["x"], i["cont"], _blobs(net, "lstm_e"),
                                                   h0=i["h0"], c0=i["c0"])
    out["h_se"], out["hT_se"], out["cT_se"] = np_lstm(i["x"], i["cont"], _blobs(net, "lstm_se"),
                                                      i["xs"], i["h0"], i["c0"])
    out["h_t1"] = np_lstm(i["x1"], i["cont1"], _blobs(net, "lstm_t1"))[0]
    out["o_plain"] = np_rnn(i["x"], i["cont"], _blobs(net, "rnn"))[0]
    out["o_s"] = np_rnn(i["x"], i["cont"], _blobs(net, "rnn_s"), i["xs"])[0]
    out["o_e"], out["hT_re"] = np_rnn(i["x"], i["cont"], _blobs(net, "rnn_e"), h0=i["rh0"])
    out["o_se"], out["hT_rse"] = np_rnn(i["x"], i["cont"], _blobs(net, "rnn_se"), i["xs"],
                                        i["rh0"])
    out["o_t1"] = np_rnn(i["x1"], i["cont1"], _blobs(net, "rnn_t1"))[0]
    c, h = np_lstm_unit(i["uc"][0].astype(F64), i["ug"][0].astype(F64), i["ucont"][0])
    out["uc1"], out["uh1"] = c[None], h[None]
    return out


# ----------------------------------------------------------------------------------------------
# Against the reference Caffe
# ----------------------------------------------------------------------------------------------

@pytest.mark.caffe_ref
def test_forward_matches_real_caffe_with_its_weights(tmp_path: Path) -> None:
    proto = tmp_path / "rnn.prototxt"
    proto.write_text(ALL_NET)
    inputs = _all_inputs()
    weights = tmp_path / "w.caffemodel"
    _, ref = caffe_forward(proto, inputs, seed=3, save_weights=weights, blobs=TOPS)
    net = _net(ALL_NET)
    load_weights(net, weights, strict=True)  # by position, shapes checked
    ours = _run(net, inputs, TOPS)
    worst = 0.0
    for name in TOPS:
        assert ours[name].shape == ref[name].shape, name
        err = rel_err(ours[name], ref[name])
        assert err <= CAFFE_TOL, (name, err)
        worst = max(worst, err)
    print(f"max rel error vs Caffe: {worst:.2e}")


@pytest.mark.caffe_ref
def test_blob_order_and_shapes_are_caffes(tmp_path: Path) -> None:
    proto = tmp_path / "rnn.prototxt"
    proto.write_text(ALL_NET)
    weights = tmp_path / "w.caffemodel"
    caffe_forward(proto, _all_inputs(), save_weights=weights, blobs=["x"])
    from landmarknet.caffe.weights import read_caffemodel
    saved = {lb.name: [tuple(b.shape) for b in lb.blobs] for lb in read_caffemodel(weights)}
    for layer, shapes in BLOB_SHAPES.items():
        assert saved[layer] == shapes, layer
    net = _net(ALL_NET)
    for module, info in net.layers.items():
        if info.node.name in saved:
            assert [tuple(s.shape) for s in info.blobs] == saved[info.node.name], info.node.name


@pytest.mark.caffe_ref
def test_caffe_runs_our_weights(tmp_path: Path) -> None:
    # the other direction: a .caffemodel written by landmarknet, read by Caffe by position
    net = _net(ALL_NET)
    randomize(net, 11)
    weights = tmp_path / "ours.caffemodel"
    save_weights(net, weights, net.net_param)
    proto = tmp_path / "rnn.prototxt"
    proto.write_text(ALL_NET)
    inputs = _all_inputs(1)
    _, ref = caffe_forward(proto, inputs, weights=weights, blobs=TOPS)
    ours = _run(net, inputs, TOPS)
    for name in TOPS:
        assert rel_err(ours[name], ref[name]) <= CAFFE_TOL, name


BACKWARD_NET = (
    "force_backward: true\n"
    + _input("x", (T, N, 6)) + _input("cont", (T, N)) + _input("xs", (N, 7))
    + _input("h0", (1, N, H)) + _input("c0", (1, N, H))
    + _input("rx", (T, N, 6)) + _input("rxs", (N, 7)) + _input("rh0", (1, N, HR))
    + _input("uc", (1, N, UNIT_D)) + _input("ug", (1, N, 4 * UNIT_D)) + _input("ucont", (1, N))
    + _layer("lstm", "LSTM", ["x", "cont", "xs", "h0", "c0"], ["h", "hT", "cT"], _rp(H, True))
    + _layer("rnn", "RNN", ["rx", "cont", "rxs", "rh0"], ["o", "rhT"], _rp(HR, True))
    + _layer("unit", "LSTMUnit", ["uc", "ug", "ucont"], ["uc1", "uh1"])
)
# Sums of squares as losses; the ones on the exposed final states must reach nothing (Caffe
# shares only their data).
LOSSES = {"h": 1.0, "hT": 1.0, "cT": 0.5, "o": 1.0, "rhT": 1.0, "uc1": 1.0, "uh1": 0.7}


def _loss_layers() -> str:
    return "".join(
        f'layer {{ name: "loss_{b}" type: "Reduction" bottom: "{b}" top: "loss_{b}" '
        f'loss_weight: {w} reduction_param {{ operation: SUMSQ }} }}\n' for b, w in LOSSES.items())


@pytest.mark.caffe_ref
def test_backward_matches_real_caffe(tmp_path: Path) -> None:
    proto = tmp_path / "bw.prototxt"
    proto.write_text(BACKWARD_NET + _loss_layers())
    rng = np.random.default_rng(5)
    f = np.float32
    inputs = {"x": rng.normal(0, 1, (T, N, 6)).astype(f),
              "cont": np.array([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], f),
              "xs": rng.normal(0, 1, (N, 7)).astype(f),
              "h0": rng.normal(0, 0.5, (1, N, H)).astype(f),
              "c0": rng.normal(0, 1, (1, N, H)).astype(f),
              "rx": rng.normal(0, 1, (T, N, 6)).astype(f),
              "rxs": rng.normal(0, 1, (N, 7)).astype(f),
              "rh0": rng.normal(0, 0.5, (1, N, HR)).astype(f),
              "uc": rng.normal(0, 1, (1, N, UNIT_D)).astype(f),
              "ug": rng.normal(0, 2, (1, N, 4 * UNIT_D)).astype(f),
              "ucont": np.array([[1, 0, 1]], f)}
    weights = tmp_path / "w.caffemodel"
    meta, ref = run_caffe("backward", {"prototxt": str(proto), "seed": 4,
                                       "save_weights": str(weights)}, inputs)
    diff = {name: ref[f"diff{i}"] for i, name in enumerate(meta["blobs"])}
    pdiff = {(layer, j): ref[f"pdiff{k}"] for k, (layer, j, _) in enumerate(meta["params"])}

    net = _net(BACKWARD_NET)
    load_weights(net, weights, strict=True)
    t = {k: torch.tensor(v, requires_grad=k != "cont" and k != "ucont")
         for k, v in inputs.items()}
    h, hT, cT = net.get_submodule("lstm")(t["x"], t["cont"], t["xs"], t["h0"], t["c0"])
    o, rhT = net.get_submodule("rnn")(t["rx"], t["cont"], t["rxs"], t["rh0"])
    uc1, uh1 = net.get_submodule("unit")(t["uc"], t["ug"], t["ucont"])
    tops = {"h": h, "hT": hT, "cT": cT, "o": o, "rhT": rhT, "uc1": uc1, "uh1": uh1}
    loss = sum(w * (tops[b] ** 2).sum() for b, w in LOSSES.items())
    assert abs(loss.item() - meta["loss"]) <= 1e-5 * abs(meta["loss"])
    loss.backward()
    for name in ("x", "xs", "rx", "rxs", "uc", "ug"):
        assert rel_err(t[name].grad.numpy(), diff[name]) <= CAFFE_TOL, name
    for name in ("h0", "c0", "rh0"):  # Caffe never writes their diff
        assert not np.any(diff[name])
        assert t[name].grad is None or not t[name].grad.any(), name
    for layer in ("lstm", "rnn"):
        module = net.get_submodule(layer)
        info = next(i for i in net.layers.values() if i.node.name == layer)
        for j, slot in enumerate(info.blobs):
            grad = module.get_parameter(slot.attr).grad.numpy()
            assert rel_err(grad, pdiff[(layer, j)]) <= CAFFE_TOL, (layer, slot.attr)


#: shapes Caffe refuses, and our message for each
REFUSED = {
    "x with 2 axes": (
        _input("x", (3, 2)) + _input("cont", (3, 2))
        + _layer("l", "LSTM", ["x", "cont"], ["h"], _rp(4)), "at least 3 axes"),
    "x_static with 1 axis": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("xs", (2,))
        + _layer("l", "RNN", ["x", "cont", "xs"], ["o"], _rp(4)), "x_static"),
    "cont of 3 axes": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2, 1))
        + _layer("l", "LSTM", ["x", "cont"], ["h"], _rp(4)), "bottom 1 (cont)"),
    "cont of another T": (
        _input("x", (3, 2, 5)) + _input("cont", (4, 2))
        + _layer("l", "RNN", ["x", "cont"], ["o"], _rp(4)), "bottom 1 (cont)"),
    "x_static of another N": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("xs", (3, 4))
        + _layer("l", "LSTM", ["x", "cont", "xs"], ["h"], _rp(4)), "x_static"),
    "expose_hidden without c0": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("h0", (1, 2, 4))
        + _layer("l", "LSTM", ["x", "cont", "h0"], ["h", "hT", "cT"], _rp(4, True)),
        "needs 4 or 5 bottoms"),
    "h0 and c0 without expose_hidden": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("h0", (1, 2, 4))
        + _input("c0", (1, 2, 4))
        + _layer("l", "LSTM", ["x", "cont", "h0", "c0"], ["h"], _rp(4)),
        "set recurrent_param.expose_hidden to give h0 and c0"),
    "h0 of the wrong size": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("h0", (1, 2, 3))
        + _layer("l", "RNN", ["x", "cont", "h0"], ["o", "hT"], _rp(4, True)), "bottom 2 (h0)"),
    "expose_hidden with one top": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2)) + _input("h0", (1, 2, 4))
        + _layer("l", "RNN", ["x", "cont", "h0"], ["o"], _rp(4, True)), "needs exactly 2 top"),
    "num_output 0": (
        _input("x", (3, 2, 5)) + _input("cont", (3, 2))
        + _layer("l", "LSTM", ["x", "cont"], ["h"], "recurrent_param { num_output: 0 }"),
        "num_output"),
    "LSTMUnit cont of 3 axes": (
        _input("c", (1, 2, 4)) + _input("g", (1, 2, 16)) + _input("k", (1, 2, 1))
        + _layer("l", "LSTMUnit", ["c", "g", "k"], ["c1", "h1"]), "bottom 2 (cont)"),
    "LSTMUnit gates not 4D": (
        _input("c", (1, 2, 4)) + _input("g", (1, 2, 12)) + _input("k", (1, 2))
        + _layer("l", "LSTMUnit", ["c", "g", "k"], ["c1", "h1"]), "4 × D = 16"),
    "LSTMUnit two steps": (
        _input("c", (2, 2, 4)) + _input("g", (2, 2, 16)) + _input("k", (2, 2))
        + _layer("l", "LSTMUnit", ["c", "g", "k"], ["c1", "h1"]), "one time step"),
}


#: T = 0: the builder refuses an empty input before the layer sees it (test_zero_steps)
ZERO_STEPS = (_input("x", (0, 2, 5)) + _input("cont", (0, 2))
              + _layer("l", "LSTM", ["x", "cont"], ["h"], _rp(4)))


@pytest.mark.caffe_ref
@pytest.mark.parametrize("case", sorted(REFUSED) + ["T = 0"])
def test_caffe_refuses_what_we_refuse(case: str, tmp_path: Path) -> None:
    text = ZERO_STEPS if case == "T = 0" else REFUSED[case][0]
    proto = tmp_path / "bad.prototxt"
    proto.write_text(text)
    with pytest.raises(CaffeFailed):
        caffe_load(proto)


# ----------------------------------------------------------------------------------------------
# Without Caffe
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_shapes_and_parameters_are_refused_clearly(case: str) -> None:
    text, match = REFUSED[case]
    with pytest.raises(LayerError) as info:
        _net(text)
    message = str(info.value)
    assert "layer 'l'" in message and match in message, message
    assert "Traceback" not in message and "meta" not in message


def test_numpy_restatement_of_every_configuration() -> None:
    net = _net(ALL_NET)
    randomize(net, 2)
    inputs = _all_inputs(3)
    ours = _run(net, inputs, TOPS)
    want = _numpy_tops(net, inputs)
    for name in TOPS:
        assert ours[name].shape == want[name].shape, name
        assert rel_err(ours[name], want[name]) <= 2e-6, name
    # the configurations differ where they should
    assert not np.allclose(ours["h_s"], ours["h_plain"])    # the static input counts
    assert not np.allclose(ours["h_e"][:, 1], ours["h_plain"][:, 1])  # h0/c0 reach stream 1
    np.testing.assert_array_equal(ours["hT_e"][0], ours["h_e"][-1])


def test_blob_order_shapes_and_names() -> None:
    net = _net(ALL_NET)
    for layer, shapes in BLOB_SHAPES.items():
        info = next(i for i in net.layers.values() if i.node.name == layer)
        assert [tuple(s.shape) for s in info.blobs] == shapes, layer
        assert all(s.learnable for s in info.blobs)
    lstm = next(i for i in net.layers.values() if i.node.name == "lstm_s")
    assert [s.attr for s in lstm.blobs] == ["W_xc", "b_c", "W_xc_static", "W_hc"]
    rnn = next(i for i in net.layers.values() if i.node.name == "rnn_s")
    assert [s.attr for s in rnn.blobs] == ["W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o"]
    unit = next(i for i in net.layers.values() if i.node.name == "unit")
    assert unit.blobs == []


def test_fillers_as_caffe_applies_them() -> None:
    # weight_filler on every matrix (xavier's fan-in is each matrix's own: D, D_static, H),
    # bias_filler on every bias
    fill = ('weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.25 }')
    text = (_input("x", (2, 3, 40)) + _input("cont", (2, 3)) + _input("xs", (3, 10))
            + _layer("lstm", "LSTM", ["x", "cont", "xs"], ["h"], _rp(160, extra=fill))
            + _layer("rnn", "RNN", ["x", "cont", "xs"], ["o"], _rp(640, extra=fill)))
    net = _net(text)
    for layer in ("lstm", "rnn"):
        for blob in _blobs(net, layer):
            if blob.ndim == 1:
                assert np.all(blob == 0.25), layer
                continue
            bound = math.sqrt(3.0 / blob.shape[1])
            assert np.abs(blob).max() <= bound * (1 + 1e-6), (layer, blob.shape)
            assert np.abs(blob).max() >= 0.95 * bound, (layer, blob.shape)
    # no fillers: Caffe copies default FillerParameters, constant 0, into its inner products
    plain = _net(_input("x", (2, 3, 4)) + _input("cont", (2, 3))
                 + _layer("lstm", "LSTM", ["x", "cont"], ["h"], _rp(5)))
    assert all(not b.any() for b in _blobs(plain, "lstm"))


def test_zero_steps_are_refused() -> None:
    assert_refused("LSTM", "recurrent_param { num_output: 4 }", [(0, 2, 5), (0, 2)],
                   match="at least one")
    assert_refused("RNN", "recurrent_param { num_output: 4 }", [(0, 2, 5), (0, 2)],
                   match="at least one")


def test_bilinear_filler_is_refused() -> None:
    assert_refused("LSTM", 'recurrent_param { num_output: 4 weight_filler { type: "bilinear" } }',
                   [(3, 2, 5), (3, 2)], match="weight_filler")


def test_debug_info_changes_nothing() -> None:
    base = _input("x", (3, 2, 4)) + _input("cont", (3, 2))
    a = _net(base + _layer("l", "RNN", ["x", "cont"], ["o"], _rp(5)))
    b = _net(base + _layer("l", "RNN", ["x", "cont"], ["o"], _rp(5, extra="debug_info: true")))
    randomize(a, 0)
    randomize(b, 0)
    x = {"x": np.ones((3, 2, 4), np.float32), "cont": np.ones((3, 2), np.float32)}
    np.testing.assert_array_equal(_run(a, x, ["o"])["o"], _run(b, x, ["o"])["o"])


def _lstm_module(static: bool, expose: bool):
    bottoms = ["x", "cont"] + (["xs"] if static else []) + (["h0", "c0"] if expose else [])
    text = (_input("x", (3, 2, 4)) + _input("cont", (3, 2)) + _input("xs", (2, 3))
            + _input("h0", (1, 2, 3)) + _input("c0", (1, 2, 3))
            + _layer("l", "LSTM", bottoms, ["h", "hT", "cT"] if expose else ["h"],
                     _rp(3, expose)))
    net = _net(text)
    randomize(net, 7)
    return net.get_submodule("l").double()


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradients_against_central_differences(kind: str) -> None:
    if kind == "LSTM":
        module = _lstm_module(static=True, expose=False)
    else:
        net = _net(_input("x", (3, 2, 4)) + _input("cont", (3, 2)) + _input("xs", (2, 3))
                   + _layer("l", "RNN", ["x", "cont", "xs"], ["o"], _rp(3)))
        randomize(net, 8)
        module = net.get_submodule("l").double()
    names = [n for n, _ in module.named_parameters()]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, 2, 4), generator=gen, dtype=torch.float64, requires_grad=True)
    xs = torch.randn((2, 3), generator=gen, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]

    def f(x, xs, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (x, cont, xs))

    assert torch.autograd.gradcheck(f, (x, xs, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_lstm_unit_gradient_against_central_differences() -> None:
    from landmarknet.layers.recurrent import CaffeLSTMUnit
    gen = torch.Generator().manual_seed(1)
    c = torch.randn((1, 3, 2), generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn((1, 3, 8), generator=gen, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, g: CaffeLSTMUnit()(c, g, cont), (c, g))


def test_exposed_states_and_cont_carry_no_gradient() -> None:
    module = _lstm_module(static=False, expose=True).float()
    x = torch.randn(3, 2, 4, requires_grad=True)
    cont = torch.ones(3, 2, requires_grad=True)
    h0 = torch.randn(1, 2, 3, requires_grad=True)
    c0 = torch.randn(1, 2, 3, requires_grad=True)
    h, h_t, c_t = module(x, cont, h0, c0)
    assert not h_t.requires_grad and not c_t.requires_grad
    h.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert cont.grad is None and h0.grad is None and c0.grad is None
    assert module.W_hc.grad.abs().sum() > 0


def test_shape_inference_on_meta_and_a_changed_t_is_refused() -> None:
    module = _lstm_module(static=True, expose=True).float()
    on_meta = copy.deepcopy(module).to("meta")
    with torch.device("meta"):
        h, h_t, c_t = on_meta(torch.empty(3, 5, 4), torch.empty(3, 5), torch.empty(5, 3),
                             torch.empty(1, 5, 3), torch.empty(1, 5, 3))
    assert h.device.type == "meta" and tuple(h.shape) == (3, 5, 3)
    assert tuple(h_t.shape) == tuple(c_t.shape) == (1, 5, 3)
    with pytest.raises(LayerError, match=r"layer 'l'.*3 time steps"):
        module(torch.zeros(4, 2, 4), torch.zeros(4, 2), torch.zeros(2, 3), torch.zeros(1, 2, 3),
               torch.zeros(1, 2, 3))


def test_costs_count_the_matrix_products() -> None:
    text = (_input("x", (4, 3, 8)) + _input("cont", (4, 3)) + _input("xs", (3, 7))
            + _layer("lstm", "LSTM", ["x", "cont", "xs"], ["h"], _rp(5))
            + _layer("rnn", "RNN", ["x", "cont"], ["o"], _rp(6)))
    stats = analyze(_net(text))
    rows = {r.name: r for r in stats.rows if not r.is_input}
    assert rows["lstm"].macs == 4 * 3 * 20 * (8 + 5) + 3 * 20 * 7
    assert rows["rnn"].macs == 4 * 3 * 6 * (8 + 12)
    assert rows["lstm"].params == 20 * 8 + 20 + 20 * 7 + 20 * 5


# ----------------------------------------------------------------------------------------------
# Emitted code and ONNX (configurations beyond the registry battery's)
# ----------------------------------------------------------------------------------------------

VARIANT_NET = (
    _input("x", (3, 2, 4)) + _input("cont", (3, 2)) + _input("xs", (2, 3))
    + _input("h0", (1, 2, 5)) + _input("c0", (1, 2, 5)) + _input("x1", (1, 2, 4))
    + _input("cont1", (1, 2))
    + _layer("lstm", "LSTM", ["x", "cont"], ["h"], _rp(5))
    + _layer("lstm_se", "LSTM", ["x", "cont", "xs", "h0", "c0"], ["h2", "hT", "cT"], _rp(5, True))
    + _layer("rnn_se", "RNN", ["x", "cont", "xs", "h0"], ["o", "rhT"], _rp(5, True))
    + _layer("rnn_t1", "RNN", ["x1", "cont1"], ["o1"], _rp(4))
    # LSTMUnit on its own: gates (1, N, 4D) from an inner product of the state
    + _layer("gates", "InnerProduct", ["h0"], ["gates"],
             "inner_product_param { num_output: 20 axis: 2 }")
    + _layer("unit", "LSTMUnit", ["c0", "gates", "cont1"], ["uc", "uh"])
)


def _variant_inputs(net) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    out = {i.name: torch.randn(tuple(i.shape), generator=gen) for i in net.caffe_graph.inputs}
    out["cont"] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    out["cont1"] = torch.tensor([[1.0, 0.0]])
    return out


def test_emitted_code_gives_the_same_numbers(tmp_path: Path) -> None:
    net = _net(VARIANT_NET)
    randomize(net, 5)
    path = tmp_path / "emitted_rnn.py"
    emit_python(net, path)
    spec = importlib.util.spec_from_file_location("emitted_rnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    result = model.load_state_dict(net.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    inputs = _variant_inputs(net)
    with torch.no_grad():
        ours = net(*(inputs[n] for n in net.input_names))
        theirs = model(*(inputs[n] for n in net.input_names))
    assert list(theirs) == list(ours)
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-6, atol=1e-6, msg=name)


def test_onnx_export_passes_its_check_in_onnx_runtime(tmp_path: Path) -> None:
    net = _net(VARIANT_NET)
    randomize(net, 6)
    report = export_onnx(net, tmp_path / "rnn.onnx")
    assert report.ok, report.render()
    # the check fed cont as 0/1 indicators (OnnxRule.example_input), not noise
    from landmarknet.export import random_inputs
    feeds = random_inputs(net, 0)
    assert set(np.unique(feeds["cont"])) <= {0.0, 1.0} and not feeds["cont"][0].any()
    assert set(np.unique(feeds["cont1"])) <= {0.0, 1.0}


def test_dynamic_batch_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    # Axis 0 of a recurrent bottom is time and the export unrolls it: a symbolic axis 0 would
    # promise any T and give wrong results (or none) for every T but the built one.
    from landmarknet.export import ExportError
    net = _net(VARIANT_NET)
    randomize(net, 6)
    with pytest.raises(ExportError, match=r"--dynamic-batch cannot be used with .*axis 0 of its "
                                          r"bottoms is time"):
        export_onnx(net, tmp_path / "rnn.onnx", dynamic_batch=True)
    assert not (tmp_path / "rnn.onnx").exists()
