"""Weights files: our fast .caffemodel scanner and writer, Caffe HDF5, and their errors.

References are independent of landmarknet.caffe.weights: protobuf's own parser
(``caffe_pb2.NetParameter.FromString``), the real caffemodels in the zoo, OpenCV DNN's Caffe
importer (in a subprocess), plain h5py, and hand-encoded protobuf wire bytes.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.weights import (
    V1_LAYER_TYPES,
    LayerBlobs,
    WeightsError,
    read_caffe_hdf5,
    read_caffemodel,
    read_caffemodel_net,
    read_weights,
    write_caffe_hdf5,
    write_caffemodel,
    write_weights,
)
from landmarknet.errors import LandmarknetError

ZOO_MODELS = [
    "mtcnn_det1/det1.caffemodel",
    "mtcnn_det2/det2.caffemodel",
    "mtcnn_det3/det3.caffemodel",
    "ultraface_slim320/slim-320.caffemodel",
    "caffe_onnx_test_tiny/test.caffemodel",
]


# ------------------------------------------------------------------------------------------
# Independent helpers: protobuf's view of a file, and a hand-rolled wire encoder


def pb_layers(data: bytes) -> list[tuple[str, str, list[np.ndarray]]]:
    """(name, type, blobs) per layer as protobuf parses ``data``; Caffe's shape rules."""
    net = caffe_pb2.NetParameter.FromString(data)
    out = []
    for layer in net.layer:
        blobs = []
        for b in layer.blobs:
            legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
            shape = (b.num, b.channels, b.height, b.width) if legacy else tuple(b.shape.dim)
            values = b.double_data if len(b.double_data) else b.data
            blobs.append(np.array(values, dtype=np.float32).reshape(shape))
        out.append((layer.name, layer.type, blobs))
    return out


def assert_same(ours: list[LayerBlobs], ref: list[tuple[str, str, list[np.ndarray]]]) -> None:
    assert [(lb.name, lb.type) for lb in ours] == [(n, t) for n, t, _ in ref]
    for lb, (_, _, blobs) in zip(ours, ref):
        assert len(lb.blobs) == len(blobs), lb.name
        for a, b in zip(lb.blobs, blobs):
            assert a.dtype == np.float32
            assert a.shape == b.shape, lb.name
            # bit-exact, NaNs included
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), lb.name


def varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(field, 2) + varint(len(payload)) + payload


def unknown_fields() -> bytes:
    """One unknown field of every wire type, a nested group included (fields 900+)."""
    return (key(901, 0) + varint(2**63 + 5)
            + key(902, 1) + b"\x01" * 8
            + key(903, 2) + varint(3) + b"abc"
            + key(904, 3) + key(1, 0) + varint(7) + key(905, 3) + key(2, 5) + b"\0" * 4
            + key(905, 4) + key(904, 4)
            + key(906, 5) + b"\x02" * 4)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def sample_layers(rng: np.random.Generator) -> list[LayerBlobs]:
    return [
        LayerBlobs("data", "Input", []),
        LayerBlobs("conv1", "Convolution", [rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                                            rng.standard_normal(8).astype(np.float32)]),
        LayerBlobs("relu1", "ReLU", []),
        LayerBlobs("bn", "BatchNorm", [rng.random(8).astype(np.float32),
                                       rng.random(8).astype(np.float32),
                                       np.array([7.0], np.float32)]),
        LayerBlobs("scalar", "Parameter", [np.array(2.5, np.float32)]),  # 0-d blob
        LayerBlobs("empty", "Parameter", [np.zeros((0, 4), np.float32)]),
        LayerBlobs("fc/with/slash", "InnerProduct",
                   [rng.standard_normal((5, 12)).astype(np.float32)]),
        LayerBlobs("specials", "Parameter",
                   [np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38], np.float32)]),
    ]


# ------------------------------------------------------------------------------------------
# (a) our writer, read back by protobuf


def test_written_caffemodel_parses_with_protobuf(tmp, rng):
    layers = sample_layers(rng)
    path = tmp / "net.caffemodel"
    write_caffemodel(path, layers)
    assert_same(layers, pb_layers(path.read_bytes()))
    assert read_caffemodel(path) == layers
    assert not [p for p in tmp.iterdir() if p.name != "net.caffemodel"]  # no temp files left


def test_writer_converts_dtypes_and_layouts(tmp, rng):
    w64 = rng.standard_normal((4, 6))  # float64
    strided = rng.standard_normal((6, 4)).astype(np.float32).T  # not C-contiguous
    path = tmp / "x.caffemodel"
    write_caffemodel(path, [LayerBlobs("a", "InnerProduct", [w64, strided, [1, 2, 3]])])
    (_, _, blobs), = pb_layers(path.read_bytes())
    assert np.array_equal(blobs[0], w64.astype(np.float32))
    assert np.array_equal(blobs[1], strided)
    assert np.array_equal(blobs[2], np.array([1, 2, 3], np.float32))


def test_writer_keeps_layer_parameters_from_net(tmp, rng):
    net = caffe_pb2.NetParameter(name="tiny")
    conv = net.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.include.add(phase=caffe_pb2.TEST)
    conv.param.add(lr_mult=1.0)
    conv.blobs.add().data.append(99.0)  # stale blobs in net are NOT written
    fc = net.layer.add(name="fc", type="InnerProduct", bottom=["conv"], top=["fc"])
    fc.inner_product_param.num_output = 2
    layers = [LayerBlobs("conv", "Convolution", [rng.standard_normal((4, 1, 3, 3))]),
              LayerBlobs("fc", "InnerProduct", [rng.standard_normal((2, 4))]),
              LayerBlobs("extra", "Scale", [np.ones(3)])]
    path = tmp / "p.caffemodel"
    write_caffemodel(path, layers, net)
    parsed = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert parsed.name == "tiny"
    assert [lp.name for lp in parsed.layer] == ["conv", "fc", "extra"]
    expected_conv = caffe_pb2.LayerParameter()
    expected_conv.CopyFrom(conv)
    expected_conv.ClearField("blobs")
    got_conv = caffe_pb2.LayerParameter()
    got_conv.CopyFrom(parsed.layer[0])
    got_conv.ClearField("blobs")
    assert got_conv == expected_conv  # include rules, params, bottoms, tops: as is
    assert parsed.layer[1].inner_product_param.num_output == 2
    assert parsed.layer[2].type == "Scale" and list(parsed.layer[2].bottom) == []
    assert np.array_equal(np.array(parsed.layer[0].blobs[0].data).reshape(4, 1, 3, 3),
                          layers[0].blobs[0].astype(np.float32))
    assert len(parsed.layer[0].blobs) == 1
    # field order as protobuf writes it: re-serialising protobuf's parse gives our bytes
    assert parsed.SerializeToString() == path.read_bytes()


@pytest.mark.parametrize("rel", ZOO_MODELS)
def test_rewriting_zoo_model_is_byte_identical(zoo, tmp, rel):
    src = zoo / rel
    data = src.read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    out = tmp / "copy.caffemodel"
    write_caffemodel(out, read_caffemodel(src), net)
    assert out.read_bytes() == data


# ------------------------------------------------------------------------------------------
# (b) real caffemodels: fast reader == protobuf


@pytest.mark.parametrize("rel", ZOO_MODELS)
def test_zoo_model_matches_protobuf(zoo, rel):
    path = zoo / rel
    ours = read_caffemodel(path)
    assert_same(ours, pb_layers(path.read_bytes()))
    for lb in ours:
        for a in lb.blobs:  # own, aligned memory: safe for torch.from_numpy and for writing
            assert a.flags.owndata and a.flags.aligned and a.flags.c_contiguous
    assert read_weights(path) == ours


def test_read_caffemodel_net(zoo):
    path = zoo / "mtcnn_det1" / "det1.caffemodel"
    net = read_caffemodel_net(path)
    assert net == caffe_pb2.NetParameter.FromString(path.read_bytes())


# ------------------------------------------------------------------------------------------
# (c) OpenCV reads what we write

TINY_PROTOTXT = """
name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 6 dim: 5 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 7 } }
"""


def _numpy_tiny(x, wc, bc, wf, bf):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((n, wc.shape[0], h, w), np.float64)
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + w], wc[:, :, i, j])
    conv += bc[None, :, None, None]
    conv = np.maximum(conv, 0)
    return conv.reshape(n, -1) @ wf.T.astype(np.float64) + bf


def test_opencv_reads_our_caffemodel(tmp, rng):
    opencv_ref = pytest.importorskip("opencv_ref")
    wc = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bc = rng.standard_normal(4).astype(np.float32)
    wf = (rng.standard_normal((7, 4 * 6 * 5)) * 0.1).astype(np.float32)
    bf = rng.standard_normal(7).astype(np.float32)
    proto = tmp / "tiny.prototxt"
    proto.write_text(TINY_PROTOTXT)
    model = tmp / "tiny.caffemodel"
    # no `net`: minimal layers (name, type) are enough for OpenCV, which takes params from
    # the prototxt and blobs from the caffemodel by layer name
    write_caffemodel(model, [LayerBlobs("conv", "Convolution", [wc, bc]),
                             LayerBlobs("fc", "InnerProduct", [wf, bf])])
    x = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    try:
        got = opencv_ref.run_opencv(proto, model, {"data": x}, ["fc"])["fc"]
    except opencv_ref.OpenCVUnavailable as exc:
        pytest.skip(str(exc))
    want = _numpy_tiny(x, wc, bc, wf, bf)
    assert got.shape == (1, 7)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# (d) HDF5


def test_hdf5_round_trip_keeps_order_types_and_nesting(tmp, rng):
    layers = sample_layers(rng) + [
        LayerBlobs("inception/1x1", "Convolution", [np.ones((2, 2, 1, 1), np.float32)]),
        LayerBlobs("conv0", "Convolution", [np.full(3, 4.0, np.float32)]),
        LayerBlobs("inception", "Concat", []),  # a layer AND a parent group
        LayerBlobs("inception/3x3/reduce", "Convolution", [np.zeros(2, np.float32)]),
    ]
    path = tmp / "w.h5"
    write_caffe_hdf5(path, layers)
    assert read_caffe_hdf5(path) == layers
    assert read_weights(path) == layers
    with h5py.File(path, "r") as f:  # Caffe's layout, checked with plain h5py
        assert np.array_equal(f["data/conv1/0"][()], layers[1].blobs[0])
        assert np.array_equal(f["data/conv1/1"][()], layers[1].blobs[1])
        assert f["data/fc/with/slash/0"].dtype == np.float32
        assert isinstance(f["data/relu1"], h5py.Group) and len(f["data/relu1"]) == 0
        assert f["data/scalar/0"].shape == ()


def test_hdf5_written_by_plain_h5py_in_caffe_layout(tmp):
    path = tmp / "caffe.h5"
    with h5py.File(path, "w") as f:  # what Net::ToHDF5 produces, plus a diff/ group
        d = f.create_group("data")
        d.create_dataset("conv2/0", data=np.arange(6, dtype=np.float32).reshape(2, 3))
        d.create_dataset("conv1/0", data=np.ones((2, 1, 3, 3), np.float32))
        d.create_dataset("conv1/1", data=np.array([0.5, 1.5]))  # float64 -> float32
        d.create_group("relu1")
        d.create_dataset("inception_3a/1x1/0", data=np.full((3,), 2, np.int32))
        d.create_dataset("inception_3a/1x1/1", data=np.zeros(3, np.float32))
        f.create_dataset("diff/conv1/0", data=np.zeros((2, 1, 3, 3), np.float32))
    got = read_caffe_hdf5(path)
    # no creation order recorded by Caffe: HDF5 lists by name
    assert [lb.name for lb in got] == ["conv1", "conv2", "inception_3a/1x1", "relu1"]
    assert all(lb.type == "" for lb in got)
    byname = {lb.name: lb for lb in got}
    assert byname["conv1"].blobs[1].dtype == np.float32
    assert np.array_equal(byname["conv1"].blobs[1], [0.5, 1.5])
    assert np.array_equal(byname["conv2"].blobs[0], np.arange(6).reshape(2, 3))
    assert np.array_equal(byname["inception_3a/1x1"].blobs[0], [2, 2, 2])
    assert byname["relu1"].blobs == []


def test_hdf5_errors(tmp):
    def bad(build, *words):
        path = tmp / "bad.h5"
        with h5py.File(path, "w") as f:
            build(f)
        with pytest.raises(WeightsError) as ei:
            read_caffe_hdf5(path)
        msg = str(ei.value)
        assert str(path) in msg
        for w in words:
            assert w in msg, msg

    bad(lambda f: f.create_group("model_weights"), "no 'data' group", "model_weights")
    bad(lambda f: f.create_dataset("data/conv/weight", data=np.ones(2)), "data/conv/weight")
    bad(lambda f: f.create_dataset("data/conv/1", data=np.ones(2)), "/data/conv", "[1]")
    bad(lambda f: f.create_dataset("data/conv/0", data=np.array([b"ab"])), "data/conv/0")
    bad(lambda f: f.create_group("data"), "no layer")

    def soft_loop(f):
        f.create_dataset("data/a/0", data=np.ones(2))
        f["data/a/loop"] = h5py.SoftLink("/data")

    bad(soft_loop, "/data/a/loop", "SoftLink")
    not_h5 = tmp / "not.h5"
    not_h5.write_bytes(b"<!DOCTYPE html>")
    with pytest.raises(WeightsError, match="not.h5"):
        read_caffe_hdf5(not_h5)
    with pytest.raises(WeightsError, match="missing.h5"):
        read_caffe_hdf5(tmp / "missing.h5")


def test_hdf5_writer_rejects_unrepresentable_names(tmp):
    for layers in ([LayerBlobs("a//b", "", [])], [LayerBlobs("/a", "", [])],
                   [LayerBlobs("", "", [])],
                   [LayerBlobs("a", "", [np.ones(1)]), LayerBlobs("a/0", "", [])],
                   [LayerBlobs("a", "", []), LayerBlobs("a", "", [])]):
        with pytest.raises(ValueError):
            write_caffe_hdf5(tmp / "x.h5", layers)
    assert not list(tmp.iterdir())


# ------------------------------------------------------------------------------------------
# (e) bad input: WeightsError naming the file, and nothing else


def _expect_weights_error(path: Path, *words: str) -> str:
    try:
        read_caffemodel(path)
    except WeightsError as exc:
        msg = str(exc)
        assert str(path) in msg, msg
        for w in words:
            assert w in msg, msg
        return msg
    raise AssertionError(f"no WeightsError for {path}")


def test_truncation_at_every_offset(tmp, rng):
    f32 = np.float32
    layers = [LayerBlobs("conv1", "Convolution", [rng.standard_normal((2, 1, 2, 2), f32),
                                                  rng.standard_normal(2, f32)]),
              LayerBlobs("relu1", "ReLU", []),
              LayerBlobs("ip", "InnerProduct", [rng.standard_normal((3, 4), f32)])]
    net = caffe_pb2.NetParameter(name="t")
    net.layer.add(name="conv1", type="Convolution").convolution_param.num_output = 2
    src = tmp / "full.caffemodel"
    write_caffemodel(src, layers, net)
    data = src.read_bytes()
    ends = set()  # offsets where a layer record ends: a prefix there is a valid shorter file
    pos = len(ld(1, b"t"))
    for layer in caffe_pb2.NetParameter.FromString(data).layer:
        pos += len(ld(100, layer.SerializeToString()))
        ends.add(pos)
    assert pos == len(data)
    cut_path = tmp / "cut.caffemodel"
    n_errors = 0
    for cut in range(len(data)):
        cut_path.write_bytes(data[:cut])
        if cut in ends:
            got = read_caffemodel(cut_path)
            assert got == layers[:len(got)]
        elif cut == len(ld(1, b"t")):  # just the net's name
            _expect_weights_error(cut_path, "no layers")
        else:
            _expect_weights_error(cut_path, "byte offset" if cut else "empty")
            n_errors += 1
    assert n_errors > len(data) - 10


def test_truncated_real_model_says_truncated(zoo, tmp):
    data = (zoo / "mtcnn_det2" / "det2.caffemodel").read_bytes()
    path = tmp / "det2.caffemodel"
    for cut in range(1000, len(data), 7919):
        path.write_bytes(data[:cut])
        _expect_weights_error(path, "byte offset", "truncated", "layer #")


@pytest.mark.parametrize("content,words", [
    (b"", ["empty"]),
    (b"<!DOCTYPE html>\n<html><head><title>404</title></head></html>",
     ["is this really a .caffemodel", "<!DOCTYPE"]),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", ["git lfs"]),
    (b'name: "net"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n', ["text"]),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl", ["landmarknet.params"]),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 40, ["HDF5"]),
    (b"\x00\x00\x00\x00", ["field number 0"]),
    (ld(1, b"just a name"), ["no layers"]),
])
def test_not_a_caffemodel(tmp, content, words):
    path = tmp / "model.caffemodel"
    path.write_bytes(content)
    _expect_weights_error(path, *words)


def test_random_bytes_never_escape(tmp):
    path = tmp / "random.caffemodel"
    for seed in range(150):
        r = np.random.default_rng(seed)
        path.write_bytes(r.bytes(int(r.integers(1, 3000))))
        _expect_weights_error(path)


def test_random_corruption_of_a_valid_file(tmp, rng):
    src = tmp / "src.caffemodel"
    write_caffemodel(src, sample_layers(rng))
    data = bytearray(src.read_bytes())
    path = tmp / "corrupt.caffemodel"
    for _ in range(150):
        corrupt = bytearray(data)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            corrupt[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(corrupt))
        try:
            got = read_caffemodel(path)
        except WeightsError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(got, list)


def _model_with_blob(blob: bytes, name: bytes = b"conv1") -> bytes:
    return ld(100, ld(1, name) + ld(2, b"Convolution") + ld(7, blob))


@pytest.mark.parametrize("blob,words", [
    # shape says 2x3 = 6 values, data has 5
    (ld(7, ld(1, varint(2) + varint(3))) + ld(5, struct.pack("<5f", *range(5))),
     ["holds 6 values", "has 5", "'conv1'"]),
    # legacy num/channels/height/width say 1x1x2x2, data has 3
    (key(1, 0) + varint(1) + key(2, 0) + varint(1) + key(3, 0) + varint(2) + key(4, 0)
     + varint(2) + ld(5, struct.pack("<3f", 1, 2, 3)), ["holds 4 values"]),
    # shape with a negative dimension
    (ld(7, ld(1, varint(-2))) + ld(5, b""), ["negative"]),
    # packed floats whose length is not a multiple of 4
    (ld(7, ld(1, varint(1))) + ld(5, b"\0" * 6), ["multiple of 4"]),
    # data with a wrong wire type (varint)
    (key(5, 0) + varint(3), ["wire type"]),
    # shape but no data at all
    (ld(7, ld(1, varint(4))), ["holds 4 values", "has 0"]),
    # unpacked float / double cut short inside the blob
    (ld(7, ld(1, varint(2))) + key(5, 5) + b"\0\0\0\0" + key(5, 5) + b"\0\0", ["float runs past"]),
    (ld(7, ld(1, varint(1))) + key(8, 1) + b"\0" * 7, ["double runs past"]),
])
def test_bad_blobs(tmp, blob, words):
    path = tmp / "blob.caffemodel"
    path.write_bytes(ld(1, b"net") + _model_with_blob(blob))
    msg = _expect_weights_error(path, "byte offset", "blob 0", *words)
    assert "layer #0" in msg


def test_missing_file_and_directory(tmp):
    with pytest.raises(WeightsError, match="nope.caffemodel"):
        read_caffemodel(tmp / "nope.caffemodel")
    with pytest.raises(WeightsError):
        read_caffemodel(tmp)
    with pytest.raises(WeightsError, match="nope"):
        read_caffemodel_net(tmp / "nope.caffemodel")
    garbage = tmp / "g.caffemodel"
    garbage.write_bytes(b"<html>")
    with pytest.raises(WeightsError, match="g.caffemodel"):
        read_caffemodel_net(garbage)
    assert issubclass(WeightsError, LandmarknetError)


# ------------------------------------------------------------------------------------------
# Encodings that protobuf allows but our writer never produces


def test_unpacked_mixed_and_double_encodings(tmp):
    vals = np.array([1.5, -2.25, 3.0, 1e-3, 7.0, 8.0], np.float32)
    unpacked = b"".join(key(5, 5) + struct.pack("<f", v) for v in vals[:4])
    blob_a = (ld(7, key(1, 0) + varint(2) + key(1, 0) + varint(3))  # unpacked dims
              + unpacked + unknown_fields() + ld(5, vals[4:].tobytes()))  # + a packed chunk
    dbl = np.array([0.1, 0.2, 1e30], np.float64)
    blob_b = (ld(7, ld(1, varint(3))) + ld(5, b"\0" * 12)  # double_data wins over data
              + ld(8, dbl[:1].tobytes()) + key(8, 1) + dbl[1:2].tobytes()
              + key(8, 1) + dbl[2:].tobytes())
    blob_c = (ld(6, b"\0" * 8)  # diff (skipped)
              + ld(5, struct.pack("<2f", 4, 5))
              + key(1, 0) + varint(1) + key(2, 0) + varint(2)  # legacy wins over shape
              + key(3, 0) + varint(1) + key(4, 0) + varint(1) + ld(7, ld(1, varint(99))))
    layer = (unknown_fields() + ld(7, blob_a) + ld(1, b"odd") + ld(7, blob_b)
             + ld(106, ld(1, varint(3))) + ld(2, b"Convolution") + ld(7, blob_c))
    data = unknown_fields() + ld(1, b"n") + ld(100, layer) + unknown_fields()
    path = tmp / "odd.caffemodel"
    path.write_bytes(data)
    ours = read_caffemodel(path)
    assert_same(ours, pb_layers(data))
    (lb,) = ours
    assert lb.name == "odd" and lb.type == "Convolution"
    assert np.array_equal(lb.blobs[0], vals.reshape(2, 3))
    assert np.array_equal(lb.blobs[1], dbl.astype(np.float32))
    assert lb.blobs[2].shape == (1, 2, 1, 1)


def test_long_unpacked_run(tmp, rng):
    vals = rng.standard_normal(5000).astype(np.float32)
    blob = ld(7, ld(1, varint(5000))) + b"".join(key(5, 5) + v.tobytes() for v in vals)
    data = _model_with_blob(blob)
    path = tmp / "long.caffemodel"
    path.write_bytes(data)
    assert_same(read_caffemodel(path), pb_layers(data))


# ------------------------------------------------------------------------------------------
# (f) legacy V1 (and V0) files


def test_v1_legacy_caffemodel(tmp, rng):
    net = caffe_pb2.NetParameter(name="lenet")
    T = caffe_pb2.V1LayerParameter
    w = rng.standard_normal((20, 1, 5, 5)).astype(np.float32)
    conv = net.layers.add(name="conv1", type=T.CONVOLUTION, bottom=["data"], top=["conv1"])
    b = conv.blobs.add(num=20, channels=1, height=5, width=5)  # legacy 4-D shape
    b.data.extend(w.ravel().tolist())
    b = conv.blobs.add(num=1, channels=1, height=1, width=20)
    b.data.extend(range(20))
    net.layers.add(name="relu1", type=T.RELU)
    fc = net.layers.add(name="ip1", type=T.INNER_PRODUCT)
    b = fc.blobs.add()
    b.shape.dim.extend([3, 4])
    b.double_data.extend(np.linspace(0, 1, 12).tolist())
    net.layers.add(name="loss", type=T.SOFTMAX_LOSS)
    net.layers.add(name="lrn", type=T.LRN)
    net.layers.add(name="untyped")
    path = tmp / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    got = read_caffemodel(path)
    assert [(lb.name, lb.type) for lb in got] == [
        ("conv1", "Convolution"), ("relu1", "ReLU"), ("ip1", "InnerProduct"),
        ("loss", "SoftmaxWithLoss"), ("lrn", "LRN"), ("untyped", "")]
    assert np.array_equal(got[0].blobs[0], w)
    assert got[0].blobs[1].shape == (1, 1, 1, 20)
    assert np.array_equal(got[2].blobs[0], np.linspace(0, 1, 12).astype(np.float32).reshape(3, 4))
    assert read_weights(path) == got


def test_v1_type_table_covers_every_enum_value():
    for value in caffe_pb2.V1LayerParameter.LayerType.values():
        assert value in V1_LAYER_TYPES
    assert V1_LAYER_TYPES[caffe_pb2.V1LayerParameter.DECONVOLUTION] == "Deconvolution"
    assert V1_LAYER_TYPES[caffe_pb2.V1LayerParameter.TANH] == "TanH"


def test_v0_layer_nested_in_v1(tmp):
    net = caffe_pb2.NetParameter()
    outer = net.layers.add(bottom=["data"], top=["conv1"])
    outer.layer.name = "conv1"
    outer.layer.type = "conv"
    outer.layer.blobs.add(num=1, channels=1, height=1, width=2).data.extend([1.0, 2.0])
    outer2 = net.layers.add()
    outer2.layer.name = "pool1"
    outer2.layer.type = "pool"
    path = tmp / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    got = read_caffemodel(path)
    assert [(lb.name, lb.type) for lb in got] == [("conv1", "Convolution"), ("pool1", "Pooling")]
    assert np.array_equal(got[0].blobs[0], [[[[1.0, 2.0]]]])


def test_mixing_layer_and_layers_is_an_error(tmp):
    net = caffe_pb2.NetParameter()
    net.layer.add(name="a", type="ReLU")
    net.layers.add(name="b", type=caffe_pb2.V1LayerParameter.RELU)
    path = tmp / "mixed.caffemodel"
    path.write_bytes(net.SerializeToString())
    _expect_weights_error(path, "mixes")


# ------------------------------------------------------------------------------------------
# Dispatch and atomic writes


def test_read_weights_sniffs_content_and_write_weights_dispatches(tmp, rng):
    layers = sample_layers(rng)
    h5 = tmp / "snap.caffemodel.h5"
    write_weights(h5, layers)
    assert h5py.is_hdf5(h5)
    disguised = tmp / "really_hdf5.caffemodel"
    disguised.write_bytes(h5.read_bytes())
    assert read_weights(disguised) == layers  # like Caffe: H5Fis_hdf5 decides
    cm = tmp / "w.caffemodel"
    write_weights(cm, layers)
    assert read_weights(cm) == layers
    write_weights(tmp / "w.hdf5", layers)
    assert read_weights(tmp / "w.hdf5") == layers
    for name in ("w.pt", "w.pth"):
        (tmp / name).write_bytes(b"PK\x03\x04")
        with pytest.raises(WeightsError, match="landmarknet.params"):
            read_weights(tmp / name)
        with pytest.raises(WeightsError, match="landmarknet.params"):
            write_weights(tmp / name, layers)
    with pytest.raises(WeightsError, match="extension"):
        write_weights(tmp / "w.npz", layers)


def test_writes_are_atomic(tmp, rng, monkeypatch):
    layers = sample_layers(rng)
    for name, writer in (("a.caffemodel", write_caffemodel), ("a.h5", write_caffe_hdf5)):
        path = tmp / name
        path.write_bytes(b"old contents")
        before = sorted(tmp.iterdir())

        def boom(src, dst):
            raise OSError("disk full")

        with monkeypatch.context() as m:
            m.setattr(os, "replace", boom)
            with pytest.raises(OSError, match="disk full"):
                writer(path, layers)
        assert path.read_bytes() == b"old contents"
        assert sorted(tmp.iterdir()) == before  # no temp file left behind
        writer(path, layers)
        assert read_weights(path) == layers
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_layerblobs_equality_and_repr():
    a = LayerBlobs("c", "Convolution", [np.ones((2, 3), np.float32)])
    assert a == LayerBlobs("c", "Convolution", [np.ones((2, 3), np.float32)])
    assert a != LayerBlobs("c", "Convolution", [np.ones((3, 2), np.float32)])
    assert a != LayerBlobs("c", "Convolution", [])
    assert "(2, 3)" in repr(a) and "1.0" not in repr(a)


def test_absurd_shapes_are_weights_errors(tmp):
    path = tmp / "shape.caffemodel"
    for dims in ([0, 2**62, 2**62], [1] * 33):
        blob = ld(7, ld(1, b"".join(varint(d) for d in dims)))
        path.write_bytes(_model_with_blob(blob))
        _expect_weights_error(path, "shape" if len(dims) == 3 else "axes")
