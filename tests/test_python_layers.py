"""A net's own Python layers (caffe.Layer classes) run as they are with --python-path.

The layers (tests/reference/user_python_layers.py) are written as a Caffe user writes them; the
reference Caffe (built with its Python layer) runs the very same file, forward and backward, and
numpy computes the expected numbers from their definitions for machines without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.api import load_caffe
from landmarknet.build import net_graph
from landmarknet.cli.main import main
from landmarknet.errors import LandmarknetError, LayerError
from landmarknet.export import ExportError, export_onnx
from landmarknet.python_layers import load_python_layers
from reference.compare import rel_err
from reference.real_caffe import run_caffe

LAYERS_DIR = Path(__file__).resolve().parent / "reference"

NET = """name: "user_python"
force_backward: true
input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }
input: "other" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }
input: "target" input_shape { dim: 2 dim: 1 }
layer { name: "affine" type: "Python" bottom: "data" top: "affine"
        python_param { module: "user_python_layers" layer: "ScaleShift" param_str: "2.5 -0.75" } }
layer { name: "norms" type: "Python" bottom: "affine" bottom: "other" top: "norms" top: "sum"
        python_param { module: "user_python_layers" layer: "RowNormsAndSum" } }
layer { name: "phase" type: "Python" bottom: "sum" top: "flag"
        python_param { module: "user_python_layers" layer: "PhaseFlag" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "norms" bottom: "target" top: "loss" }
"""


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"data": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
            "other": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
            "target": rng.normal(5, 1, size=(2, 1)).astype(np.float32)}


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return path


def _ours(net_file: Path, phase: str, arrays: dict[str, np.ndarray]):
    net = load_caffe(net_file, phase=phase, python_path=[LAYERS_DIR])
    feeds = {k: torch.tensor(v, requires_grad=(k in ("data", "other"))) for k, v in arrays.items()}
    out = net.run(feeds, blobs=["affine", "norms", "sum", "flag", "loss"])
    return net, feeds, out


@pytest.mark.caffe_ref
@pytest.mark.parametrize("phase", ["train", "test"])
def test_forward_and_backward_match_the_reference_caffe(net_file, phase):
    arrays = _arrays()
    meta, ref = run_caffe("backward", {"prototxt": str(net_file), "phase": phase}, arrays)
    index = {name: i for i, name in enumerate(meta["blobs"])}
    _, feeds, out = _ours(net_file, phase, arrays)
    for name in ("affine", "norms", "sum", "flag", "loss"):
        want = ref[f"data{index[name]}"]
        assert out[name].shape == want.shape, name
        assert rel_err(out[name].detach().numpy(), want) <= 1e-6, name
    assert meta["loss"] == pytest.approx(float(out["loss"].detach()), rel=1e-6)
    out["loss"].backward()
    want = ref[f"diff{index['data']}"]
    assert np.abs(want).max() > 0  # a gradient reached the input in Caffe too
    assert rel_err(feeds["data"].grad.numpy(), want) <= 1e-5


@pytest.mark.parametrize("phase", ["train", "test"])
def test_forward_and_backward_numbers(net_file, phase):
    arrays = _arrays()
    _, feeds, out = _ours(net_file, phase, arrays)
    affine = 2.5 * arrays["data"] - 0.75
    np.testing.assert_allclose(out["affine"].detach().numpy(), affine, rtol=1e-6)
    norms = np.sqrt((affine.reshape(2, -1) ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(out["norms"].detach().numpy(), norms, rtol=1e-5)
    step = 1 if phase == "train" else -1  # the layer reads self.phase
    np.testing.assert_allclose(out["flag"].detach().numpy(), affine + arrays["other"] + step,
                               rtol=1e-5, atol=1e-6)
    loss = ((norms - arrays["target"]) ** 2).sum() / 2 / 2  # EuclideanLoss: / (2 N)
    assert float(out["loss"].detach()) == pytest.approx(loss, rel=1e-5)
    out["loss"].backward()
    # EuclideanLoss: d/dnorm = (norm - target) / N; ScaleShift multiplies by 2.5.
    g = (norms - arrays["target"]) / 2 * affine.reshape(2, -1) / norms * 2.5
    np.testing.assert_allclose(feeds["data"].grad.numpy(), g.reshape(2, 3, 4, 5), rtol=1e-4,
                               atol=1e-6)
    assert feeds["other"].grad is None or not feeds["other"].grad.any()  # feeds no loss


def test_shapes_come_from_setup_and_reshape(net_file):
    net = load_caffe(net_file, python_path=[LAYERS_DIR])
    shapes = {info.node.name: info.top_shapes for info in net.layers.values()}
    assert shapes["norms"] == [(2, 1), (2, 3, 4, 5)]
    with pytest.raises(ExportError, match="user's Python layer runs its own numpy code"):
        export_onnx(net, net_file.with_suffix(".onnx"))


def test_cli_python_path_and_errors(net_file, tmp_path, capsys):
    np.save(tmp_path / "d.npy", _arrays()["data"])
    np.save(tmp_path / "o.npy", _arrays()["other"])
    np.save(tmp_path / "t.npy", _arrays()["target"])
    args = ["forward", str(net_file), "--random-weights", "0", "--output", str(tmp_path / "o.npz"),
            "--input", f"data={tmp_path / 'd.npy'}", "--input", f"other={tmp_path / 'o.npy'}",
            "--input", f"target={tmp_path / 't.npy'}"]
    # a fresh registry: the earlier tests may have registered the classes already
    from landmarknet.layers.registry import _REGISTRY
    for key in [k for k in _REGISTRY if k.startswith("Python:user_python_layers.")]:
        del _REGISTRY[key]
    assert main(args) == 2
    assert "--python-path DIR" in capsys.readouterr().err
    assert main(args + ["--python-path", str(LAYERS_DIR)]) == 0
    assert main(args + ["--python-path", str(tmp_path / "nowhere")]) == 2


def test_user_errors_name_the_layer(tmp_path):
    text = NET.replace('layer: "PhaseFlag"', 'layer: "Broken"')
    path = tmp_path / "broken.prototxt"
    path.write_text(text)
    net = load_caffe(path, python_path=[LAYERS_DIR])
    with pytest.raises(LayerError, match=r"layer 'phase'.*forward\(\) raised ValueError: boom"):
        net.run({k: torch.tensor(v) for k, v in _arrays().items()})
    missing = tmp_path / "missing.prototxt"
    missing.write_text(NET.replace('layer: "PhaseFlag"', 'layer: "NoSuchClass"'))
    with pytest.raises(LandmarknetError, match="has no class 'NoSuchClass'"):
        load_python_layers(net_graph(missing), [LAYERS_DIR])
    nomod = tmp_path / "nomod.prototxt"
    nomod.write_text(NET.replace('module: "user_python_layers" layer: "PhaseFlag"',
                                 'module: "no_such_module" layer: "PhaseFlag"'))
    with pytest.raises(LandmarknetError, match="module 'no_such_module' not found"):
        load_python_layers(net_graph(nomod), [LAYERS_DIR])


def test_the_stand_in_does_not_outlive_the_import():
    import sys
    before = sys.modules.get("caffe")
    load_python_layers(net_graph(_write(NET)), [LAYERS_DIR])
    assert sys.modules.get("caffe") is before


def _write(text: str) -> Path:
    import tempfile
    path = Path(tempfile.mkdtemp()) / "net.prototxt"
    path.write_text(text)
    return path
