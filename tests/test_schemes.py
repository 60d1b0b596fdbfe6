"""Landmark schemes: flip permutations (against the data READMEs and real faces), regions, lookup."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from landmarknet.data.formats import read_300w_folder, read_celeba
from landmarknet.data.schemes import CELEBA5, IBUG68, SCHEMES, YTF77, Scheme, UnknownSchemeError, get_scheme

# Copied by hand from shared/data/ytf77/README.md; its first 68 entries are iBUG's.
FLIP_PERM_77 = [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                27, 28, 29, 30, 35, 34, 33, 32, 31,
                45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
                54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
                64, 63, 62, 61, 60, 67, 66, 65,
                76, 75, 74, 73, 72, 71, 70, 69, 68]  # fmt: skip


def test_flip_permutations_match_the_documented_ones() -> None:
    assert list(CELEBA5.flip) == [1, 0, 2, 4, 3]  # DATA.md
    assert list(IBUG68.flip) == FLIP_PERM_77[:68]
    assert list(YTF77.flip) == FLIP_PERM_77


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_flipping_twice_is_identity(scheme: Scheme, rng: np.random.Generator) -> None:
    pts = rng.uniform(-20, 220, size=(4, scheme.n_points, 2)).astype(np.float32)
    once = scheme.flip_points(pts, width=200)
    assert not np.allclose(once, pts)
    np.testing.assert_allclose(scheme.flip_points(once, width=200), pts, atol=1e-4)


def test_flip_points_mirrors_pixel_centres() -> None:
    # In a 10-px-wide image, column 0 mirrors to column 9; the eyes swap labels.
    pts = np.array([[0, 1], [9, 2], [4.5, 5], [2, 8], [7, 8]], dtype=np.float32)
    out = CELEBA5.flip_points(pts, width=10)
    np.testing.assert_allclose(out, [[0, 2], [9, 1], [4.5, 5], [2, 8], [7, 8]])


def _mean_normalised(points: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Mean face after centring each face and scaling it by its outer-eye distance."""
    a, b = scheme.io_pair
    pts = points.astype(np.float64)
    iod = np.linalg.norm(pts[:, a] - pts[:, b], axis=1)
    return ((pts - pts.mean(axis=1, keepdims=True)) / iod[:, None, None]).mean(axis=0)


def _real_points(data_dir: Path, scheme: Scheme) -> np.ndarray:
    if scheme is CELEBA5:
        samples, _ = read_celeba(data_dir / "cuhk5", "val")
    else:
        folder = "ytf68/val" if scheme is IBUG68 else "ytf77/val"
        samples, _ = read_300w_folder(data_dir / folder, check_images=False)
    return np.stack([s.points for s in samples])


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_flip_maps_a_real_mean_face_onto_itself(data_dir: Path, scheme: Scheme) -> None:
    # Faces are nearly symmetric: the mirrored, re-labelled mean face must land on the mean face.
    # A single wrong pair (e.g. 37<->43 instead of 37<->44) moves points by >= 0.08 IOD here.
    mean = _mean_normalised(_real_points(data_dir, scheme), scheme)
    mirrored = mean[list(scheme.flip)] * np.array([-1.0, 1.0])
    err = np.linalg.norm(mirrored - mean, axis=1)
    assert err.max() < 0.07, f"point {int(err.argmax())} moves {err.max():.3f} IOD"
    unpermuted = mean * np.array([-1.0, 1.0])
    assert np.linalg.norm(unpermuted - mean, axis=1).mean() > 0.3  # the permutation matters


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_left_means_image_left_on_real_faces(data_dir: Path, scheme: Scheme) -> None:
    mean = _mean_normalised(_real_points(data_dir, scheme), scheme)
    a, b = scheme.io_pair
    assert mean[a, 0] < mean[b, 0]
    left, right = (mean[list(idx)].mean(axis=0) for idx in scheme.pupil_groups)
    assert left[0] < right[0]
    for name, idx in scheme.subregions.items():
        if name.endswith("_left"):
            other = scheme.subregions[name[: -len("_left")] + "_right"]
            assert mean[list(idx), 0].max() < mean[list(other), 0].min(), name


def test_regions_partition_the_points() -> None:
    assert set(IBUG68.regions) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert set(YTF77.regions) == {"jaw", "brows", "nose", "eyes", "mouth", "forehead"}
    assert YTF77.regions["forehead"] == tuple(range(68, 77))
    assert IBUG68.regions["mouth"] == tuple(range(48, 68))
    assert IBUG68.subregions["eye_right"] == (42, 43, 44, 45, 46, 47)
    assert IBUG68.io_pair == (36, 45) and CELEBA5.io_pair == (0, 1)
    assert CELEBA5.pupil_groups == ((0,), (1,))
    for scheme in SCHEMES:
        flat = sorted(i for idx in scheme.regions.values() for i in idx)
        assert flat == list(range(scheme.n_points))


def test_get_scheme_by_count_name_and_alias() -> None:
    assert get_scheme(5) is CELEBA5
    assert get_scheme(np.int64(68)) is IBUG68
    assert get_scheme("77") is YTF77
    assert get_scheme("iBUG68") is IBUG68
    assert get_scheme(IBUG68) is IBUG68
    with pytest.raises(UnknownSchemeError, match=r"unknown landmark scheme 21.*5 \(celeba5\), 68 \(ibug68\)"):
        get_scheme(21)
    with pytest.raises(ValueError, match="'dlib'"):
        get_scheme("dlib")
    with pytest.raises(UnknownSchemeError):
        get_scheme(True)  # a bool is not a point count


def test_schemes_are_immutable_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        IBUG68.n_points = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        IBUG68.regions["jaw"] = (0,)  # type: ignore[index]
    with pytest.raises(ValueError, match="own inverse"):
        Scheme("bad", 3, (1, 2, 0), (0, 1), ((0,), (1,)), {"all": (0, 1, 2)})
    with pytest.raises(ValueError, match="cover every point"):
        Scheme("bad", 3, (1, 0, 2), (0, 1), ((0,), (1,)), {"eyes": (0, 1)})
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 68, 2\)"):
        IBUG68.flip_points(np.zeros((5, 2)), width=10)
