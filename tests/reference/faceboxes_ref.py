"""The FaceBoxes fork's PriorBox (sfzhang15/FaceBoxes, src/caffe/layers/prior_box_layer.cpp) in
plain scalar numpy, loop for loop, as an independent reference for landmarknet's vectorised layer.

What the fork changes from SSD's PriorBox (its PriorBoxParameter is SSD's, field for field):

* a layer with exactly three ``min_size`` values allocates 21 min_size boxes per cell, whatever
  the values are (other layers: one per min_size and aspect ratio), plus one per ``max_size``;
* an (int-truncated) ``min_size`` of 32 gives a 4 x 4 grid of boxes per cell whose centres are
  moved by ``8 * j`` (x) and ``8 * i`` (y) pixels, ``i`` and ``j`` from -2 to 1, rows first;
  64 gives a 2 x 2 grid moved by 16 pixels, ``i`` and ``j`` in {-1, 0}; any other size one box;
* every min_size box has half extents ``(size - 1) / 2``; the max_size and aspect-ratio boxes
  keep SSD's ``size / 2``.

C++ types are followed: ``float`` variables are ``np.float32``, the expressions that the literal
``2.`` makes double are Python floats, and each coordinate is rounded to float32 when stored.
The aspect-ratio extents use a float ``sqrt`` as SSD's layer does. When the boxes written per
cell differ from the boxes allocated, the C++ writes out of bounds or leaves values unset;
:func:`faceboxes_priors` refuses such fields.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32

#: int min_size -> (first shift index, past-the-last shift index, pixels per shift step)
DENSE = {32: (-2, 2, 8), 64: (-1, 1, 16)}


def ratios_of(aspect_ratio: list[float], flip: bool) -> list[F32]:
    """LayerSetUp's aspect ratio list: 1, then each new ratio (and its inverse when flipping)."""
    out = [F32(1.0)]
    for ar in aspect_ratio:
        ar = F32(ar)
        if any(abs(float(ar) - float(r)) < 1e-6 for r in out):
            continue
        out.append(ar)
        if flip:
            out.append(F32(1.0 / float(ar)))  # 1./ar is a double, stored into a float vector
    return out


def allocated_per_cell(min_size: list[float], max_size: list[float], n_ratios: int) -> int:
    """num_priors_ of the fork's LayerSetUp."""
    base = 21 if len(min_size) == 3 else n_ratios * len(min_size)
    return base + len(max_size)


def faceboxes_priors(layer_hw: tuple[int, int], image_hw: tuple[int, int], *,
                     min_size: list[float], max_size: list[float] = (),
                     aspect_ratio: list[float] = (), flip: bool = True, clip: bool = False,
                     variance: list[float] = (), step: float | None = None,
                     step_hw: tuple[float, float] | None = None,
                     img_hw: tuple[int, int] | None = None, offset: float = 0.5) -> np.ndarray:
    """The fork's PriorBox top, shape (1, 2, H * W * num_priors * 4), float32."""
    layer_h, layer_w = layer_hw
    ratios = ratios_of(list(aspect_ratio), flip)
    num_priors = allocated_per_cell(list(min_size), list(max_size), len(ratios))
    img_h, img_w = img_hw if img_hw is not None else image_hw
    if step_hw is None and step is not None:
        step_hw = (step, step)
    if step_hw is None:
        step_w = F32(F32(img_w) / F32(layer_w))
        step_h = F32(F32(img_h) / F32(layer_h))
    else:
        step_h, step_w = F32(step_hw[0]), F32(step_hw[1])
    off = F32(offset)
    coords: list[F32] = []

    def put(cx: F32, cy: F32, half_w: float, half_h: float) -> None:
        coords.append(F32((float(cx) - half_w) / img_w))
        coords.append(F32((float(cy) - half_h) / img_h))
        coords.append(F32((float(cx) + half_w) / img_w))
        coords.append(F32((float(cy) + half_h) / img_h))

    for h in range(layer_h):
        for w in range(layer_w):
            center_x = F32(F32(F32(w) + off) * step_w)
            center_y = F32(F32(F32(h) + off) * step_h)
            start = len(coords)
            for s, m in enumerate(min_size):
                size = int(m)  # the C++ keeps min_size in an int
                box = F32(size)
                half = float(F32(box - F32(1))) / 2.0
                first, last, pixels = DENSE.get(size, (0, 1, 0))
                for i in range(first, last):
                    for j in range(first, last):
                        put(F32(center_x + F32(j * pixels)), F32(center_y + F32(i * pixels)),
                            half, half)
                if max_size:
                    side = F32(math.sqrt(size * int(max_size[s])))
                    put(center_x, center_y, float(side) / 2.0, float(side) / 2.0)
                for ar in ratios:
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    root = F32(np.sqrt(ar))
                    bw, bh = F32(F32(size) * root), F32(F32(size) / root)
                    put(center_x, center_y, float(bw) / 2.0, float(bh) / 2.0)
            written = (len(coords) - start) // 4
            if written != num_priors:
                raise ValueError(f"the fork allocates {num_priors} boxes per cell but writes "
                                 f"{written}: its output is undefined")
    top = np.asarray(coords, dtype=F32)
    if clip:
        top = np.minimum(np.maximum(top, F32(0)), F32(1))
    var = [F32(v) for v in variance] or [F32(0.1)]
    if len(var) == 1:
        second = np.full(top.shape, var[0], dtype=F32)
    else:
        second = np.asarray(var * (top.size // 4), dtype=F32)
    return np.stack([top, second]).reshape(1, 2, -1)
