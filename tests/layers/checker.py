"""Shared checkers for the layer tests: build one layer the way the builder does, run it, compare.

In the spirit of onnx2torch's ``check_onnx_model``: a test names a layer type, its prototxt
fields, the inputs and an independent reference (``reference.numpy_caffe``, a loop written from
the C++ in the test file, or hand-derived literals); the checker builds the layer through the
registry, checks that shape inference on the 'meta' device agrees with the CPU run, and compares
every top with the reference. Two ways of building exist because the tests use both:

- ``run_layer`` / ``check_layer``: blobs filled from a torch generator (or their fillers), the
  module built directly on the CPU; the activation, shape, loss and detection tests use it;
- ``Layer``: built on 'meta', moved with ``to_empty`` and filled blob by blob from a numpy
  generator (the values are kept in ``layer.blobs`` for the reference); the convolution,
  pooling and normalisation tests use it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.fillers import fill
from landmarknet.layers.registry import LayerSpec, converter_for

RTOL, ATOL = 1e-5, 1e-6
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
#: the seed of the ``rng`` fixture of the convolution, pooling and normalisation tests
LAYER_SEED = 20240607


def layer_rng() -> np.random.Generator:
    """The seeded generator the conv/pool/norm tests were written with; a test module makes it
    its ``rng`` fixture with ``rng = pytest.fixture(layer_rng, name="rng")`` (it overrides the
    suite-wide ``rng`` of tests/conftest.py, whose seed differs)."""
    return np.random.default_rng(LAYER_SEED)


def seeded(seed: int = 0) -> np.random.Generator:
    """A numpy generator with a fixed seed."""
    return np.random.default_rng(seed)


def make_spec(type_: str, text: str, bottom_shapes, n_tops: int = 1, name: str = "layer1"
              ) -> LayerSpec:
    """A LayerSpec from prototxt fields, as the graph hands it to a converter."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    param.name, param.type = name, type_
    return LayerSpec(name, type_, param, [tuple(s) for s in bottom_shapes], n_tops,
                     source="test.prototxt:1")


def layer_spec(type_: str, text: str, shapes, n_tops: int = 1) -> LayerSpec:
    """A LayerSpec named 'l' (the name the error checks of ``assert_refused`` look for)."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    return LayerSpec("l", type_, param, [tuple(s) for s in shapes], n_tops)


# ----------------------------------------------------------------------------------------------
# build on the CPU, blobs from torch (activation, shape, loss, detection)
# ----------------------------------------------------------------------------------------------

def build_layer(spec: LayerSpec, seed: int = 0, fill_blobs: str = "random"):
    """(module on the CPU, top shapes learned on meta); blobs random or from their fillers."""
    with torch.device("meta"):
        meta = converter_for(spec)(spec)
    if meta.top_shapes is not None:
        meta_shapes = [tuple(s) for s in meta.top_shapes]
    else:
        with torch.no_grad():
            out = meta.module(*[torch.empty(s, device="meta") for s in spec.bottom_shapes])
        outs = list(out) if isinstance(out, tuple) else [out]
        assert all(o.device.type == "meta" for o in outs)
        meta_shapes = [tuple(o.shape) for o in outs]
    built = converter_for(spec)(spec)
    gen = torch.Generator().manual_seed(seed)
    for slot in built.blobs:
        tensor = built.module.get_parameter(slot.attr)
        assert tuple(tensor.shape) == tuple(slot.shape)
        if fill_blobs == "random":
            with torch.no_grad():
                tensor.copy_(torch.randn(slot.shape, generator=gen))
        else:
            fill(tensor, slot.filler, gen)
    return built, meta_shapes


def run_layer(type_: str, text: str, inputs, n_tops: int = 1, grad: bool = False, module=None):
    """Run the layer on numpy inputs; returns (outputs as tensors, module, input tensors)."""
    shapes = [np.shape(x) for x in inputs]
    spec = layer_spec(type_, text, shapes, n_tops)
    built, meta_shapes = build_layer(spec)
    mod = module or built.module
    xs = [torch.tensor(np.asarray(x, np.float32), requires_grad=grad) for x in inputs]
    out = mod(*xs)
    outs = list(out) if isinstance(out, tuple) else [out]
    assert len(outs) == n_tops
    if built.top_shapes is None:
        assert [tuple(o.shape) for o in outs] == meta_shapes, "meta and CPU shapes differ"
    return outs, mod, xs


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values, detached."""
    return t.detach().numpy()


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Same shape, and equal within rtol/atol (``np.testing.assert_allclose``)."""
    a = to_numpy(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def check_layer(type_: str, text: str, inputs, expected, *, rtol: float = RTOL,
                atol: float = ATOL) -> torch.Tensor:
    """Run a one-top layer on ``inputs`` and compare its top with ``expected``; returns the top."""
    (top,), _, _ = run_layer(type_, text, inputs)
    assert_close(top, expected, rtol=rtol, atol=atol)
    return top


def assert_refused(type_: str, text: str, shapes, n_tops: int = 1, match: str = "") -> None:
    """The converter refuses the layer with a LayerError naming it and containing ``match``."""
    spec = layer_spec(type_, text, shapes, n_tops)
    with pytest.raises(LayerError, match="layer 'l'") as info:
        converter_for(spec)(spec)
    assert match.lower() in str(info.value).lower(), str(info.value)


def with_kinks(rng: np.random.Generator, shape) -> np.ndarray:
    """Random values with some exact zeros and a wide range, to exercise the formulas' edges."""
    x = rng.normal(0, 3, shape).astype(np.float32)
    x.reshape(-1)[::7] = 0
    return x


# ----------------------------------------------------------------------------------------------
# build on meta, move with to_empty, blobs from numpy (convolution, pooling, normalisation)
# ----------------------------------------------------------------------------------------------

class Layer:
    """A converted layer, built like the builder does, with its blobs filled with random data."""

    def __init__(self, spec: LayerSpec, rng: np.random.Generator, blob_values=None,
                 train: bool = False) -> None:
        self.spec = spec
        with torch.device("meta"):
            built = converter_for(spec)(spec)
        self.built = built
        self.module = built.module.train(train)
        self.meta_shapes = self._tops(self.module(*[torch.empty(s, device="meta")
                                                    for s in spec.bottom_shapes]))
        self.module.to_empty(device="cpu")
        self.blobs: list[np.ndarray] = []
        for i, slot in enumerate(built.blobs):
            t = self.tensor(slot.attr)
            assert tuple(t.shape) == tuple(slot.shape), (slot.attr, t.shape, slot.shape)
            assert isinstance(t, torch.nn.Parameter) == slot.learnable, slot.attr
            if blob_values is not None and blob_values[i] is not None:
                value = np.asarray(blob_values[i], dtype=np.float32).reshape(slot.shape)
            else:
                value = rng.standard_normal(slot.shape).astype(np.float32)
            with torch.no_grad():
                t.copy_(torch.from_numpy(value))
            self.blobs.append(value)

    def tensor(self, attr: str) -> torch.Tensor:
        """The module's tensor at a dotted attribute path."""
        obj = self.module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    @staticmethod
    def _tops(out) -> list[tuple[int, ...]]:
        outs = out if isinstance(out, tuple) else (out,)
        return [tuple(o.shape) for o in outs]

    def __call__(self, *xs: np.ndarray, grad: bool = False):
        ts = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).requires_grad_(grad)
              for x in xs]
        out = self.module(*ts)
        assert self._tops(out) == self.meta_shapes, "meta shape inference disagrees with CPU"
        assert len(self.meta_shapes) == self.spec.n_tops
        if grad:
            return out, ts
        outs = out if isinstance(out, tuple) else (out,)
        res = [o.detach().numpy() for o in outs]
        return res[0] if len(res) == 1 else res


def close(actual, expected, rtol: float = RTOL) -> None:
    """Relative comparison; the absolute floor is rtol times the reference's largest value
    (float32 sums that cancel to ~0 cannot be compared relatively). NaN must match NaN."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)


def bn_blobs(rng: np.random.Generator, c: int, s: float) -> list[np.ndarray]:
    """BatchNorm's three blobs: mean, a positive variance, and the scale factor ``s``."""
    mean = rng.standard_normal(c).astype(np.float32) * 3
    var = (rng.random(c).astype(np.float32) + 0.5) * 4
    return [mean, var, np.array([s], np.float32)]


# ----------------------------------------------------------------------------------------------
# batteries the conv, pool and norm families run over their own cases
# ----------------------------------------------------------------------------------------------

def assert_gradients_flow(type_: str, text: str, shapes, rng: np.random.Generator) -> None:
    """Every learnable blob and every float bottom gets a finite, non-zero gradient."""
    spec = make_spec(type_, text, shapes)
    layer = Layer(spec, rng, train=True)
    if type_ == "Embed":
        xs = [rng.integers(0, 4, size=shapes[0]).astype(np.float32)]
    else:
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out, ts = layer(*xs, grad=True)
    if type_ == "Embed":
        ts = []  # indices: Caffe refuses to back-propagate to Embed's input
    weights = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
    (out * weights).sum().backward()
    params = list(layer.module.parameters())
    assert len(params) == sum(s.learnable for s in layer.built.blobs)
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for t in ts:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def assert_meta_shapes_equal_cpu(type_: str, text: str, shapes, train: bool,
                                 rng: np.random.Generator) -> None:
    """A module built on 'meta' gives the CPU run's top shape and parameter shapes."""
    spec = make_spec(type_, text, shapes)
    layer = Layer(spec, rng, train=train)  # asserts meta == CPU on every call
    with torch.device("meta"):
        m = converter_for(spec)(spec).module.train(train)
        out = m(*[torch.empty(s) for s in shapes])
    assert out.device.type == "meta"
    y = layer(*[rng.standard_normal(s).astype(np.float32) for s in shapes])
    assert y.shape == tuple(out.shape)
    assert [tuple(p.shape) for p in m.parameters()] == [
        tuple(p.shape) for p in layer.module.parameters()]


def assert_bad_parameters_name_the_layer(type_: str, text: str, shapes, word: str) -> None:
    """A LayerError naming the layer, its type, its file:line and the offending ``word``."""
    spec = make_spec(type_, text, shapes, name="bad_layer")
    with pytest.raises(LayerError) as info:
        converter_for(spec)(spec)
    message = str(info.value)
    assert info.value.layer == "bad_layer" and "bad_layer" in message
    assert type_ in message and "test.prototxt:1" in message
    assert word in message
