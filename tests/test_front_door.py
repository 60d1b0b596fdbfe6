"""The front door: ``import landmarknet as lm`` and lm.load_caffe / lm.load_model / lm.convert.

References: OpenCV DNN's Caffe importer for the net's numbers, the protobuf schema and h5py for
the weight files, and facts about faces for the predictor; the CLI's build path is checked to
be the same net, not to be right.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import landmarknet as lm
from landmarknet.caffe import caffe_pb2
from landmarknet.errors import WeightsError
from opencv_ref import OpenCVUnavailable, run_opencv

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "landmarknet" / "models" / "heatmap4_68_bn"
DEPLOY = ROOT / "prototxt" / "heatmap4_68_bn" / "deploy.prototxt"
WEIGHTS = BUNDLE / "heatmap4_68_bn.caffemodel"
PICTURE = Path("/work/shared/samples/astronaut.png")


def _input(seed: int = 5) -> np.ndarray:
    """A fixed input the size of the net's (1, 3, 112, 112), roughly as the bundle scales it."""
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)


def test_import_is_cheap_and_names_load_on_use():
    code = ("import sys, landmarknet as lm; assert 'torch' not in sys.modules, 'torch at import';"
            "assert {'load_caffe', 'load_model', 'convert'} <= set(dir(lm));"
            "f = lm.load_caffe; assert 'torch' not in sys.modules, 'torch on access';"
            "print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "landmarknet.api"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lm.nope  # noqa: B018


def test_every_front_door_name_resolves():
    """A name in landmarknet.__all__ whose module renamed it would fail only when used."""
    for name in lm.__all__:
        assert getattr(lm, name) is not None, name


def test_load_caffe_matches_opencv_and_the_build_path():
    net = lm.load_caffe(DEPLOY, weights=WEIGHTS)
    x = _input()
    with torch.no_grad():
        ours = net(data=torch.from_numpy(x))["stage4_maps"].numpy()
    try:
        ref = run_opencv(DEPLOY, WEIGHTS, {"data": x}, ["stage4_maps"])["stage4_maps"]
    except OpenCVUnavailable as exc:
        pytest.skip(f"OpenCV DNN unavailable: {exc}")
    assert ours.shape == ref.shape == (1, 69, 28, 28)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    # the same net as `landmarknet build --weights` builds
    from landmarknet.build import build_net
    from landmarknet.params import load_weights
    cli_net = build_net(DEPLOY)
    load_weights(cli_net, WEIGHTS)
    with torch.no_grad():
        np.testing.assert_array_equal(cli_net(data=torch.from_numpy(x))["stage4_maps"].numpy(),
                                      ours)


def test_load_caffe_takes_a_bundle_name_and_a_phase():
    net = lm.load_caffe("heatmap4_68_bn")
    assert isinstance(net, torch.fx.GraphModule)
    train = lm.load_caffe(ROOT / "prototxt" / "heatmap4_68_bn" / "train_val.prototxt",
                          phase="train")
    assert train.training and not net.training  # Caffe's TRAIN nets train, TEST nets eval
    assert any("loss" in name for name in train.caffe_graph.outputs())


def test_load_caffe_refuses_weights_of_another_net(tmp_path):
    other = tmp_path / "other.prototxt"
    other.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                     'layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 5 kernel_size: 1 } }\n')
    with pytest.raises(WeightsError, match="conv1_1"):
        lm.load_caffe(other, weights=WEIGHTS)


@pytest.fixture(scope="module")
def predictor():
    return lm.load_model("heatmap4_68_bn")


def test_load_model_predicts_68_points_on_the_face(predictor):
    if not PICTURE.exists():
        pytest.skip(f"{PICTURE} is not here")
    faces = predictor.predict(PICTURE)
    assert predictor.n_points == 68
    assert len(faces) == 1  # one person in the picture
    face = faces[0]
    assert face.score > 0.9 and face.points.shape == (68, 2)
    x, y, w, h = face.box
    assert 40 < w < 200 and 40 < h < 250  # a face, not the picture
    grown = 0.1  # jaw points may sit just outside the detector's box
    assert np.all(face.points[:, 0] > x - grown * w) and np.all(face.points[:, 0] < x + w * 1.1)
    assert np.all(face.points[:, 1] > y - grown * h) and np.all(face.points[:, 1] < y + h * 1.1)
    # iBUG 68 anatomy: eyes side by side above the nose tip, the mouth below it, the chin lowest
    left_eye, right_eye = face.points[36:42].mean(0), face.points[42:48].mean(0)
    nose_tip, mouth = face.points[30], face.points[48:68].mean(0)
    assert left_eye[0] < nose_tip[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose_tip[1] < mouth[1] < face.points[8][1]
    assert face.points[8][1] == face.points[:17, 1].max()


def test_predict_takes_a_bgr_array_like_the_path(predictor):
    if not PICTURE.exists():
        pytest.skip(f"{PICTURE} is not here")
    import cv2
    image = cv2.imread(str(PICTURE), cv2.IMREAD_COLOR)
    from_path, from_array = predictor.predict(PICTURE), predictor.predict(image)
    np.testing.assert_array_equal(from_path[0].points, from_array[0].points)
    assert predictor.predict(np.full((120, 160, 3), 128, np.uint8)) == []  # no face, no error


def test_predict_gives_what_landmarknet_detect_writes(predictor, tmp_path, capsys):
    """One pipeline behind both doors: the command's JSON holds the same faces."""
    if not PICTURE.exists():
        pytest.skip(f"{PICTURE} is not here")
    import json

    from landmarknet.cli.main import main
    assert main(["detect", str(PICTURE), "--json", "-o", str(tmp_path)]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    faces = predictor.predict(PICTURE)
    assert len(record["faces"]) == len(faces) == 1
    np.testing.assert_allclose(record["faces"][0]["landmarks"], faces[0].points, atol=0.006)
    np.testing.assert_allclose(record["faces"][0]["box"], faces[0].box, atol=0.006)


def _caffemodel_blobs(path: Path) -> dict[str, list[np.ndarray]]:
    """Blobs by layer, parsed with the protobuf schema (not landmarknet's fast reader)."""
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {layer.name: [np.asarray(b.data, np.float32) for b in layer.blobs]
            for layer in net.layer if layer.blobs}


def test_convert_round_trips_weights(tmp_path):
    original = _caffemodel_blobs(WEIGHTS)
    h5 = lm.convert(WEIGHTS, tmp_path / "w.h5")
    assert h5.layers == len(original)
    with h5py.File(tmp_path / "w.h5", "r") as f:  # Caffe's HDF5 layout: /data/LAYER/INDEX
        conv = np.asarray(f["data"]["conv1_1"]["0"]).ravel()
    np.testing.assert_array_equal(conv, original["conv1_1"][0])
    lm.convert(tmp_path / "w.h5", tmp_path / "back.caffemodel")
    lm.convert(tmp_path / "back.caffemodel", tmp_path / "w.pt", prototxt=DEPLOY)
    done = lm.convert(tmp_path / "w.pt", tmp_path / "again.caffemodel", prototxt=DEPLOY)
    assert done.report is not None and not done.report.missing_in_file
    for name in ("back", "again"):
        back = _caffemodel_blobs(tmp_path / f"{name}.caffemodel")
        assert back.keys() == original.keys()
        for layer, blobs in original.items():
            for a, b in zip(blobs, back[layer]):
                np.testing.assert_array_equal(a, b)


def test_convert_needs_the_prototxt_for_pytorch_files(tmp_path):
    with pytest.raises(WeightsError, match="prototxt"):
        lm.convert(WEIGHTS, tmp_path / "w.pt")
