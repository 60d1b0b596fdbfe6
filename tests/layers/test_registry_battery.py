"""One battery over every registered layer type (in the spirit of timm's tests over
``list_models()``): it builds on a small configuration, has a cost rule, a drawing label,
standalone code that gives the module's numbers, an ONNX file that gives them in ONNX Runtime
(or a declared reason why not), and a row in docs/layers.md.

The references are independent of the code that is checked: the emitted file runs as its own
module, ONNX Runtime runs the exported graph, and the docs row is read from the committed file.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.analyze import analyze
from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.emit import EmitError, emit_python
from landmarknet.layer_docs import _row
from landmarknet.layers.registry import registered_types, registration_of
from landmarknet.params import randomize
from landmarknet.render.model import build_diagram
from layers.configs import CONFIGS, VARIANTS, feed

ROOT = Path(__file__).resolve().parents[2]
TYPES = sorted(registered_types())
#: every type's config, then the variants: (config name, type)
CASES = [(t, t) for t in TYPES] + [(name, t) for name, (t, _) in sorted(VARIANTS.items())]


def test_every_registered_type_has_a_config():
    assert sorted(CONFIGS) == TYPES, "add a small net for each new type to tests/layers/configs.py"


@functools.lru_cache(maxsize=None)
def _built(case: str):
    """A type's config (or a variant) built (eval mode, seeded random blobs) with its inputs."""
    config = CONFIGS[case] if case in CONFIGS else VARIANTS[case][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(parse_net(config.text, path=f"{case.replace('/', '_')}.prototxt"))
    randomize(net, 0)
    net.eval()
    gen = torch.Generator().manual_seed(1)
    inputs = {i.name: feed(config.feeds.get(i.name, ""), tuple(i.shape), gen)
              for i in net.caffe_graph.inputs}
    return net, inputs


def _outputs(net, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(*(inputs[n] for n in net.input_names))


def _row_of_layer(stats, name: str = "x"):
    return next(r for r in stats.rows if r.name == name and not r.is_input)


@pytest.mark.parametrize("type_name", TYPES)
def test_builds_and_runs(type_name):
    net, inputs = _built(type_name)
    layer = next(i for i in net.layers.values() if i.node.name == "x")
    reg = registration_of(layer.node.type, layer.node.param)
    assert reg is registered_types()[type_name] or type_name == "Python"
    outs = _outputs(net, inputs)
    for name, value in outs.items():
        assert value.dtype.is_floating_point, name


@pytest.mark.parametrize("type_name", TYPES)
def test_has_a_cost_rule(type_name):
    reg = registered_types()[type_name]
    assert reg.cost is not None and reg.cost.text
    net, _ = _built(type_name)
    stats = analyze(net)
    row = _row_of_layer(stats)
    assert row.counted and row.macs >= 0 and row.ops >= 0
    assert stats.uncounted_types == []


@pytest.mark.parametrize("type_name", TYPES)
def test_has_a_drawing_label(type_name):
    reg = registered_types()[type_name]
    net, _ = _built(type_name)
    stats = analyze(net)
    row = _row_of_layer(stats)
    box = next(n for n in build_diagram(stats).nodes if row.index in n.rows)
    label = box.detail if box.row == row.index else next(
        f"{s.type} {s.detail}" for s in box.subrows if s.row == row.index)
    assert row.type in label
    if reg.detail is not None:
        assert row.detail and row.detail in label


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"emitted_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case,type_name", CASES)
def test_emitted_code_gives_the_modules_numbers(case, type_name, tmp_path):
    reg = registered_types()[type_name]
    net, inputs = _built(case)
    if reg.emit is None:
        assert reg.emit_reason, f"{type_name} has no emitter and says not why"
        with pytest.raises(EmitError, match="'x'"):
            emit_python(net)
        return
    path = tmp_path / f"{case.replace(':', '_').replace('/', '_')}.py"
    emit_python(net, path)
    model = _import(path).Net()
    result = model.load_state_dict(net.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    ours = _outputs(net, inputs)
    with torch.no_grad():
        theirs = model(*(inputs[n] for n in net.input_names))
    assert list(theirs) == list(ours)
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("case,type_name", CASES)
def test_onnx_runtime_gives_the_modules_numbers(case, type_name, tmp_path, monkeypatch):
    import landmarknet.export as export
    reg = registered_types()[type_name]
    net, inputs = _built(case)
    # trace with the config's inputs (labels must be valid class indices)
    monkeypatch.setattr(export, "random_inputs",
                        lambda net, seed=0, batch=None: {k: v.numpy() for k, v in inputs.items()})
    layer = next(i for i in net.layers.values() if i.node.name == "x")
    path = tmp_path / "net.onnx"
    rule = reg.onnx
    reason = rule.not_exportable or (rule.refuses(layer.node.param) if rule.refuses else None)
    if reason:
        with pytest.raises(export.ExportError, match="'x'"):
            export.export_onnx(net, path, check=False)
        return
    export.export_onnx(net, path, check=False)
    ours = _outputs(net, inputs)
    theirs = export.ort_outputs(path, {k: v.numpy() for k, v in inputs.items()})
    assert sorted(theirs) == sorted(ours)
    for name, value in ours.items():
        np.testing.assert_allclose(theirs[name], value.detach().numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("type_name", TYPES)
def test_appears_in_the_layer_reference(type_name):
    text = (ROOT / "docs" / "layers.md").read_text()
    assert _row(type_name, registered_types()[type_name]) + "\n" in text
