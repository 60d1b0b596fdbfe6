"""Caffe's weight fillers, exactly as filler.hpp defines them (not torch's namesakes)."""
from __future__ import annotations

import math

import torch

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError

_FAN_IN, _FAN_OUT, _AVERAGE = 0, 1, 2


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's fan_in = count / shape[0], fan_out = count / shape[1] (blob->num(), channels())."""
    count = math.prod(shape) if shape else 1
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _scale_n(fp: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    return {_FAN_IN: fan_in, _FAN_OUT: fan_out, _AVERAGE: (fan_in + fan_out) / 2}[fp.variance_norm]


@torch.no_grad()
def fill(t: torch.Tensor, fp: caffe_pb2.FillerParameter | None, gen: torch.Generator) -> None:
    """Fill tensor ``t`` in place as Caffe's filler ``fp`` would (None: constant 0)."""
    kind = fp.type if fp is not None else "constant"
    shape = tuple(t.shape)
    if kind == "constant":
        t.fill_(fp.value if fp is not None else 0.0)
    elif kind == "uniform":
        t.uniform_(fp.min, fp.max, generator=gen)
    elif kind == "gaussian":
        t.normal_(fp.mean, fp.std, generator=gen)
        if fp.sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_outputs (blob->num()).
            keep = fp.sparse / max(shape[0] if shape else 1, 1)
            t.mul_((torch.rand(shape, generator=gen) < keep).to(t.dtype))
    elif kind == "positive_unitball":
        t.uniform_(0, 1, generator=gen)
        flat = t.view(shape[0], -1) if len(shape) > 1 else t.view(1, -1)
        flat.div_(flat.sum(dim=1, keepdim=True))
    elif kind == "xavier":
        bound = math.sqrt(3.0 / _scale_n(fp, shape))
        t.uniform_(-bound, bound, generator=gen)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _scale_n(fp, shape)), generator=gen)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise LayerError(f"bilinear filler needs a square 4-D kernel, got shape {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        # Two versions of this line exist in Caffe forks, (2f - 1 - f % 2) / 2f and (k - 1) / 2f;
        # they agree for every upsampling kernel k = 2 * factor - factor % 2. We use the one
        # that is symmetric for all k.
        c = (k - 1) / (2.0 * f)
        idx = torch.arange(k, dtype=torch.float64)
        w1 = 1 - torch.abs(idx / f - c)
        t.copy_((w1[:, None] * w1[None, :]).expand(shape).to(t.dtype))
    else:
        raise LayerError(f"unknown filler type '{kind}' (Caffe has constant, uniform, gaussian, "
                         "positive_unitball, xavier, msra, bilinear)")
