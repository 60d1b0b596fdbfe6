"""The flow runs one way: prototxt -> NetParameter -> Graph -> GraphModule (docs/architecture.md).

(a) Everything below the build needs protobuf only: a fresh interpreter that imports those modules
    and turns a prototxt into a Graph has not imported torch.
(b) A built net keeps its parsed NetParameter: saving weights (``landmarknet build --save``),
    exporting (the caffe2onnx cross-check), benchmarking against OpenCV and bundling read the
    prototxt once, for the build. The .caffemodel files written that way are checked by OpenCV
    DNN's own Caffe importer (an independent reader), which must give our net's outputs.
(c) Loading a bundle parses, filters and builds its net once.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import landmarknet.build as build_module
import landmarknet.graph as graph_module
from landmarknet import export
from landmarknet.bench import load_model, run_bench
from landmarknet.build import build_from_graph, build_net, net_graph
from landmarknet.bundle import save_bundle
from landmarknet.caffe import prototxt as prototxt_module
from landmarknet.cli.main import main
from landmarknet.errors import GraphError
from landmarknet.graph import build_graph
from landmarknet.infer import LandmarkModel
from landmarknet.params import randomize

#: The modules below the build, in the order of the flow: the package root, errors, the Caffe
#: formats (schema, text format with legacy upgrades, binary weights), data-layer input shapes
#: and the graph. None of them may import torch (DESIGN.md: "nothing below build imports torch").
BELOW_BUILD = (
    "landmarknet",
    "landmarknet.errors",
    "landmarknet.caffe",
    "landmarknet.caffe.caffe_pb2",
    "landmarknet.caffe.upgrade_v0",
    "landmarknet.caffe.prototxt",
    "landmarknet.caffe.weights",
    "landmarknet.input_shapes",
    "landmarknet.graph",
)

# Every kind of data layer whose shape the prototxt can tell, so that the graph step runs the
# shape logic of each (it used to live in layers/data.py, which imports torch).
DATA_LAYERS = """\
name: "inputs"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "mem" type: "MemoryData" top: "m" top: "m_label"
        memory_data_param { batch_size: 4 channels: 1 height: 5 width: 6 } }
layer { name: "img" type: "ImageData" top: "i" top: "i_label"
        transform_param { crop_size: 7 } image_data_param { source: "list.txt" batch_size: 3 } }
layer { name: "dense" type: "DenseImageData" top: "d" top: "d_label"
        dense_image_data_param { source: "x.txt" batch_size: 2 new_height: 9 new_width: 10 } }
layer { name: "db" type: "Data" top: "db" data_param { source: "lmdb" batch_size: 16 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
"""

# A small deploy net OpenCV DNN runs as Caffe does; batch 2 in the prototxt so that bench's
# batch-1 rebuild and at_batch are exercised.
TINY = """\
name: "tiny"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 } }
"""
#: model.json's output section for bundles of TINY (five numbers read as they come).
DECODING = {"decoding": "regression", "unit": "unit", "blob": "fc"}


def _run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- (a) no torch below the build ---------------------------------------------------------------

def test_below_build_imports_no_torch(tmp_path):
    net = tmp_path / "inputs.prototxt"
    net.write_text(DATA_LAYERS)
    out = _run_fresh(f"""
        import importlib, sys
        for name in {BELOW_BUILD!r}:
            importlib.import_module(name)
        from landmarknet.caffe.prototxt import read_net
        from landmarknet.graph import NetState, build_graph
        graph = build_graph(read_net({str(net)!r}), NetState("train"),
                            input_shapes={{"db": (16, 3, 4, 4)}})
        for i in graph.inputs:
            print(i.name, i.shape)
        print("torch imported:", "torch" in sys.modules)
        """)
    assert out.splitlines() == [
        "data (2, 3, 8, 8)",
        "m (4, 1, 5, 6)", "m_label (4,)",
        "i (3, 3, 7, 7)", "i_label (3,)",  # is_color defaults to true: 3 channels
        "d (2, 3, 9, 10)", "d_label (2, 1, 9, 10)",
        "db (16, 3, 4, 4)",
        "torch imported: False",
    ]


def test_the_probe_sees_torch_when_it_is_imported():
    """The check above can fail: importing the build, which needs torch, is seen."""
    out = _run_fresh("""
        import sys
        import landmarknet.build
        print("torch imported:", "torch" in sys.modules)
        """)
    assert out.strip() == "torch imported: True"


# -- (b) one parse per net ----------------------------------------------------------------------

@pytest.fixture
def parses(monkeypatch) -> list[str | None]:
    """Paths of every prototxt text parsed from now on (read_net goes through parse_net)."""
    seen: list[str | None] = []
    real = prototxt_module.parse_net

    def counting(text, *, path=None, strict=True):
        seen.append(path)
        return real(text, path=path, strict=strict)

    monkeypatch.setattr(prototxt_module, "parse_net", counting)
    return seen


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "deploy.prototxt"
    path.write_text(TINY)
    return path


def _opencv_outputs(prototxt: Path, caffemodel: Path, x: np.ndarray) -> np.ndarray:
    """The net run by OpenCV DNN's Caffe importer on ``x``: the reference for a written file."""
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x, "data")
    return net.forward("fc")


def _ours(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x))["fc"].numpy()


def _check_with_opencv(net, prototxt: Path, caffemodel: Path) -> None:
    """OpenCV reads the .caffemodel with the prototxt and computes what our net computes."""
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    ref = _opencv_outputs(prototxt, caffemodel, x)
    got = _ours(net, x)
    assert np.abs(ref).max() > 1e-2  # random weights: a real signal, not zeros
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_build_save_parses_the_prototxt_once(tiny, tmp_path, parses, capsys):
    out = tmp_path / "w.caffemodel"
    assert main(["build", str(tiny), "--random-weights", "1", "--save", str(out)]) == 0
    capsys.readouterr()
    assert parses == [str(tiny)]
    net = build_net(tiny)
    from landmarknet.params import load_weights
    load_weights(net, out)  # our net with the saved weights, against OpenCV reading the file
    _check_with_opencv(net, tiny, out)


def test_export_crosscheck_hands_caffe2onnx_the_nets_own_parameters(tiny, tmp_path, parses,
                                                                      monkeypatch):
    net = build_net(tiny)
    randomize(net, 2)
    handed: dict[str, bytes] = {}

    class Stop(Exception):
        pass

    def fake_caffe2onnx(prototxt, caffemodel, out_path, *, timeout=600):
        handed["caffemodel"] = Path(caffemodel).read_bytes()  # gone with its temporary folder
        raise Stop

    monkeypatch.setattr(export, "run_caffe2onnx", fake_caffe2onnx)
    with pytest.raises(Stop):
        export.caffe2onnx_crosscheck(net, tiny, None, tmp_path / "ours.onnx")
    assert parses == [str(tiny)]  # the build's parse; the temporary .caffemodel needed none
    written = tmp_path / "handed.caffemodel"
    written.write_bytes(handed["caffemodel"])
    _check_with_opencv(net, tiny, written)


def test_bench_parses_once_and_builds_each_batch_from_the_graph(tiny, parses, monkeypatch):
    builds = _count_builds(monkeypatch)
    model = load_model(tiny, seed=3)
    assert model.net.blob_shapes["data"] == (1, 3, 12, 12)  # the prototxt says 2: rebuilt at 1
    assert builds == {"graph": 1, "net": 1}
    rows = run_bench(model, batches=(2,), backends=("opencv",), repeats=1, warmup=0)
    assert parses == [str(tiny)]
    assert builds == {"graph": 1, "net": 2}  # batch 2 built from the batch-1 net's graph
    # OpenCV read the .caffemodel bench wrote from the net's NetParameter; its outputs are ours.
    (row,) = rows
    if row.skipped and "not installed" in row.skipped:
        pytest.skip(row.skipped)
    assert row.skipped is None, row.skipped
    assert row.max_rel_diff is not None and row.max_rel_diff < 1e-4


def test_bundle_takes_the_nets_parameters(tiny, tmp_path, parses):
    net = build_net(tiny)
    randomize(net, 4)
    folder = save_bundle(tmp_path / "bundle", net, tiny, scheme=5, input_size=12,
                         decoding=DECODING, check=False)
    assert parses == [str(tiny)]
    _check_with_opencv(net, folder / "deploy.prototxt", folder / "bundle.caffemodel")


def test_bundle_of_a_training_net_reads_its_deploy_file(tmp_path, parses):
    """A net built from train_val bundled with a deploy file: the deploy's parameters, read once."""
    train_val = tmp_path / "train_val.prototxt"
    train_val.write_text(TINY.replace('name: "tiny"', 'name: "tiny_train"'))
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(TINY)
    net = build_net(train_val)
    folder = save_bundle(tmp_path / "bundle", net, deploy, scheme=5, input_size=12,
                         decoding=DECODING, check=False)
    assert parses == [str(train_val), str(deploy)]
    from landmarknet.caffe import caffe_pb2
    written = caffe_pb2.NetParameter.FromString((folder / "bundle.caffemodel").read_bytes())
    assert written.name == "tiny"  # the deploy's name, as before nets kept their parse


# -- (c) infer builds once ----------------------------------------------------------------------

def _count_builds(monkeypatch) -> dict[str, int]:
    """Counts of graph builds (wherever build_graph is called from) and of net builds."""
    counts = {"graph": 0, "net": 0}
    real_graph, real_net = graph_module.build_graph, build_module._build_from_graph

    def graph(*args, **kwargs):
        counts["graph"] += 1
        return real_graph(*args, **kwargs)

    def net(*args, **kwargs):
        counts["net"] += 1
        return real_net(*args, **kwargs)

    monkeypatch.setattr(graph_module, "build_graph", graph)
    monkeypatch.setattr(build_module, "build_graph", graph)
    monkeypatch.setattr(build_module, "_build_from_graph", net)
    return counts


def test_loading_a_bundle_parses_filters_and_builds_once(tiny, tmp_path, monkeypatch):
    net = build_net(tiny)
    randomize(net, 5)
    folder = save_bundle(tmp_path / "bundle", net, tiny, scheme=5, input_size=12,
                         decoding=DECODING, check=False)
    seen: list[str | None] = []
    real = prototxt_module.parse_net
    monkeypatch.setattr(prototxt_module, "parse_net",
                        lambda text, **kw: seen.append(kw.get("path")) or real(text, **kw))
    builds = _count_builds(monkeypatch)
    model = LandmarkModel.load(folder, verify=False)
    assert seen == [str(folder / "deploy.prototxt")]
    assert builds == {"graph": 1, "net": 1}
    assert model.net.blob_shapes["data"] == (1, 3, 12, 12)
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    ref = _opencv_outputs(folder / "deploy.prototxt", folder / "bundle.caffemodel", x)
    np.testing.assert_allclose(_ours(model.net, x), ref, rtol=1e-4, atol=1e-5)


# -- the pieces the flow is made of -------------------------------------------------------------

def test_the_net_keeps_its_parsed_prototxt(tiny):
    net = build_net(tiny, input_shapes={"data": (1, 3, 12, 12)})
    assert net.parsed.path == str(tiny)
    assert [layer.name for layer in net.net_param.layer] == ["input", "conv1", "relu1", "pool1",
                                                            "fc"]
    assert net.net_param.layer[1].convolution_param.num_output == 4


def test_net_graph_then_build_from_graph_is_build_net(tiny):
    graph = net_graph(tiny)
    assert [i.shape for i in graph.inputs] == [(2, 3, 12, 12)]
    net = build_from_graph(graph, input_shapes={"data": [1, 3, 16, 16]}, seed=7)
    assert net.blob_shapes["fc"] == (1, 5)
    assert net.blob_shapes["pool1"] == (1, 4, 7, 7)  # (16 - 3 + 1) = 14, pooled by 2
    assert graph.inputs[0].shape == (2, 3, 12, 12)  # the graph given is left as it was
    same = build_net(tiny, input_shapes={"data": (1, 3, 16, 16)}, seed=7)
    for (k, a), (k2, b) in zip(net.state_dict().items(), same.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_input_shapes_for_a_blob_that_is_no_input_are_refused(tiny):
    with pytest.raises(GraphError, match="--input-shape names conv1, which is not an input"):
        build_from_graph(net_graph(tiny), input_shapes={"conv1": (1, 4, 10, 10)})


def test_a_graph_made_without_reserved_names_is_refused(tmp_path):
    path = tmp_path / "forward.prototxt"
    path.write_text(TINY.replace('name: "relu1"', 'name: "forward"'))
    with pytest.raises(GraphError, match="layer 'forward' would shadow the CaffeNet attribute"):
        build_from_graph(build_graph(path))
    net = build_from_graph(net_graph(path))  # net_graph keeps the name clear: 'forward%'
    assert "forward%" in dict(net.named_children())
