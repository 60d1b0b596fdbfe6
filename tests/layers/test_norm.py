"""BatchNorm, Scale, Bias, LRN, MVN and Normalize (landmarknet/layers/norm.py) against
``reference.numpy_caffe`` (numpy re-implementations of Caffe's C++) and, for BatchNorm's
backward pass, the formula of batch_norm_layer.cpp written out here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError
from landmarknet.layers.registry import converter_for
from layers.checker import (Layer, assert_bad_parameters_name_the_layer, assert_gradients_flow,
                            assert_meta_shapes_equal_cpu, bn_blobs, close, layer_rng, make_spec)
from reference import numpy_caffe as R

rng = pytest.fixture(layer_rng, name="rng")


# ----------------------------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [1.0, 7.5, 0.0])
def test_batchnorm_test_phase_uses_blobs_over_scale_factor(s, rng):
    spec = make_spec("BatchNorm", "batch_norm_param { eps: 0.001 }", [(2, 4, 3, 5)])
    blobs = bn_blobs(rng, 4, s)
    layer = Layer(spec, rng, blob_values=blobs, train=False)
    slots = layer.built.blobs
    assert [(b.attr, b.shape, b.learnable) for b in slots] == [
        ("mean", (4,), False), ("variance", (4,), False), ("scale_factor", (1,), False)]
    assert not list(layer.module.parameters())
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    ref = R.batch_norm(x, *blobs, eps=1e-3, use_global_stats=True)
    if s == 0:  # factor 0: statistics are zero, y = x / sqrt(eps)
        close(ref, x / np.sqrt(1e-3))
    close(layer(x), ref)
    # the blobs did not move in TEST
    close(layer.module.mean.numpy(), blobs[0])
    close(layer.module.scale_factor.numpy(), blobs[2])


def test_batchnorm_train_phase_batch_stats_and_caffe_update(rng):
    spec = make_spec("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }",
                     [(3, 4, 5, 2)])
    blobs = bn_blobs(rng, 4, 2.0)
    layer = Layer(spec, rng, blob_values=blobs, train=True)
    mean_b, var_b, s_b = blobs
    for step in range(2):
        x = (rng.standard_normal((3, 4, 5, 2)) * 2 + 1).astype(np.float32)
        y = layer(x)
        close(y, R.batch_norm(x, eps=1e-5, use_global_stats=False))
        mean_b, var_b, s_b = R.batch_norm_update(x, mean_b, var_b, s_b,
                                                 moving_average_fraction=0.9)
        close(layer.module.mean.numpy(), mean_b)
        close(layer.module.variance.numpy(), var_b)
        close(layer.module.scale_factor.numpy(), s_b)
    # after training, eval() uses mean/s and var/s of the accumulated blobs
    layer.module.eval()
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    close(layer(x), R.batch_norm(x, mean_b, var_b, s_b, use_global_stats=True))


def test_batchnorm_explicit_use_global_stats_overrides_mode(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    blobs = bn_blobs(rng, 3, 3.0)
    on = make_spec("BatchNorm", "batch_norm_param { use_global_stats: true }", [x.shape])
    layer = Layer(on, rng, blob_values=blobs, train=True)
    close(layer(x), R.batch_norm(x, *blobs, use_global_stats=True))
    close(layer.module.scale_factor.numpy(), blobs[2])  # no update with global stats
    off = make_spec("BatchNorm", "batch_norm_param { use_global_stats: false }", [x.shape])
    layer = Layer(off, rng, blob_values=blobs, train=False)
    close(layer(x), R.batch_norm(x, use_global_stats=False))
    # Caffe updates its blobs whenever it uses batch statistics, even in a TEST net
    close(layer.module.scale_factor.numpy(), R.batch_norm_update(x, *blobs)[2])


def test_batchnorm_2d_bottom(rng):
    spec = make_spec("BatchNorm", "", [(6, 5)])
    blobs = bn_blobs(rng, 5, 0.5)
    layer = Layer(spec, rng, blob_values=blobs)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    close(layer(x), R.batch_norm(x, *blobs, use_global_stats=True))


def test_batchnorm_backward_matches_caffe(rng):
    # batch_norm_layer.cpp Backward_cpu (batch statistics):
    # dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means over all axes but 1.
    spec = make_spec("BatchNorm", "", [(3, 2, 4, 3)])
    layer = Layer(spec, rng, train=True)
    x = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    out, (t,) = layer(x, grad=True)
    dy = rng.standard_normal((3, 2, 4, 3))
    (out * torch.from_numpy(dy.astype(np.float32))).sum().backward()
    axes = (0, 2, 3)
    xd = x.astype(np.float64)
    std = np.sqrt(xd.var(axis=axes, keepdims=True) + 1e-5)
    y = (xd - xd.mean(axis=axes, keepdims=True)) / std
    dx = (dy - dy.mean(axis=axes, keepdims=True)
          - (dy * y).mean(axis=axes, keepdims=True) * y) / std
    close(t.grad.numpy(), dx, rtol=1e-4)


def test_batch_norm_lr_mult_refused_in_train_ignored_in_test():
    """BVLC Caffe refuses learnable statistics; deploy files of nets trained with older Caffe or
    SSD-based forks carry them (ShuffleNet v2's), and OpenCV runs those: TEST warns, TRAIN
    refuses."""
    spec = make_spec("BatchNorm", "param { lr_mult: 1 }", [(2, 3, 4, 5)], name="bn")
    spec.phase = "train"
    with pytest.raises(LayerError, match="lr_mult 1.0.*Scale layer"):
        converter_for(spec)(spec)
    spec.phase = "test"
    with pytest.warns(UserWarning, match="BatchNorm layers with lr_mult != 0.*ignored"):
        with torch.device("meta"):
            converter_for(spec)(spec)


# ----------------------------------------------------------------------------------------------
# Scale and Bias
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,shape,blob_shape", [
    ("", (2, 3, 4, 5), (3,)),
    ("axis: 1 num_axes: 2", (2, 3, 4, 5), (3, 4)),
    ("axis: 2 num_axes: -1", (2, 3, 4, 5), (4, 5)),
    ("axis: -1", (2, 3, 4, 5), (5,)),
    ("num_axes: 0", (2, 3, 4, 5), ()),
    ("axis: 0 num_axes: 2", (2, 3), (2, 3)),
])
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_one_bottom(fields, shape, blob_shape, bias_term, rng):
    spec = make_spec("Scale", f"scale_param {{ {fields} bias_term: {str(bias_term).lower()} }}",
                     [shape])
    layer = Layer(spec, rng)
    slots = layer.built.blobs
    assert slots[0].shape == blob_shape and slots[0].learnable
    # scale_layer.cpp: no filler given -> constant 1 (identity); bias_filler absent -> 0
    assert slots[0].filler.type == "constant" and slots[0].filler.value == 1.0
    assert len(slots) == (2 if bias_term else 1)
    if bias_term:
        assert slots[1].shape == blob_shape and slots[1].filler is None
    x = rng.standard_normal(shape).astype(np.float32)
    b = layer.blobs[1] if bias_term else None
    close(layer(x), R.scale(x, layer.blobs[0], b, axis=int(spec.param.scale_param.axis),
                            num_axes=int(spec.param.scale_param.num_axes)))


@pytest.mark.parametrize("axis,shape,other,bias_shape", [
    (1, (2, 3, 4, 5), (3, 4), (3, 4)),
    (0, (2, 3, 4, 5), (2, 3), (2, 3)),
    (-2, (2, 3, 4, 5), (4, 5), (4, 5)),
])
def test_scale_two_bottoms(axis, shape, other, bias_shape, rng):
    text = f"""scale_param {{ axis: {axis} bias_term: true
               bias_filler {{ type: "constant" value: 2 }} }}"""
    spec = make_spec("Scale", text, [shape, other])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape) for s in layer.built.blobs] == [("bias", bias_shape)]
    assert layer.built.blobs[0].filler.value == 2.0
    x = rng.standard_normal(shape).astype(np.float32)
    s = rng.standard_normal(other).astype(np.float32)
    close(layer(x, s), R.scale(x, s, layer.blobs[0], axis=axis))


def test_scale_filler_from_prototxt(rng):
    spec = make_spec("Scale", 'scale_param { filler { type: "constant" value: 0.25 } }',
                     [(1, 2, 3, 3)])
    layer = Layer(spec, rng)
    assert layer.built.blobs[0].filler.value == 0.25


@pytest.mark.parametrize("fields,shape,blob_shape", [
    ("", (2, 3, 4, 5), (3,)),
    ("axis: 1 num_axes: 2", (2, 3, 4, 5), (3, 4)),
    ("axis: 2 num_axes: -1", (2, 3, 4, 5), (4, 5)),
    ("num_axes: 0", (2, 3, 4), ()),
])
def test_bias_one_bottom(fields, shape, blob_shape, rng):
    spec = make_spec("Bias", f"bias_param {{ {fields} }}", [shape])
    layer = Layer(spec, rng)
    assert [(s.attr, s.shape, s.filler) for s in layer.built.blobs] == [("bias", blob_shape,
                                                                         None)]
    x = rng.standard_normal(shape).astype(np.float32)
    close(layer(x), R.bias(x, layer.blobs[0], axis=int(spec.param.bias_param.axis)))


def test_bias_two_bottoms(rng):
    spec = make_spec("Bias", "bias_param { axis: 1 }", [(2, 3, 4, 5), (3, 4)])
    layer = Layer(spec, rng)
    assert layer.built.blobs == []
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    close(layer(x, b), R.bias(x, b, axis=1))


# ----------------------------------------------------------------------------------------------
# LRN, MVN, Normalize
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("region,size", [("ACROSS_CHANNELS", 5), ("ACROSS_CHANNELS", 3),
                                         ("WITHIN_CHANNEL", 3), ("WITHIN_CHANNEL", 5)])
def test_lrn_both_regions(region, size, rng):
    # alpha large enough that the normaliser matters; k = 2 must be ignored by WITHIN_CHANNEL
    text = (f"lrn_param {{ local_size: {size} alpha: 0.5 beta: 0.75 k: 2 "
            f"norm_region: {region} }}")
    spec = make_spec("LRN", text, [(2, 7, 6, 5)])
    layer = Layer(spec, rng)
    x = (rng.standard_normal((2, 7, 6, 5)) * 2).astype(np.float32)
    close(layer(x), R.lrn(x, local_size=size, alpha=0.5, beta=0.75, k=2.0, norm_region=region))


@pytest.mark.parametrize("fields,kwargs", [
    ("", {}),
    ("across_channels: true", {"across_channels": True}),
    ("normalize_variance: false", {"normalize_variance": False}),
    ("across_channels: true normalize_variance: false",
     {"across_channels": True, "normalize_variance": False}),
    ("eps: 0.5", {"eps": 0.5}),  # large eps: shows it is added to the std, not the variance
])
def test_mvn_variants(fields, kwargs, rng):
    spec = make_spec("MVN", f"mvn_param {{ {fields} }}", [(2, 3, 4, 5)])
    layer = Layer(spec, rng)
    x = (rng.standard_normal((2, 3, 4, 5)) * 0.7 + 2).astype(np.float32)
    close(layer(x), R.mvn(x, **kwargs))


def test_normalize_defaults(rng):
    # SSD's NormalizeParameter defaults: across_spatial true, channel_shared true, eps 1e-10,
    # scale filler constant 1; channel_shared gives a 0-axis blob (Blob(vector<int>(0))).
    spec = make_spec("Normalize", "", [(2, 5, 3, 4)])
    layer = Layer(spec, rng)
    (slot,) = layer.built.blobs
    assert slot.shape == () and slot.filler.type == "constant" and slot.filler.value == 1.0
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    close(layer(x), R.normalize(x, layer.blobs[0].reshape(1)))


@pytest.mark.parametrize("across_spatial,channel_shared", [(False, False), (True, False),
                                                           (False, True)])
def test_normalize_variants(across_spatial, channel_shared, rng):
    if "norm_param" not in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
        pytest.skip("the schema has no norm_param (SSD's NormalizeParameter) yet")
    text = (f"norm_param {{ across_spatial: {str(across_spatial).lower()} "
            f"channel_shared: {str(channel_shared).lower()} eps: 0.01 "
            'scale_filler { type: "constant" value: 20 } }')
    spec = make_spec("Normalize", text, [(2, 5, 3, 4)])
    layer = Layer(spec, rng)
    (slot,) = layer.built.blobs
    assert slot.shape == (() if channel_shared else (5,)) and slot.filler.value == 20
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    close(layer(x), R.normalize(x, layer.blobs[0].reshape(-1), across_spatial=across_spatial,
                                channel_shared=channel_shared, eps=0.01))


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------

GRAD_CASES = [
    ("Scale", "scale_param { bias_term: true num_axes: 2 }", [(2, 3, 4, 2)]),
    ("Scale", "scale_param { axis: 0 }", [(2, 3, 4, 2), (2, 3)]),
    ("Bias", "", [(2, 3, 4, 2)]),
    ("Bias", "", [(2, 3, 4, 2), (3,)]),
    ("Normalize", "", [(2, 3, 4, 2)]),
    ("BatchNorm", "", [(2, 3, 4, 2)]),
    ("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 }", [(2, 3, 4, 4)]),
    ("MVN", "", [(2, 3, 4, 2)]),
]


@pytest.mark.parametrize("type_,text,shapes", GRAD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients_flow(type_, text, shapes, rng):
    assert_gradients_flow(type_, text, shapes, rng)


# ----------------------------------------------------------------------------------------------
# meta device
# ----------------------------------------------------------------------------------------------

META_CASES = [
    ("BatchNorm", "", [(2, 3, 4, 4)]),
    ("LRN", "", [(1, 6, 3, 3)]),
    ("MVN", "mvn_param { across_channels: true }", [(2, 3, 4, 4)]),
    ("Normalize", "", [(2, 3, 4, 4)]),
]


@pytest.mark.parametrize("type_,text,shapes", META_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(META_CASES)])
@pytest.mark.parametrize("train", [False, True])
def test_meta_shapes_equal_cpu_shapes(type_, text, shapes, train, rng):
    assert_meta_shapes_equal_cpu(type_, text, shapes, train, rng)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

BAD = [
    ("LRN", "lrn_param { local_size: 4 }", [(1, 3, 5, 5)], "odd"),
    ("Scale", "scale_param { axis: 1 }", [(2, 3, 4, 5), (4, 5)], "match"),
    ("Scale", "scale_param { axis: 2 num_axes: 3 }", [(2, 3, 4, 5)], "num_axes"),
    ("Bias", "bias_param { axis: 4 }", [(2, 3, 4, 5)], "axis"),
]


@pytest.mark.parametrize("type_,text,shapes,word", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_parameters_raise_layer_error(type_, text, shapes, word):
    assert_bad_parameters_name_the_layer(type_, text, shapes, word)


def test_batch_norm_warns_about_batch_norm_kyle_fields() -> None:
    # brocolli's schema shares BatchNormParameter between BatchNorm and BatchNormKyle; only
    # the latter reads use_alpha_beta and the rest, so on BatchNorm they change nothing.
    from layers.checker import layer_spec
    from landmarknet.layers.registry import converter_for
    spec = layer_spec("BatchNorm", "batch_norm_param { use_alpha_beta: true }", [(2, 3, 4, 5)])
    with pytest.warns(UserWarning, match="use_alpha_beta ignored: only BatchNormKyle"):
        converter_for(spec)(spec)
