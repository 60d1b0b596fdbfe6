"""Random test weights (``--random-weights SEED``): plausible values for every blob of a net.

Not Caffe's fillers (those initialise training): these make a net with no trained weights give
outputs worth comparing between implementations: He-scaled weights, small biases, and per-type
rules (registered with the type's ``random=`` hook) where plausible values look different:
BatchNorm statistics stored with a scale factor other than 1 (so readers that ignore Caffe's
third blob get it wrong), positive scales, small PReLU slopes.

A rule is ``(shapes, draw) -> values``: ``shapes`` has one entry per blob of the layer, None for
a blob shared from another layer (it is not drawn); ``draw`` is the net-wide torch.Generator,
used in blob order so that a seed gives the same weights on every run.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

Shape = tuple[int, ...]
#: (shapes or None per blob, generator) -> a value (or None where the shape was None) per blob.
RandomRule = Callable[[Sequence[Optional[Shape]], torch.Generator], list[Optional[torch.Tensor]]]


def uniform(shape: Shape, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform in [lo, hi)."""
    return torch.empty(shape).uniform_(lo, hi, generator=gen)


def he_or_small(shape: Shape, gen: torch.Generator, fan_in_axes: int = 0) -> torch.Tensor:
    """The default for one blob: a vector is a small bias (uniform +-0.1); a weight is
    He-scaled, its fan-in the product of all but the first dimension, or with ``fan_in_axes=1``
    of dimension 1 on (Deconvolution's (C_in, C_out/g, kh, kw): each output sums over
    C_out/g-sized slices of the kernel)."""
    if len(shape) <= 1:
        return uniform(shape, -0.1, 0.1, gen)
    if fan_in_axes:
        fan_in = max(shape[1] * math.prod(shape[2:]), 1)
    else:
        fan_in = max(math.prod(shape) // max(shape[0], 1), 1)
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


def per_blob(fn: Callable[[int, Shape, torch.Generator], torch.Tensor]) -> RandomRule:
    """A rule drawing each (unshared) blob on its own: ``fn(index, shape, generator)``."""
    def rule(shapes: Sequence[Optional[Shape]], gen: torch.Generator):
        return [None if s is None else fn(i, s, gen) for i, s in enumerate(shapes)]
    return rule


#: Every type without a rule of its own.
DEFAULT: RandomRule = per_blob(lambda i, shape, gen: he_or_small(shape, gen))
