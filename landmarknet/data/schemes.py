"""Landmark schemes (5 CelebA, 68 iBUG, 77 = 68 + forehead): the single place that defines them.

"Left" and "right" always mean the image's left and right, never the subject's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence, Union

import numpy as np

from landmarknet.errors import LandmarknetError

Indices = tuple[int, ...]


class UnknownSchemeError(LandmarknetError, ValueError):
    """No landmark scheme has the requested point count or name."""


@dataclass(frozen=True)
class Scheme:
    """A landmark scheme: point count, flip permutation, eye indices and named regions."""

    name: str
    n_points: int
    #: After mirroring x, new point i is old point ``flip[i]`` (an involution).
    flip: Indices
    #: Outer eye corners (image-left eye, image-right eye) for the inter-ocular distance.
    io_pair: tuple[int, int]
    #: Points of the image-left eye and of the image-right eye; the pupil is their mean.
    pupil_groups: tuple[Indices, Indices]
    #: Disjoint regions that together cover every point (jaw, brows, nose, eyes, mouth, forehead).
    regions: Mapping[str, Indices] = field(compare=False, hash=False)
    #: Finer regions, e.g. left/right splits; may overlap each other but not leave the scheme.
    subregions: Mapping[str, Indices] = field(compare=False, hash=False, default_factory=dict)
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Freeze the mappings too, so a shared scheme cannot be edited by one caller for all.
        object.__setattr__(self, "regions", MappingProxyType({k: tuple(v) for k, v in self.regions.items()}))
        object.__setattr__(self, "subregions", MappingProxyType({k: tuple(v) for k, v in self.subregions.items()}))
        self._validate()

    def _validate(self) -> None:
        n = self.n_points
        if sorted(self.flip) != list(range(n)):
            raise ValueError(f"scheme {self.name}: flip is not a permutation of 0..{n - 1}")
        if any(self.flip[self.flip[i]] != i for i in range(n)):
            raise ValueError(f"scheme {self.name}: flip is not its own inverse")
        covered = sorted(i for idx in self.regions.values() for i in idx)
        if covered != list(range(n)):
            raise ValueError(f"scheme {self.name}: regions must cover every point exactly once")
        used = [*self.io_pair, *self.pupil_groups[0], *self.pupil_groups[1]]
        used += [i for idx in self.subregions.values() for i in idx]
        if any(not 0 <= i < n for i in used):
            raise ValueError(f"scheme {self.name}: an index is outside 0..{n - 1}")

    def flip_points(self, points: np.ndarray, width: float) -> np.ndarray:
        """Mirror points (..., K, 2) of an image ``width`` pixels wide (x -> width-1-x) and reorder them."""
        pts = np.asarray(points, dtype=np.float32)
        if pts.shape[-2:] != (self.n_points, 2):
            raise ValueError(f"scheme {self.name}: expected (..., {self.n_points}, 2) points, got {pts.shape}")
        out = pts[..., list(self.flip), :].copy()
        # Pixel centres sit at integer x, so the mirror of column x is column width-1-x.
        out[..., 0] = (width - 1) - out[..., 0]
        return out


def _swap_runs(perm: list[int], left: Sequence[int], right: Sequence[int]) -> None:
    """Pair left[j] with right[j] in ``perm`` (both directions)."""
    for a, b in zip(left, right, strict=True):
        perm[a], perm[b] = b, a


def _ibug68_flip() -> list[int]:
    """Derive the iBUG-68 mirror permutation from how each contour is numbered."""
    perm = list(range(68))
    _swap_runs(perm, range(0, 8), range(16, 8, -1))  # jaw runs left to right; 8 is the chin
    _swap_runs(perm, range(17, 22), range(26, 21, -1))  # brows: outer end of one brow <-> outer end of the other
    # 27-30 (nose bridge) lie on the midline and stay.
    _swap_runs(perm, (31, 32), (35, 34))  # lower nose runs left to right; 33 is the tip
    # Each eye starts at its left corner and runs over the upper lid: 36 outer-left, 42 inner-right.
    _swap_runs(perm, (36, 37, 38, 39, 40, 41), (45, 44, 43, 42, 47, 46))
    _swap_runs(perm, (48, 49, 50), (54, 53, 52))  # outer upper lip; 51 is the midline
    _swap_runs(perm, (55, 56), (59, 58))  # outer lower lip runs right to left; 57 is the midline
    _swap_runs(perm, (60, 61), (64, 63))  # inner upper lip; 62 is the midline
    _swap_runs(perm, (65,), (67,))  # inner lower lip; 66 is the midline
    return perm


def _span(a: int, b: int) -> Indices:
    """Indices a..b inclusive, as the iBUG chart writes them."""
    return tuple(range(a, b + 1))


_REGIONS_68 = {
    "jaw": _span(0, 16),
    "brows": _span(17, 26),
    "nose": _span(27, 35),
    "eyes": _span(36, 47),
    "mouth": _span(48, 67),
}
_SUB_68 = {
    "jaw_left": _span(0, 7),
    "jaw_right": _span(9, 16),
    "brow_left": _span(17, 21),
    "brow_right": _span(22, 26),
    "nose_bridge": _span(27, 30),
    "nose_lower": _span(31, 35),
    "eye_left": _span(36, 41),
    "eye_right": _span(42, 47),
    "mouth_outer": _span(48, 59),
    "mouth_inner": _span(60, 67),
}

CELEBA5 = Scheme(
    name="celeba5",
    n_points=5,
    flip=(1, 0, 2, 4, 3),
    io_pair=(0, 1),  # eye centres: inter-ocular and inter-pupil distances coincide
    pupil_groups=((0,), (1,)),
    regions={"eyes": (0, 1), "nose": (2,), "mouth": (3, 4)},
    subregions={"eye_left": (0,), "eye_right": (1,)},
    aliases=("5", "celeba", "cuhk5"),
)

IBUG68 = Scheme(
    name="ibug68",
    n_points=68,
    flip=tuple(_ibug68_flip()),
    io_pair=(36, 45),
    pupil_groups=(_span(36, 41), _span(42, 47)),
    regions=_REGIONS_68,
    subregions=_SUB_68,
    aliases=("68", "ibug", "300w", "ytf68"),
)

# The forehead points run from the image's left to its right, so flipping reverses them.
YTF77 = Scheme(
    name="ytf77",
    n_points=77,
    flip=tuple(_ibug68_flip() + list(range(76, 67, -1))),
    io_pair=(36, 45),
    pupil_groups=(_span(36, 41), _span(42, 47)),
    regions={**_REGIONS_68, "forehead": _span(68, 76)},
    subregions={**_SUB_68, "forehead_left": _span(68, 71), "forehead_right": _span(73, 76)},
    aliases=("77", "ibug77", "forehead77"),
)

SCHEMES: tuple[Scheme, ...] = (CELEBA5, IBUG68, YTF77)


def get_scheme(n_or_name: Union[int, str, Scheme]) -> Scheme:
    """Return the scheme for a point count (5, 68, 77) or a name/alias such as 'ibug68'."""
    if isinstance(n_or_name, Scheme):
        return n_or_name
    if isinstance(n_or_name, (int, np.integer)) and not isinstance(n_or_name, bool):
        for s in SCHEMES:
            if s.n_points == int(n_or_name):
                return s
    elif isinstance(n_or_name, str):
        key = n_or_name.strip().lower()
        for s in SCHEMES:
            if key == s.name or key in s.aliases:
                return s
    known = ", ".join(f"{s.n_points} ({s.name})" for s in SCHEMES)
    raise UnknownSchemeError(f"unknown landmark scheme {n_or_name!r}; known schemes: {known}")
