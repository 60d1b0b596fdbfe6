"""Convolution-family layers: Convolution, Deconvolution, InnerProduct, Embed, Im2col.

Every blob is kept in Caffe's own shape: Convolution weights ``(O, C/g, kh, kw)``, Deconvolution
weights ``(C, O/g, kh, kw)`` (torch's ConvTranspose2d layout), InnerProduct weights ``(N, K)``
(``(K, N)`` with ``transpose: true``), Embed weights ``(input_dim, N)``; biases ``(O,)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.layers.common import (Geometry2d, canonical_axis, conv_geometry, dims_text,
                                       field_pair)
from landmarknet.layers.costs import FREE, CostRule, first_top, numel
from landmarknet.layers.emitting import (EmitCall, EmitContext, copy_module, helper_source,
                                         pair_arg)
from landmarknet.layers.random_weights import he_or_small, per_blob
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, register

# ---------------------------------------------------------------------------------------------
# Tool hooks: cost (analyze), box label (render), standalone code (emit)

CONV_COST = CostRule(
    lambda info, training: (sum(numel(s) for s in info.top_shapes)
                            * numel(info.blobs[0].shape[1:]), 0),
    "MACs = output elements x (C_in/group x kh x kw)")
DECONV_COST = CostRule(
    lambda info, training: (sum(numel(s) for s in info.bottom_shapes)
                            * numel(info.blobs[0].shape[1:]), 0),
    "MACs = input elements x (C_out/group x kh x kw)")


def _fc_macs(info, training: bool) -> tuple[int, int]:
    n_out = info.top_shapes[0][-1]
    k = numel(info.blobs[0].shape) // max(n_out, 1)
    return first_top(info) * k, 0


FC_COST = CostRule(_fc_macs, "MACs = output elements x K")
EMBED_COST = CostRule(lambda info, training: (0, 0), "0 (a table look-up)")


def _window_parts(cp) -> list[str]:
    """['7×7', '/2', 'p3', 'd2']: a 2-D window's kernel, then stride, pad and dilation where
    they are not the defaults."""
    opt = lambda f: getattr(cp, f) if cp.HasField(f) else None  # noqa: E731
    k = field_pair(list(cp.kernel_size), opt("kernel_h"), opt("kernel_w"), 1)
    s = field_pair(list(cp.stride), opt("stride_h"), opt("stride_w"), 1)
    pd = field_pair(list(cp.pad), opt("pad_h"), opt("pad_w"), 0)
    d = field_pair(list(cp.dilation), None, None, 1)
    parts = [dims_text(k)]
    if s != (1, 1):
        parts.append("/" + dims_text(s, short=True))
    if pd != (0, 0):
        parts.append("p" + dims_text(pd, short=True))
    if d != (1, 1):
        parts.append("d" + dims_text(d, short=True))
    return parts


def conv_detail(p: caffe_pb2.LayerParameter) -> str:
    """'7×7 /2 p3 · 64': kernel, stride, pad, dilation, group, outputs."""
    cp = p.convolution_param
    parts = _window_parts(cp)
    if cp.group > 1:
        parts.append(f"g{cp.group}")
    return " ".join(parts) + f" · {cp.num_output}"


def fc_detail(p: caffe_pb2.LayerParameter) -> str:
    """'→ 1000': the outputs."""
    return f"→ {p.inner_product_param.num_output}"


def emit_conv(ctx: EmitContext, call: EmitCall) -> list[str]:
    """nn.Conv2d / nn.ConvTranspose2d with the same weights."""
    sub = call.sub
    w = tuple(sub.weight.shape)
    if isinstance(sub, CaffeDeconvolution):
        c_in, c_out, cls = w[0], w[1] * sub.groups, "nn.ConvTranspose2d"
    else:
        c_in, c_out, cls = w[1] * sub.groups, w[0], "nn.Conv2d"
    args = [str(c_in), str(c_out), f"kernel_size={pair_arg(w[2:])}"]
    for name, value, default in (("stride", sub.stride, 1), ("padding", sub.padding, 0),
                                 ("dilation", sub.dilation, 1)):
        if tuple(value) != (default, default):
            args.append(f"{name}={pair_arg(value)}")
    if sub.groups != 1:
        args.append(f"groups={sub.groups}")
    if sub.bias is None:
        args.append("bias=False")
    ctx.add_module(call.module, f"{cls}({', '.join(args)})")
    return [f"{o} = {call.attr}({i})" for i, o in zip(call.ins, call.outs)]


helper_source("TransposedLinear", '''
class TransposedLinear(nn.Module):
    """InnerProduct with transpose: true: the weight is stored (K, N)."""

    def __init__(self, k, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.t(), self.bias)
''')
helper_source("Embed", '''
class Embed(nn.Module):
    """Caffe's Embed: rows of weight (K, N) picked by the integer part of x (+ bias)."""

    def __init__(self, k, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        y = F.embedding(x.detach().trunc().long(), self.weight)
        return y if self.bias is None else y + self.bias
''')


def emit_inner_product(ctx: EmitContext, call: EmitCall) -> list[str]:
    """nn.Linear after a flatten (TransposedLinear for transpose: true)."""
    sub, x = call.sub, call.x
    w = tuple(sub.weight.shape)
    flat = f"torch.flatten({x}, {sub.axis})" if sub.axis < call.ndim - 1 else x
    if sub.transpose:
        ctx.helper("TransposedLinear")
        ctx.add_module(call.module, f"TransposedLinear({w[0]}, {w[1]}, "
                                    f"bias={sub.bias is not None})")
    else:
        bias = "" if sub.bias is not None else ", bias=False"
        ctx.add_module(call.module, f"nn.Linear({w[1]}, {w[0]}{bias})")
    return [f"{call.one} = {call.attr}({flat})"]


def emit_embed(ctx: EmitContext, call: EmitCall) -> list[str]:
    """The Embed helper module."""
    ctx.helper("Embed")
    w = tuple(call.sub.weight.shape)
    ctx.add_module(call.module, f"Embed({w[0]}, {w[1]}, bias={call.sub.bias is not None})")
    return [f"{call.one} = {call.attr}({call.x})"]


def _filler(msg, field: str) -> caffe_pb2.FillerParameter | None:
    """The FillerParameter ``field`` of ``msg`` if the prototxt gives it, else None (constant 0)."""
    return getattr(msg, field) if msg.HasField(field) else None


def _conv_common(spec: LayerSpec) -> tuple[caffe_pb2.ConvolutionParameter, Geometry2d, int, int]:
    """Checks shared by Convolution and Deconvolution; returns (param, geometry, C_in, group)."""
    n = len(spec.bottom_shapes)
    if n < 1:
        raise spec.error("needs at least 1 bottom")
    if spec.n_tops != n:
        # Caffe applies the same filters to each bottom: N bottoms give N tops.
        raise spec.error(f"needs one top per bottom, got {n} bottom(s) and {spec.n_tops} top(s)")
    shape = spec.bottom_shapes[0]
    for other in spec.bottom_shapes[1:]:
        if tuple(other) != tuple(shape):
            raise spec.error(f"all bottoms must have the same shape, got {tuple(shape)} and "
                             f"{tuple(other)}", shape=True)
    cp = spec.param.convolution_param
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {tuple(shape)}; only 2-D "
                         "convolution is supported", shape=True)
    axis = canonical_axis(cp.axis, len(shape), spec, "axis")
    if axis != 1:
        raise spec.error(f"axis {cp.axis} is not supported: the channel axis must be 1 (NCHW)")
    if not cp.HasField("num_output") or cp.num_output <= 0:
        raise spec.error("num_output must be given and positive")
    geom = conv_geometry(spec, cp)
    group = cp.group
    channels = shape[1]
    if group <= 0:
        raise spec.error("group must be positive")
    if channels % group:
        raise spec.error(f"the bottom's {channels} channels are not divisible by group {group}",
                         shape=True)
    if cp.num_output % group:
        raise spec.error(f"num_output {cp.num_output} is not divisible by group {group}")
    return cp, geom, channels, group


class CaffeConvolution(nn.Module):
    """2-D convolution with Caffe's blobs: weight (O, C/g, kh, kw), bias (O,)."""

    def __init__(self, in_channels: int, out_channels: int, geom: Geometry2d, group: int,
                 bias: bool) -> None:
        super().__init__()
        kh, kw = geom.kernel
        self.stride, self.padding, self.dilation = geom.stride, geom.pad, geom.dilation
        self.groups = group
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // group, kh, kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        ys = tuple(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups) for x in xs)
        return ys[0] if len(ys) == 1 else ys

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, stride={self.stride}, pad={self.padding}, "
                f"dilation={self.dilation}, group={self.groups}, bias={self.bias is not None}")


class CaffeDeconvolution(nn.Module):
    """2-D transposed convolution with Caffe's blobs: weight (C, O/g, kh, kw), bias (O,)."""

    def __init__(self, in_channels: int, out_channels: int, geom: Geometry2d, group: int,
                 bias: bool) -> None:
        super().__init__()
        kh, kw = geom.kernel
        self.stride, self.padding, self.dilation = geom.stride, geom.pad, geom.dilation
        self.groups = group
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels // group, kh, kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # Caffe has no output_padding: out = s*(i-1) + d*(k-1) + 1 - 2p.
        ys = tuple(F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, 0,
                                      self.groups, self.dilation) for x in xs)
        return ys[0] if len(ys) == 1 else ys

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight.shape)}, stride={self.stride}, pad={self.padding}, "
                f"dilation={self.dilation}, group={self.groups}, bias={self.bias is not None}")


def _bias_blobs(cp, n_out: int, module: nn.Module) -> list[BlobSlot]:
    if module.bias is None:
        return []
    return [BlobSlot("bias", (n_out,), _filler(cp, "bias_filler"))]


@register("Convolution", family="conv", cost=CONV_COST, detail=conv_detail, emit=emit_conv)
def convolution(spec: LayerSpec) -> Built:
    """2-D convolution (group, dilation, kernel/stride/pad with _h/_w); weights (O, C/g, kh, kw)."""
    cp, geom, channels, group = _conv_common(spec)
    h, w = spec.bottom_shapes[0][2:]
    for size, k, s, p, d, name in ((h, geom.kernel[0], geom.stride[0], geom.pad[0],
                                    geom.dilation[0], "height"),
                                   (w, geom.kernel[1], geom.stride[1], geom.pad[1],
                                    geom.dilation[1], "width")):
        extent = d * (k - 1) + 1
        if size + 2 * p < extent:
            raise spec.error(f"the dilated kernel ({extent}) is larger than the padded input "
                             f"{name} ({size} + 2*{p})", shape=True)
    module = CaffeConvolution(channels, cp.num_output, geom, group, cp.bias_term)
    blobs = [BlobSlot("weight", tuple(module.weight.shape), _filler(cp, "weight_filler"))]
    blobs += _bias_blobs(cp, cp.num_output, module)
    return Built(module, blobs)


@register("ConvolutionDepthwise", family="conv",
          origin="MobileNet-v2 / YOLOv3 Caffe forks (conv_dw_layer.cpp; read by OpenCV DNN)",
          cost=CONV_COST, emit=emit_conv)
def convolution_depthwise(spec: LayerSpec) -> Built:
    """One filter per channel: top channels = bottom channels; weights (C, 1, kh, kw), bias (C,)."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {shape}", shape=True)
    cp = spec.param.convolution_param
    channels = shape[1]
    # conv_dw_layer.cpp sizes its blobs and its top from the bottom's channels alone: it reads
    # neither num_output nor group. A num_output that disagrees means the file is not what its
    # author thought; say so rather than build something else silently.
    if cp.HasField("num_output") and cp.num_output != channels:
        raise spec.error(f"num_output {cp.num_output} differs from the bottom's {channels} "
                         "channels; ConvolutionDepthwise always gives one output channel per "
                         "input channel (the fork ignores num_output)", shape=True)
    if cp.HasField("group") and cp.group not in (1, channels):
        raise spec.error(f"group {cp.group} is neither 1 nor the {channels} channels; "
                         "ConvolutionDepthwise is always one filter per channel")
    geom = conv_geometry(spec, cp)
    _check_kernel_fits(spec, geom)
    module = CaffeConvolution(channels, channels, geom, channels, cp.bias_term)
    blobs = [BlobSlot("weight", tuple(module.weight.shape), _filler(cp, "weight_filler"))]
    blobs += _bias_blobs(cp, channels, module)
    return Built(module, blobs)


@register("DepthwiseConvolution", family="conv",
          origin="yonghenglh6/DepthwiseConvolution (ShuffleNet/MobileNet forks; OpenCV 4.14 cannot run it)",
          cost=CONV_COST, emit=emit_conv)
def depthwise_convolution(spec: LayerSpec) -> Built:
    """Convolution with the fork's fast depthwise kernel: same blobs and maths as Convolution."""
    # depthwise_conv_layer.cpp derives from BaseConvolutionLayer and its CPU path is Caffe's
    # grouped convolution, so group/num_output come from convolution_param as usual. Its GPU
    # kernel, though, assumes group == channels == num_output: anything else gives other numbers
    # on the GPU, so such a net is refused rather than matched to one of the two.
    channels = spec.bottom_shapes[0][1] if spec.bottom_shapes and spec.bottom_shapes[0] else 0
    cp = spec.param.convolution_param
    if cp.group != channels or cp.num_output != channels:
        raise spec.error(f"DepthwiseConvolution needs group == num_output == the bottom's "
                         f"channels ({channels}), got group {cp.group} and num_output "
                         f"{cp.num_output}; the fork's GPU and CPU paths disagree otherwise")
    return convolution(spec)


def _check_kernel_fits(spec: LayerSpec, geom: Geometry2d) -> None:
    """The dilated kernel must fit in the padded input (else the output would be empty)."""
    h, w = spec.bottom_shapes[0][2:]
    for size, k, p, d, name in ((h, geom.kernel[0], geom.pad[0], geom.dilation[0], "height"),
                                (w, geom.kernel[1], geom.pad[1], geom.dilation[1], "width")):
        extent = d * (k - 1) + 1
        if size + 2 * p < extent:
            raise spec.error(f"the dilated kernel ({extent}) is larger than the padded input "
                             f"{name} ({size} + 2*{p})", shape=True)


@register("Deconvolution", family="conv", cost=DECONV_COST, detail=conv_detail, emit=emit_conv,
          random=per_blob(lambda i, shape, gen: he_or_small(shape, gen, fan_in_axes=1)))
def deconvolution(spec: LayerSpec) -> Built:
    """2-D transposed convolution; weights (C_in, O/g, kh, kw), out = s*(i-1)+d*(k-1)+1-2p."""
    cp, geom, channels, group = _conv_common(spec)
    h, w = spec.bottom_shapes[0][2:]
    for size, k, s, p, d, name in ((h, geom.kernel[0], geom.stride[0], geom.pad[0],
                                    geom.dilation[0], "height"),
                                   (w, geom.kernel[1], geom.stride[1], geom.pad[1],
                                    geom.dilation[1], "width")):
        out = s * (size - 1) + d * (k - 1) + 1 - 2 * p
        if out <= 0:
            raise spec.error(f"output {name} would be {out} (pad {p} too large)", shape=True)
    module = CaffeDeconvolution(channels, cp.num_output, geom, group, cp.bias_term)
    blobs = [BlobSlot("weight", tuple(module.weight.shape), _filler(cp, "weight_filler"))]
    blobs += _bias_blobs(cp, cp.num_output, module)
    return Built(module, blobs)


class CaffeInnerProduct(nn.Module):
    """Fully connected layer: flattens from ``axis`` (NCHW order), weight (N, K) or (K, N)."""

    def __init__(self, axis: int, k: int, n: int, transpose: bool, bias: bool) -> None:
        super().__init__()
        self.axis, self.transpose = axis, transpose
        self.weight = nn.Parameter(torch.empty((k, n) if transpose else (n, k)))
        if bias:
            self.bias = nn.Parameter(torch.empty(n))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:self.axis], -1)
        w = self.weight.t() if self.transpose else self.weight
        return F.linear(flat, w, self.bias)

    def extra_repr(self) -> str:
        return (f"axis={self.axis}, weight={tuple(self.weight.shape)}, "
                f"transpose={self.transpose}, bias={self.bias is not None}")


@register("InnerProduct", family="conv", cost=FC_COST, detail=fc_detail,
          emit=emit_inner_product)
def inner_product(spec: LayerSpec) -> Built:
    """Fully connected: flatten from axis in NCHW order; weights (N, K), or (K, N) if transpose."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    ip = spec.param.inner_product_param
    if not ip.HasField("num_output") or ip.num_output <= 0:
        raise spec.error("num_output must be given and positive")
    shape = tuple(spec.bottom_shapes[0])
    axis = canonical_axis(ip.axis, len(shape), spec, "axis")
    k = math.prod(shape[axis:])
    module = CaffeInnerProduct(axis, k, ip.num_output, ip.transpose, ip.bias_term)
    blobs = [BlobSlot("weight", tuple(module.weight.shape), _filler(ip, "weight_filler"))]
    blobs += _bias_blobs(ip, ip.num_output, module)
    return Built(module, blobs)


class CaffeEmbed(nn.Module):
    """Table look-up: top = weight[int(x)] (+ bias); weight (input_dim, num_output)."""

    def __init__(self, k: int, n: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, n))
        if bias:
            self.bias = nn.Parameter(torch.empty(n))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # static_cast<int>: truncation toward zero, as Caffe's EmbedLayer reads its indices
        # (the cast to an integer type truncates; ONNX has no Trunc operator to spell it).
        idx = x.detach().to(torch.long)
        y = F.embedding(idx, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


@register("Embed", family="conv", cost=EMBED_COST, emit=emit_embed)
def embed(spec: LayerSpec) -> Built:
    """Look-up table: each bottom value (an integer index) becomes a row of weights (K, N)."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    ep = spec.param.embed_param
    if ep.num_output <= 0:
        raise spec.error("num_output must be given and positive")
    if ep.input_dim <= 0:
        raise spec.error("input_dim must be given and positive")
    module = CaffeEmbed(ep.input_dim, ep.num_output, ep.bias_term)
    blobs = [BlobSlot("weight", (ep.input_dim, ep.num_output), _filler(ep, "weight_filler"))]
    blobs += _bias_blobs(ep, ep.num_output, module)
    return Built(module, blobs)


# ---------------------------------------------------------------------------------------------
# Im2col (im2col_layer.cpp): the patches a convolution multiplies, laid out as Caffe's im2col
# writes them. It reads convolution_param like Convolution but has no blobs, and unlike this
# file's Convolution it works on any number of spatial axes after `axis`.

def _im2col_values(spec: LayerSpec, cp, field: str, n_spatial: int, default: int | None,
                   h: str | None = None, w: str | None = None) -> tuple[int, ...]:
    """Im2colLayer::LayerSetUp's reading of one repeated field (or its _h/_w twins)."""
    if h is not None and (cp.HasField(h) or cp.HasField(w)):
        if n_spatial != 2:
            raise spec.error(f"{h} & {w} can only be used for 2-D im2col, the bottom has "
                             f"{n_spatial} spatial axes")
        if len(getattr(cp, field)):
            raise spec.error(f"give either {field} or {h}/{w}, not both")
        # Caffe reads both twins even if one is missing (the proto default 0 then).
        return int(getattr(cp, h)), int(getattr(cp, w))
    values = [int(v) for v in getattr(cp, field)]
    if not values:
        if default is None:
            raise spec.error(f"convolution_param.{field} is required")
        return (default,) * n_spatial
    if len(values) == 1:
        return (values[0],) * n_spatial
    if len(values) != n_spatial:
        raise spec.error(f"{field} must be given once or once per spatial axis ({n_spatial}), "
                         f"got {len(values)} values")
    return tuple(values)


class Im2col(nn.Module):
    """(..., C, *spatial) -> (..., C * prod(kernel), *out): every window of the zero-padded input
    as a column, rows ordered channel, then kernel offset (last spatial axis fastest)."""

    def __init__(self, kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...],
                 dilation: tuple[int, ...]) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.kernel)
        lead = tuple(x.shape[:x.dim() - n])  # (..., C)
        spatial = tuple(x.shape[x.dim() - n:])
        outs = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in
                zip(spatial, self.kernel, self.stride, self.pad, self.dilation)]
        pads: list[int] = []
        for p in reversed(self.pad):  # F.pad lists the last axis first
            pads += [p, p]
        xp = F.pad(x, pads) if any(self.pad) else x
        # One strided slice per kernel offset, offsets in row-major order: the same rows as
        # im2col_cpu / im2col_nd_cpu (the zero padding stands for their out-of-image zeros).
        cols = [xp]
        for axis, (k, s, d, o) in enumerate(zip(self.kernel, self.stride, self.dilation, outs)):
            dim = len(lead) + axis
            nxt = []
            for col in cols:
                for j in range(k):
                    start = j * d
                    nxt.append(col.narrow(dim, start, s * (o - 1) + 1)[
                        (slice(None),) * dim + (slice(None, None, s),)])
            cols = nxt
        y = torch.stack(cols, dim=len(lead))  # (..., C, K, *out)
        return y.reshape(*lead[:-1], lead[-1] * len(cols), *outs)

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, stride={self.stride}, pad={self.pad}, "
                f"dilation={self.dilation}")


def im2col_detail(p: caffe_pb2.LayerParameter) -> str:
    """'3×3 /2 p1': kernel, stride, pad, dilation (2-D; N-D kernels as '3×3×3')."""
    cp = p.convolution_param
    if len(cp.kernel_size) > 2:
        return "×".join(str(k) for k in cp.kernel_size)
    return " ".join(_window_parts(cp))


@register("Im2col", family="conv", cost=FREE, detail=im2col_detail, emit=copy_module())
def im2col(spec: LayerSpec) -> Built:
    """Image patches as columns (C*kh*kw, H_out, W_out), Caffe's im2col order; N-D and axis too."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    shape = tuple(spec.bottom_shapes[0])
    cp = spec.param.convolution_param
    axis = canonical_axis(cp.axis, len(shape), spec, "axis")
    n_spatial = len(shape) - axis - 1
    if n_spatial < 1:
        raise spec.error(f"axis {cp.axis} leaves no spatial axis after the channels in a "
                         f"bottom of shape {shape}", shape=True)
    kernel = _im2col_values(spec, cp, "kernel_size", n_spatial, None, "kernel_h", "kernel_w")
    stride = _im2col_values(spec, cp, "stride", n_spatial, 1, "stride_h", "stride_w")
    pad = _im2col_values(spec, cp, "pad", n_spatial, 0, "pad_h", "pad_w")
    # Caffe has no dilation_h/_w, and does not check dilation here: 0 reads one pixel k times.
    dilation = _im2col_values(spec, cp, "dilation", n_spatial, 1)
    if min(kernel) <= 0:
        raise spec.error(f"kernel_size must be positive, got {kernel}")
    if min(stride) <= 0:
        raise spec.error(f"stride must be positive, got {stride}")
    for i, (size, k, p, d) in enumerate(zip(shape[axis + 1:], kernel, pad, dilation)):
        extent = d * (k - 1) + 1
        if size + 2 * p < extent:
            # Caffe's C division would round the negative size up to one output row of zeros.
            raise spec.error(f"the dilated kernel ({extent}) is larger than the padded input "
                             f"along spatial axis {i} ({size} + 2*{p})", shape=True)
    # force_nd_im2col picks Caffe's N-D loop over the 2-D one; both give the same columns.
    return Built(Im2col(kernel, stride, pad, dilation))
