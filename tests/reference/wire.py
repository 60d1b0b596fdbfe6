"""A hand-rolled caffemodel (NetParameter) encoder and decoder, independent of any caffe_pb2.

Test-support code only: nothing here imports landmarknet or protobuf. It writes the few fields a
caffemodel of layers and blobs needs (name, type, blobs with shape or the legacy 4-D num/
channels/height/width, float data), so that the weight readers can be checked against bytes
that our own writer did not produce.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["encode_caffemodel", "decode_caffemodel"]


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negative numbers are ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _blob_proto(arr: np.ndarray, legacy_shape: bool) -> bytes:
    arr = np.asarray(arr, dtype=np.float32)
    out = b""
    if legacy_shape:
        dims = [1] * max(0, 4 - arr.ndim) + list(arr.shape)
        if len(dims) != 4:
            raise ValueError("legacy 4-D blob shape needs at most 4 axes")
        for field, d in zip((1, 2, 3, 4), dims):  # num, channels, height, width
            out += _key(field, 0) + _varint(int(d))
    # BlobProto.data = 5 (packed float, little-endian)
    out += _len_field(5, arr.astype("<f4").tobytes())
    if not legacy_shape:
        # BlobProto.shape = 7 -> BlobShape.dim = 1 (packed int64)
        dims = b"".join(_varint(int(d)) for d in arr.shape)
        # an empty packed field is omitted, as protobuf serialisers do (0-axis blob)
        out += _len_field(7, _len_field(1, dims) if dims else b"")
    return out


def encode_caffemodel(layers: Sequence[tuple[str, str, Sequence[np.ndarray]]], *,
                      legacy_shape: bool = False) -> bytes:
    """Binary NetParameter holding only weights: one ``layer`` (field 100) per entry with
    LayerParameter name=1, type=2, blobs=7; each BlobProto carries data=5 (packed float32) and
    shape=7 (BlobShape, dim=1 packed int64) - or, with ``legacy_shape``, the old
    num/channels/height/width fields 1-4 (shape left-padded with ones to 4 axes).
    """
    out = bytearray()
    for name, type_, blobs in layers:
        layer = _len_field(1, name.encode("utf-8")) + _len_field(2, type_.encode("utf-8"))
        for blob in blobs:
            layer += _len_field(7, _blob_proto(blob, legacy_shape))
        out += _len_field(100, layer)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            val, pos = buf[pos:pos + ln], pos + ln
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield field, wt, val


def _decode_blob(buf: bytes) -> np.ndarray:
    data: list[float] = []
    shape: list[int] | None = None
    legacy = {}
    for field, wt, val in _fields(buf):
        if field == 5:
            if wt == 2:
                data.extend(np.frombuffer(val, dtype="<f4").tolist())
            else:
                data.append(struct.unpack("<f", val)[0])
        elif field == 8:  # double_data
            if wt == 2:
                data.extend(np.frombuffer(val, dtype="<f8").tolist())
            else:
                data.append(struct.unpack("<d", val)[0])
        elif field == 7:
            shape = []
            for f2, wt2, v2 in _fields(val):
                if f2 == 1 and wt2 == 2:
                    p = 0
                    while p < len(v2):
                        d, p = _read_varint(v2, p)
                        shape.append(d)
                elif f2 == 1:
                    shape.append(v2)
        elif field in (1, 2, 3, 4) and wt == 0:
            legacy[field] = val
    if shape is None:
        shape = [legacy.get(f, 1) for f in (1, 2, 3, 4)] if legacy else [len(data)]
    return np.asarray(data, dtype=np.float32).reshape(shape)


def decode_caffemodel(data: bytes) -> list[tuple[str, str, list[np.ndarray]]]:
    """Read back (name, type, blobs) of every ``layer`` (field 100) of a binary NetParameter;
    everything else is skipped. Legacy ``layers`` (field 2, V1) entries are read too, with their
    own numbers (name=4, type=5 an enum shown as its number, blobs=6)."""
    result = []
    for field, wt, val in _fields(data):
        if wt != 2 or field not in (100, 2):
            continue
        name, type_, blobs = "", "", []
        name_f, type_f, blob_f = (1, 2, 7) if field == 100 else (4, 5, 6)
        for f, w, v in _fields(val):
            if f == name_f and w == 2:
                name = v.decode("utf-8")
            elif f == type_f:
                type_ = v.decode("utf-8") if w == 2 else str(v)
            elif f == blob_f and w == 2:
                blobs.append(_decode_blob(v))
        result.append((name, type_, blobs))
    return result
