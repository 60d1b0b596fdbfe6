"""Detector boxes against annotated faces (issue 6, point 5) on the shared samples."""
from __future__ import annotations

import numpy as np
import pytest

from landmarknet.data.formats import read_300w_folder
from landmarknet.detect.boxes import points_box
from landmarknet.detect.evaluate import (DEFAULT_CALIBRATIONS, detector_box_stats,
                                         fit_box_calibration, nme_detector_vs_gt)
from landmarknet.infer import LandmarkModel
from synthetic_bundles import regression_bundle

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def samples(data_dir):
    found, report = read_300w_folder(data_dir / "samples68")
    assert report.n_kept == 3
    return found


@pytest.fixture(scope="module")
def stats(samples):
    return detector_box_stats(samples, "mtcnn")  # the stored calibration, IoU matching


def test_mtcnn_boxes_against_the_annotations(samples, stats):
    raw = detector_box_stats(samples, "mtcnn", calibration="none", match="centroid")
    # MTCNN (original thresholds 0.6/0.7/0.7) finds breakingbad and takeo; its R-Net scores
    # the grey, tilted Einstein face 0.16-0.76 depending on the box, so it is missed: a
    # property of the published model (checked: RGB + transposed input is its best case).
    found = [samples[i].image_path.stem for i, m in zip(raw.index, raw.matched) if m is not None]
    assert found == ["breakingbad", "takeo"] and raw.n_missed == 1
    assert raw.n_false == raw.n_detections - 2 >= 1  # breakingbad has two more faces
    cal = fit_box_calibration(raw)
    # MTCNN's boxes are taller than the 68 points' box, which starts at the brows
    assert 0.6 < cal.sh < 0.95 and 0.9 < cal.sw < 1.25 and cal.dy > 0
    assert ("mtcnn", 68) in DEFAULT_CALIBRATIONS
    assert stats.miss_rate == pytest.approx(1 / 3) and stats.mean_iou > 0.7


def test_nme_with_detector_boxes_beside_ground_truth_boxes(samples, stats, tmp_path):
    # A "model" that always answers takeo's own shape in its crop (32 px, scale 1: the crop
    # pixel of p is 32 / side * (p - centre) + 15.5). With the ground-truth box it is exact;
    # with MTCNN's calibrated box its error shows how far that box is from the truth.
    takeo = [s for s in samples if s.image_path.stem == "takeo"]
    x, y, w, h = points_box(takeo[0].points)
    side = max(w, h)
    fractions = ((takeo[0].points - [x + w / 2, y + h / 2]) / side * 32 + 15.5) / 32
    model = LandmarkModel.load(regression_bundle(tmp_path / "takeo68", fractions))
    out = nme_detector_vs_gt(samples, model, stats)
    assert out["n"] == 3 and out["n_found"] == 2 and out["miss_rate"] == pytest.approx(1 / 3)
    assert out["gt_on_found"]["n"] == 2 and out["gt"]["n"] == 3
    solo = detector_box_stats(takeo, "mtcnn")
    out = nme_detector_vs_gt(takeo, model, solo)
    assert out["gt"]["nme_io"] < 1e-4
    assert 0.005 < out["detector_boxes"]["nme_io"] < 0.1


def test_evaluate_device_cuda_without_cuda_is_one_clear_line(capsys, monkeypatch, data_dir):
    import torch

    from landmarknet.cli.main import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["evaluate", "heatmap4_68_bn", "--data", str(data_dir / "samples68"),
               "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("landmarknet evaluate: error: --device cuda: torch sees no CUDA GPU")
