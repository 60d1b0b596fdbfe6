"""The emitted standalone PyTorch file: it imports with torch alone, loads the state_dict our net
saves, and computes what our GraphModule computes."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.emit import EmitError, emit_python
from landmarknet.params import load_weights, randomize, save_weights

REPO = Path(__file__).resolve().parent.parent

# Nearly every layer type the generator knows, with the tricky parameters: _h/_w geometry, a
# grouped 1x1, Caffe pooling that torch cannot do (stride > kernel; ceil with padding; global),
# shared parameters, two-bottom Scale, coefficients, in-place chains, Reshape with 0 and -1, and
# a layer name that is not a Python identifier.
KITCHEN_SINK = r"""name: "kitchen_sink"
input: "data" input_shape { dim: 2 dim: 4 dim: 9 dim: 9 }
input: "aux" input_shape { dim: 2 dim: 4 }
layer { name: "conv'1 #)" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 } }
layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }
layer { name: "sc" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "prelu_s" type: "PReLU" bottom: "c1" top: "c1" prelu_param { channel_shared: true } }
layer { name: "g" type: "Convolution" bottom: "c1" top: "g" convolution_param { num_output: 8 kernel_size: 1 group: 4 } }
layer { name: "prelu" type: "PReLU" bottom: "g" top: "g" }
layer { name: "slice" type: "Slice" bottom: "g" top: "s1" top: "s2" top: "s3"
        slice_param { axis: 1 slice_point: 2 slice_point: 5 } }
layer { name: "prod" type: "Eltwise" bottom: "s1" bottom: "s1" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "s2" bottom: "s3" top: "mx" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "prod" bottom: "mx" top: "cat" }
layer { name: "lrn_a" type: "LRN" bottom: "cat" top: "la" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "lrn_w" type: "LRN" bottom: "la" top: "lw" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "ave" type: "Pooling" bottom: "lw" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "far" type: "Pooling" bottom: "lw" top: "far" pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
layer { name: "gp" type: "Pooling" bottom: "lw" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "dc" type: "Deconvolution" bottom: "ave" top: "dc" convolution_param { num_output: 4 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "dc" bottom: "lw" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "mvn" type: "MVN" bottom: "crop" top: "mvn" }
layer { name: "pw" type: "Power" bottom: "mvn" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "ex" type: "Exp" bottom: "pw" top: "ex" exp_param { scale: -0.1 } }
layer { name: "lg" type: "Log" bottom: "ex" top: "lg" log_param { base: 2 shift: 1 } }
layer { name: "el" type: "ELU" bottom: "lg" top: "el" }
layer { name: "th" type: "TanH" bottom: "el" top: "el" }
layer { name: "ab" type: "AbsVal" bottom: "el" top: "ab" }
layer { name: "bnll" type: "BNLL" bottom: "ab" top: "bnll" }
layer { name: "lrelu" type: "ReLU" bottom: "bnll" top: "bnll" relu_param { negative_slope: 0.1 } }
layer { name: "sig" type: "Sigmoid" bottom: "bnll" top: "sig" }
layer { name: "bias" type: "Bias" bottom: "sig" top: "bias" }
layer { name: "flat" type: "Flatten" bottom: "bias" top: "flat" }
layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "perm" type: "Permute" bottom: "resh" top: "perm" permute_param { order: 0 order: 2 order: 1 } }
layer { name: "red" type: "Reduction" bottom: "perm" top: "red" reduction_param { operation: MEAN axis: 2 } }
layer { name: "split" type: "Split" bottom: "red" top: "r1" top: "r2" }
layer { name: "fc" type: "InnerProduct" bottom: "r1" top: "fc" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 4 } }
layer { name: "fc2" type: "InnerProduct" bottom: "r2" top: "fc2" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 4 } }
layer { name: "fct" type: "InnerProduct" bottom: "aux" top: "fct" inner_product_param { num_output: 3 transpose: true } }
layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "fc2" bottom: "aux" top: "sum"
        eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 } }
layer { name: "sc2" type: "Scale" bottom: "sum" bottom: "aux" top: "sc2" scale_param { axis: 0 } }
layer { name: "clip" type: "Clip" bottom: "sc2" top: "clip" clip_param { min: -1 max: 1 } }
layer { name: "r6" type: "ReLU6" bottom: "clip" top: "r6" }
layer { name: "sw" type: "Swish" bottom: "r6" top: "sw" }
layer { name: "tile" type: "Tile" bottom: "sw" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "thr" type: "Threshold" bottom: "tile" top: "thr" threshold_param { threshold: 0.1 } }
layer { name: "prob" type: "Softmax" bottom: "tile" top: "prob" }
layer { name: "drop" type: "Dropout" bottom: "prob" top: "prob" }
layer { name: "up" type: "Upsample" bottom: "far" top: "up" upsample_param { scale: 2 } }
layer { name: "shuf" type: "ShuffleChannel" bottom: "up" top: "shuf" shuffle_channel_param { group: 5 } }
layer { name: "silence" type: "Silence" bottom: "gp" }
"""


def _import(path: Path, name: str = "emitted_net"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _roundtrip(net, tmp_path, *, train: bool = False, atol: float = 0.0):
    """Emit, import, load our saved .pt, compare every output (and BatchNorm updates)."""
    out = tmp_path / "model.py"
    source = emit_python(net, out)
    ast.parse(source)
    weights = tmp_path / "weights.pt"
    save_weights(net, weights)
    mod = _import(out)
    model = mod.Net()
    result = model.load_state_dict(torch.load(weights, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(net.state_dict())
    net.train(train)
    model.train(train)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(i.shape, generator=gen) for i in net.caffe_graph.inputs]
    with torch.no_grad():
        ours = net(*xs)
        theirs = model(*xs)
    assert list(theirs) == list(ours) == model.output_names
    for k in ours:
        assert theirs[k].shape == ours[k].shape, k
        torch.testing.assert_close(theirs[k], ours[k], rtol=1e-6, atol=atol, msg=k)
    if train:  # Caffe's moving sums were updated the same way
        for key, value in net.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    return source, model


def test_kitchen_sink_matches_the_graph_module(tmp_path):
    with pytest.warns(UserWarning, match="outside"):  # the stride > kernel pooling
        net = build_net(parse_net(KITCHEN_SINK, path="kitchen_sink.prototxt"))
    randomize(net, 3)
    source, model = _roundtrip(net, tmp_path)
    # readable: in-place layers reassign the blob, non-identifier names go through getattr
    assert "c1 = self.bn(c1)" in source
    assert "getattr(self, 'conv%271%20%23%29')(data)" in source  # module_name's encoding
    assert "self.fc2.weight = self.fc.weight" in source
    assert model.fc2.weight is model.fc.weight  # sharing survives
    # needs torch only
    imports = {n.names[0].name for n in ast.walk(ast.parse(source))
               if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imports <= {"torch", "torch.nn", "torch.nn.functional"}


def test_train_mode_batch_norm_updates_match(tmp_path):
    text = """input: "data" input_shape { dim: 4 dim: 3 dim: 5 dim: 5 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 6 kernel_size: 3 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }"""
    net = build_net(parse_net(text, path="bn.prototxt"))
    randomize(net, 1)
    _roundtrip(net, tmp_path, train=True, atol=1e-6)


@pytest.mark.parametrize("name", ["mtcnn_det1/det1", "mtcnn_det3/det3"])
def test_mtcnn_with_trained_weights(zoo, tmp_path, name):
    net = build_net(zoo / f"{name}.prototxt")
    load_weights(net, zoo / f"{name}.caffemodel", strict=True)
    _roundtrip(net, tmp_path)


@pytest.mark.parametrize("path,shape", [
    ("caffe_onnx_test_tiny/test.prototxt", None),  # BN + Scale with trained weights
    ("squeezenet_v1.1/deploy.prototxt", (1, 3, 99, 99)),  # Concat, global AVE, Dropout
    ("ultraface_slim320/slim-320.prototxt", (1, 3, 120, 160)),  # Permute, Reshape, depthwise
])
def test_zoo_nets(zoo, tmp_path, path, shape):
    name = "input" if "ultraface" in path else "data"
    net = build_net(zoo / path, input_shapes={name: shape} if shape else None)
    weights = zoo / path.replace(".prototxt", ".caffemodel")
    if weights.exists():
        load_weights(net, weights, strict=True)
    else:
        randomize(net, 0)
    _roundtrip(net, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["bvlc_googlenet/deploy.prototxt",
                                  "resnet_50/ResNet-50-deploy.prototxt",
                                  "hed/deploy.prototxt",
                                  "mobilenet_v1/mobilenet_deploy.prototxt",
                                  "openpose_face/pose_deploy.prototxt"])
def test_big_zoo_nets(zoo, tmp_path, path):
    shapes = {"image": (1, 3, 96, 96)} if "openpose" in path else {"data": (1, 3, 224, 224)}
    if "hed" in path:  # Deconvolution + Crop, six outputs
        shapes = {"data": (1, 3, 64, 64)}
    net = build_net(zoo / path, input_shapes=shapes)
    randomize(net, 0)
    _roundtrip(net, tmp_path)


SHIPPED = sorted((REPO / "prototxt").glob("*/deploy.prototxt"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_nets(tmp_path, path):
    net = build_net(path)
    randomize(net, 0)
    _roundtrip(net, tmp_path)


def test_shipped_landmark_layers_when_present(tmp_path):
    path = REPO / "prototxt/squeeze77_align/deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} is not generated yet (tools/generate_prototxt.py)")
    net = build_net(path)
    randomize(net, 0)
    source, _ = _roundtrip(net, tmp_path, atol=1e-6)
    assert "affine_align(" in source and "region_pool(" in source


UNSUPPORTED = """input: "data" input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "top2" type: "TestOnlyScaled" bottom: "conv" top: "am" }
layer { name: "spp" type: "TestOnlyScaled" bottom: "conv" top: "spp" }
"""


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


@pytest.fixture
def unemittable_type():
    """A layer type registered without an emitter (every built-in type has one since the
    registry carries emitters); removed again so that other tests see the real registry."""
    from landmarknet.layers import BlobSlot, Built, registry

    @registry.register("TestOnlyScaled", family="custom", origin="tests")
    def scaled(spec):
        """x times a learned per-channel factor."""
        return Built(_Scaled(), [BlobSlot("weight", (4,))])

    yield
    registry._REGISTRY.pop("TestOnlyScaled")


def test_unsupported_layers_are_named_and_stubs_keep_the_weights(tmp_path, unemittable_type):
    net = build_net(parse_net(UNSUPPORTED, path="u.prototxt"))
    randomize(net, 1)
    with pytest.raises(EmitError) as err:
        emit_python(net, tmp_path / "m.py")
    msg = str(err.value)
    assert "'top2' (TestOnlyScaled, u.prototxt:" in msg and "'spp' (TestOnlyScaled" in msg
    assert "stubs=True" in msg
    emit_python(net, tmp_path / "m.py", stubs=True)
    model = _import(tmp_path / "m.py", "stubbed").Net()
    model.load_state_dict(net.state_dict())
    assert torch.equal(model.get_submodule("top2").weight, net.get_submodule("top2").weight)
    with pytest.raises(NotImplementedError, match="top2"):
        model(torch.zeros(1, 3, 6, 6))


def test_the_emitted_file_runs_as_a_script(tmp_path, zoo):
    net = build_net(zoo / "mtcnn_det1/det1.prototxt")
    emit_python(net, tmp_path / "det1.py", class_name="PNet")
    res = subprocess.run([sys.executable, str(tmp_path / "det1.py")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "prob1 (1, 2, 1, 1)" in res.stdout
    with pytest.raises(EmitError):
        emit_python(net, None, class_name="not valid")


def test_names_cannot_break_out_of_comments_or_strings(tmp_path):
    text = textwrap.dedent(r"""
        name: "evil\n\"\"\" import os"
        input: "in put\nx" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
        layer { name: "c'); import os; ('#" type: "Convolution" bottom: "in put\nx"
                top: "top\" + 1" convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "r" type: "ReLU" bottom: "top\" + 1" top: "top\" + 1" }
    """)
    try:
        net = build_net(parse_net(text, path="evil.prototxt"))
    except Exception as exc:  # noqa: BLE001 - the core may refuse such names itself
        pytest.skip(f"the builder refuses these names: {exc}")
    source = emit_python(net, tmp_path / "evil.py")
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [a.name for n in imports for a in n.names] == ["torch", "torch.nn",
                                                          "torch.nn.functional"]
    model = _import(tmp_path / "evil.py", "evil_mod").Net()
    model.load_state_dict(net.state_dict())
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(model(x)['top" + 1'], net(x)['top" + 1'])
