"""The fork ``BN`` layer (batch normalisation with its own scale and shift, in two
families) and brocolli's ``BatchNormKyle`` (at the end of the file).

Several Caffe forks register a layer type ``BN`` with a ``bn_param`` message; they are not
BVLC's ``BatchNorm`` (no third "scale factor" blob, no separate ``Scale`` layer). Which family a
layer belongs to is told by the fields its ``bn_param`` uses:

* **Moving-statistics BN** (yjxiong's action-recognition Caffe used by TSN, PSPNet's Caffe,
  brocolli's source tree): ``slope_filler``, ``bias_filler``, ``momentum``, ``eps``, ``frozen``.
  Four blobs: slope, bias, moving mean, moving statistic, each ``(1, C)`` (TSN) or
  ``(1, C, 1, 1)`` (PSPNet). In TEST (or with ``frozen: true`` in any phase) the layer uses the
  stored statistics; in TRAIN it uses the batch's and updates the stored ones as
  ``s = (1 - momentum) * batch + momentum * s``. The forks disagree on the fourth blob:
  TSN's ``bn_layer.cpp`` stores the inverse standard deviation ``1 / sqrt(var + eps)`` and uses it
  as it is, PSPNet's stores the variance and applies ``eps`` when it normalises. The prototxt
  does not say which; :data:`INV_STD` (TSN, the default) and :data:`VARIANCE` (PSPNet) name the
  two, and :func:`set_bn_statistic` switches a built net.
* **SegNet BN** (alexgkendall/caffe-segnet, TimoSaemann's ENet Caffe): ``scale_filler``,
  ``shift_filler``, ``bn_mode``. Two blobs, scale and shift, ``(1, C, 1, 1)``. ``bn_mode:
  INFERENCE`` is ``scale * x + shift`` (the statistics were folded into the two blobs by
  ``compute_bn_statistics.py``); ``bn_mode: LEARN`` (the default) normalises with the batch's
  own mean and variance in EVERY phase, ``var = E(x^2) - E(x)^2`` and ``eps = 1e-9`` fixed. Two
  optional extra tops carry the batch mean and variance, shape ``(1, C, 1, 1)``.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from landmarknet.caffe import caffe_pb2
from landmarknet.layers.costs import AFFINE
from landmarknet.layers.emitting import EmitCall, EmitContext, copy_module
from landmarknet.layers.norm import CaffeBatchNorm
from landmarknet.layers.random_weights import per_blob, uniform
from landmarknet.layers.registry import BlobSlot, Built, LayerSpec, register

INV_STD = "inv_std"  # TSN / yjxiong: fourth blob = moving 1/sqrt(var + eps)
VARIANCE = "variance"  # PSPNet / hszhao: fourth blob = moving variance, eps applied at use
_SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
_MOVING_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
SEGNET_EPS = 1e-9  # bn_layer.cpp of caffe-segnet hard-codes var_eps_


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (1, C) or (1, C, 1, 1) blob as (1, C, 1, ...) broadcasting over an ndim-D bottom."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def _batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over (N, H, W) per channel and the mean of the squared deviation from it."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return mean, var


class MovingStatsBN(nn.Module):
    """TSN/PSPNet BN: blobs slope, bias (learned) and moving mean, moving statistic (buffers)."""

    def __init__(self, blob_shape: tuple[int, ...], momentum: float, eps: float, frozen: bool,
                 statistic: str = INV_STD) -> None:
        super().__init__()
        self.momentum, self.eps, self.frozen = float(momentum), float(eps), bool(frozen)
        self.statistic = statistic
        self.slope = nn.Parameter(torch.empty(blob_shape))
        self.bias = nn.Parameter(torch.empty(blob_shape))
        self.register_buffer("moving_mean", torch.empty(blob_shape))
        self.register_buffer("moving_stat", torch.empty(blob_shape))

    def _inv_std_of(self, stat: torch.Tensor) -> torch.Tensor:
        return stat if self.statistic == INV_STD else (stat + self.eps).rsqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = x.dim()
        if self.frozen or not self.training:
            mean = _per_channel(self.moving_mean, nd)
            inv_std = _per_channel(self._inv_std_of(self.moving_stat), nd)
        else:
            mean, var = _batch_moments(x)
            inv_std = (var + self.eps).rsqrt()
            self._update(mean, var, inv_std)
        return (x - mean) * inv_std * _per_channel(self.slope, nd) + _per_channel(self.bias, nd)

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor, inv_std: torch.Tensor) -> None:
        # caffe_cpu_axpby(1 - momentum, batch, momentum, stored): the fork's moving average.
        if mean.device.type == "meta":
            return
        stat = inv_std if self.statistic == INV_STD else var
        m = self.momentum
        self.moving_mean.mul_(m).add_((1 - m) * mean.reshape(self.moving_mean.shape))
        self.moving_stat.mul_(m).add_((1 - m) * stat.reshape(self.moving_stat.shape))

    def extra_repr(self) -> str:
        return (f"channels={self.slope.numel()}, statistic={self.statistic}, eps={self.eps}, "
                f"momentum={self.momentum}, frozen={self.frozen}")


class SegNetBN(nn.Module):
    """SegNet BN: ``scale * x + shift`` (INFERENCE) or batch-normalised then scaled (LEARN)."""

    def __init__(self, channels: int, learn: bool, n_tops: int) -> None:
        super().__init__()
        self.learn, self.n_tops = learn, n_tops
        self.scale = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.empty(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.learn:
            return x * self.scale + self.shift
        dims = [0, 2, 3]
        mean = x.mean(dim=dims, keepdim=True)
        # var(X) = E(X^2) - (EX)^2, as the fork computes it (not the two-pass form).
        var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
        y = (x - mean) / (var + SEGNET_EPS).sqrt() * self.scale + self.shift
        return (y, mean, var)[:self.n_tops] if self.n_tops > 1 else y

    def extra_repr(self) -> str:
        return f"channels={self.scale.shape[1]}, bn_mode={'LEARN' if self.learn else 'INFERENCE'}"


def _emit_bn(ctx: EmitContext, call: EmitCall) -> list[str] | None:
    """The layer's own module (either fork's), copied with the functions it calls."""
    return copy_module(f"INV_STD = {INV_STD!r}", f"SEGNET_EPS = {SEGNET_EPS!r}", _per_channel,
                       _batch_moments)(ctx, call)


def _used_fields(bp: caffe_pb2.BNParameter, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if bp.HasField(n)]


def _constant(value: float) -> caffe_pb2.FillerParameter:
    fp = caffe_pb2.FillerParameter()
    fp.type, fp.value = "constant", value
    return fp


def _random_bn(i: int, shape, gen: torch.Generator) -> torch.Tensor:
    """Slope/scale in [0.5, 1.5), bias/shift and moving mean in +-0.1, moving variance (or
    1/std) in [0.5, 1.5). Each blob draws all four candidates (the seeds' weights stay what
    they were)."""
    return [uniform(shape, 0.5, 1.5, gen), uniform(shape, -0.1, 0.1, gen),
            uniform(shape, -0.1, 0.1, gen), uniform(shape, 0.5, 1.5, gen)][i]


@register("BN", family="norm", cost=AFFINE, emit=_emit_bn, random=per_blob(_random_bn),
          origin="TSN (yjxiong), PSPNet (hszhao), SegNet/ENet (alexgkendall, TimoSaemann) forks")
def bn(spec: LayerSpec) -> Built:
    """Fork batch norm with scale and shift inside; TSN/PSPNet (4 blobs) or SegNet (2 blobs)."""
    spec.expect_bottoms(1)
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) != 4:
        raise spec.error(f"needs a 4-D (N, C, H, W) bottom, got shape {shape}", shape=True)
    bp = spec.param.bn_param
    segnet, moving = _used_fields(bp, _SEGNET_FIELDS), _used_fields(bp, _MOVING_FIELDS)
    if segnet and moving:
        raise spec.error(f"bn_param mixes SegNet's fields ({', '.join(segnet)}) with TSN/PSPNet's "
                         f"({', '.join(moving)}); these are two different BN layers")
    channels = shape[1]
    if segnet:
        return _segnet_bn(spec, bp, channels)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    if bp.momentum < 0 or bp.eps < 0:
        raise spec.error("momentum and eps must not be negative")
    blob_shape = (1, channels)
    module = MovingStatsBN(blob_shape, bp.momentum, bp.eps, bp.frozen)
    slope = bp.slope_filler if bp.HasField("slope_filler") else None
    bias = bp.bias_filler if bp.HasField("bias_filler") else None
    blobs = [BlobSlot("slope", blob_shape, slope), BlobSlot("bias", blob_shape, bias),
             # bn_layer.cpp sets the moving mean to 0 and the moving statistic to 1.
             BlobSlot("moving_mean", blob_shape, None, learnable=False),
             BlobSlot("moving_stat", blob_shape, _constant(1.0), learnable=False)]
    return Built(module, blobs)


def _segnet_bn(spec: LayerSpec, bp: caffe_pb2.BNParameter, channels: int) -> Built:
    learn = bp.bn_mode == caffe_pb2.BNParameter.LEARN
    if not 1 <= spec.n_tops <= (3 if learn else 1):
        raise spec.error(f"has 1 top (up to 3 with bn_mode LEARN: batch mean and variance), "
                         f"got {spec.n_tops}")
    module = SegNetBN(channels, learn, spec.n_tops)
    blob_shape = (1, channels, 1, 1)
    scale = bp.scale_filler if bp.HasField("scale_filler") else None
    shift = bp.shift_filler if bp.HasField("shift_filler") else None
    return Built(module, [BlobSlot("scale", blob_shape, scale), BlobSlot("shift", blob_shape, shift)])


def set_bn_statistic(net: nn.Module, statistic: str) -> int:
    """Say what the fourth blob of every TSN/PSPNet ``BN`` layer holds; returns how many changed.

    ``INV_STD`` ("inv_std", the default): TSN's yjxiong Caffe, 1/sqrt(var + eps). ``VARIANCE``
    ("variance"): PSPNet's Caffe, the variance, eps added when normalising.
    """
    if statistic not in (INV_STD, VARIANCE):
        raise ValueError(f"statistic must be {INV_STD!r} or {VARIANCE!r}, got {statistic!r}")
    n = 0
    for module in net.modules():
        if isinstance(module, MovingStatsBN):
            module.statistic = statistic
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# BatchNormKyle (brocolli's SSD Caffe, batch_norm_kyle_layer.cpp): BVLC's BatchNorm with an
# optional affine part inside. batch_norm_param as BatchNorm's plus use_alpha_beta (blobs 3 and
# 4: alpha, starting at 1, and beta, at 0; weight_filler/bias_filler are declared but never
# read) and do_all_reduce (multi-GPU statistics; one process computes the same numbers).
# ---------------------------------------------------------------------------------------------

class KyleBatchNorm(CaffeBatchNorm):
    """BVLC's BatchNorm (``norm.CaffeBatchNorm``: blobs 0-2, the same statistics and updates)
    followed by ``* alpha + beta`` per channel (axis 1) when ``use_alpha_beta`` (blobs 3-4).
    With stored statistics Caffe's backward returns before computing alpha's and beta's diffs,
    so they get no gradient then.
    """

    def __init__(self, channels: int, eps: float, moving_average_fraction: float,
                 use_global_stats: bool | None, alpha_beta: bool) -> None:
        super().__init__(channels, eps, moving_average_fraction, use_global_stats)
        self.alpha_beta = alpha_beta
        if alpha_beta:
            self.alpha = nn.Parameter(torch.empty(channels))
            self.beta = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.alpha_beta:
            return y
        view = (1, -1) + (1,) * (x.dim() - 2)
        use_global = self.use_global_stats
        if use_global is None:
            use_global = not self.training
        alpha, beta = self.alpha, self.beta
        if use_global:
            alpha, beta = alpha.detach(), beta.detach()
        return y * alpha.view(view) + beta.view(view)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", use_alpha_beta={self.alpha_beta}"


def _solver_touches(param: caffe_pb2.LayerParameter, i: int) -> bool:
    """Whether Caffe's solver updates blob i (lr_mult and decay_mult both non-zero; 1 when
    the param spec is absent)."""
    if i >= len(param.param):
        return True
    ps = param.param[i]
    return ps.lr_mult != 0 and ps.decay_mult != 0


def _random_kyle(shapes, gen: torch.Generator) -> list:
    """Mean ~N(0, 0.1) and variance in [0.5, 1.5), stored times a scale factor in [0.5, 1.5)
    (blob 2); alpha in [0.5, 1.5), beta in +-0.1."""
    def one(i, shape, g):
        return [torch.randn(shape, generator=g) * 0.1, uniform(shape, 0.5, 1.5, g),
                torch.full(shape, 0.5 + torch.rand((), generator=g).item()),
                uniform(shape, 0.5, 1.5, g), uniform(shape, -0.1, 0.1, g)][i]
    values = per_blob(one)(shapes, gen)
    if len(values) >= 3 and all(v is not None for v in values[:3]):
        factor = float(values[2].reshape(-1)[0])
        values[0], values[1] = values[0] * factor, values[1] * factor
    return values


@register("BatchNormKyle", family="norm", cost=AFFINE, emit=copy_module(CaffeBatchNorm),
          random=_random_kyle,
          origin="brocolli's SSD Caffe (batch_norm_kyle_layer.cpp)")
def batch_norm_kyle(spec: LayerSpec) -> Built:
    """BatchNorm (3 statistics blobs) with an optional per-channel alpha, beta (blobs 3, 4)."""
    spec.expect_bottoms(1)
    if spec.n_tops != 1:
        raise spec.error(f"needs exactly 1 top, got {spec.n_tops}")
    shape = tuple(spec.bottom_shapes[0])
    if len(shape) < 2:
        # LayerSetUp takes one channel for a 1-axis bottom, but Reshape then reads shape(1)
        # and aborts.
        raise spec.error(f"needs a bottom of 2 or more axes (N, C, ...), got shape {shape}; "
                         "Caffe aborts on fewer", shape=True)
    bp = spec.param.batch_norm_param
    if bp.eps < 0:
        raise spec.error(f"batch_norm_param.eps must not be negative, got {bp.eps}")
    if spec.phase == "train" and any(_solver_touches(spec.param, i) for i in range(3)):
        # Unlike BatchNorm, the layer does not pin its statistics' lr_mult to 0, so Caffe's
        # solver applies weight decay to blobs 0-2 (their diff is otherwise 0). Here they
        # are statistics, never decayed. One message for all layers (shown once).
        warnings.warn("BatchNormKyle statistics blobs (0-2) without param { lr_mult: 0 } or "
                      "decay_mult: 0: Caffe's solver would shrink them by weight decay; "
                      "landmarknet keeps them as running statistics and does not")
    channels = shape[1]
    use_global = bp.use_global_stats if bp.HasField("use_global_stats") else None
    module = KyleBatchNorm(channels, float(bp.eps), float(bp.moving_average_fraction),
                           use_global, bool(bp.use_alpha_beta))
    blobs = [BlobSlot("mean", (channels,), None, learnable=False),
             BlobSlot("variance", (channels,), None, learnable=False),
             BlobSlot("scale_factor", (1,), None, learnable=False)]
    if bp.use_alpha_beta:
        blobs += [BlobSlot("alpha", (channels,), _constant(1.0)),
                  BlobSlot("beta", (channels,), None)]
    return Built(module, blobs)
