"""Any string is a legal Caffe name: layer names, blob names and ``param { name }`` that are
Python keywords, module internals, paths, unicode or empty must build, run, keep their names in
weight files and export, exactly like the same net with plain names."""
from __future__ import annotations

import json
import keyword
import subprocess
import sys

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LandmarknetError
from landmarknet.graph import layer_name_of, module_name
from landmarknet.params import load_weights, save_weights

#: Names that broke fx code generation, add_module or the weight files, and their neighbours.
HOSTILE = [
    "None", "True", "False", "lambda", "import", "class", "def", "return", "match", "self",
    "_modules", "_parameters", "_buffers", "__class__", "__dict__", "__init__", "forward",
    "training", "graph", "code", "layers", "state_dict", "a.b", "a/b", "a b", "", "é", "名字",
    "%", "%25", "x%", "layer0", "0abc", 'x"y', "x'y", "b\\s", "n\nl", "t\tt", "torch",
    "_item", "getattr", "print", "x#2", "x@y", "data", "input", "__builtins__", "inf", "nan",
    "_",
]

SHAPE = (1, 3, 4, 4)


def _q(name: str) -> str:
    """A prototxt string literal (JSON's escapes are text-format escapes here)."""
    return json.dumps(name, ensure_ascii=False)


def _net_text(layer: str, blob: str, param: str) -> str:
    """Input -> conv -> conv (sharing its weights by param name) -> in-place ReLU."""
    conv = ('convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" '
            'std: 1 } bias_filler { type: "uniform" min: -1 max: 1 } }')
    return (f'name: "n"\ninput: {_q(blob)} input_shape {{ dim: 1 dim: 3 dim: 4 dim: 4 }}\n'
            f"layer {{ name: {_q(layer)} type: \"Convolution\" bottom: {_q(blob)} "
            f"top: {_q(blob + 'c')} param {{ name: {_q(param)} }} {conv} }}\n"
            f"layer {{ name: {_q(layer + '2')} type: \"Convolution\" bottom: {_q(blob + 'c')} "
            f"top: {_q(blob + 'd')} param {{ name: {_q(param)} }} {conv} }}\n"
            f"layer {{ name: {_q(layer + 'r')} type: \"ReLU\" bottom: {_q(blob + 'd')} "
            f"top: {_q(blob + 'd')} }}\n")


def _plain(tmp_path, param: str = "w"):
    """The same net with plain names; an empty param name shares nothing, as in Caffe."""
    path = tmp_path / "plain.prototxt"
    path.write_text(_net_text("conv", "data", param))
    return build_net(path, seed=3)


def _x() -> torch.Tensor:
    return torch.linspace(-1, 1, int(np.prod(SHAPE))).reshape(SHAPE)


@pytest.mark.parametrize("name", HOSTILE, ids=[repr(n) for n in HOSTILE])
def test_hostile_names_build_run_and_round_trip_weights(name, tmp_path):
    path = tmp_path / "n.prototxt"
    path.write_text(_net_text(name, name, name))
    net = build_net(path, seed=3)
    assert [i.node.name for i in net.layers.values()] == [name, name + "2", name + "r"]
    # Renaming changes nothing: the same fillers, the same shared weight, the same outputs.
    plain = _plain(tmp_path, "w" if name else "")
    out = net.run({name: _x()})
    ref = plain.run({"data": _x()})
    assert list(out) == [name + "d"]
    assert float(out[name + "d"].std()) > 0.1  # not a saturated, all-zero output
    torch.testing.assert_close(out[name + "d"], ref["datad"], rtol=0, atol=0)
    first, second = list(net.children())[:2]
    assert (first.weight is second.weight) == bool(name)  # sharing survived the name

    for ext in (".caffemodel", ".h5", ".pt"):
        file = tmp_path / f"w{ext}"
        if ext == ".h5" and name == "":
            # HDF5 cannot hold an empty group name (nor can Caffe's writer): a clear error.
            with pytest.raises(LandmarknetError, match="cannot write"):
                save_weights(net, file)
            continue
        save_weights(net, file)
        other = build_net(path, seed=9)
        report = load_weights(other, file)
        assert report.copied == [name, name + "2"], report.render()
        torch.testing.assert_close(other.run({name: _x()})[name + "d"], out[name + "d"],
                                   rtol=0, atol=0)
    # The .caffemodel speaks the prototxt's names (read with protobuf, not our reader).
    model = caffe_pb2.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    assert [layer.name for layer in model.layer if layer.blobs] == [name, name + "2"]


def test_module_names_are_reversible_and_never_attributes():
    from landmarknet.build import reserved_names
    reserved = reserved_names()
    for name in HOSTILE + ["forward%", "x%25%", "%%", "a..b", "~"]:
        mod = module_name(name, reserved)
        assert layer_name_of(mod) == name
        assert mod and "." not in mod
        assert mod not in reserved and not keyword.iskeyword(mod)
        assert not (mod.startswith("__") and mod.isidentifier())
    assert len({module_name(n, reserved) for n in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("name", ["None", "lambda", "_modules", "__class__", "self", "a.b",
                                  "名字", 'x"y', "forward"])
def test_hostile_names_export_to_onnx(name, tmp_path):
    from landmarknet.export import export_onnx, ort_outputs
    path = tmp_path / "n.prototxt"
    path.write_text(_net_text(name, name, name))
    net = build_net(path, seed=3)
    report = export_onnx(net, tmp_path / "n.onnx")
    assert report.ok, report.render()
    x = _x().numpy()
    got = ort_outputs(tmp_path / "n.onnx", {name: x})  # inputs and outputs keep blob names
    np.testing.assert_allclose(got[name + "d"], _plain(tmp_path).run(
        {"data": torch.from_numpy(x)})["datad"].detach().numpy(), rtol=1e-6, atol=1e-6)


def test_cli_build_json_with_hostile_names(tmp_path):
    """What the fuzzer ran: `landmarknet build FILE --json` on a net named with keywords."""
    names = ["None", "lambda", "import", "_modules", "__class__", "self", ""]
    text = 'name: "n"\ninput: "None" input_shape { dim: 1 dim: 2 }\n'
    bottom = "None"
    for n in names:
        text += (f'layer {{ name: {_q(n)} type: "InnerProduct" bottom: {_q(bottom)} '
                 f'top: {_q(n + "t")} param {{ name: {_q(n)} }} '
                 'inner_product_param { num_output: 2 } }\n')
        bottom = n + "t"
    (tmp_path / "n.prototxt").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "landmarknet.cli.main", "build",
                           str(tmp_path / "n.prototxt"), "--json", "--save",
                           str(tmp_path / "w.caffemodel")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert [r["name"] for r in table["layers"][1:]] == names
    assert table["outputs"] == {"t": [1, 2]}
    model = caffe_pb2.NetParameter.FromString((tmp_path / "w.caffemodel").read_bytes())
    assert [layer.name for layer in model.layer] == names
