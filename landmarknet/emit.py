"""Leave the framework with your model: a readable, standalone PyTorch file made from the graph.

``emit_python(net, "model.py")`` writes one module that needs only torch. Layers with weights
become ``nn.Conv2d``/``nn.ConvTranspose2d``/``nn.Linear``/``nn.PReLU`` or a few small helper
classes included in the file, registered under the same names as in landmarknet, so that

    net = Net()
    net.load_state_dict(torch.load("weights.pt", weights_only=True))

loads a state_dict saved by landmarknet (``landmarknet build ... --save weights.pt``). Layers
without weights become plain torch expressions in ``forward``; in-place Caffe layers reassign
their blob's variable, so the code reads like the prototxt. Caffe's pooling geometry (ceil
rounding, AVE divisor clipped to the padded input) is a helper function in the file.

Types it cannot express (loss layers other than EuclideanLoss, STOCHASTIC pooling, ArgMax, SPP,
Interp, the SSD detection layers, Python layers other than the project's landmark layers) are
listed in an ``EmitError``; with
``stubs=True`` they become modules that hold their blobs (so the state_dict still loads) and
raise ``NotImplementedError`` when called.
"""
from __future__ import annotations

import keyword
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from landmarknet import __version__
from landmarknet.build import CaffeNet, LayerInfo
from landmarknet.errors import LandmarknetError


class EmitError(LandmarknetError):
    """The net holds layers that the code generator cannot express."""


# ---------------------------------------------------------------------------------------------
# Helpers copied into the generated file (only those it uses).

HELPERS: dict[str, str] = {
    "caffe_pool2d": '''
def _pool_axis(size, k, s, p, ceil, any_pad):
    """Caffe's pooled extent along one axis, the padding after the input, the AVE divisors."""
    span = size + 2 * p - k
    out = (-((-span) // s) if ceil else span // s) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1  # Caffe drops a last window that would start inside the padding
    after = (out - 1) * s + k - p - size
    divisors = [min(i * s - p + k, size + p) - (i * s - p) for i in range(out)]
    return after, divisors


def caffe_pool2d(x, method, kernel, stride, pad, ceil=True):
    """Caffe's MAX/AVE pooling: output size rounded up (ceil), AVE divides by the window
    clipped to the padded input. kernel=None pools globally."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    kernel = (h, w) if kernel is None else kernel
    any_pad = pad[0] > 0 or pad[1] > 0
    after_h, div_h = _pool_axis(h, kernel[0], stride[0], pad[0], ceil, any_pad)
    after_w, div_w = _pool_axis(w, kernel[1], stride[1], pad[1], ceil, any_pad)
    if method == "max":
        x = F.pad(x, (pad[1], after_w, pad[0], after_h), value=-3.4028234663852886e38)
        return F.max_pool2d(x, kernel, stride)
    y = F.avg_pool2d(F.pad(x, (pad[1], after_w, pad[0], after_h)), kernel, stride)
    if all(d == kernel[0] for d in div_h) and all(d == kernel[1] for d in div_w):
        return y
    dh = torch.tensor(div_h, dtype=x.dtype, device=x.device)
    dw = torch.tensor(div_w, dtype=x.dtype, device=x.device)
    return y * (kernel[0] * kernel[1] / (dh[:, None] * dw[None, :]))
''',
    "CaffeBatchNorm": '''
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
''',
    "Scale": '''
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
''',
    "Bias": '''
class Bias(nn.Module):
    """Caffe's Bias: x + bias broadcast from axis; the bias may be bottom[1]."""

    def __init__(self, axis, bias_shape):
        super().__init__()
        self.axis = axis
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x, b=None):
        b = self.bias if b is None else b
        return x + _broadcast(b, self.axis if b.dim() else 0, x.dim())
''',
    "lrn": '''
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
''',
    "mvn": '''
def mvn(x, normalize_variance, across_channels, eps):
    """Caffe's MVN: subtract the mean (and divide by std + eps) per channel or per sample."""
    dims = list(range(1 if across_channels else 2, x.dim()))
    y = x - x.mean(dim=dims, keepdim=True) if dims else x - x
    if normalize_variance:
        var = y.square().mean(dim=dims, keepdim=True) if dims else y.square()
        y = y / (torch.sqrt(var) + eps)
    return y
''',
    "Normalize": '''
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
''',
    "SharedPReLU": '''
class SharedPReLU(nn.Module):
    """PReLU with one slope for all channels (Caffe's channel_shared: a 0-axis blob)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.25))

    def forward(self, x):
        return F.prelu(x, self.weight.reshape(1))
''',
    "TransposedLinear": '''
class TransposedLinear(nn.Module):
    """InnerProduct with transpose: true: the weight is stored (K, N)."""

    def __init__(self, k, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.t(), self.bias)
''',
    "Embed": '''
class Embed(nn.Module):
    """Caffe's Embed: rows of weight (K, N) picked by the integer part of x (+ bias)."""

    def __init__(self, k, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        y = F.embedding(x.detach().trunc().long(), self.weight)
        return y if self.bias is None else y + self.bias
''',
    "Parameter": '''
class ParameterLayer(nn.Module):
    """Caffe's Parameter layer: a learnable blob as the top."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self):
        return self.weight
''',
    "reduction": '''
def reduction(x, operation, axis, coeff):
    """Caffe's Reduction over all axes from axis: SUM, ASUM, SUMSQ or MEAN, times coeff."""
    flat = x.reshape(*x.shape[:axis], -1)
    if operation == "ASUM":
        y = flat.abs().sum(-1)
    elif operation == "SUMSQ":
        y = (flat * flat).sum(-1)
    else:
        y = flat.sum(-1)
    if operation == "MEAN":  # Caffe divides the coefficient in float32
        coeff = float(torch.tensor(coeff, dtype=torch.float32) / flat.shape[-1])
    return y if coeff == 1.0 else y * coeff
''',
    "Unsupported": '''
class Unsupported(nn.Module):
    """A layer the generator cannot express: it holds the layer's blobs (so that the
    state_dict loads) and raises when called. Write its forward by hand."""

    def __init__(self, layer, type_name, blobs):
        super().__init__()
        self.layer, self.type_name = layer, type_name
        for name, shape, learnable in blobs:
            if learnable:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))

    def forward(self, *xs):
        raise NotImplementedError(f"layer {self.layer!r} of type {self.type_name} was not "
                                  "translated by landmarknet's code generator")
''',
    "region_pool": '''
def region_pool(features, logits):
    """Per-region spatial softmax attention pooling: (N,C,H,W), (N,R,H,W) -> (N,R,C)."""
    n, c = features.shape[:2]
    r = logits.shape[1]
    attn = torch.softmax(logits.reshape(n, r, -1), dim=2)
    return torch.einsum("nrp,ncp->nrc", attn, features.reshape(n, c, -1))
''',
    "RegionFusion": '''
class RegionFusion(nn.Module):
    """g * global + (1 - g) * local per point, g = sigmoid(gate logits): a learned gate
    (N points) or bottom 2. local_index reorders the local heads' coordinates."""

    def __init__(self, local_index, n_points, own_gate, gates_top):
        super().__init__()
        self.local_index, self.gates_top = local_index, gates_top
        self.gate = nn.Parameter(torch.zeros(n_points)) if own_gate else None

    def forward(self, glob, local, logits=None):
        n = glob.shape[0]
        glob = glob.reshape(n, -1)
        index = torch.as_tensor(self.local_index, device=local.device)
        local = local.reshape(n, -1).index_select(1, index)
        logits = self.gate.expand(n, -1) if logits is None else logits.reshape(n, -1)
        g = torch.sigmoid(logits)
        g2 = g.repeat_interleave(2, dim=1)
        fused = g2 * glob + (1 - g2) * local
        return (fused, g) if self.gates_top else fused
''',
    "affine_align": '''
def box_angle_to_theta(box, angle, height, width):
    """(N, 6) affine from aligned to original unit coordinates of a box rotated by angle."""
    n = box.shape[0]
    cx, cy, bw, bh = box.reshape(n, 4).unbind(1)
    angle = angle.reshape(n)
    c, s = torch.cos(angle), torch.sin(angle)
    a00, a01 = c * bw, -s * (height / width) * bh
    a10, a11 = s * (width / height) * bw, c * bh
    b0 = cx - 0.5 * (a00 + a01)
    b1 = cy - 0.5 * (a10 + a11)
    return torch.stack([a00, a01, b0, a10, a11, b1], dim=1)


def affine_align(image, box, angle, height, width, padding_mode="zeros"):
    """Sample the rotated box of the image into an upright (height, width) crop; also
    returns theta (N, 6) for mapping points back."""
    n, c, h, w = image.shape
    theta = box_angle_to_theta(box.to(image.dtype), angle.to(image.dtype), h, w)
    a = theta.reshape(n, 2, 3)[:, :, :2]
    b = theta.reshape(n, 2, 3)[:, :, 2:]
    grid_theta = torch.cat([a, 2 * b + a.sum(dim=2, keepdim=True) - 1], dim=2)
    grid = F.affine_grid(grid_theta, [n, c, height, width], align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)
    return out, theta
''',
    "inverse_affine_points": '''
def inverse_affine_points(points, theta):
    """Points in aligned unit coordinates -> original ones: A p + b per point."""
    n = points.shape[0]
    pts = points.reshape(n, -1, 2)
    t = theta.reshape(n, 2, 3).to(pts.dtype)
    return (pts @ t[:, :, :2].transpose(1, 2) + t[:, :, 2].unsqueeze(1)).reshape(n, -1)
''',
    "heatmap_to_points": '''
def heatmap_to_points(maps, mode="soft", beta=1.0, background=True):
    """Heatmaps (N, C, h, w) -> points (N, 2K) in unit coordinates: soft-argmax, or argmax
    moved a quarter pixel towards the higher neighbour."""
    if background:
        maps = maps[:, :-1]
    n, k, h, w = maps.shape
    if mode == "soft":
        p = torch.softmax(beta * maps.reshape(n, k, -1), dim=2).reshape(n, k, h, w)
        xs = (torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5) / w
        ys = (torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5) / h
        u = (p.sum(dim=2) * xs).sum(dim=2)
        v = (p.sum(dim=3) * ys).sum(dim=2)
        return torch.stack([u, v], dim=2).reshape(n, 2 * k)
    flat = maps.detach().reshape(n, k, -1)
    idx = flat.argmax(dim=2)
    y, x = idx // w, idx % w

    def at(yy, xx):
        yy, xx = yy.clamp(0, h - 1), xx.clamp(0, w - 1)
        return flat.gather(2, (yy * w + xx).unsqueeze(2)).squeeze(2)

    dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * ((x > 0) & (x < w - 1))
    dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * ((y > 0) & (y < h - 1))
    u = (x.to(maps.dtype) + 0.25 * dx + 0.5) / w
    v = (y.to(maps.dtype) + 0.25 * dy + 0.5) / h
    return torch.stack([u, v], dim=2).reshape(n, 2 * k)
''',
}
_HELPER_DEPS = {"Bias": ["Scale"]}  # Bias uses _broadcast from the Scale helper

_POOL_METHODS = {0: "max", 1: "ave"}
_REDUCTION_OPS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}


@dataclass
class _Ctx:
    net: CaffeNet
    helpers: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    var: dict[str, str] = field(default_factory=dict)  # Caffe blob -> identifier
    taken: set[str] = field(default_factory=lambda: set(_RESERVED))
    unsupported: list[str] = field(default_factory=list)

    def helper(self, name: str) -> None:
        for dep in _HELPER_DEPS.get(name, []):
            self.helper(dep)
        if name not in self.helpers:
            self.helpers.append(name)

    def ident(self, blob: str) -> str:
        """The variable holding a Caffe blob (made once, then reused by in-place layers)."""
        if blob not in self.var:
            base = re.sub(r"\W", "_", blob)
            if not base or base[0].isdigit():
                base = "b_" + base
            if keyword.iskeyword(base):
                base += "_"
            name, k = base, 2
            while name in self.taken:
                name, k = f"{base}_{k}", k + 1
            self.taken.add(name)
            self.var[blob] = name
        return self.var[blob]


_RESERVED = {"self", "torch", "nn", "F", "math", "caffe_pool2d", "lrn", "mvn", "reduction",
             "region_pool", "affine_align", "box_angle_to_theta", "inverse_affine_points",
             "heatmap_to_points", "sum", "max", "min", "abs", "round", "pow", "all", "any",
             "Net", "x", "y", "out", "_broadcast", "_pool_axis", "getattr", "float", "int",
             "tuple", "list", "super", "range", "print", "len", "name", "value", "inputs"}


def _c(text: str) -> str:
    """Text safe in a generated comment or docstring: no line breaks, quotes or backslashes
    that could end it (prototxt names may hold any character)."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return out.replace("\\", "\\\\").replace('"', "'")


def _attr(module: str) -> str:
    """How generated code names a submodule: self.conv1, or getattr(self, "conv1/7x7_s2")."""
    if module.isidentifier() and not keyword.iskeyword(module):
        return f"self.{module}"
    return f"getattr(self, {module!r})"


def _assign_module(module: str, ctor: str) -> str:
    if module.isidentifier() and not keyword.iskeyword(module):
        return f"self.{module} = {ctor}"
    return f"self.add_module({module!r}, {ctor})"


def _num(v: float) -> str:
    """A float literal that round-trips."""
    r = repr(float(v))
    return r if r not in ("inf", "-inf", "nan") else f"float({r!r})"


def _tuple(v) -> str:
    return "(" + ", ".join(str(int(x)) for x in v) + ("," if len(v) == 1 else "") + ")"


def _pair_arg(v) -> str:
    """(3, 3) -> '3', (3, 5) -> '(3, 5)'."""
    a, b = (int(x) for x in v)
    return str(a) if a == b else f"({a}, {b})"


def _emit_layer(ctx: _Ctx, module: str, info: LayerInfo) -> list[str] | None:
    """Forward lines for one layer (and init lines through ctx), or None if not expressible."""
    node = info.node
    t = node.type
    sub = ctx.net.get_submodule(module)
    ins = [ctx.ident(b) for b in node.param.bottom]
    outs = [ctx.ident(b) for b in node.param.top]
    m = _attr(module)
    ndim = len(info.bottom_shapes[0]) if info.bottom_shapes else 0
    one = outs[0] if outs else None
    x = ins[0] if ins else None

    if t in ("Convolution", "Deconvolution"):
        w = tuple(sub.weight.shape)
        if t == "Convolution":
            c_in, c_out = w[1] * sub.groups, w[0]
            cls = "nn.Conv2d"
        else:
            c_in, c_out = w[0], w[1] * sub.groups
            cls = "nn.ConvTranspose2d"
        args = [str(c_in), str(c_out), f"kernel_size={_pair_arg(w[2:])}"]
        for name, value, default in (("stride", sub.stride, 1), ("padding", sub.padding, 0),
                                     ("dilation", sub.dilation, 1)):
            if tuple(value) != (default, default):
                args.append(f"{name}={_pair_arg(value)}")
        if sub.groups != 1:
            args.append(f"groups={sub.groups}")
        if sub.bias is None:
            args.append("bias=False")
        ctor = f"{cls}({', '.join(args)})"
        ctx.init.append(_assign_module(module, ctor))
        return [f"{o} = {m}({i})" for i, o in zip(ins, outs)]
    if t == "InnerProduct":
        w = tuple(sub.weight.shape)
        flat = f"torch.flatten({x}, {sub.axis})" if sub.axis < ndim - 1 else x
        if sub.transpose:
            ctx.helper("TransposedLinear")
            ctx.init.append(_assign_module(
                module, f"TransposedLinear({w[0]}, {w[1]}, bias={sub.bias is not None})"))
        else:
            bias = "" if sub.bias is not None else ", bias=False"
            ctx.init.append(_assign_module(module, f"nn.Linear({w[1]}, {w[0]}{bias})"))
        return [f"{one} = {m}({flat})"]
    if t == "Embed":
        ctx.helper("Embed")
        w = tuple(sub.weight.shape)
        ctx.init.append(_assign_module(module, f"Embed({w[0]}, {w[1]}, "
                                               f"bias={sub.bias is not None})"))
        return [f"{one} = {m}({x})"]
    if t == "Pooling":
        if sub.method not in _POOL_METHODS or len(outs) != 1:
            return None
        ctx.helper("caffe_pool2d")
        kernel = "None" if sub.kernel is None else _tuple(sub.kernel)
        return [f"{one} = caffe_pool2d({x}, {_POOL_METHODS[sub.method]!r}, {kernel}, "
                f"{_tuple(sub.stride)}, {_tuple(sub.pad)}, ceil={bool(sub.ceil)})"]
    if t == "BatchNorm":
        ctx.helper("CaffeBatchNorm")
        ctx.init.append(_assign_module(
            module, f"CaffeBatchNorm({sub.channels}, eps={_num(sub.eps)}, "
                    f"moving_average_fraction={_num(sub.moving_average_fraction)}, "
                    f"use_global_stats={sub.use_global_stats})"))
        return [f"{one} = {m}({x})"]
    if t == "Scale":
        ctx.helper("Scale")
        ws = None if sub.weight is None else tuple(sub.weight.shape)
        bs = None if sub.bias is None else tuple(sub.bias.shape)
        ctx.init.append(_assign_module(module, f"Scale({sub.axis}, {_shape_or_none(ws)}, "
                                               f"{_shape_or_none(bs)})"))
        return [f"{one} = {m}({', '.join(ins)})"]
    if t == "Bias":
        ctx.helper("Bias")
        bs = None if sub.bias is None else tuple(sub.bias.shape)
        ctx.init.append(_assign_module(module, f"Bias({sub.axis}, {_shape_or_none(bs)})"))
        return [f"{one} = {m}({', '.join(ins)})"]
    if t == "LRN":
        ctx.helper("lrn")
        return [f"{one} = lrn({x}, {sub.size}, {_num(sub.alpha)}, {_num(sub.beta)}, "
                f"{_num(sub.k)}, within_channel={bool(sub.within)})"]
    if t == "MVN":
        ctx.helper("mvn")
        return [f"{one} = mvn({x}, {bool(sub.normalize_variance)}, {bool(sub.across_channels)}, "
                f"{_num(sub.eps)})"]
    if t == "Normalize":
        ctx.helper("Normalize")
        ctx.init.append(_assign_module(
            module, f"Normalize({_tuple(tuple(sub.weight.shape))}, "
                    f"across_spatial={bool(sub.across_spatial)}, eps={_num(sub.eps)})"))
        return [f"{one} = {m}({x})"]
    if t == "ReLU":
        if sub.negative_slope:
            return [f"{one} = F.leaky_relu({x}, {_num(sub.negative_slope)})"]
        return [f"{one} = F.relu({x})"]
    if t == "ReLU6":
        if sub.negative_slope or sub.threshold != 6.0:
            return None  # brocolli's relu6_param: left to the user (NotImplementedError stub)
        return [f"{one} = torch.clamp({x}, 0.0, 6.0)"]
    if t == "PReLU":
        if sub.channel_shared:
            ctx.helper("SharedPReLU")
            ctx.init.append(_assign_module(module, "SharedPReLU()"))
        else:
            ctx.init.append(_assign_module(module, f"nn.PReLU({sub.weight.shape[0]})"))
        return [f"{one} = {m}({x})"]
    if t == "ELU":
        return [f"{one} = F.elu({x}, {_num(sub.alpha)})"]
    if t == "Sigmoid":
        return [f"{one} = torch.sigmoid({x})"]
    if t == "TanH":
        return [f"{one} = torch.tanh({x})"]
    if t == "AbsVal":
        return [f"{one} = torch.abs({x})"]
    if t == "BNLL":
        return [f"{one} = F.softplus({x}, beta=1.0, threshold=20.0)"]
    if t == "Power":
        if sub.scale == 0.0 or sub.power == 0.0:
            value = 1.0 if sub.power == 0.0 else float(sub.shift) ** float(sub.power)
            return [f"{one} = torch.full_like({x}, {_num(value)})"]
        expr = x
        if sub.scale != 1.0:
            expr = f"{expr} * {_num(sub.scale)}"
        if sub.shift != 0.0:
            expr = f"{expr} + {_num(sub.shift)}"
        if sub.power != 1.0:
            expr = f"torch.pow({expr}, {_num(sub.power)})"
        return [f"{one} = {expr}"]
    if t == "Exp":
        inner = x if sub.inner_scale == 1.0 else f"{x} * {_num(sub.inner_scale)}"
        expr = f"torch.exp({inner})"
        if sub.outer_scale != 1.0:
            expr += f" * {_num(sub.outer_scale)}"
        return [f"{one} = {expr}"]
    if t == "Log":
        expr = x if sub.scale == 1.0 else f"{x} * {_num(sub.scale)}"
        if sub.shift != 0.0:
            expr += f" + {_num(sub.shift)}"
        expr = f"torch.log({expr})"
        if sub.base_scale != 1.0:
            expr += f" * {_num(sub.base_scale)}"
        return [f"{one} = {expr}"]
    if t == "Clip":
        return [f"{one} = torch.clamp({x}, {_num(sub.min)}, {_num(sub.max)})"]
    if t == "Swish":
        inner = x if sub.beta == 1.0 else f"{x} * {_num(sub.beta)}"
        return [f"{one} = {x} * torch.sigmoid({inner})"]
    if t == "Threshold":
        return [f"{one} = ({x} > {_num(sub.threshold)}).to({x}.dtype)"]
    if t == "Dropout":
        if sub.ratio == 0.0:
            return [f"{one} = {x}"]
        return [f"{one} = F.dropout({x}, {_num(sub.ratio)}, self.training)"]
    if t == "Eltwise":
        if sub.operation == 1:  # SUM
            terms = [i if c == 1.0 else f"{i} * {_num(c)}" for i, c in zip(ins, sub.coeffs)]
            return [f"{one} = " + " + ".join(terms)]
        if sub.operation == 0:  # PROD
            return [f"{one} = " + " * ".join(ins)]
        lines = [f"{one} = torch.where({ins[0]} > {ins[1]}, {ins[0]}, {ins[1]})"]
        for i in ins[2:]:
            lines.append(f"{one} = torch.where({i} > {one}, {i}, {one})")
        return lines
    if t == "Concat":
        if len(ins) == 1:
            return [f"{one} = {x}"]
        return [f"{one} = torch.cat([{', '.join(ins)}], dim={sub.axis})"]
    if t == "Slice":
        if len(outs) == 1:
            return [f"{one} = {x}"]
        if sub.points:
            sizes = [sub.points[0]] + [b - a for a, b in zip(sub.points, sub.points[1:])]
            size_expr = "[" + ", ".join(map(str, sizes)) + \
                f", {x}.shape[{sub.axis}] - {sub.points[-1]}]"
        else:
            size_expr = f"{x}.shape[{sub.axis}] // {len(outs)}"
        return [f"{', '.join(outs)} = torch.split({x}, {size_expr}, dim={sub.axis})"]
    if t == "Split":
        return [f"{o} = {x}" for o in outs]
    if t == "Flatten":
        return [f"{one} = torch.flatten({x}, {sub.axis}, {sub.end_axis})"]
    if t == "Reshape":
        start = sub.axis if sub.axis >= 0 else ndim + sub.axis + 1
        end = ndim if sub.num_axes == -1 else start + sub.num_axes
        dims = []
        if start:
            dims.append(f"*{x}.shape[:{start}]")
        for i, d in enumerate(sub.dims):
            dims.append(f"{x}.shape[{start + i}]" if d == 0 else str(d))
        if end < ndim:
            dims.append(f"*{x}.shape[{end}:]")
        return [f"{one} = {x}.reshape({', '.join(dims)})"]
    if t == "Crop":
        ref = ins[1]
        idx = [":"] * sub.axis + [f"{o}:{o} + {ref}.shape[{sub.axis + k}]"
                                  for k, o in enumerate(sub.offsets)]
        return [f"{one} = {x}[{', '.join(idx)}]"]
    if t == "Softmax":
        return [f"{one} = torch.softmax({x}, dim={sub.axis})"]
    if t == "Reduction":
        ctx.helper("reduction")
        return [f"{one} = reduction({x}, {_REDUCTION_OPS[sub.operation]!r}, {sub.axis}, "
                f"{_num(sub.coeff)})"]
    if t == "Silence":
        return [f"# ({', '.join(ins)} unused)"]
    if t == "Tile":
        reps = ["1"] * ndim
        reps[sub.axis] = str(sub.tiles)
        return [f"{one} = {x}.repeat({', '.join(reps)})"]
    if t == "Parameter":
        ctx.helper("Parameter")
        ctx.init.append(_assign_module(module, f"ParameterLayer({_tuple(sub.weight.shape)})"))
        return [f"{one} = {m}()"]
    if t == "Permute":
        return [f"{one} = {x}.permute({', '.join(map(str, sub.order))})"]
    if t == "ShuffleChannel":
        g = sub.group
        return [f"{one} = {x}.reshape({x}.shape[0], {g}, {x}.shape[1] // {g}, *{x}.shape[2:])"
                f".transpose(1, 2).reshape({x}.shape)"]
    if t == "Upsample":
        if not hasattr(sub, "scale_h"):
            return None  # SegNet's two-bottom (max-unpooling) Upsample
        expr = x
        if sub.scale_h != 1:
            expr = f"{expr}.repeat_interleave({sub.scale_h}, dim=-2)"
        if sub.scale_w != 1:
            expr = f"{expr}.repeat_interleave({sub.scale_w}, dim=-1)"
        return [f"{one} = {expr}"]
    if t == "Axpy":
        a, xx, yy = ins
        ones = ", 1" * (len(info.bottom_shapes[1]) - 2)
        return [f"{one} = {a}.reshape({xx}.shape[0], {xx}.shape[1]{ones}) * {xx} + {yy}"]
    if t == "Python":
        return _emit_python_layer(ctx, module, info, sub, ins, outs)
    if t == "EuclideanLoss":
        a, b = ins
        return [f"{one} = ({a}.reshape({a}.shape[0], -1) - {b}.reshape({b}.shape[0], -1))"
                f".square().sum() / (2.0 * {a}.shape[0])"]
    return None


def _emit_python_layer(ctx: _Ctx, module: str, info: LayerInfo, sub, ins: list[str],
                       outs: list[str]) -> list[str] | None:
    """The project's landmark layers (Python layers registered by landmarknet)."""
    kind = info.node.param.python_param.layer
    one = outs[0] if outs else None
    if kind == "RegionPool":
        ctx.helper("region_pool")
        return [f"{one} = region_pool({ins[0]}, {ins[1]})"]
    if kind == "RegionFusion":
        ctx.helper("RegionFusion")
        ctx.init.append(_assign_module(
            module, f"RegionFusion({[int(i) for i in sub.local_index]!r}, {sub.n_points}, "
                    f"own_gate={sub.gate is not None}, gates_top={bool(sub.gates_top)})"))
        return [f"{', '.join(outs)} = {_attr(module)}({', '.join(ins)})"]
    if kind == "AffineAlign":
        ctx.helper("affine_align")
        return [f"{', '.join(outs)} = affine_align({', '.join(ins)}, {sub.height}, {sub.width}, "
                f"{sub.padding_mode!r})"]
    if kind == "InverseAffinePoints":
        ctx.helper("inverse_affine_points")
        return [f"{one} = inverse_affine_points({ins[0]}, {ins[1]})"]
    if kind == "HeatmapToPoints":
        ctx.helper("heatmap_to_points")
        return [f"{one} = heatmap_to_points({ins[0]}, {sub.mode!r}, {_num(sub.beta)}, "
                f"{bool(sub.background)})"]
    return None


def _shape_or_none(shape) -> str:
    return "None" if shape is None else _tuple(shape)


def _stub(ctx: _Ctx, module: str, info: LayerInfo) -> list[str]:
    ctx.helper("Unsupported")
    blobs = [(s.attr, tuple(s.shape), s.learnable) for s in info.blobs]
    if any("." in a for a, _, _ in blobs):
        raise EmitError(f"layer '{info.node.name}' ({info.node.type}) keeps blobs in nested "
                        "modules; no stub can hold them")
    blob_text = "[" + ", ".join(f"({a!r}, {_tuple(s)}, {lrn})" for a, s, lrn in blobs) + "]"
    ctx.init.append(_assign_module(module, f"Unsupported({info.node.name!r}, "
                                           f"{info.node.type!r}, {blob_text})"))
    ins = [ctx.ident(b) for b in info.node.param.bottom]
    outs = [ctx.ident(b) for b in info.node.param.top]
    lhs = ", ".join(outs) if outs else "_"
    return [f"{lhs} = {_attr(module)}({', '.join(ins)})  # TODO: not translated"]


def emit_python(net: CaffeNet, out_path: str | os.PathLike | None = None,
                class_name: str = "Net", *, stubs: bool = False) -> str:
    """Generate the standalone module's source; write it to ``out_path`` when given."""
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise EmitError(f"class name {class_name!r} is not a Python identifier")
    ctx = _Ctx(net)
    ctx.taken.add(class_name)
    g = net.caffe_graph
    in_vars = [ctx.ident(i.name) for i in g.inputs]
    out_node = next(n for n in net.graph.nodes if n.op == "output")
    outputs = {blob: fx.meta.get("ssa") for blob, fx in out_node.args[0].items()}
    snapshot = {ssa: blob for blob, ssa in outputs.items() if g.latest.get(blob) != ssa}
    snap_var: dict[str, str] = {}
    for module, info in net.layers.items():
        node = info.node
        where = f"'{node.name}' ({node.type}" + (f", {node.source}" if node.source else "") + ")"
        lines = _emit_layer(ctx, module, info)
        if lines is None:
            if not stubs:
                ctx.unsupported.append(where)
                continue
            lines = _stub(ctx, module, info)
        in_place = node.param.top and all(i < len(node.param.bottom) and node.param.bottom[i] == t
                                          for i, t in enumerate(node.param.top))
        note = " (in place)" if in_place else ""
        ctx.forward.append(f"# {_c(node.name)}: {_c(node.type)}{note}")
        ctx.forward += lines
        for ssa in node.tops:
            if ssa in snapshot:
                name = ctx.ident(f"{snapshot[ssa]} (output)")
                ctx.forward.append(f"{name} = {ctx.ident(g.blob_of[ssa])}")
                snap_var[ssa] = name
        for i, (owner, j) in sorted(info.shared_from.items()):
            mine = info.blobs[i].attr
            theirs = net.layers[owner].blobs[j].attr
            ctx.init.append(f"{_attr(module)}.{mine} = {_attr(owner)}.{theirs}  "
                            f"# shared param ({_c(net.layers[owner].node.name)})")
    if ctx.unsupported:
        raise EmitError("cannot express these layers as plain torch code: "
                        + "; ".join(ctx.unsupported)
                        + ". Pass stubs=True (--emit-stubs) to emit placeholders that hold their "
                        "weights and raise NotImplementedError, then write them by hand")
    ret = ", ".join(f"{blob!r}: {snap_var.get(ssa) or ctx.var[g.blob_of[ssa]]}"
                    for blob, ssa in outputs.items())
    source = _file_text(net, class_name, ctx, in_vars, ret, list(outputs))
    if out_path is not None:
        Path(out_path).write_text(source)
    return source


def _file_text(net: CaffeNet, class_name: str, ctx: _Ctx, in_vars: list[str], ret: str,
               outputs: list[str]) -> str:
    g = net.caffe_graph
    shapes = {i.name: tuple(int(d) for d in i.shape) for i in g.inputs}
    src = g.path or "<text>"
    types = sorted({info.node.type for info in net.layers.values()})
    lines = [
        f'"""{_c(g.name or "net")}: generated by landmarknet {__version__} from '
        f"{_c(Path(src).name)} (phase {g.state.phase}).",
        "",
        "Standalone: needs only torch. State-dict keys are landmarknet's, so weights saved with",
        "`landmarknet build NET.prototxt --weights W --save weights.pt` load directly:",
        "",
        f"    net = {class_name}().eval()",
        '    net.load_state_dict(torch.load("weights.pt", weights_only=True))',
        f"    out = net({', '.join(f'torch.zeros{s}' for s in shapes.values())})"
        f"  # dict: blob name -> tensor",
        "",
        f"Inputs: {_c(', '.join(f'{k} {list(v)}' for k, v in shapes.items()))}. "
        f"Outputs: {_c(', '.join(outputs))}.",
        f"Layer types: {_c(', '.join(types))}.",
        '"""',
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        "",
    ]
    for h in ctx.helpers:
        lines.append(HELPERS[h].rstrip("\n"))
        lines.append("")
    lines += ["",
              f"class {class_name}(nn.Module):",
              f'    """{_c(g.name or "net")} as plain torch modules; forward returns a dict of '
              'Caffe blobs."""',
              "",
              f"    input_names = {[i.name for i in g.inputs]!r}",
              f"    input_shapes = {shapes!r}",
              f"    output_names = {outputs!r}",
              "",
              "    def __init__(self):",
              "        super().__init__()"]
    lines += ["        " + line for line in ctx.init]
    lines += ["",
              f"    def forward(self, {', '.join(in_vars)}):"]
    for line in ctx.forward:
        lines.append("        " + line)
    lines.append(f"        return {{{ret}}}")
    lines += ["", "",
              'if __name__ == "__main__":',
              f"    net = {class_name}().eval()",
              f"    inputs = [torch.randn(s) for s in {class_name}.input_shapes.values()]",
              "    with torch.no_grad():",
              "        for name, value in net(*inputs).items():",
              '            print(name, tuple(value.shape))',
              ""]
    return "\n".join(lines)
