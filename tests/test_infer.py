"""Model bundles: loading, crops, decoding and the way back to image coordinates, end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from landmarknet.infer import LandmarkModel, ModelError, find_bundles
from synthetic_bundles import FRACTIONS, SHIFTS, blob_image, heatmap_bundle, regression_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"regression": regression_bundle(root / "fixed5"),
            "heatmap": heatmap_bundle(root / "shift5"), "root": root}


def test_regression_points_in_image_coordinates(bundles):
    model = LandmarkModel.load(bundles["regression"])
    image = np.zeros((120, 140, 3), np.uint8)
    pred = model.predict(image, [[20, 30, 60, 60]], detector="landmarks")
    # Box (20, 30, 60, 60), crop 32 px, scale 1: side 60, s = 32 / 60, centre (50, 60);
    # a fraction f is crop pixel 32 f, i.e. image point c + (32 f - 15.5) / s.
    expected = np.array([50.0, 60.0]) + (32 * FRACTIONS - 15.5) * 60 / 32
    np.testing.assert_allclose(pred.points[0], expected, atol=1e-4)
    assert pred.confidence == [None]
    assert model.decodes_heatmaps is False and model.scheme.n_points == 5


def test_heatmap_points_follow_a_blob(bundles):
    model = LandmarkModel.load(bundles["heatmap"])
    p = np.array([47.3, 63.6])
    image = blob_image(130, 110, p, 4.0)
    boxes = np.array([[20, 30, 60, 60], [10, 25, 80, 70]])
    pred = model.predict(image, boxes, detector="landmarks", return_heatmaps=True)
    # map k is the crop shifted by d_k, so its peak is p - d_k / s in the image (s = 64 / side).
    for i, side in enumerate((60.0, 80.0)):
        np.testing.assert_allclose(pred.points[i], p - SHIFTS * side / 64, atol=0.15)
    assert pred.heatmaps.shape == (2, 5, 32, 32)
    assert all(0.9 < c <= 1.0 for c in pred.confidence)


def test_empty_box_list(bundles):
    model = LandmarkModel.load(bundles["heatmap"])
    pred = model.predict(np.zeros((50, 50, 3), np.uint8), np.zeros((0, 4)))
    assert pred.points.shape == (0, 5, 2) and pred.confidence == []


def test_calibration_choice(bundles):
    model = LandmarkModel.load(bundles["heatmap"])
    assert model.calibration("mtcnn").to_list() == [0.0, 0.0, 1.0, 1.0]
    assert model.calibration("landmarks").to_list() == [0.0, 0.0, 1.0, 1.0]
    assert find_bundles(bundles["root"]) == sorted([bundles["regression"], bundles["heatmap"]])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(scheme=7), "scheme"),
    (lambda d: d["output"].update(decoding="softargmax"), "decoding"),
    (lambda d: d["input"].update(colour="BGR"), "unknown input keys"),
    (lambda d: d["crop"].update(box="detector"), "crop box kind"),
    (lambda d: d.update(weights="nope.caffemodel"), "nope.caffemodel is missing"),
    (lambda d: d.update(format=2), "format 2"),
    (lambda d: d["output"].pop("unit"), "must say its output.unit"),
])
def test_bad_model_json(tmp_path, edit, message):
    folder = regression_bundle(tmp_path / "b")
    spec = json.loads((folder / "model.json").read_text())
    edit(spec)
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match=message):
        LandmarkModel.load(folder)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        LandmarkModel.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="not a model bundle"):
        LandmarkModel.load(tmp_path)
    (tmp_path / "model.json").write_text("{oops")
    with pytest.raises(ModelError, match="not valid JSON"):
        LandmarkModel.load(tmp_path)
