"""BVLC Caffe's recurrent layers: LSTM, RNN and the LSTMUnit step they are built from.

Caffe implements LSTM and RNN (``recurrent_layer.cpp``, ``lstm_layer.cpp``, ``rnn_layer.cpp``)
by unrolling them into a hidden net of T steps; landmarknet computes the same numbers directly:

* Bottoms: x (T, N, ...) flattened from axis 2 (D values a step), cont (T, N), an optional
  static input x_static (N, ...) flattened from axis 1, and with ``recurrent_param {
  expose_hidden: true }`` the initial states h0 (1, N, H) (and c0 for LSTM) after them. Tops:
  h (LSTM) or o (RNN) of shape (T, N, H), then hT (and cT) of shape (1, N, H) when exposed.
* Before step t the previous hidden state is multiplied by cont_t (Caffe's Scale layer), so a
  0 starts a new sequence; any other value scales it.
* LSTM: gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static], split in
  the order i, f, o, g; c_t = cont_t sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);
  h_t = sigmoid(o) tanh(c_t). Caffe's LSTMUnit computes tanh as 2 sigmoid(2x) - 1 (kept here).
* RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
  o_t = tanh(W_ho h_t + b_o).
* Blobs, in Caffe's order (the unrolled net's parameters in layer order, shared ones once):
  LSTM W_xc (4H, D), b_c (4H), [W_xc_static (4H, Ds)], W_hc (4H, H); RNN W_xh (H, D), b_h (H),
  [W_xh_static (H, Ds)], W_hh (H, H), W_ho (H, H), b_o (H). recurrent_param's weight_filler
  fills every matrix, its bias_filler every bias (unset: constant 0, as in Caffe).
* Gradients as Caffe's Backward: none to cont; the exposed states are not differentiable
  either (Caffe shares only their data: h0/c0 receive no diff and a loss on hT/cT reaches
  nothing). Caffe's LSTMUnit backward takes f (1 - f) for the derivative of
  f = cont sigmoid(f'), right only for cont in {0, 1}; autograd differentiates the forward,
  so the two agree for 0/1 indicators (the only values sequence nets feed).

One difference, on purpose: without expose_hidden Caffe copies the last state of the previous
forward into h0 (and c0), so a first step with cont = 1 continues the previous batch. Every
forward here starts from zeros, which is what Caffe computes on its first forward and wherever
a sequence starts (cont = 0) at step 0; to carry state between batches, expose the hidden
state and feed hT back as h0.

Only the recurrence loops over T: the input transform of all steps is one matrix product (and
RNN's output transform another, after the loop).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.costs import CostRule, numel
from landmarknet.layers.emitting import copy_module
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, OnnxRule, register

_FAMILY = "recurrent"


def _caffe_tanh(x: torch.Tensor) -> torch.Tensor:
    """LSTMUnit's tanh: 2 sigmoid(2x) - 1, as lstm_unit_layer.cpp writes it (near 0 it is
    less precise than tanh; Caffe's numbers are the reference)."""
    return 2 * torch.sigmoid(2 * x) - 1


def _states(rest: tuple, static: bool, n_states: int, batch: int, hidden: int,
            like: torch.Tensor, layer: str, type_: str
            ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(x_static or None, the initial states as (N, H)) from the bottoms after x and cont.

    Exposed states are detached: Caffe shares their data into the unrolled net but not their
    diff, so they get no gradient. Without them every forward starts from zeros."""
    x_static = rest[0] if static else None
    given = rest[1 if static else 0:]
    if x_static is not None and int(x_static.shape[0]) != batch:
        raise LayerError(f"bottom 2 (x_static) has {int(x_static.shape[0])} streams, x has "
                         f"{batch}", layer=layer, type=type_)
    if not given:
        return x_static, [like.new_zeros(batch, hidden) for _ in range(n_states)]
    states = []
    for k, s in enumerate(given):
        if tuple(s.shape) != (1, batch, hidden):
            raise LayerError(f"bottom {2 + static + k} ({('h0', 'c0')[k]}) must be "
                             f"(1, {batch}, {hidden}), got {tuple(s.shape)}",
                             layer=layer, type=type_)
        states.append(s.detach().reshape(batch, hidden))
    return x_static, states


def _step_inputs(x: torch.Tensor, cont: torch.Tensor, steps: int, layer: str, type_: str
                 ) -> tuple[int, torch.Tensor]:
    """(N, cont as (T, N, 1) without gradient); T must be the one the layer was built for."""
    if x.dim() < 3 or int(x.shape[0]) != steps:
        raise LayerError(f"x has shape {tuple(x.shape)}; the layer was set up for {steps} time "
                         "steps, (T, N, ...) with at least 3 axes (Caffe's Reshape refuses a "
                         "change of T too: rebuild the net for the new input shape)",
                         layer=layer, type=type_)
    batch = int(x.shape[1])
    if tuple(cont.shape) != (steps, batch):
        raise LayerError(f"bottom 1 (cont) must be (T, N) = ({steps}, {batch}), got "
                         f"{tuple(cont.shape)}", layer=layer, type=type_)
    # Caffe cannot back-propagate to the sequence indicators (its Backward CHECKs it).
    return batch, cont.detach().to(x.dtype).reshape(steps, batch, 1)


class CaffeLSTM(nn.Module):
    """Caffe's LSTM layer over T steps (see the module docstring); blobs named as Caffe's."""

    def __init__(self, steps: int, d_in: int, d_static: int, hidden: int, expose_hidden: bool,
                 *, layer: str = "", type: str = "LSTM") -> None:
        super().__init__()
        self.steps, self.hidden, self.expose_hidden = steps, hidden, expose_hidden
        self.layer, self.type_ = layer, type
        self.W_xc = nn.Parameter(torch.empty(4 * hidden, d_in))
        self.b_c = nn.Parameter(torch.empty(4 * hidden))
        if d_static:
            self.W_xc_static = nn.Parameter(torch.empty(4 * hidden, d_static))
        else:
            self.register_parameter("W_xc_static", None)
        self.W_hc = nn.Parameter(torch.empty(4 * hidden, hidden))

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor):
        batch, keep = _step_inputs(x, cont, self.steps, self.layer, self.type_)
        x_static, (h, c) = _states(rest, self.W_xc_static is not None, 2, batch, self.hidden, x,
                                   self.layer, self.type_)
        # the input part of every step's gates at once (Caffe's x_transform, axis 2)
        gx = F.linear(x.reshape(self.steps, batch, -1), self.W_xc, self.b_c)
        if x_static is not None:
            gx = gx + F.linear(x_static.reshape(batch, -1), self.W_xc_static)[None]
        w_hc = self.W_hc.t()
        hs = []
        for t in range(self.steps):
            k = keep[t]
            gates = torch.addmm(gx[t], h * k, w_hc)
            # LSTMUnit's order i, f, o, g: one sigmoid call for the first three
            i, f, o = torch.sigmoid(gates[:, :3 * self.hidden]).split(self.hidden, dim=1)
            c = (k * f) * c + i * _caffe_tanh(gates[:, 3 * self.hidden:])
            h = o * _caffe_tanh(c)
            hs.append(h)
        top = torch.stack(hs)
        if self.expose_hidden:
            # Caffe shares only the data of hT/cT: a loss on them back-propagates nothing.
            return top, h[None].detach(), c[None].detach()
        return top

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, input={self.W_xc.shape[1]}, hidden={self.hidden}, "
                f"static={self.W_xc_static is not None}, expose_hidden={self.expose_hidden}")


class CaffeRNN(nn.Module):
    """Caffe's RNN layer over T steps with its tanh output layer (see the module docstring)."""

    def __init__(self, steps: int, d_in: int, d_static: int, hidden: int, expose_hidden: bool,
                 *, layer: str = "", type: str = "RNN") -> None:
        super().__init__()
        self.steps, self.hidden, self.expose_hidden = steps, hidden, expose_hidden
        self.layer, self.type_ = layer, type
        self.W_xh = nn.Parameter(torch.empty(hidden, d_in))
        self.b_h = nn.Parameter(torch.empty(hidden))
        if d_static:
            self.W_xh_static = nn.Parameter(torch.empty(hidden, d_static))
        else:
            self.register_parameter("W_xh_static", None)
        self.W_hh = nn.Parameter(torch.empty(hidden, hidden))
        self.W_ho = nn.Parameter(torch.empty(hidden, hidden))
        self.b_o = nn.Parameter(torch.empty(hidden))

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor):
        batch, keep = _step_inputs(x, cont, self.steps, self.layer, self.type_)
        x_static, (h,) = _states(rest, self.W_xh_static is not None, 1, batch, self.hidden, x,
                                 self.layer, self.type_)
        hx = F.linear(x.reshape(self.steps, batch, -1), self.W_xh, self.b_h)
        if x_static is not None:
            hx = hx + F.linear(x_static.reshape(batch, -1), self.W_xh_static)[None]
        w_hh = self.W_hh.t()
        hs = []
        for t in range(self.steps):
            h = torch.tanh(torch.addmm(hx[t], h * keep[t], w_hh))
            hs.append(h)
        # the output layer o_t = tanh(W_ho h_t + b_o) needs no recurrence: all steps at once
        top = torch.tanh(F.linear(torch.stack(hs), self.W_ho, self.b_o))
        if self.expose_hidden:
            return top, h[None].detach()
        return top

    def extra_repr(self) -> str:
        return (f"steps={self.steps}, input={self.W_xh.shape[1]}, hidden={self.hidden}, "
                f"static={self.W_xh_static is not None}, expose_hidden={self.expose_hidden}")


class CaffeLSTMUnit(nn.Module):
    """One LSTM step: (c_prev (1, N, D), gates (1, N, 4D), cont (1, N)) -> (c, h)."""

    def forward(self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor):
        hidden = int(c_prev.shape[2])
        k = cont.detach().to(gates.dtype).reshape(1, -1, 1)
        i, f, o, g = gates.split(hidden, dim=2)
        c = (k * torch.sigmoid(f)) * c_prev + torch.sigmoid(i) * _caffe_tanh(g)
        return c, torch.sigmoid(o) * _caffe_tanh(c)


# ----------------------------------------------------------------------------------------------
# Tool hooks: costs, box labels, export inputs
# ----------------------------------------------------------------------------------------------

def _static_width(info, plain_blobs: int) -> int:
    """Columns of the static weight, blob 2 (0 without x_static: the layer then has
    ``plain_blobs`` blobs)."""
    return int(info.blobs[2].shape[1]) if len(info.blobs) == plain_blobs + 1 else 0


def _lstm_cost(info, training: bool) -> tuple[int, int]:
    steps, batch = (int(d) for d in info.bottom_shapes[0][:2])
    four_h, d_in = (int(d) for d in info.blobs[0].shape)
    hidden = four_h // 4
    macs = steps * batch * four_h * (d_in + hidden) + batch * four_h * _static_width(info, 3)
    return macs, 5 * steps * batch * hidden


def _rnn_cost(info, training: bool) -> tuple[int, int]:
    steps, batch = (int(d) for d in info.bottom_shapes[0][:2])
    hidden, d_in = (int(d) for d in info.blobs[0].shape)
    macs = steps * batch * hidden * (d_in + 2 * hidden) + batch * hidden * _static_width(info, 5)
    return macs, 2 * steps * batch * hidden


LSTM_COST = CostRule(_lstm_cost, "MACs = T × N × 4H × (D + H) (+ N × 4H × D_static); ops = "
                                 "5 × T × N × H (3 sigmoids and 2 tanh a cell)")
RNN_COST = CostRule(_rnn_cost, "MACs = T × N × H × (D + 2H) (+ N × H × D_static); ops = "
                               "2 × T × N × H (2 tanh)")
UNIT_COST = CostRule(lambda info, training: (0, 5 * numel(info.top_shapes[0])),
                     "ops = 5 × N × D (3 sigmoids and 2 tanh a cell)")


def recurrent_detail(param: caffe_pb2.LayerParameter) -> str:
    """'256 hidden', '256 hidden · h0 in, hT out': the hidden size and the exposed states."""
    rp = param.recurrent_param
    text = f"{rp.num_output} hidden"
    if rp.expose_hidden:
        text += " · h0/c0 in, hT/cT out" if param.type == "LSTM" else " · h0 in, hT out"
    return text


def _cont_values(shape, rng) -> np.ndarray:
    """0/1 sequence indicators, (T, N) sequences starting at step 0 and some again later
    (standard-normal noise would scale the state by arbitrary numbers)."""
    cont = (rng.uniform(size=shape) > 0.3).astype(np.float32)
    if len(shape) == 2 and shape[0] > 1:
        cont[0] = 0
    return cont


def _example_cont(index_of_cont: int):
    """The export check's values for the cont bottom (``OnnxRule.example_input``)."""
    def example(param, index, shape, bottom_shapes, images, rng):
        return _cont_values(tuple(shape), rng) if index == index_of_cont else None
    return example


# ----------------------------------------------------------------------------------------------
# Converters
# ----------------------------------------------------------------------------------------------

def _filler(rp, field: str, what: str, spec: LayerSpec) -> caffe_pb2.FillerParameter | None:
    """recurrent_param's filler ``field`` (None: Caffe's default FillerParameter, constant 0)."""
    if not rp.HasField(field):
        return None
    fp = getattr(rp, field)
    if fp.type == "bilinear":
        raise spec.error(f"recurrent_param.{field}: the bilinear filler needs a 4-D blob, and "
                         f"the {what} are {'2' if field == 'weight_filler' else '1'}-D (Caffe "
                         "aborts in its filler)")
    return fp


def _recurrent_setup(spec: LayerSpec, n_states: int) -> tuple[int, int, int, int, int, bool]:
    """Caffe's LayerSetUp and Reshape checks; (T, N, D, D_static or 0, H, expose_hidden)."""
    rp = spec.param.recurrent_param
    expose = bool(rp.expose_hidden)
    states = "h0 and c0" if n_states == 2 else "h0"
    low = 2 + (n_states if expose else 0)
    n = len(spec.bottom_shapes)
    if not low <= n <= low + 1:
        order = "x, cont, [x_static]" + (f", {states}" if expose else "")
        why = ("; recurrent_param.expose_hidden is true" if expose else
               f"; set recurrent_param.expose_hidden to give {states}" if n > low + 1 else "")
        raise spec.error(f"needs {low} or {low + 1} bottoms ({order}{why}), got {n}")
    tops = 1 + (n_states if expose else 0)
    if spec.n_tops != tops:
        names = ("h" if spec.type == "LSTM" else "o") + (
            (", hT, cT" if n_states == 2 else ", hT") if expose else "")
        raise spec.error(f"needs exactly {tops} top(s) ({names}"
                         + (", as recurrent_param.expose_hidden is true" if expose else
                            "; set recurrent_param.expose_hidden to get the final state")
                         + f"), got {spec.n_tops}")
    if not rp.HasField("num_output") or rp.num_output <= 0:
        raise spec.error("recurrent_param.num_output must be given and positive (Caffe CHECKs "
                         "num_output > 0)")
    hidden = int(rp.num_output)
    x = tuple(spec.bottom_shapes[0])
    if len(x) < 3:
        raise spec.error(f"bottom 0 (x) must be (T, N, ...) with at least 3 axes (Caffe's "
                         f"input transform flattens it from axis 2), got {list(x)}", shape=True)
    steps, batch = x[0], x[1]
    if steps < 1:
        raise spec.error(f"bottom 0 (x) has T = {steps} time steps; Caffe needs at least one",
                         shape=True)
    cont = tuple(spec.bottom_shapes[1])
    if cont != (steps, batch):
        raise spec.error(f"bottom 1 (cont) must be (T, N) = ({steps}, {batch}) like x "
                         f"{list(x)}, got {list(cont)}", shape=True)
    static = n > low
    d_static = 0
    if static:
        xs = tuple(spec.bottom_shapes[2])
        if len(xs) < 2 or xs[0] != batch:
            raise spec.error(f"bottom 2 (x_static) must be (N, ...) = ({batch}, ...) with at "
                             f"least 2 axes (flattened from axis 1), got {list(xs)}", shape=True)
        d_static = numel(xs[1:])
    first = 3 if static else 2
    for k in range(first, n):
        if tuple(spec.bottom_shapes[k]) != (1, batch, hidden):
            name = ("h0", "c0")[k - first]
            raise spec.error(f"bottom {k} ({name}) must be (1, N, num_output) = (1, {batch}, "
                             f"{hidden}), got {list(spec.bottom_shapes[k])}", shape=True)
    # debug_info only makes Caffe log the unrolled net's blobs: nothing to compute.
    return steps, batch, numel(x[2:]), d_static, hidden, expose


#: Axis 0 of a recurrent layer's blobs is time, and the export unrolls its T steps.
_TIME_AXIS = ("axis 0 of its bottoms is time (T x N x ...), not the batch, and the export "
              "unrolls its T steps into the graph, so that axis cannot be symbolic")


@register("LSTM", family=_FAMILY, cost=LSTM_COST, detail=recurrent_detail,
          emit=copy_module(_caffe_tanh, _states, _step_inputs),
          onnx=OnnxRule(example_input=_example_cont(1), fixed_batch=_TIME_AXIS))
def lstm(spec: LayerSpec) -> Built:
    """LSTM over T steps (gates i, f, o, g; cont resets the state); h (T, N, H) [+ hT, cT]."""
    steps, _, d_in, d_static, hidden, expose = _recurrent_setup(spec, 2)
    rp = spec.param.recurrent_param
    wf = _filler(rp, "weight_filler", "weights", spec)
    bf = _filler(rp, "bias_filler", "biases", spec)
    module = CaffeLSTM(steps, d_in, d_static, hidden, expose, layer=spec.name, type=spec.type)
    blobs = [BlobSlot("W_xc", (4 * hidden, d_in), wf), BlobSlot("b_c", (4 * hidden,), bf)]
    if d_static:
        blobs.append(BlobSlot("W_xc_static", (4 * hidden, d_static), wf))
    blobs.append(BlobSlot("W_hc", (4 * hidden, hidden), wf))
    return Built(module, blobs)


@register("RNN", family=_FAMILY, cost=RNN_COST, detail=recurrent_detail,
          emit=copy_module(_states, _step_inputs),
          onnx=OnnxRule(example_input=_example_cont(1), fixed_batch=_TIME_AXIS))
def rnn(spec: LayerSpec) -> Built:
    """Elman RNN over T steps with a tanh output layer; o (T, N, H) [+ hT]."""
    steps, _, d_in, d_static, hidden, expose = _recurrent_setup(spec, 1)
    rp = spec.param.recurrent_param
    wf = _filler(rp, "weight_filler", "weights", spec)
    bf = _filler(rp, "bias_filler", "biases", spec)
    module = CaffeRNN(steps, d_in, d_static, hidden, expose, layer=spec.name, type=spec.type)
    blobs = [BlobSlot("W_xh", (hidden, d_in), wf), BlobSlot("b_h", (hidden,), bf)]
    if d_static:
        blobs.append(BlobSlot("W_xh_static", (hidden, d_static), wf))
    blobs += [BlobSlot("W_hh", (hidden, hidden), wf), BlobSlot("W_ho", (hidden, hidden), wf),
              BlobSlot("b_o", (hidden,), bf)]
    return Built(module, blobs)


@register("LSTMUnit", family=_FAMILY, cost=UNIT_COST, emit=copy_module(_caffe_tanh),
          onnx=OnnxRule(example_input=_example_cont(2), fixed_batch=_TIME_AXIS))
def lstm_unit(spec: LayerSpec) -> Built:
    """One LSTM step: c_prev (1, N, D), gates (1, N, 4D), cont (1, N) -> c, h (1, N, D)."""
    spec.expect_bottoms(3)
    if spec.n_tops != 2:
        raise spec.error(f"needs exactly 2 tops (c, h), got {spec.n_tops}")
    shapes = [tuple(s) for s in spec.bottom_shapes]
    names = ("c_prev", "gates", "cont")
    for k, (shape, name) in enumerate(zip(shapes, names)):
        axes = 2 if k == 2 else 3
        if len(shape) != axes:
            raise spec.error(f"bottom {k} ({name}) must have {axes} axes, got {list(shape)}",
                             shape=True)
        if shape[0] != 1 or shape[1] != shapes[0][1]:
            raise spec.error(f"bottom {k} ({name}) must be (1, N, ...) with N = {shapes[0][1]} "
                             f"(one time step; N from c_prev), got {list(shape)}", shape=True)
    if shapes[1][2] != 4 * shapes[0][2]:
        raise spec.error(f"bottom 1 (gates) must have 4 × D = {4 * shapes[0][2]} values a "
                         f"stream (i, f, o, g) for c_prev {list(shapes[0])}, got "
                         f"{list(shapes[1])}", shape=True)
    return Built(CaffeLSTMUnit())


# ----------------------------------------------------------------------------------------------
# CTPN's Lstm (tianzhi0549/CTPN, after Junhyuk Oh's caffe-lstm): one LSTM layer with its own
# parameter message and blob order. It computes BVLC's LSTM with cont = the optional second
# bottom ("clip", (T, N)) or, without one, 0 at step 0 and 1 after: the GPU code's
# ClipAdd/LSTMForward (gates i, f, o, g; tanh as 2 sigmoid(2x) - 1 there too). Its CPU forward
# differs: it adds the first stream's recurrent term to every stream (a pointer it never
# advances), which no trained model saw on the GPU; landmarknet follows the GPU code.
# ----------------------------------------------------------------------------------------------

_CTPN = "CTPN (tianzhi0549/CTPN's Caffe, after junhyukoh/caffe-lstm)"


class ForkLstm(CaffeLSTM):
    """CTPN's Lstm: x (T, N, ...) [, clip (T, N)] -> h (T, N, H); blobs W_i, W_h, b."""

    def forward(self, x: torch.Tensor, clip: torch.Tensor | None = None) -> torch.Tensor:
        if clip is None:  # the fork: cont_t = (t > 0)
            steps, batch = int(x.shape[0]), int(x.shape[1])
            clip = (torch.arange(steps, device=x.device) > 0).to(x.dtype)[:, None]
            clip = clip.expand(steps, batch)
        return super().forward(x, clip)


@register("Lstm", family=_FAMILY, origin=_CTPN, cost=LSTM_COST,
          detail=lambda p: f"{p.lstm_param.num_output} hidden",
          emit=copy_module(CaffeLSTM, _caffe_tanh, _states, _step_inputs),
          onnx=OnnxRule(example_input=_example_cont(1), fixed_batch=_TIME_AXIS))
def fork_lstm(spec: LayerSpec) -> Built:
    """CTPN's LSTM over T steps (gates i, f, o, g); the optional clip bottom resets the state."""
    from landmarknet.layers.shape import fork_param

    lp = fork_param(spec, "lstm_param", "CTPN")
    n = len(spec.bottom_shapes)
    if n not in (1, 2) or spec.n_tops != 1:
        raise spec.error(f"needs 1 or 2 bottoms (x [, clip]) and 1 top, got {n} and "
                         f"{spec.n_tops}")
    if not lp.HasField("num_output") or lp.num_output <= 0:
        raise spec.error("lstm_param.num_output must be given and positive")
    x = tuple(spec.bottom_shapes[0])
    if len(x) < 3 or x[0] < 1:
        raise spec.error(f"bottom 0 (x) must be (T, N, ...) with at least 3 axes and T >= 1, "
                         f"got {list(x)}", shape=True)
    if n == 2 and numel(spec.bottom_shapes[1]) != x[0] * x[1]:
        raise spec.error(f"bottom 1 (clip) must hold T x N = {x[0] * x[1]} values, one per "
                         f"step and stream, got {list(spec.bottom_shapes[1])}", shape=True)
    if n == 2 and tuple(spec.bottom_shapes[1]) != (x[0], x[1]):
        raise spec.error(f"bottom 1 (clip) must be (T, N) = ({x[0]}, {x[1]}), got "
                         f"{list(spec.bottom_shapes[1])}", shape=True)
    if lp.clipping_threshold > 0 and spec.phase == "train":
        import warnings
        warnings.warn(f"layer '{spec.name}' (Lstm): lstm_param.clipping_threshold "
                      f"{lp.clipping_threshold:g} clips the fork's gate gradients in training; "
                      "landmarknet does not (use the solver's clip_gradients)", stacklevel=3)
    hidden = int(lp.num_output)
    d_in = numel(x[2:])
    wf = lp.weight_filler if lp.HasField("weight_filler") else None
    bf = lp.bias_filler if lp.HasField("bias_filler") else None
    module = ForkLstm(x[0], d_in, 0, hidden, False, layer=spec.name, type=spec.type)
    # the fork's blob order: input weights, recurrent weights, bias
    blobs = [BlobSlot("W_xc", (4 * hidden, d_in), wf), BlobSlot("W_hc", (4 * hidden, hidden), wf),
             BlobSlot("b_c", (4 * hidden,), bf)]
    return Built(module, blobs)
