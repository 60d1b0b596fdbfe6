"""Metrics against hand-computed values and against the baselines published in shared/DATA.md."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from landmarknet import metrics as M
from landmarknet.data.formats import read_300w_folder, read_celeba
from landmarknet.data.schemes import CELEBA5, IBUG68

# A 5-point face: eyes 10 px apart, points' box 10 wide and 40 high.
GT5 = np.array([[0, 0], [10, 0], [5, 5], [2, 40], [8, 40]], np.float32)


def _pred5() -> np.ndarray:
    pred = GT5.copy()
    pred[0] += (3, 4)  # one point off by 5 px
    return pred


def test_nme_on_a_tiny_five_point_face() -> None:
    pred = _pred5()
    # Mean point error 5/5 = 1 px; d_io = d_ip = 10; box sqrt(10 * 40) = 20.
    np.testing.assert_allclose(M.nme(pred, GT5, CELEBA5, "io"), [0.1])
    np.testing.assert_allclose(M.nme(pred, GT5, 5, "ip"), [0.1])
    np.testing.assert_allclose(M.nme(pred, GT5, "celeba5", "box"), [0.05])
    np.testing.assert_allclose(M.nme(pred, GT5, CELEBA5, "box", boxes=[[0, 0, 4, 9]]), [1 / 6])
    np.testing.assert_allclose(M.nme_thesis(pred, GT5, CELEBA5), [25 / 100])


def _face68() -> np.ndarray:
    """68 points with the eyes placed by hand: outer corners 60 px apart, eye centres 40 px apart."""
    gt = np.stack([np.arange(68) * 1.5, 100 + np.arange(68) % 7 * 3.0], axis=1).astype(np.float32)
    gt[36:42] = [(0, 20), (5, 17), (15, 17), (20, 20), (15, 23), (5, 23)]  # mean (10, 20)
    gt[42:48] = [(40, 20), (45, 17), (55, 17), (60, 20), (55, 23), (45, 23)]  # mean (50, 20)
    return gt


def test_nme_io_and_ip_on_68_points() -> None:
    gt = _face68()
    pred = gt.copy()
    pred[0] += (6, 8)  # 10 px off
    np.testing.assert_allclose(M.nme(pred, gt, IBUG68, "io"), [10 / 68 / 60], rtol=1e-6)
    np.testing.assert_allclose(M.nme(pred, gt, IBUG68, "ip"), [10 / 68 / 40], rtol=1e-6)
    np.testing.assert_allclose(M.nme_thesis(pred, gt, IBUG68), [100 / 40**2], rtol=1e-6)


def test_nme_averages_over_faces_and_regions() -> None:
    gt = np.stack([_face68(), _face68() * 2])  # second face twice as large
    pred = gt.copy()
    pred[:, 48:68] += (3, 4)  # the whole mouth 5 px off in both faces
    per_face = M.nme(pred, gt, IBUG68)
    np.testing.assert_allclose(per_face, [20 * 5 / 68 / 60, 20 * 5 / 68 / 120], rtol=1e-6)
    regions = M.per_region_nme(pred, gt, IBUG68)
    assert regions["jaw"] == 0 and regions["eyes"] == 0
    np.testing.assert_allclose(regions["mouth"], (5 / 60 + 5 / 120) / 2, rtol=1e-6)
    sub = M.per_region_nme(pred, gt, IBUG68, regions={"inner": range(60, 68)})
    np.testing.assert_allclose(sub["inner"], (5 / 60 + 5 / 120) / 2, rtol=1e-6)


def test_auc_and_failure_rate_of_a_known_step_function() -> None:
    errors = np.array([0.02, 0.05, 0.09, np.nan])
    # CED: 0 on [0, .02), 1/4 on [.02, .05), 2/4 on [.05, .09), 3/4 after; NaN never succeeds.
    assert M.auc(errors, 0.08) == pytest.approx((0.25 * 0.03 + 0.5 * 0.03) / 0.08)  # 0.28125
    assert M.auc(errors, 0.10) == pytest.approx((0.25 * 0.03 + 0.5 * 0.04 + 0.75 * 0.01) / 0.10)  # 0.35
    assert M.failure_rate(errors, 0.08) == 0.5
    assert M.failure_rate(errors, 0.10) == 0.25
    # An error exactly at the threshold is no failure and adds no area.
    assert M.failure_rate([0.08], 0.08) == 0.0 and M.auc([0.08], 0.08) == 0.0
    assert M.auc([0.0, 0.0], 0.08) == 1.0
    x, y = M.ced(errors, 0.08)
    np.testing.assert_allclose(x, [0, 0.02, 0.05, 0.08])
    np.testing.assert_allclose(y, [0, 0.25, 0.5, 0.5])


def test_evaluate_points_report() -> None:
    gt = np.stack([GT5, GT5 + 100])
    pred = np.stack([_pred5(), GT5 + 100])  # face 0: NME_io 0.1, face 1: perfect
    out = M.evaluate_points(pred, gt, CELEBA5)
    assert out["n"] == 2
    assert out["nme_io"] == pytest.approx(0.05) and out["nme_ip"] == pytest.approx(0.05)
    assert out["nme_box"] == pytest.approx(0.025) and out["nme_thesis"] == pytest.approx(0.125)
    assert out["auc08"] == pytest.approx(0.5) and out["auc10"] == pytest.approx(0.5)
    assert out["fr08"] == 0.5 and out["fr10"] == 0.0  # 0.1 is not above 0.10
    assert out["per_region"] == pytest.approx({"eyes": 0.5 * 2.5 / 10, "nose": 0.0, "mouth": 0.0})


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        M.nme(GT5, GT5[:4], CELEBA5)
    with pytest.raises(ValueError, match="has 68 points"):
        M.nme(GT5, GT5, IBUG68)
    with pytest.raises(ValueError, match="zero"):
        M.nme(GT5, np.zeros_like(GT5), CELEBA5)
    with pytest.raises(ValueError, match="normaliser must be one of"):
        M.nme(GT5, GT5, CELEBA5, "diag")


def _mean_shape_in_box(train: np.ndarray, train_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The train mean of points expressed in box units (x and y scaled separately), placed in each box."""
    unit = ((train - train_boxes[:, None, :2]) / train_boxes[:, None, 2:]).mean(axis=0)
    return boxes[:, None, :2] + unit[None] * boxes[:, None, 2:]


def _points_boxes(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=1), points.max(axis=1)
    return np.concatenate([lo, hi - lo], axis=1)


def test_reproduces_the_ytf68_mean_shape_baseline(data_dir: Path) -> None:
    # DATA.md: ytf68/val, "mean shape in the box" = NME_io 0.191, AUC@0.08 0.033, FR@0.10 0.746.
    # The box is the ground-truth points' box (the only box YTF has).
    train = np.stack([s.points for s in read_300w_folder(data_dir / "ytf68/train", check_images=False)[0]])
    val = np.stack([s.points for s in read_300w_folder(data_dir / "ytf68/val", check_images=False)[0]])
    pred = _mean_shape_in_box(train, _points_boxes(train), _points_boxes(val))
    out = M.evaluate_points(pred, val, IBUG68)
    assert out["n"] == 343
    assert out["nme_io"] == pytest.approx(0.191, abs=0.0006)
    assert out["auc08"] == pytest.approx(0.033, abs=0.0006)
    assert out["fr10"] == pytest.approx(0.746, abs=0.0006)


def test_reproduces_the_cuhk5_mean_shape_baseline(data_dir: Path) -> None:
    # DATA.md: cuhk5 val, "mean shape in the box" = NME_io 0.194, AUC@0.08 0.010, FR@0.10 0.841,
    # with the boxes of list_bbox_celeba.txt.
    train, _ = read_celeba(data_dir / "cuhk5", "train")
    val, _ = read_celeba(data_dir / "cuhk5", "val")
    tb = np.array([s.box for s in train])
    vb = np.array([s.box for s in val])
    gt = np.stack([s.points for s in val])
    pred = _mean_shape_in_box(np.stack([s.points for s in train]), tb, vb)
    out = M.evaluate_points(pred, gt, CELEBA5, boxes=vb)
    assert out["n"] == 584
    assert out["nme_io"] == pytest.approx(0.194, abs=0.0006)
    assert out["auc08"] == pytest.approx(0.010, abs=0.0006)
    assert out["fr10"] == pytest.approx(0.841, abs=0.0006)


def test_plot_ced_writes_a_png(tmp_path: Path) -> None:
    path = M.plot_ced({"a": [0.02, 0.05, 0.09], "b": [0.01, 0.2]}, tmp_path / "plots" / "ced.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path))
    assert img.shape == (450, 600, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # curves and text, not a blank canvas
