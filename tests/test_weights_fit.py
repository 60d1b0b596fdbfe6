"""Weights that do not fit are errors, as in Caffe (Net::CopyTrainedLayersFrom refuses a blob of
another shape): through every command that loads weights, with the --allow-* options and the
API's strict=False as the explicit ways to copy only some layers; NaN/inf weights are reported
by layer; JSON output never holds NaN."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.cli.main import main
from landmarknet.errors import WeightsError
from landmarknet.params import FitPolicy, load_weights, save_weights

NET = """name: "fit"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def _save(tmp_path, text: str, name: str, poke=None) -> str:
    """Build ``text`` (seeded), optionally change its blobs, save as ``name``; return the path."""
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(text)
    net = build_net(proto, seed=1)
    if poke is not None:
        with torch.no_grad():
            poke(net)
    save_weights(net, tmp_path / name)
    return str(tmp_path / name)


@pytest.fixture
def files(tmp_path):
    """The net, and weights that fit, mismatch, lack a layer, fit nothing, hold NaN."""
    net = tmp_path / "net.prototxt"
    net.write_text(NET)

    def nan(n):
        n.blob_tensor("conv1", 0).view(-1)[5] = float("nan")
        n.blob_tensor("fc1", 1)[0] = float("inf")

    return {
        "net": str(net),
        "good": _save(tmp_path, NET, "good.caffemodel"),
        "mismatch": _save(tmp_path, NET.replace("num_output: 3", "num_output: 4"),
                          "mismatch.caffemodel"),
        "missing": _save(tmp_path, NET.split('layer { name: "fc1"')[0], "missing.caffemodel"),
        "foreign": _save(tmp_path, NET.replace('"conv1"', '"other1"').replace('"fc1"', '"x"'),
                         "foreign.caffemodel"),
        "nan": _save(tmp_path, NET, "nan.caffemodel", nan),
        "tmp": tmp_path,
    }


def _run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(argv)  # any exception other than ours escapes and fails the test
    out, err = capsys.readouterr()
    return status, out, err


# -- build ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, expect", [
    ("mismatch", "fc1[0]: file [4, 72], net [3, 72]"),
    ("missing", "1 layer(s) of the net are not in the file"),
    ("foreign", "no layer of the file fits the net"),
    ("nan", "conv1[0]: 1 NaN of 54 values"),
])
def test_build_refuses_weights_that_do_not_fit(files, capsys, case, expect):
    status, out, err = _run(["build", files["net"], "--weights", files[case]], capsys)
    assert status == 2, out + err
    assert err.startswith("landmarknet build: error: ") and expect in err, err
    assert "Traceback" not in err


def test_build_reports_every_nonfinite_blob_by_layer(files, capsys):
    status, _, err = _run(["build", files["net"], "--weights", files["nan"]], capsys)
    assert status == 2
    assert "conv1[0]: 1 NaN of 54 values" in err and "fc1[1]: 1 infinite of 3 values" in err


@pytest.mark.parametrize("case, flag, listed", [
    ("mismatch", "--allow-mismatch", "fc1[0]: file [4, 72], net [3, 72]"),
    ("missing", "--allow-missing", "- fc1"),
    ("nan", "--allow-nonfinite", "conv1[0]: 1 NaN"),
])
def test_build_allows_each_imperfection_on_request(files, capsys, case, flag, listed):
    status, out, err = _run(["build", files["net"], "--weights", files[case], flag], capsys)
    assert status == 0, err
    assert listed in out  # the report still says what happened


def test_good_weights_load_silently_and_exactly(files, capsys):
    status, out, err = _run(["build", files["net"], "--weights", files["good"], "--save",
                             str(files["tmp"] / "copy.caffemodel")], capsys)
    assert status == 0, err
    assert "copied 2 layer(s)" in out and "mismatch" not in out
    a = caffe_pb2.NetParameter.FromString(open(files["good"], "rb").read())
    b = caffe_pb2.NetParameter.FromString((files["tmp"] / "copy.caffemodel").read_bytes())
    assert [list(x.blobs[0].data) for x in a.layer if x.blobs] == \
        [list(x.blobs[0].data) for x in b.layer if x.blobs]


def test_one_flag_does_not_allow_another(files, capsys):
    status, _, err = _run(["build", files["net"], "--weights", files["mismatch"],
                           "--allow-missing"], capsys)
    assert status == 2 and "--allow-mismatch" in err


# -- forward, convert, export -----------------------------------------------------------------


def test_forward_refuses_a_mismatch_and_writes_nothing(files, capsys):
    x = files["tmp"] / "x.npy"
    np.save(x, np.ones((1, 3, 8, 8), np.float32))
    out_file = files["tmp"] / "out.npz"
    argv = ["forward", files["net"], "--weights", files["mismatch"], "--input", f"data={x}",
            "--output", str(out_file)]
    status, _, err = _run(argv, capsys)
    assert status == 2 and "fc1[0]: file [4, 72], net [3, 72]" in err, err
    assert not out_file.exists()
    status, out, err = _run(argv + ["--allow-mismatch"], capsys)
    assert status == 0, err
    assert out_file.exists() and "shape or count mismatches" in out


def test_convert_refuses_a_mismatch_and_copies_chosen_layers_on_request(files, capsys):
    out_file = files["tmp"] / "out.caffemodel"
    argv = ["convert", files["mismatch"], str(out_file), "--prototxt", files["net"]]
    status, _, err = _run(argv, capsys)
    assert status == 2 and "fc1[0]" in err and not out_file.exists(), err
    # --copy-layers is the explicit choice: conv1 from the file, fc1 keeps its fillers.
    status, _, err = _run(argv + ["--copy-layers", "conv1"], capsys)
    assert status == 0, err
    src = caffe_pb2.NetParameter.FromString(open(files["mismatch"], "rb").read())
    dst = caffe_pb2.NetParameter.FromString(out_file.read_bytes())
    conv = lambda m: next(x for x in m.layer if x.name == "conv1")  # noqa: E731
    assert list(conv(src).blobs[0].data) == list(conv(dst).blobs[0].data)
    fc = next(x for x in dst.layer if x.name == "fc1")
    assert list(fc.blobs[0].shape.dim) == [3, 72]
    status, _, err = _run(argv + ["--copy-layers", "conv9"], capsys)  # a typo selects nothing
    assert status == 2 and "conv9" in err


def test_convert_without_a_net_refuses_nonfinite_blobs(files, capsys):
    out_file = files["tmp"] / "out.h5"
    status, _, err = _run(["convert", files["nan"], str(out_file)], capsys)
    assert status == 2 and "conv1[0]: 1 NaN" in err and not out_file.exists(), err
    status, _, err = _run(["convert", files["nan"], str(out_file), "--allow-nonfinite"], capsys)
    assert status == 0 and out_file.exists(), err


def test_export_refuses_weights_that_do_not_fit(files, capsys):
    status, _, err = _run(["export", files["net"], "--weights", files["missing"], "-o",
                           str(files["tmp"] / "n.onnx")], capsys)
    assert status == 2 and "not in the file" in err, err


# -- train ------------------------------------------------------------------------------------


def test_train_weights_must_fit_unless_allowed(tmp_path, capsys):
    from test_train import tiny_net
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    solver = tiny_net(tmp_path / "a", k=68)
    tiny_net(tmp_path / "b", k=5)
    other = build_net(tmp_path / "b" / "deploy.prototxt", seed=1)
    save_weights(other, tmp_path / "k5.caffemodel")
    empty = tmp_path / "nodata"
    empty.mkdir()
    argv = ["train", "--solver", str(solver), "--weights", str(tmp_path / "k5.caffemodel"),
            "--data", str(empty), "--out", str(tmp_path / "run"), "--workers", "0",
            "--no-progress"]
    status, _, err = _run(argv, capsys)
    assert status == 2, err
    assert "stage1_maps[0]: file [6, 16, 3, 3], net [69, 16, 3, 3]" in err, err
    # Allowed, the weights load and the run goes on to the (empty) data, which stops it.
    status, _, err = _run(argv + ["--allow-mismatch"], capsys)
    assert status == 2 and "stage1_maps[0]" not in err.split("error:", 1)[1], err


# -- API --------------------------------------------------------------------------------------


def test_api_is_strict_by_default_and_strict_false_returns_the_report(files):
    net = build_net(files["net"])
    with pytest.raises(WeightsError, match=r"fc1\[0\]: file \[4, 72\], net \[3, 72\]"):
        load_weights(net, files["mismatch"])
    report = load_weights(net, files["mismatch"], strict=False)
    assert report.copied == ["conv1"] and not report.ok
    report = load_weights(net, files["missing"], fit=FitPolicy(allow_missing=True))
    assert report.missing_in_file == ["fc1"]


# -- detect / evaluate ------------------------------------------------------------------------


def test_detect_refuses_a_nan_bundle(tmp_path, capsys):
    from synthetic_bundles import blob_image, heatmap_bundle
    import cv2
    folder = heatmap_bundle(tmp_path / "b")
    net = build_net(folder / "deploy.prototxt")
    load_weights(net, folder / "model.caffemodel")
    with torch.no_grad():
        net.blob_tensor("maps", 0).view(-1)[7] = float("nan")
    save_weights(net, folder / "model.caffemodel")
    cv2.imwrite(str(tmp_path / "face.png"), blob_image(96, 96, (48, 48), 3.0))
    status, out, err = _run(["detect", str(tmp_path / "face.png"), "--model", str(folder),
                             "--detector", "haar", "--json", "-o", str(tmp_path / "o")], capsys)
    assert status == 2, out + err
    assert "maps[0]: 1 NaN of" in err and "Traceback" not in err


def test_evaluate_refuses_a_bundle_that_does_not_fit(tmp_path, capsys):
    from synthetic_bundles import regression_bundle
    folder = regression_bundle(tmp_path / "b")
    other = regression_bundle(tmp_path / "c", np.full((6, 2), 0.5))  # 12 outputs, not 10
    shutil.copy(other / "model.caffemodel", folder / "model.caffemodel")
    status, _, err = _run(["evaluate", str(folder), "--data", str(tmp_path)], capsys)
    assert status == 2 and "fc[0]: file [12, 3072], net [10, 3072]" in err, err


def test_json_output_turns_nan_into_null():
    from landmarknet.jsontext import json_text
    face = {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "landmarks": [[math.nan, 1.0]],
            "confidence": float("nan"), "extra": np.float32("inf")}
    text = json_text({"faces": [face]})
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert back["faces"][0]["confidence"] is None and back["faces"][0]["landmarks"] == [[None, 1.0]]
    assert back["faces"][0]["extra"] is None


@pytest.mark.parametrize("state, expect", [
    ({"conv1.weight": "abc"}, "entry 'conv1.weight' is a str -> str"),
    ({1: torch.zeros(2)}, "entry '1' is a int -> Tensor"),
    ({"a": {"b": torch.zeros(1)}}, "entry 'a' is a str -> dict"),
    ({"a": torch.zeros(2, dtype=torch.complex64)}, "Caffe blobs are dense real numbers"),
])
def test_pt_files_that_are_not_state_dicts_are_clear_errors(files, capsys, state, expect):
    """What the fuzzer found: a .pt of strings, int keys or nested dicts gave AttributeError."""
    torch.save(state, files["tmp"] / "w.pt")
    status, _, err = _run(["build", files["net"], "--weights", str(files["tmp"] / "w.pt")],
                          capsys)
    assert status == 2 and expect in err, err
