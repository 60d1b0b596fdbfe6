"""Shared cost rules for ``analyze``: what a layer costs, counted from the layer as built.

A rule gets the ``LayerInfo`` (the shapes the builder inferred on the meta device, the blobs the
layer holds) and whether the net is in the TRAIN phase, and returns ``(MACs, ops)`` for the whole
batch the net was built with. MACs are multiply-accumulates (FLOPs = 2 x MACs); ops are single
operations that are not (comparisons, adds, exps) and are reported apart. Biases are not counted.
Types with a rule of their own define it beside their converter; these are the common ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from landmarknet.build import LayerInfo

CostFn = Callable[["LayerInfo", bool], "tuple[int, int]"]


@dataclass(frozen=True)
class CostRule:
    """How ``analyze`` counts a type: the function and the rule in words (for docs/layers.md)."""

    fn: CostFn
    text: str


def numel(shape: Iterable[int]) -> int:
    """Elements of a blob of this shape."""
    return int(math.prod(int(d) for d in shape))


def first_top(info: LayerInfo) -> int:
    """Elements of the first top (0 for a layer without tops)."""
    return numel(info.top_shapes[0]) if info.top_shapes else 0


def first_bottom(info: LayerInfo) -> int:
    """Elements of the first bottom (0 for a layer without bottoms)."""
    return numel(info.bottom_shapes[0]) if info.bottom_shapes else 0


#: Data movement only (concatenation, views, copies): nothing to count.
FREE = CostRule(lambda info, training: (0, 0), "0 (data movement)")
#: One op per element of the first top (activations, Softmax, element-wise maths).
PER_OUTPUT = CostRule(lambda info, training: (0, first_top(info)), "ops = output elements")
#: One op per element of the first bottom (reductions, losses, Accuracy).
PER_BOTTOM = CostRule(lambda info, training: (0, first_bottom(info)),
                      "ops = elements of the first bottom")
#: One multiply-add per output element (BatchNorm folded to x*a+b, Scale).
AFFINE = CostRule(lambda info, training: (first_top(info), 0), "MACs = output elements")
#: Ops per element of all bottoms together (layers that read several inputs once each).
PER_ALL_BOTTOMS = CostRule(
    lambda info, training: (0, sum(numel(s) for s in info.bottom_shapes)),
    "ops = elements of all bottoms")
