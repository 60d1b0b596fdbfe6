"""Normalisation layers: BatchNorm, Scale, Bias, LRN, MVN and SSD's Normalize.

BatchNorm keeps Caffe's three statistics blobs (running sums of the mean and the variance and
their common scale factor) as buffers, never as learnable parameters; its affine part is the
Scale layer that follows it in Caffe nets.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.layers.common import canonical_axis
from landmarknet.layers.costs import AFFINE, PER_OUTPUT, CostRule, first_top
from landmarknet.layers.emitting import (EmitCall, EmitContext, helper_source, num,
                                         shape_or_none, tuple_text)
from landmarknet.layers.random_weights import he_or_small, per_blob, uniform
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, register

# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze), box label (render), standalone code (emit)

LRN_COST = CostRule(
    lambda info, training: (first_top(info) * int(info.node.param.lrn_param.local_size),
                            first_top(info)),
    "MACs = elements x local_size; ops = elements")


def lrn_detail(p: caffe_pb2.LayerParameter) -> str:
    """'size 5'."""
    return f"size {p.lrn_param.local_size}"


helper_source("CaffeBatchNorm", '''
class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm (no affine part): buffers mean, variance and scale_factor s hold
    Caffe's blobs; the statistics are mean / s and variance / s. use_global_stats None follows
    train()/eval(); with batch statistics the blobs are updated as Caffe does."""

    def __init__(self, channels, eps=1e-5, moving_average_fraction=0.999,
                 use_global_stats=None):
        super().__init__()
        self.eps, self.fraction = eps, moving_average_fraction
        self.use_global_stats = use_global_stats
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def forward(self, x):
        xs = x.unsqueeze(1) if x.dim() == 1 else x
        view = (1, -1) + (1,) * (xs.dim() - 2)
        use_global = (not self.training) if self.use_global_stats is None else self.use_global_stats
        if use_global:
            s = self.scale_factor
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean, var = self.mean * factor, self.variance * factor
        else:
            dims = [0] + list(range(2, xs.dim()))
            mean = xs.mean(dim=dims)
            var = (xs - mean.view(view)).square().mean(dim=dims)
            m = xs.numel() // max(xs.shape[1], 1)
            with torch.no_grad():
                self.scale_factor.mul_(self.fraction).add_(1.0)
                self.mean.mul_(self.fraction).add_(mean.detach())
                unbiased = m / (m - 1) if m > 1 else 1.0
                self.variance.mul_(self.fraction).add_(var.detach(), alpha=unbiased)
        y = (xs - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return y.view(x.shape)
''')
helper_source("Scale", '''
def _broadcast(t, axis, ndim):
    """View t (shape x.shape[axis:axis+k]) so that it broadcasts against an ndim-D tensor."""
    return t.reshape((1,) * axis + tuple(t.shape) + (1,) * (ndim - axis - t.dim()))


class Scale(nn.Module):
    """Caffe's Scale: x * weight (+ bias), broadcast from axis; weight may be bottom[1]."""

    def __init__(self, axis, weight_shape, bias_shape):
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(weight_shape)) if weight_shape is not None else None
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x, s=None):
        s = self.weight if s is None else s
        y = x * _broadcast(s, self.axis if s.dim() else 0, x.dim())
        if self.bias is not None:
            y = y + _broadcast(self.bias, self.axis if self.bias.dim() else 0, x.dim())
        return y
''')
helper_source("Bias", '''
class Bias(nn.Module):
    """Caffe's Bias: x + bias broadcast from axis; the bias may be bottom[1]."""

    def __init__(self, axis, bias_shape):
        super().__init__()
        self.axis = axis
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x, b=None):
        b = self.bias if b is None else b
        return x + _broadcast(b, self.axis if b.dim() else 0, x.dim())
''', deps=("Scale",))
helper_source("lrn", '''
def lrn(x, size, alpha, beta, k, within_channel=False):
    """Caffe's LRN. ACROSS_CHANNELS: x * (k + alpha/n * sum of n squares)^-beta;
    WITHIN_CHANNEL: x * (1 + alpha * mean of the n x n squares, zero padded)^-beta."""
    pre = (size - 1) // 2
    sq = x * x
    if within_channel:
        avg = F.avg_pool2d(sq, size, 1, pre, count_include_pad=True)
        return x * (1.0 + alpha * avg).pow(-beta)
    padded = F.pad(sq.unsqueeze(1), (0, 0, 0, 0, pre, pre))
    avg = F.avg_pool3d(padded, (size, 1, 1), stride=1).squeeze(1)
    return x * (k + alpha * avg).pow(-beta)
''')
helper_source("mvn", '''
def mvn(x, normalize_variance, across_channels, eps):
    """Caffe's MVN: subtract the mean (and divide by std + eps) per channel or per sample."""
    dims = list(range(1 if across_channels else 2, x.dim()))
    y = x - x.mean(dim=dims, keepdim=True) if dims else x - x
    if normalize_variance:
        var = y.square().mean(dim=dims, keepdim=True) if dims else y.square()
        y = y / (torch.sqrt(var) + eps)
    return y
''')
helper_source("Normalize", '''
class Normalize(nn.Module):
    """SSD's L2 Normalize: x / sqrt(sum x^2 + eps) * weight (one value or one per channel)."""

    def __init__(self, weight_shape, across_spatial, eps):
        super().__init__()
        self.across_spatial, self.eps = across_spatial, eps
        self.weight = nn.Parameter(torch.ones(weight_shape))

    def forward(self, x):
        sq = x * x
        if self.across_spatial:
            total = sq.flatten(1).sum(dim=1).view((-1,) + (1,) * (x.dim() - 1))
        else:
            total = sq.sum(dim=1, keepdim=True)
        y = x / torch.sqrt(total + self.eps)
        if self.weight.dim() == 0:
            return y * self.weight
        return y * self.weight.view((1, -1) + (1,) * (x.dim() - 2))
''')


def emit_batch_norm(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The CaffeBatchNorm helper module (Caffe's three statistics blobs as buffers)."""
    sub = call.sub
    ctx.helper("CaffeBatchNorm")
    ctx.add_module(call.module, f"CaffeBatchNorm({sub.channels}, eps={num(sub.eps)}, "
                                f"moving_average_fraction={num(sub.moving_average_fraction)}, "
                                f"use_global_stats={sub.use_global_stats})")
    return [f"{call.one} = {call.attr}({call.x})"]


def emit_scale(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The Scale helper module (weight may be bottom 1)."""
    sub = call.sub
    ctx.helper("Scale")
    ws = None if sub.weight is None else tuple(sub.weight.shape)
    bs = None if sub.bias is None else tuple(sub.bias.shape)
    ctx.add_module(call.module, f"Scale({sub.axis}, {shape_or_none(ws)}, {shape_or_none(bs)})")
    return [f"{call.one} = {call.attr}({', '.join(call.ins)})"]


def emit_bias(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The Bias helper module (the bias may be bottom 1)."""
    sub = call.sub
    ctx.helper("Bias")
    bs = None if sub.bias is None else tuple(sub.bias.shape)
    ctx.add_module(call.module, f"Bias({sub.axis}, {shape_or_none(bs)})")
    return [f"{call.one} = {call.attr}({', '.join(call.ins)})"]


def emit_lrn(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The lrn helper function."""
    sub = call.sub
    ctx.helper("lrn")
    return [f"{call.one} = lrn({call.x}, {sub.size}, {num(sub.alpha)}, {num(sub.beta)}, "
            f"{num(sub.k)}, within_channel={bool(sub.within)})"]


def emit_mvn(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The mvn helper function."""
    sub = call.sub
    ctx.helper("mvn")
    return [f"{call.one} = mvn({call.x}, {bool(sub.normalize_variance)}, "
            f"{bool(sub.across_channels)}, {num(sub.eps)})"]


def emit_normalize(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The Normalize helper module."""
    sub = call.sub
    ctx.helper("Normalize")
    ctx.add_module(call.module, f"Normalize({tuple_text(tuple(sub.weight.shape))}, "
                                f"across_spatial={bool(sub.across_spatial)}, eps={num(sub.eps)})")
    return [f"{call.one} = {call.attr}({call.x})"]


def _constant_filler(value: float) -> caffe_pb2.FillerParameter:
    fp = caffe_pb2.FillerParameter()
    fp.type = "constant"
    fp.value = value
    return fp


def _one_top(spec: LayerSpec) -> None:
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------

class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm: ``(x - mean) / sqrt(var + eps)`` per channel (axis 1), no affine.

    Buffers ``mean`` and ``variance`` (C,) and ``scale_factor`` (1,) hold Caffe's blobs; the
    statistics are ``mean / s`` and ``variance / s`` (0 when s == 0). ``use_global_stats``:
    True/False as the prototxt says, or None (unset) to follow the module's mode: batch
    statistics in ``train()``, stored ones in ``eval()``. Whenever batch statistics are used the
    blobs are updated as Caffe does: ``s = f*s + 1``, ``mean = f*mean + batch_mean``,
    ``variance = f*variance + m/(m-1) * batch_var`` (m = elements per channel).
    """

    def __init__(self, channels: int, eps: float, moving_average_fraction: float,
                 use_global_stats: bool | None) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.moving_average_fraction = moving_average_fraction
        self.use_global_stats = use_global_stats
        self.register_buffer("mean", torch.empty(channels))
        self.register_buffer("variance", torch.empty(channels))
        self.register_buffer("scale_factor", torch.empty(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        use_global = self.use_global_stats
        if use_global is None:
            use_global = not self.training
        if use_global:
            s = self.scale_factor.to(x.dtype)
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean = self.mean.to(x.dtype) * factor
            var = self.variance.to(x.dtype) * factor
        elif torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            # Exported, the fused kernel below becomes an inference BatchNormalization that
            # reads running statistics; as reductions the graph computes this batch's, which is
            # what the layer does. (An ONNX model keeps no state: nothing is accumulated.)
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = ((x - mean.view(view)) ** 2).mean(dim=dims)
        elif x.numel() // max(x.shape[1], 1) > 1:
            # Batch statistics through PyTorch's fused kernel (normalises with the biased
            # variance, as Caffe does): one pass forward and backward instead of the half dozen
            # of the formula (measured: benchmarks/bench_train_bn.py). With momentum 1 its
            # running buffers receive exactly this batch's mean and unbiased variance,
            # m/(m-1) * biased: the terms Caffe adds to its blobs.
            batch_mean = torch.zeros_like(self.mean)
            batch_var = torch.zeros_like(self.variance)
            y = F.batch_norm(x, batch_mean, batch_var, None, None, training=True, momentum=1.0,
                             eps=self.eps)
            self._accumulate(batch_mean, batch_var)
            return y
        else:  # one element per channel (N = 1 on a 1x1 map): the (zero) variance goes in
            # uncorrected, since batch_norm_layer.cpp's m/(m-1) factor is 1 when m == 1.
            mean = x.reshape(x.shape[0], x.shape[1], -1).mean(dim=(0, 2))
            var = torch.zeros_like(mean)
            self._accumulate(mean, var)
        y = (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return y

    @torch.no_grad()
    def _accumulate(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """Caffe's update: s = f*s + 1, mean += batch mean, variance += m/(m-1) * batch var
        (after both are scaled by f)."""
        f = self.moving_average_fraction
        self.scale_factor.mul_(f).add_(1.0)
        self.mean.mul_(f).add_(mean.detach().to(self.mean.dtype))
        self.variance.mul_(f).add_(unbiased_var.detach().to(self.variance.dtype))

    def extra_repr(self) -> str:
        g = {None: "by mode", True: "yes", False: "no"}[self.use_global_stats]
        return (f"{self.channels}, eps={self.eps}, "
                f"moving_average_fraction={self.moving_average_fraction}, global_stats={g}")


def _random_batch_norm(shapes, gen: torch.Generator) -> list:
    """Mean ~N(0, 0.1), variance in [0.5, 1.5), both stored multiplied by a scale factor in
    [0.5, 1.5) (blob 2), so that a reader ignoring the factor gets the statistics wrong. Each
    blob draws all three candidates (the seeds' weights stay what they were)."""
    def one(i, shape, g):
        return [torch.randn(shape, generator=g) * 0.1, uniform(shape, 0.5, 1.5, g),
                torch.full(shape, 0.5 + torch.rand((), generator=g).item())][i]
    values = per_blob(one)(shapes, gen)
    if len(values) == 3 and all(v is not None for v in values):
        factor = float(values[2].reshape(-1)[0])
        values[0], values[1] = values[0] * factor, values[1] * factor
    return values


def _random_scale(i: int, shape, gen: torch.Generator) -> torch.Tensor:
    """Scales in [0.5, 1.5) (blob 0); a bias as the default rule."""
    return uniform(shape, 0.5, 1.5, gen) if i == 0 else he_or_small(shape, gen)


@register("BatchNorm", family="norm", cost=AFFINE, emit=emit_batch_norm,
          random=_random_batch_norm)
def batch_norm(spec: LayerSpec) -> Built:
    """Normalise per channel with Caffe's 3 blobs (mean, var, scale factor s: stats = blob / s)."""
    spec.expect_bottoms(1)
    _one_top(spec)
    bp = spec.param.batch_norm_param
    learned = [(i, ps.lr_mult) for i, ps in enumerate(spec.param.param[:3])
               if ps.HasField("lr_mult") and ps.lr_mult != 0]
    if learned:
        i, mult = learned[0]
        what = (f"param {i} has lr_mult {mult}: BatchNorm statistics cannot be learned (BVLC "
                "Caffe requires lr_mult 0)")
        if spec.phase == "train":
            raise spec.error(what + "; put the learnable affine part in a following Scale layer")
        # Deploy files of nets trained with older or SSD-based Caffe carry it (ShuffleNet's,
        # MobileNet-SSD's); those forks and OpenCV run them, and at TEST nothing is learned.
        # One message for all such layers (the warnings module shows a repeated one once).
        warnings.warn("BatchNorm layers with lr_mult != 0 on their statistics (BVLC Caffe "
                      "refuses them): ignored, since the TEST phase learns nothing (the forks "
                      "and OpenCV accept them too)")
    kyle_only = [f for f in ("weight_filler", "bias_filler", "use_alpha_beta", "do_all_reduce")
                 if bp.HasField(f)]
    if kyle_only:
        # brocolli's schema put BatchNormKyle's fields in BatchNormParameter; BatchNorm itself
        # reads none of them (there, as here).
        warnings.warn(f"layer '{spec.name}' (BatchNorm): batch_norm_param "
                      f"{', '.join(kyle_only)} ignored: only BatchNormKyle reads them (did you "
                      "mean type: \"BatchNormKyle\"?)", stacklevel=2)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) < 2:
        # LayerSetUp would take one channel, but Reshape then reads shape(1) and aborts.
        raise spec.error(f"needs a bottom of 2 or more axes (N, C, ...), got shape {shape}; "
                         "Caffe refuses fewer", shape=True)
    channels = shape[1]
    if bp.eps <= 0:
        raise spec.error(f"eps must be positive, got {bp.eps}")
    use_global = bp.use_global_stats if bp.HasField("use_global_stats") else None
    module = CaffeBatchNorm(channels, float(bp.eps), float(bp.moving_average_fraction),
                            use_global)
    blobs = [BlobSlot("mean", (channels,), None, learnable=False),
             BlobSlot("variance", (channels,), None, learnable=False),
             BlobSlot("scale_factor", (1,), None, learnable=False)]
    return Built(module, blobs)


# ---------------------------------------------------------------------------------------------
# Scale and Bias
# ---------------------------------------------------------------------------------------------

def _param_shape(spec: LayerSpec, shape: tuple[int, ...], axis: int, num_axes: int
                 ) -> tuple[int, tuple[int, ...]]:
    """(canonical axis, blob shape) of a Scale/Bias blob: ``shape[axis:axis+num_axes]``."""
    axis = canonical_axis(axis, len(shape), spec, "axis")
    if num_axes < -1:
        raise spec.error(f"num_axes must be non-negative or -1, got {num_axes}")
    if num_axes >= 0 and axis + num_axes > len(shape):
        raise spec.error(f"axis {axis} with num_axes {num_axes} extends past the bottom's "
                         f"{len(shape)} axes", shape=True)
    end = len(shape) if num_axes == -1 else axis + num_axes
    return axis, tuple(shape[axis:end])


def _second_bottom_axis(spec: LayerSpec, shape, other, axis: int, what: str) -> int:
    """Axis from which bottom[1] broadcasts onto bottom[0]; checks that its shape fits."""
    other = tuple(other)
    if len(other) == 0:
        return 0
    axis = canonical_axis(axis, len(shape), spec, "axis")
    if tuple(shape[axis:axis + len(other)]) != other:
        raise spec.error(f"the {what} bottom's shape {other} does not match bottom[0]'s shape "
                         f"{tuple(shape)} from axis {axis}", shape=True)
    return axis


def _broadcast(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """View a parameter of shape x.shape[axis:axis+k] so that it broadcasts against x."""
    return t.reshape((1,) * axis + tuple(t.shape) + (1,) * (ndim - axis - t.dim()))


class CaffeScale(nn.Module):
    """``x * scale (+ bias)``, scale broadcast from ``axis``: a learned blob or bottom[1]."""

    def __init__(self, axis: int, scale_shape: tuple[int, ...] | None,
                 bias_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.axis = axis
        if scale_shape is not None:
            self.weight = nn.Parameter(torch.empty(scale_shape))
        else:
            self.register_parameter("weight", None)
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.empty(bias_shape))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        s = self.weight if s is None else s
        y = x * _broadcast(s, self.axis if s.dim() else 0, x.dim())
        if self.bias is not None:
            y = y + _broadcast(self.bias, self.axis if self.bias.dim() else 0, x.dim())
        return y

    def extra_repr(self) -> str:
        w = "bottom[1]" if self.weight is None else tuple(self.weight.shape)
        b = None if self.bias is None else tuple(self.bias.shape)
        return f"axis={self.axis}, scale={w}, bias={b}"


@register("Scale", family="norm", cost=AFFINE, emit=emit_scale, random=per_blob(_random_scale))
def scale(spec: LayerSpec) -> Built:
    """Multiply by a learned blob (or by bottom[1]) broadcast from axis; optional bias term."""
    spec.expect_bottoms(1, 2)
    _one_top(spec)
    sp = spec.param.scale_param
    shape = tuple(spec.bottom_shapes[0])
    blobs: list[BlobSlot] = []
    if len(spec.bottom_shapes) == 1:
        axis, scale_shape = _param_shape(spec, shape, sp.axis, sp.num_axes)
        # ScaleLayer::LayerSetUp: without a filler the scale starts at 1 (identity).
        filler = sp.filler if sp.HasField("filler") else _constant_filler(1.0)
        blobs.append(BlobSlot("weight", scale_shape, filler))
        bias_shape = scale_shape
    else:
        other = tuple(spec.bottom_shapes[1])
        axis = _second_bottom_axis(spec, shape, other, sp.axis, "scale")
        scale_shape = None
        # Caffe's internal Bias layer then gets num_axes = bottom[1]'s axes.
        _, bias_shape = _param_shape(spec, shape, sp.axis, len(other))
    if sp.bias_term:
        blobs.append(BlobSlot("bias", bias_shape,
                              sp.bias_filler if sp.HasField("bias_filler") else None))
    else:
        bias_shape = None
    return Built(CaffeScale(axis, scale_shape, bias_shape), blobs)


class CaffeBias(nn.Module):
    """``x + bias``, broadcast from ``axis``: a learned blob or bottom[1]."""

    def __init__(self, axis: int, bias_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.axis = axis
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.empty(bias_shape))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        b = self.bias if b is None else b
        return x + _broadcast(b, self.axis if b.dim() else 0, x.dim())

    def extra_repr(self) -> str:
        b = "bottom[1]" if self.bias is None else tuple(self.bias.shape)
        return f"axis={self.axis}, bias={b}"


@register("Bias", family="norm", cost=PER_OUTPUT, emit=emit_bias)
def bias(spec: LayerSpec) -> Built:
    """Add a learned blob (or bottom[1]) broadcast from axis over num_axes axes."""
    spec.expect_bottoms(1, 2)
    _one_top(spec)
    bp = spec.param.bias_param
    shape = tuple(spec.bottom_shapes[0])
    if len(spec.bottom_shapes) == 1:
        axis, bias_shape = _param_shape(spec, shape, bp.axis, bp.num_axes)
        blobs = [BlobSlot("bias", bias_shape, bp.filler if bp.HasField("filler") else None)]
        return Built(CaffeBias(axis, bias_shape), blobs)
    axis = _second_bottom_axis(spec, shape, spec.bottom_shapes[1], bp.axis, "bias")
    return Built(CaffeBias(axis, None), [])


# ---------------------------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------------------------

class CaffeLRN(nn.Module):
    """Caffe's LRN.

    ACROSS_CHANNELS: ``x * (k + alpha/n * sum_{n channels} x^2)^-beta`` (zero outside).
    WITHIN_CHANNEL: ``x * (1 + alpha * avg_{n x n, zero padded, padding counted} x^2)^-beta``,
    as lrn_layer.cpp builds it from Power/Pooling(AVE, pad (n-1)/2)/Power/Eltwise: no ``k``.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, within: bool) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.within = size, alpha, beta, k, within

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = (self.size - 1) // 2
        sq = x * x
        if self.within:
            # Every window is exactly size x size after Caffe's clipping to H + pad, so the
            # divisor is size^2 everywhere: count_include_pad with pad <= kernel / 2.
            avg = F.avg_pool2d(sq, self.size, 1, pre, count_include_pad=True)
            return x * (1.0 + self.alpha * avg).pow(-self.beta)
        padded = F.pad(sq.unsqueeze(1), (0, 0, 0, 0, pre, pre))
        avg = F.avg_pool3d(padded, (self.size, 1, 1), stride=1).squeeze(1)
        return x * (self.k + self.alpha * avg).pow(-self.beta)

    def extra_repr(self) -> str:
        region = "WITHIN_CHANNEL" if self.within else "ACROSS_CHANNELS"
        return (f"{region}, local_size={self.size}, alpha={self.alpha}, beta={self.beta}, "
                f"k={self.k}")


@register("LRN", family="norm", cost=LRN_COST, detail=lrn_detail, emit=emit_lrn)
def lrn(spec: LayerSpec) -> Built:
    """Local response normalisation, ACROSS_CHANNELS or WITHIN_CHANNEL exactly as Caffe's C++."""
    spec.expect_bottoms(1)
    _one_top(spec)
    lp = spec.param.lrn_param
    if lp.local_size % 2 != 1:
        raise spec.error(f"local_size must be odd (Caffe's LRN), got {lp.local_size}")
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {shape}", shape=True)
    if lp.norm_region not in (0, 1):
        raise spec.error(f"unknown norm_region {lp.norm_region}")
    module = CaffeLRN(int(lp.local_size), float(lp.alpha), float(lp.beta), float(lp.k),
                      lp.norm_region == 1)
    return Built(module, [])


# ---------------------------------------------------------------------------------------------
# MVN
# ---------------------------------------------------------------------------------------------

class CaffeMVN(nn.Module):
    """``x - mean`` (and ``/ (std + eps)``: eps added to the standard deviation, as Caffe)."""

    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float) -> None:
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = (normalize_variance,
                                                                   across_channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = 1 if self.across_channels else 2
        dims = list(range(start, x.dim()))
        if not dims:  # (N, C) per channel: one value per group
            y = x - x
        else:
            y = x - x.mean(dim=dims, keepdim=True)
        if self.normalize_variance:
            var = y.square().mean(dim=dims, keepdim=True) if dims else y.square()
            y = y / (torch.sqrt(var) + self.eps)
        return y

    def extra_repr(self) -> str:
        return (f"normalize_variance={self.normalize_variance}, "
                f"across_channels={self.across_channels}, eps={self.eps}")


@register("MVN", family="norm", cost=PER_OUTPUT, emit=emit_mvn)
def mvn(spec: LayerSpec) -> Built:
    """Mean (and variance) normalisation per channel or per sample; eps is added to the std."""
    spec.expect_bottoms(1)
    _one_top(spec)
    mp = spec.param.mvn_param
    shape = tuple(spec.bottom_shapes[0])
    if not 2 <= len(shape) <= 4:
        raise spec.error(f"needs a 2- to 4-D bottom (Caffe reads num/channels/height/width), "
                         f"got shape {shape}", shape=True)
    return Built(CaffeMVN(mp.normalize_variance, mp.across_channels, float(mp.eps)), [])


# ---------------------------------------------------------------------------------------------
# SSD's Normalize
# ---------------------------------------------------------------------------------------------

class CaffeNormalize(nn.Module):
    """SSD's L2 Normalize: ``x / sqrt(sum x^2 + eps) * scale``.

    The sum runs over C, H, W per sample (``across_spatial``) or over C per pixel; the scale is
    one value (``channel_shared``, a 0-axis blob as in SSD's code) or one per channel.
    """

    def __init__(self, channels: int, across_spatial: bool, channel_shared: bool,
                 eps: float) -> None:
        super().__init__()
        self.across_spatial, self.channel_shared, self.eps = across_spatial, channel_shared, eps
        self.weight = nn.Parameter(torch.empty(() if channel_shared else (channels,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = x * x
        if self.across_spatial:
            total = sq.flatten(1).sum(dim=1).view((-1,) + (1,) * (x.dim() - 1))
        else:
            total = sq.sum(dim=1, keepdim=True)
        y = x / torch.sqrt(total + self.eps)
        if self.channel_shared:
            return y * self.weight
        return y * self.weight.view((1, -1) + (1,) * (x.dim() - 2))

    def extra_repr(self) -> str:
        return (f"across_spatial={self.across_spatial}, channel_shared={self.channel_shared}, "
                f"eps={self.eps}")


def _norm_param(spec: LayerSpec):
    """SSD's NormalizeParameter (``norm_param``), or None when the schema or layer lacks it."""
    p = spec.param
    if "norm_param" not in p.DESCRIPTOR.fields_by_name:
        return None
    return p.norm_param if p.HasField("norm_param") else None


@register("Normalize", family="norm", origin="SSD (weiliu89/caffe)", cost=PER_OUTPUT,
          emit=emit_normalize, random=per_blob(_random_scale))
def normalize(spec: LayerSpec) -> Built:
    """L2-normalise across channels (and space), then scale by a learned (1 or C) blob."""
    spec.expect_bottoms(1)
    _one_top(spec)
    shape = tuple(spec.bottom_shapes[0])
    if not 2 <= len(shape) <= 4:
        raise spec.error(f"needs a 2- to 4-D bottom, got shape {shape}", shape=True)
    np_ = _norm_param(spec)
    # SSD's defaults (caffe.proto of weiliu89/caffe) when norm_param is absent.
    across_spatial = bool(getattr(np_, "across_spatial", True)) if np_ is not None else True
    channel_shared = bool(getattr(np_, "channel_shared", True)) if np_ is not None else True
    eps = float(getattr(np_, "eps", 1e-10)) if np_ is not None else 1e-10
    filler = None
    if np_ is not None and np_.HasField("scale_filler"):
        filler = np_.scale_filler
    if filler is None:
        filler = _constant_filler(1.0)  # NormalizeLayer::LayerSetUp's default
    channels = shape[1]
    module = CaffeNormalize(channels, across_spatial, channel_shared, eps)
    blobs = [BlobSlot("weight", () if channel_shared else (channels,), filler)]
    return Built(module, blobs)
