"""Caffe's weight fillers, exactly as filler.hpp defines them (not torch's namesakes)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError

if TYPE_CHECKING:  # torch is imported when a blob is filled: the checks below run without it
    import torch

#: The filler types Caffe's GetFiller knows.
FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra",
                "bilinear")


def filler_problem(fp: caffe_pb2.FillerParameter) -> str | None:
    """What Caffe's filler would refuse in ``fp`` (a CHECK failure at set-up), or None.

    These checks need no blob shape, so the prototxt reader runs them and names the layer and
    field (bilinear's square 4-D kernel is checked in :func:`fill`, where the shape is known).
    """
    kind = fp.type
    if kind not in FILLER_TYPES:
        return f"unknown filler type '{kind}' (Caffe has {', '.join(FILLER_TYPES)})"
    if kind == "uniform":
        if not (math.isfinite(fp.min) and math.isfinite(fp.max)):
            return f"uniform filler needs finite min and max, got min {fp.min}, max {fp.max}"
        if fp.min > fp.max:
            return (f"uniform filler needs min <= max, got min {fp.min} > max {fp.max} "
                    "(Caffe's caffe_rng_uniform checks it)")
        if fp.max - fp.min > _FLOAT32_MAX:
            return (f"uniform filler: the range max - min = {fp.max - fp.min:g} exceeds the "
                    "largest float")
    if kind == "gaussian":
        if not (math.isfinite(fp.mean) and math.isfinite(fp.std)):
            return f"gaussian filler needs finite mean and std, got mean {fp.mean}, std {fp.std}"
        if fp.std <= 0:
            return (f"gaussian filler needs std > 0, got std {fp.std} (Caffe's "
                    "caffe_rng_gaussian checks it)")
        if fp.sparse < -1:
            return f"gaussian filler: sparse must be -1 (off) or at least 0, got {fp.sparse}"
    elif fp.sparse != -1:
        return f"sparse {fp.sparse} is only supported by the gaussian filler, not by '{kind}'"
    return None

_FAN_IN, _FAN_OUT, _AVERAGE = 0, 1, 2
_FLOAT32_MAX = 3.4028234663852886e38


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's fan_in = count / shape[0], fan_out = count / shape[1] (blob->num(), channels())."""
    count = math.prod(shape) if shape else 1
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _scale_n(fp: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    return {_FAN_IN: fan_in, _FAN_OUT: fan_out, _AVERAGE: (fan_in + fan_out) / 2}[fp.variance_norm]


def fill(t: torch.Tensor, fp: caffe_pb2.FillerParameter | None, gen: torch.Generator) -> None:
    """Fill tensor ``t`` in place as Caffe's filler ``fp`` would (None: constant 0)."""
    import torch
    problem = filler_problem(fp) if fp is not None else None
    if problem is not None:  # also raised here for nets that never went through the reader
        raise LayerError(problem)
    if t.numel() == 0:  # nothing to fill (and xavier/msra would divide by a zero fan)
        return
    with torch.no_grad():
        _fill(t, fp, gen)


def _fill(t: torch.Tensor, fp: caffe_pb2.FillerParameter | None, gen: torch.Generator) -> None:
    import torch
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
    else:  # filler_problem refused it already
        raise LayerError(f"unknown filler type '{kind}'")
