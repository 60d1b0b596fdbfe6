"""Neuron layers: one bottom, one top of the same shape, computed elementwise.

Caffe runs most of these in place (``top == bottom``); here every module is out-of-place and the
graph renames in-place blobs. Formulas follow the C++ (``relu_layer.cpp``, ``prelu_layer.cpp``,
``power_layer.cpp`` ...), including the gradients at the kinks (ReLU and PReLU give the negative
slope at exactly 0, BNLL gives 0.5).
"""
from __future__ import annotations

import ast
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, register

from landmarknet.layers.costs import CostRule, first_top
from landmarknet.layers.emitting import EmitCall, EmitContext, helper_source, num
from landmarknet.layers.random_weights import per_blob, uniform
from landmarknet.layers.registry import OnnxRule

# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze; the family's default is one op per output element), box label
# (render), standalone code (emit), ONNX. Each emitter writes the layer as one torch expression.

SATURATING = OnnxRule(saturating=True)
DROPOUT_COST = CostRule(lambda info, training: (0, first_top(info) if training else 0),
                        "ops = elements in TRAIN, 0 in TEST (the identity)")


def relu_detail(p: caffe_pb2.LayerParameter) -> str:
    """'slope 0.1' for a leaky ReLU."""
    slope = p.relu_param.negative_slope
    return f"slope {slope:g}" if slope else ""


def dropout_detail(p: caffe_pb2.LayerParameter) -> str:
    """'ratio 0.5' ('ratio 0.5, test ×0.5' with scale_train: false)."""
    ratio = p.dropout_param.dropout_ratio
    if p.dropout_param.scale_train:
        return f"ratio {ratio:g}"
    return f"ratio {ratio:g}, test ×{1 - ratio:g}"


def _expr(template: str):
    """An emitter for ``top = template.format(x=bottom)``."""
    def emit(ctx: EmitContext, call: EmitCall) -> list[str]:
        return [f"{call.one} = " + template.format(x=call.x)]
    return emit


def emit_relu(ctx: EmitContext, call: EmitCall) -> list[str]:
    """F.relu, or F.leaky_relu with Caffe's negative_slope."""
    if call.sub.negative_slope:
        return [f"{call.one} = F.leaky_relu({call.x}, {num(call.sub.negative_slope)})"]
    return [f"{call.one} = F.relu({call.x})"]


def emit_relu6(ctx: EmitContext, call: EmitCall) -> list[str]:
    """clamp(x, 0, 6); brocolli's variant: leaky below 0, capped at its threshold."""
    sub, x = call.sub, call.x
    if sub.negative_slope:
        return [f"{call.one} = torch.clamp_max(F.leaky_relu({x}, {num(sub.negative_slope)}), "
                f"{num(sub.threshold)})"]
    if sub.threshold != 6.0:
        return [f"{call.one} = torch.clamp({x}, 0.0, {num(sub.threshold)})"]
    return [f"{call.one} = torch.clamp({x}, 0.0, 6.0)"]


def emit_hardsigmoid(ctx: EmitContext, call: EmitCall) -> list[str]:
    """clamp(alpha x + beta, 0, 1)."""
    return [f"{call.one} = torch.clamp({call.x} * {num(call.sub.alpha)} + "
            f"{num(call.sub.beta)}, 0.0, 1.0)"]


helper_source("SharedPReLU", '''
class SharedPReLU(nn.Module):
    """PReLU with one slope for all channels (Caffe's channel_shared: a 0-axis blob)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.25))

    def forward(self, x):
        return F.prelu(x, self.weight.reshape(1))
''')


def emit_prelu(ctx: EmitContext, call: EmitCall) -> list[str]:
    """nn.PReLU, or the SharedPReLU helper for channel_shared."""
    if call.sub.channel_shared:
        ctx.helper("SharedPReLU")
        ctx.add_module(call.module, "SharedPReLU()")
    else:
        ctx.add_module(call.module, f"nn.PReLU({call.sub.weight.shape[0]})")
    return [f"{call.one} = {call.attr}({call.x})"]


def emit_elu(ctx: EmitContext, call: EmitCall) -> list[str]:
    """F.elu with Caffe's alpha."""
    return [f"{call.one} = F.elu({call.x}, {num(call.sub.alpha)})"]


def emit_power(ctx: EmitContext, call: EmitCall) -> list[str]:
    """(shift + scale x) ^ power, written out without the neutral terms."""
    sub, x = call.sub, call.x
    if sub.scale == 0.0 or sub.power == 0.0:
        value = 1.0 if sub.power == 0.0 else float(sub.shift) ** float(sub.power)
        return [f"{call.one} = torch.full_like({x}, {num(value)})"]
    expr = x
    if sub.scale != 1.0:
        expr = f"{expr} * {num(sub.scale)}"
    if sub.shift != 0.0:
        expr = f"{expr} + {num(sub.shift)}"
    if sub.power != 1.0:
        expr = f"torch.pow({expr}, {num(sub.power)})"
    return [f"{call.one} = {expr}"]


def emit_exp(ctx: EmitContext, call: EmitCall) -> list[str]:
    """outer_scale * exp(inner_scale x)."""
    sub, x = call.sub, call.x
    inner = x if sub.inner_scale == 1.0 else f"{x} * {num(sub.inner_scale)}"
    expr = f"torch.exp({inner})"
    if sub.outer_scale != 1.0:
        expr += f" * {num(sub.outer_scale)}"
    return [f"{call.one} = {expr}"]


def emit_log(ctx: EmitContext, call: EmitCall) -> list[str]:
    """base_scale * log(shift + scale x)."""
    sub, x = call.sub, call.x
    expr = x if sub.scale == 1.0 else f"{x} * {num(sub.scale)}"
    if sub.shift != 0.0:
        expr += f" + {num(sub.shift)}"
    expr = f"torch.log({expr})"
    if sub.base_scale != 1.0:
        expr += f" * {num(sub.base_scale)}"
    return [f"{call.one} = {expr}"]


def emit_clip(ctx: EmitContext, call: EmitCall) -> list[str]:
    """torch.clamp."""
    return [f"{call.one} = torch.clamp({call.x}, {num(call.sub.min)}, {num(call.sub.max)})"]


def emit_swish(ctx: EmitContext, call: EmitCall) -> list[str]:
    """x * sigmoid(beta x)."""
    x = call.x
    inner = x if call.sub.beta == 1.0 else f"{x} * {num(call.sub.beta)}"
    return [f"{call.one} = {x} * torch.sigmoid({inner})"]


def emit_threshold(ctx: EmitContext, call: EmitCall) -> list[str]:
    """1 where x > threshold, else 0."""
    return [f"{call.one} = ({call.x} > {num(call.sub.threshold)}).to({call.x}.dtype)"]


def emit_dropout(ctx: EmitContext, call: EmitCall) -> list[str]:
    """F.dropout that follows the module's training flag (without scale_train: a kept value is
    not scaled in training, every value is scaled by 1 - ratio at test)."""
    if call.sub.ratio == 0.0:
        return [f"{call.one} = {call.x}"]
    if call.sub.scale_train:
        return [f"{call.one} = F.dropout({call.x}, {num(call.sub.ratio)}, self.training)"]
    keep = num(1.0 - call.sub.ratio)
    return [f"{call.one} = ({call.x} * torch.empty_like({call.x}).bernoulli_({keep}) "
            f"if self.training else {call.x} * {num(call.sub.test_scale)})"]

def emit_spatial_dropout(ctx: EmitContext, call: EmitCall) -> list[str]:
    """One keep/drop draw per (sample, channel) in training, times 1/(1-p) in both modes."""
    keep, scale = num(1.0 - call.sub.p), num(call.sub.scale)
    return [f"{call.one} = ({call.x} * {call.x}.new_empty({call.x}.shape[:2] + (1, 1))"
            f".bernoulli_({keep}) * {scale} if self.training else {call.x} * {scale})"]


def spatial_dropout_detail(p: caffe_pb2.LayerParameter) -> str:
    """'SpatialDropoutLayer': the Python layer's class."""
    return p.python_param.layer


_FAMILY = "activation"


def _neuron(spec: LayerSpec) -> None:
    """Caffe's NeuronLayer contract: exactly one bottom and one top."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")


class ReLU(nn.Module):
    """``max(x, 0) + negative_slope * min(x, 0)``."""

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.relu(x)
        # Gradient at 0 is negative_slope, as in ReLULayer::Backward_cpu.
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


@register("ReLU", family=_FAMILY, detail=relu_detail, emit=emit_relu)
def relu(spec: LayerSpec) -> Built:
    """Rectifier max(x, 0) + negative_slope * min(x, 0) (leaky when negative_slope != 0)."""
    _neuron(spec)
    return Built(ReLU(spec.param.relu_param.negative_slope))


class ReLU6(nn.Module):
    """``min(max(x, 0) + negative_slope * min(x, 0), threshold)``: 6 and 0 by default."""

    def __init__(self, negative_slope: float = 0.0, threshold: float = 6.0) -> None:
        super().__init__()
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return torch.clamp(x, 0.0, self.threshold)
        return torch.clamp_max(F.leaky_relu(x, self.negative_slope), self.threshold)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, threshold={self.threshold}"


@register("ReLU6", family=_FAMILY, emit=emit_relu6, onnx=SATURATING,
          origin="Caffe forks (MobileNet-v2 ports, brocolli; read by OpenCV DNN)")
def relu6(spec: LayerSpec) -> Built:
    """Clipped rectifier min(max(x, 0) + negative_slope * min(x, 0), threshold), threshold 6."""
    _neuron(spec)
    if spec.param.HasField("relu_param") and spec.param.relu_param.negative_slope != 0:
        raise spec.error("a negative slope in relu_param is ignored by the forks' ReLU6, which "
                         "reads relu6_param: move negative_slope there")
    fields = spec.param.DESCRIPTOR.fields_by_name
    if "relu6_param" not in fields:
        return Built(ReLU6())
    p = spec.param.relu6_param
    return Built(ReLU6(p.negative_slope, p.threshold))


class HardSwish(nn.Module):
    """``x * min(max(x / 6 + 0.5, 0), 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@register("HardSwish", family=_FAMILY, origin="brocolli (inisis/caffe)", onnx=SATURATING,
          emit=_expr("{x} * torch.clamp({x} / 6.0 + 0.5, 0.0, 1.0)"))
def hardswish(spec: LayerSpec) -> Built:
    """x * clip(x / 6 + 0.5, 0, 1) (MobileNet-v3); no parameters."""
    _neuron(spec)
    return Built(HardSwish())


class Mish(nn.Module):
    """``x * tanh(softplus(x))`` (YOLOv4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


@register("Mish", family=_FAMILY, origin="YOLOv4 Caffe ports (read by OpenCV DNN)",
          emit=_expr("torch.nn.functional.mish({x})"))
def mish(spec: LayerSpec) -> Built:
    """x * tanh(ln(1 + e^x)) (YOLOv4's activation); no parameters."""
    _neuron(spec)
    return Built(Mish())


class HardSigmoid(nn.Module):
    """``min(max(alpha * x + beta, 0), 1)``."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x * self.alpha + self.beta, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


@register("HardSigmoid", family=_FAMILY, origin="brocolli (inisis/caffe)", onnx=SATURATING,
          emit=emit_hardsigmoid)
def hardsigmoid(spec: LayerSpec) -> Built:
    """clip(alpha * x + beta, 0, 1) with hardsigmoid_param alpha (0.2) and beta (0.5)."""
    _neuron(spec)
    p = spec.param.hardsigmoid_param
    return Built(HardSigmoid(p.alpha, p.beta))


class PReLU(nn.Module):
    """``max(x, 0) + a_c * min(x, 0)`` with a learned slope per channel (axis 1) or one shared."""

    def __init__(self, channels: int, channel_shared: bool) -> None:
        super().__init__()
        self.channel_shared = channel_shared
        # Caffe's blob: shape (C,), or a 0-axis blob (one value) when channel_shared.
        self.weight = nn.Parameter(torch.empty(() if channel_shared else (channels,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.prelu's gradient is Caffe's: slope where x <= 0, and x * (x <= 0) for the slope.
        return F.prelu(x, self.weight.reshape(1) if self.channel_shared else self.weight)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, channel_shared={self.channel_shared}"


def _default_prelu_filler() -> caffe_pb2.FillerParameter:
    fp = caffe_pb2.FillerParameter()
    fp.type = "constant"
    fp.value = 0.25  # prelu_layer.cpp's default when no filler is given
    return fp


@register("PReLU", family=_FAMILY, emit=emit_prelu,
          random=per_blob(lambda i, shape, gen: uniform(shape, 0.0, 0.3, gen)))  # small slopes
def prelu(spec: LayerSpec) -> Built:
    """Parametric ReLU: learned negative slope per channel (C,) or shared (); default 0.25."""
    _neuron(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) < 2:
        raise spec.error(f"needs a bottom with at least 2 axes, got shape {shape}", shape=True)
    pp = spec.param.prelu_param
    module = PReLU(shape[1], pp.channel_shared)
    filler = pp.filler if pp.HasField("filler") else _default_prelu_filler()
    return Built(module, [BlobSlot("weight", tuple(module.weight.shape), filler)])


class ELU(nn.Module):
    """``x`` if x > 0 else ``alpha * (exp(x) - 1)``."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@register("ELU", family=_FAMILY, emit=emit_elu)
def elu(spec: LayerSpec) -> Built:
    """Exponential linear unit: x if x > 0 else alpha * (exp(x) - 1)."""
    _neuron(spec)
    return Built(ELU(spec.param.elu_param.alpha))


class Sigmoid(nn.Module):
    """``1 / (1 + exp(-x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Caffe evaluates 0.5*tanh(0.5x)+0.5 in double and rounds to float: the correctly
        # rounded logistic, which torch.sigmoid gives in float32 to within an ulp.
        return torch.sigmoid(x)


@register("Sigmoid", family=_FAMILY, emit=_expr("torch.sigmoid({x})"), onnx=SATURATING)
def sigmoid(spec: LayerSpec) -> Built:
    """Logistic function 1 / (1 + exp(-x))."""
    _neuron(spec)
    return Built(Sigmoid())


class TanH(nn.Module):
    """Hyperbolic tangent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@register("TanH", family=_FAMILY, emit=_expr("torch.tanh({x})"), onnx=SATURATING)
def tanh(spec: LayerSpec) -> Built:
    """Hyperbolic tangent."""
    _neuron(spec)
    return Built(TanH())


class AbsVal(nn.Module):
    """``|x|`` (gradient sign(x), 0 at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register("AbsVal", family=_FAMILY, emit=_expr("torch.abs({x})"))
def absval(spec: LayerSpec) -> Built:
    """Absolute value |x|."""
    _neuron(spec)
    return Built(AbsVal())


class BNLL(nn.Module):
    """``log(1 + exp(x))``, computed as Caffe does: ``x + log(1 + exp(-x))`` for x > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # softplus is log1p(exp(x)) below its threshold and x above it; both agree with
        # Caffe's two-branch formula to float precision, and its gradient is sigmoid(x)
        # everywhere (0.5 at 0, as BNLLLayer::Backward_cpu gives).
        return F.softplus(x, beta=1.0, threshold=20.0)


@register("BNLL", family=_FAMILY, emit=_expr("F.softplus({x}, beta=1.0, threshold=20.0)"))
def bnll(spec: LayerSpec) -> Built:
    """Binomial normal log likelihood log(1 + exp(x)), computed stably."""
    _neuron(spec)
    return Built(BNLL())


class Power(nn.Module):
    """``(shift + scale * x) ** power``."""

    def __init__(self, power: float, scale: float, shift: float) -> None:
        super().__init__()
        self.power, self.scale, self.shift = float(power), float(scale), float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 0.0 or self.power == 0.0:
            # power_layer.cpp: a constant, whatever x holds (even inf/nan).
            value = 1.0 if self.power == 0.0 else math.pow(self.shift, self.power)
            return torch.full_like(x, value)
        y = x * self.scale if self.scale != 1.0 else x
        if self.shift != 0.0:
            y = y + self.shift
        return y if self.power == 1.0 else torch.pow(y, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


@register("Power", family=_FAMILY, emit=emit_power)
def power(spec: LayerSpec) -> Built:
    """(shift + scale * x) ^ power."""
    _neuron(spec)
    p = spec.param.power_param
    return Built(Power(p.power, p.scale, p.shift))


class Exp(nn.Module):
    """``base ** (shift + scale * x)`` as ``outer * exp(inner * x)`` (exp_layer.cpp)."""

    def __init__(self, base: float, scale: float, shift: float) -> None:
        super().__init__()
        log_base = 1.0 if base == -1 else math.log(base)
        self.inner_scale = log_base * scale
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else math.pow(base, shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x * self.inner_scale if self.inner_scale != 1.0 else x)
        return y * self.outer_scale if self.outer_scale != 1.0 else y

    def extra_repr(self) -> str:
        return f"inner_scale={self.inner_scale}, outer_scale={self.outer_scale}"


@register("Exp", family=_FAMILY, emit=emit_exp)
def exp(spec: LayerSpec) -> Built:
    """base ^ (shift + scale * x); base -1 (the default) means e."""
    _neuron(spec)
    p = spec.param.exp_param
    if p.base != -1 and p.base <= 0:
        raise spec.error(f"base must be -1 (e) or positive, got {p.base}")
    return Built(Exp(p.base, p.scale, p.shift))


class Log(nn.Module):
    """``log_base(shift + scale * x)`` (log_layer.cpp)."""

    def __init__(self, base: float, scale: float, shift: float) -> None:
        super().__init__()
        self.base_scale = 1.0 if base == -1 else 1.0 / math.log(base)
        self.scale, self.shift = float(scale), float(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale if self.scale != 1.0 else x
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y * self.base_scale if self.base_scale != 1.0 else y

    def extra_repr(self) -> str:
        return f"base_scale={self.base_scale}, scale={self.scale}, shift={self.shift}"


@register("Log", family=_FAMILY, emit=emit_log)
def log(spec: LayerSpec) -> Built:
    """log_base(shift + scale * x); base -1 (the default) means e."""
    _neuron(spec)
    p = spec.param.log_param
    if p.base != -1 and (p.base <= 0 or p.base == 1):
        raise spec.error(f"base must be -1 (e) or positive and not 1, got {p.base}")
    return Built(Log(p.base, p.scale, p.shift))


class Clip(nn.Module):
    """``min(max(x, min), max)``; gradient 1 where min <= x <= max (clip_layer.cpp)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.min, self.max = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min, self.max)

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


@register("Clip", family=_FAMILY, emit=emit_clip, onnx=SATURATING)
def clip(spec: LayerSpec) -> Built:
    """Clamp to [min, max] (both required)."""
    _neuron(spec)
    cp = spec.param.clip_param
    if not spec.param.HasField("clip_param") or not (cp.HasField("min") and cp.HasField("max")):
        raise spec.error("clip_param needs both min and max")
    if cp.min > cp.max:
        raise spec.error(f"min ({cp.min}) is larger than max ({cp.max})")
    return Built(Clip(cp.min, cp.max))


class Swish(nn.Module):
    """``x * sigmoid(beta * x)``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.beta if self.beta != 1.0 else x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register("Swish", family=_FAMILY, emit=emit_swish)
def swish(spec: LayerSpec) -> Built:
    """x * sigmoid(beta * x)."""
    _neuron(spec)
    return Built(Swish(spec.param.swish_param.beta))


class Threshold(nn.Module):
    """1 where ``x > threshold`` (strictly), else 0; no gradient (Caffe has no backward)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


@register("Threshold", family=_FAMILY, emit=emit_threshold, onnx=SATURATING)
def threshold(spec: LayerSpec) -> Built:
    """Step function: 1 where x > threshold, else 0."""
    _neuron(spec)
    return Built(Threshold(spec.param.threshold_param.threshold))


def _test_scale(ratio: float) -> float:
    """The fork's test factor 1 / scale_ with its float32 scale_ = 1 / (1 - ratio): rounded as
    Caffe rounds it (it can differ from float32(1 - ratio) in the last bit)."""
    scale = float(np.float32(1.0 / (1.0 - ratio)))
    return float(np.float32(1.0 / scale))


class Dropout(nn.Module):
    """Inverted dropout: in training keep with p = 1 - ratio and scale by 1/(1-ratio); the
    identity at test. ``scale_train=False`` (py-faster-rcnn's fork): kept values are not scaled
    in training, and at test every value is multiplied by 1 - ratio."""

    def __init__(self, ratio: float, scale_train: bool = True) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.scale_train = bool(scale_train)
        # a float32 value, so that x * test_scale is the fork's float32 product
        self.test_scale = _test_scale(self.ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ratio == 0.0:
            return x
        if self.scale_train:
            # Caffe's TEST phase: the identity
            return F.dropout(x, self.ratio, training=True) if self.training else x
        if self.training:  # kept values as they are
            return x * torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        return x * self.test_scale

    def extra_repr(self) -> str:
        extra = "" if self.scale_train else ", scale_train=False"
        return f"dropout_ratio={self.ratio}{extra}"


@register("Dropout", family=_FAMILY, cost=DROPOUT_COST, detail=dropout_detail,
          emit=emit_dropout, onnx=OnnxRule(moves_values=True))
def dropout(spec: LayerSpec) -> Built:
    """Dropout: identity in eval(); in train() zeroes with dropout_ratio, scales by 1/(1-ratio)."""
    _neuron(spec)
    ratio = spec.param.dropout_param.dropout_ratio
    if not 0.0 <= ratio < 1.0:
        raise spec.error(f"dropout_ratio must be in [0, 1), got {ratio}")
    return Built(Dropout(ratio, spec.param.dropout_param.scale_train))


# ---------------------------------------------------------------------------------------------
# ENet's SpatialDropoutLayer (a Caffe Python layer, TimoSaemann/caffe-enet python/
# spatial_dropout.py). Its param_str is a Python dict literal, e.g. {'phase': 'TEST', 'p': '0.01'};
# the layer reads its phase from there, not from the net. TRAIN: per sample, each channel is
# kept with probability 1 - p (one draw for the whole H x W map) and kept maps are multiplied by
# 1/(1-p). Anything else (TEST): every value is multiplied by 1/(1-p) -- it scales up at test as
# well, so ENet's deploy nets are not the identity there. numpy multiplies the float32 blob by
# the Python float, i.e. by float32(1/(1-p)).

_ENET_ORIGIN = "ENet (TimoSaemann/ENet; caffe-enet python/spatial_dropout.py)"
_SPATIAL_KEYS = ("phase", "p")


def parse_spatial_dropout_param_str(spec: LayerSpec) -> tuple[str, float]:
    """(phase, p) from the layer's param_str. The source eval()s it; here it is read with
    ast.literal_eval, which accepts literals only, so nothing in a prototxt runs as code."""
    text = spec.param.python_param.param_str.strip()
    try:
        params = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise spec.error(f"python_param.param_str {text[:80]!r} is not a Python dict literal "
                         "like {'phase': 'TEST', 'p': '0.01'}") from None
    if not isinstance(params, dict):
        raise spec.error(f"python_param.param_str must be a dict like {{'phase': 'TEST', 'p': "
                         f"'0.01'}}, got {text[:80]!r}")
    missing = [k for k in _SPATIAL_KEYS if k not in params]
    unknown = sorted(repr(k) for k in params if k not in _SPATIAL_KEYS)
    if missing or unknown:
        raise spec.error("python_param.param_str of spatial_dropout.SpatialDropoutLayer needs "
                         "exactly the keys 'phase' and 'p'"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    phase, raw = params["phase"], params["p"]
    if phase not in ("TRAIN", "TEST"):
        # the source drops channels only for exactly 'TRAIN' and scales for anything else
        raise spec.error(f"python_param.param_str: 'phase' must be 'TRAIN' or 'TEST', got "
                         f"{phase!r}")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise spec.error(f"python_param.param_str: 'p' must be a number or a string of one, "
                         f"got {raw!r}")
    try:
        p = float(raw)
    except ValueError:
        raise spec.error(f"python_param.param_str: 'p' is {raw!r}, not a number") from None
    if not (math.isfinite(p) and 0.0 < p < 1.0):
        raise spec.error(f"python_param.param_str: 'p' must lie strictly between 0 and 1 (the "
                         f"layer refuses others), got {raw!r}")
    return phase, p


class SpatialDropout(nn.Module):
    """Channel-wise dropout: in train(), each (sample, channel) map is kept with 1 - p and kept
    maps are scaled by 1/(1-p); in eval(), every value is scaled by 1/(1-p) (as the layer's
    TEST phase does; not the identity)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        # the float32 factor that numpy applies to the float32 blob
        self.scale = float(np.float32(1.0 / (1.0 - self.p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * self.scale
        keep = x.new_empty(x.shape[:2] + (1,) * (x.dim() - 2)).bernoulli_(1.0 - self.p)
        return x * keep * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


@register("Python:spatial_dropout.SpatialDropoutLayer", family=_FAMILY, origin=_ENET_ORIGIN,
          detail=spatial_dropout_detail, emit=emit_spatial_dropout,
          onnx=OnnxRule(moves_values=True))
def spatial_dropout(spec: LayerSpec) -> Built:
    """ENet's channel-wise dropout; times 1/(1-p) in eval() too (its TEST phase)."""
    _neuron(spec)
    phase, p = parse_spatial_dropout_param_str(spec)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a (N, C, H, W) bottom (the layer indexes [n, c, :, :]), got "
                         f"{list(shape)}", shape=True)
    if phase.lower() != spec.phase:
        warnings.warn(f"layer '{spec.name}': param_str says phase {phase}, the net is built "
                      f"for {spec.phase.upper()}. The Python layer follows its param_str "
                      "(TRAIN drops channels at random, TEST scales by 1/(1-p)); landmarknet "
                      "follows the module's train()/eval() mode like every dropout layer",
                      stacklevel=2)
    return Built(SpatialDropout(p))

