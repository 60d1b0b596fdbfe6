"""Read and write Caffe weights: binary ``.caffemodel`` files and Caffe's HDF5 weights files.

The prototxt holds a net's layer parameters; a weights file only contributes, per layer, its
name, its type and its blobs. This module moves exactly that, as a list of :class:`LayerBlobs`.
Mapping layers to a PyTorch ``state_dict`` is not done here (see ``landmarknet.params``), and
PyTorch files (``.pt``/``.pth``) are not read or written here either.

``.caffemodel`` files are read by a small protobuf wire-format scanner rather than by protobuf
itself: the file is memory-mapped, the top level of the ``NetParameter`` and each layer's
fields are walked in Python (a few dozen fields per layer), and every blob's packed float data is
taken with one ``numpy.frombuffer`` slice and one copy. A 553 MB VGG-16 loads in about the time
it takes to copy 553 MB: ~0.2 s here, against ~2-4 s for ``cv2.dnn.readNetFromCaffe`` (see
``benchmarks/bench_load.py``). Unpacked encodings, which protobuf also accepts, are decoded with
numpy too. ``read_caffemodel_net`` parses the whole message with protobuf, for the rare caller
who wants every field.

Writing goes the other way: protobuf serialises each layer's parameters without blobs, and the
blobs are spliced in as raw wire bytes written straight from the arrays. With the same
``NetParameter`` the output is byte-identical to what Caffe (protobuf) writes.

Every malformed input raises :class:`~landmarknet.errors.WeightsError` naming the file, the byte
offset and, where known, the layer; no other exception type escapes the readers.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.upgrade_v0 import V0_TYPES

from landmarknet.errors import UnwritableWeightsError, WeightsError, shorten


__all__ = [
    "LayerBlobs",
    "WeightsError",
    "read_caffemodel",
    "read_caffemodel_net",
    "write_caffemodel",
    "read_caffe_hdf5",
    "write_caffe_hdf5",
    "read_weights",
    "write_weights",
    "V1_LAYER_TYPES",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# The data type


@dataclass(eq=False)
class LayerBlobs:
    """One layer's learned blobs, as a weights file stores them.

    Two LayerBlobs are equal when name, type and every blob's shape and values are (NaN equals
    NaN; float32 vs float64 compares values).

    ``name`` and ``type`` are the layer's name and type string (V2 spelling, e.g.
    ``"Convolution"``; legacy V1/V0 files are mapped the way Caffe's ``upgrade_proto.cpp`` does;
    ``""`` where the file does not say, as in HDF5 files written by Caffe).

    ``blobs`` are float32 arrays in Caffe's blob shape: ``shape.dim`` when the blob has no legacy
    4-D fields, else ``(num, channels, height, width)`` (Caffe's ``Blob::FromProto`` gives the
    legacy fields precedence, and so do we). Blobs stored as ``double_data`` are read as
    float32 (precision beyond float32 is lost, values beyond its range become +-inf), as Caffe's
    float nets do.
    """

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerBlobs):
            return NotImplemented
        return (
            self.name == other.name
            and self.type == other.type
            and len(self.blobs) == len(other.blobs)
            and all(_same_values(a, b) for a, b in zip(self.blobs, other.blobs))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(np.shape(b))) for b in self.blobs)
        return f"LayerBlobs(name={self.name!r}, type={self.type!r}, blobs=[{shapes}])"


def _same_values(a, b) -> bool:
    """Same shape and values, NaN equal to NaN (weights, not arithmetic)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # NaN test undefined for the dtype
        return bool(np.array_equal(a, b))


# --------------------------------------------------------------------------------------------
# Legacy layer types (V1 enum, V0 strings) -> V2 type strings, as src/caffe/util/upgrade_proto.cpp

_V1_TO_V2 = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

#: V1LayerParameter.LayerType number -> V2 type string (UpgradeV1LayerType).
V1_LAYER_TYPES: dict[int, str] = {
    caffe_pb2.V1LayerParameter.LayerType.Value(k): v for k, v in _V1_TO_V2.items()
}



# --------------------------------------------------------------------------------------------
# Protobuf wire format: the few pieces we need

_VARINT, _FIXED64, _LEN, _SGROUP, _EGROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group",
               4: "end-group", 5: "fixed32"}
_U64 = (1 << 64) - 1
_MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


class _Bad(Exception):
    """Internal: malformed input at a byte offset (turned into WeightsError with context)."""

    def __init__(self, message: str, offset: int, truncated: bool = False):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.truncated = truncated


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Decode an unsigned varint at ``pos`` (not past ``end``); return (value, next pos)."""
    if pos >= end:
        raise _Bad("a varint runs past the end of its message", pos, truncated=True)
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    start = pos
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise _Bad("a varint runs past the end of its message", start, truncated=True)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise _Bad("a varint is longer than 10 bytes", start)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tag(buf, pos: int, end: int) -> tuple[int, int, int]:
    """Read a field key; return (field number, wire type, next pos)."""
    key, nxt = _varint(buf, pos, end)
    fnum, wt = key >> 3, key & 7
    if fnum == 0:
        raise _Bad("field number 0 (not a valid protobuf field key)", pos)
    if wt > 5:
        raise _Bad(f"invalid wire type {wt} (field {fnum})", pos)
    return fnum, wt, nxt


def _length(buf, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read a length prefix and check the payload fits; return (payload start, payload end)."""
    n, start = _varint(buf, pos, end)
    if n > end - start:
        raise _Bad(f"{what} declares {n} bytes but only {end - start} remain in its enclosing "
                   f"message", pos, truncated=True)
    return start, start + n


def _skip(buf, pos: int, end: int, fnum: int, wt: int, tag_pos: int) -> int:
    """Skip one field's payload (``pos`` is just after its key); return the next pos."""
    if wt == _VARINT:
        return _varint(buf, pos, end)[1]
    if wt == _FIXED64 or wt == _FIXED32:
        n = 8 if wt == _FIXED64 else 4
        if pos + n > end:
            raise _Bad(f"a {_WIRE_NAMES[wt]} field {fnum} runs past the end of its message",
                       tag_pos, truncated=True)
        return pos + n
    if wt == _LEN:
        return _length(buf, pos, end, f"field {fnum}")[1]
    if wt == _SGROUP:
        stack = [(fnum, tag_pos)]
        while stack:
            if pos >= end:
                raise _Bad(f"group field {stack[-1][0]} is never closed", stack[-1][1],
                           truncated=True)
            t = pos
            f2, w2, pos = _tag(buf, pos, end)
            if w2 == _EGROUP:
                if f2 != stack[-1][0]:
                    raise _Bad(f"end-group for field {f2} closes group field {stack[-1][0]}", t)
                stack.pop()
            elif w2 == _SGROUP:
                stack.append((f2, t))
            else:
                pos = _skip(buf, pos, end, f2, w2, t)
        return pos
    raise _Bad(f"unexpected end-group for field {fnum} (no group is open)", tag_pos)


# --------------------------------------------------------------------------------------------
# .caffemodel reader


@dataclass
class _RawLayer:
    index: int
    offset: int
    name: str | None
    type: str
    blob_spans: list[tuple[int, int]]
    v0: bool | None = None  # legacy entry: True with a nested V0 layer, False with V1 fields


def _utf8(buf, start: int, end: int, what: str) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{what} is not valid UTF-8", start) from None


def _scan_layer(buf, start: int, end: int, v1: bool, layer: _RawLayer) -> None:
    """Walk one LayerParameter (or V1LayerParameter); fill in ``layer``'s name, type, blobs.

    ``layer`` is filled in place so that an error part-way still knows the name, if seen.
    """
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    v0_span = None
    v1_fields = []  # V1-level name/type/blobs, which Caffe's V0 upgrade would drop
    pos = start
    while pos < end:
        t = pos
        fnum, wt, pos = _tag(buf, pos, end)
        if v1 and fnum in (name_f, type_f, blobs_f):
            v1_fields.append({name_f: "name", type_f: "type", blobs_f: "blobs"}[fnum])
        if fnum == name_f and wt == _LEN:
            s, pos = _length(buf, pos, end, "the layer name")
            layer.name = _utf8(buf, s, pos, "the layer name")
        elif fnum == type_f and not v1 and wt == _LEN:
            s, pos = _length(buf, pos, end, "the layer type")
            layer.type = _utf8(buf, s, pos, "the layer type")
        elif fnum == type_f and v1 and wt == _VARINT:
            num, pos = _varint(buf, pos, end)
            # Unknown enum numbers stay unset in proto2, as in Caffe: type "".
            layer.type = V1_LAYER_TYPES.get(_signed(num), "")
        elif fnum == blobs_f:
            if wt != _LEN:
                raise _Bad(f"a blob (field {fnum}) has wire type {_WIRE_NAMES[wt]}, expected "
                           "length-delimited", t)
            layer.blob_spans.append(_length(buf, pos, end, "a blob"))
            pos = layer.blob_spans[-1][1]
        elif v1 and fnum == 1 and wt == _LEN:  # V0LayerParameter nested in a V1 layer
            v0_span = _length(buf, pos, end, "the V0 layer")
            pos = v0_span[1]
        else:
            pos = _skip(buf, pos, end, fnum, wt, t)
    if v1 and (v0_span is not None or v1_fields):
        layer.v0 = v0_span is not None
    if v0_span is not None:
        # UpgradeV0LayerParameter: the V0 layer's name, type and blobs.
        v0_name, v0_type, v0_blobs = None, None, []
        pos, v0_end = v0_span
        while pos < v0_end:
            t = pos
            fnum, wt, pos = _tag(buf, pos, v0_end)
            if fnum in (1, 2) and wt == _LEN:
                s, pos = _length(buf, pos, v0_end, "a V0 layer string")
                text = _utf8(buf, s, pos, "a V0 layer string")
                if fnum == 1:
                    v0_name = text
                else:
                    v0_type = text
            elif fnum == 50:
                if wt != _LEN:
                    raise _Bad(f"a V0 blob has wire type {_WIRE_NAMES[wt]}", t)
                v0_blobs.append(_length(buf, pos, v0_end, "a blob"))
                pos = v0_blobs[-1][1]
            else:
                pos = _skip(buf, pos, v0_end, fnum, wt, t)
        if v0_name is not None:
            layer.name = v0_name
        if v0_type is not None:
            v1_name = V0_TYPES.get(v0_type)  # UpgradeV0LayerType
            layer.type = _V1_TO_V2[v1_name] if v1_name else v0_type
        layer.blob_spans = v0_blobs + layer.blob_spans
        if v1_fields:
            raise _Bad(f"a legacy `layers` entry holds both a nested V0 layer and V1 "
                       f"{'/'.join(dict.fromkeys(v1_fields))}; Caffe's V0 upgrade keeps only "
                       "the V0 layer, so the file is ambiguous", start)


def _unpacked_run(u8: np.ndarray, pos: int, end: int, key: int, width: int) -> int:
    """Number of consecutive ``key`` + ``width``-byte records from ``pos`` (no Python loop)."""
    rec = 1 + width
    avail = (end - pos) // rec
    n, window = 0, 64
    while n < avail:
        m = min(window, avail - n)
        keys = u8[pos + n * rec: pos + (n + m) * rec: rec]
        bad = np.flatnonzero(keys != key)
        if bad.size:
            return n + int(bad[0])
        n += m
        window *= 4
    return n


def _scan_blob(buf, u8: np.ndarray, start: int, end: int) -> np.ndarray:
    """Decode one BlobProto into a float32 array of its shape that owns its memory."""
    legacy = [None, None, None, None]
    dims: list[int] = []
    floats: list[np.ndarray] = []  # views into the file, or small copies
    doubles: list[np.ndarray] = []
    pos = start
    while pos < end:
        t = pos
        fnum, wt, pos = _tag(buf, pos, end)
        if 1 <= fnum <= 4 and wt == _VARINT:
            v, pos = _varint(buf, pos, end)
            v &= 0xFFFFFFFF  # int32 fields keep the low 32 bits, as protobuf does
            legacy[fnum - 1] = v - (1 << 32) if v >= 1 << 31 else v
        elif fnum == 5 and wt == _LEN:
            s, pos = _length(buf, pos, end, "the blob's data")
            if (pos - s) % 4:
                raise _Bad(f"packed float data has {pos - s} bytes, not a multiple of 4", t)
            floats.append(np.frombuffer(buf, "<f4", (pos - s) // 4, s))
        elif fnum == 5 and wt == _FIXED32:
            if pos + 4 > end:
                raise _Bad("a float runs past the end of the blob", t, truncated=True)
            if buf[t] == 0x2D and pos - t == 1:  # canonical one-byte key: take the whole run
                n = _unpacked_run(u8, t, end, 0x2D, 4)  # >= 1
                recs = u8[t: t + 5 * n].reshape(n, 5)[:, 1:]
                floats.append(np.ascontiguousarray(recs).view("<f4").reshape(n))
                pos = t + 5 * n
            else:
                floats.append(np.frombuffer(buf, "<f4", 1, pos).copy())
                pos += 4
        elif fnum == 8 and wt == _LEN:
            s, pos = _length(buf, pos, end, "the blob's double_data")
            if (pos - s) % 8:
                raise _Bad(f"packed double data has {pos - s} bytes, not a multiple of 8", t)
            doubles.append(np.frombuffer(buf, "<f8", (pos - s) // 8, s))
        elif fnum == 8 and wt == _FIXED64:
            if pos + 8 > end:
                raise _Bad("a double runs past the end of the blob", t, truncated=True)
            if buf[t] == 0x41 and pos - t == 1:
                n = _unpacked_run(u8, t, end, 0x41, 8)  # >= 1
                recs = u8[t: t + 9 * n].reshape(n, 9)[:, 1:]
                doubles.append(np.ascontiguousarray(recs).view("<f8").reshape(n))
                pos = t + 9 * n
            else:
                doubles.append(np.frombuffer(buf, "<f8", 1, pos).copy())
                pos += 8
        elif fnum == 7 and wt == _LEN:
            s, pos = _length(buf, pos, end, "the blob's shape")
            p = s
            while p < pos:
                t2 = p
                f2, w2, p = _tag(buf, p, pos)
                if f2 == 1 and w2 == _LEN:
                    ds, de = _length(buf, p, pos, "the shape's dims")
                    p = ds
                    while p < de:
                        v, p = _varint(buf, p, de)
                        dims.append(_signed(v))
                elif f2 == 1 and w2 == _VARINT:
                    v, p = _varint(buf, p, pos)
                    dims.append(_signed(v))
                else:
                    p = _skip(buf, p, pos, f2, w2, t2)
        elif fnum in (5, 7, 8) or (1 <= fnum <= 4):
            raise _Bad(f"BlobProto field {fnum} has wire type {_WIRE_NAMES[wt]}", t)
        else:  # diff (6), double_diff (9), unknown fields
            pos = _skip(buf, pos, end, fnum, wt, t)

    if any(v is not None for v in legacy):
        # Blob::FromProto: any legacy field wins; unset ones take the proto default 0.
        shape = tuple(0 if v is None else v for v in legacy)
    else:
        shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise _Bad(f"the blob's shape {shape} has a negative dimension", start)
    if len(shape) > _MAX_BLOB_AXES:
        raise _Bad(f"the blob has {len(shape)} axes; Caffe allows at most {_MAX_BLOB_AXES}",
                   start)
    count = 1
    for d in shape:
        count *= d
    chunks = doubles if doubles else floats  # Caffe prefers double_data when present
    n_values = sum(c.size for c in chunks)
    if n_values != count:
        which = "double_data" if doubles else "data"
        raise _Bad(f"the blob's shape {shape} holds {count} values but its {which} has "
                   f"{n_values}", start)
    try:
        out = np.empty(shape, np.float32)  # owns its memory, aligned
    except ValueError as exc:  # e.g. (0, 2**62, 2**62): "array is too big"
        raise _Bad(f"the blob's shape {shape} is not a valid array shape ({exc})", start) \
            from None
    flat = out.reshape(-1)  # a view of out
    with np.errstate(over="ignore"):  # doubles beyond float32's range become +-inf, as in Caffe
        if len(chunks) == 1:
            np.copyto(flat, chunks[0], casting="same_kind")  # the one copy out of the file
        elif chunks:
            np.concatenate(chunks, out=flat, casting="same_kind")
    return out


def _hint(head: bytes) -> str:
    """A guess at what a file that does not parse as a caffemodel really is."""
    shown = head[:24]
    start = f"it starts with {shown!r}"
    stripped = head.lstrip()
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return f"this is an HDF5 file ({start}): use read_caffe_hdf5() or read_weights()"
    if head.startswith(b"PK\x03\x04"):
        return (f"this is a ZIP archive, e.g. a PyTorch .pt/.pth file ({start}): "
                "use landmarknet.params for PyTorch files")
    if head.startswith(b"\x1f\x8b"):
        return f"this is a gzip-compressed file ({start}): decompress it first"
    if head.startswith(b"version https://git-lfs"):
        return (f"this is a Git LFS pointer, not the weights ({start}): "
                "fetch the real file with `git lfs pull`")
    if stripped[:1] == b"<":
        return f"is this really a .caffemodel? {start} (an HTML/XML page, e.g. a failed download?)"
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head[:256]):
        return f"is this really a .caffemodel? {start} (it looks like text, e.g. a .prototxt)"
    return f"is this really a .caffemodel? {start}"


def _fail(path: PathLike, size: int, head: bytes, err: _Bad, layer: _RawLayer | None,
          where: str = "", looks_valid: bool = True) -> WeightsError:
    """The WeightsError for a scanner error: file, problem, layer, offset and a hint."""
    ctx = ""
    if layer is not None:
        ctx = (f" in layer #{layer.index} {layer.name!r}" if layer.name is not None
               else f" in layer #{layer.index} (name not read yet)")
    msg = f"{os.fspath(path)}: {err.message}{where}{ctx} at byte offset {err.offset}"
    if err.truncated and (layer is not None or looks_valid):
        msg += (f"; the file ({size} bytes) ends early: truncated (an incomplete download or "
                f"copy?), or {_hint(head)}")
    else:
        msg += f"; {_hint(head)}"
    return WeightsError(msg)


@contextmanager
def _mapped(path: PathLike) -> Iterator[tuple[object, int]]:
    """The file's bytes (an mmap, or bytes where mmap is impossible) and its size."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise WeightsError(f"{os.fspath(path)}: cannot open weights file: {exc}") from exc
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise WeightsError(f"{os.fspath(path)}: the file is empty (0 bytes); "
                                   "a .caffemodel holds at least one layer")
            try:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # not mappable (a pipe, a special file)
                buf = f.read()
                size = len(buf)
        except OSError as exc:
            raise WeightsError(f"{os.fspath(path)}: cannot read weights file: {exc}") from exc
        try:
            yield buf, size
        finally:
            if isinstance(buf, mmap.mmap):
                try:
                    buf.close()
                except BufferError:  # a view is still referenced (e.g. by a traceback)
                    pass


def _regular_file(path: PathLike) -> None:
    """Refuse what is not a regular file before opening it: reading a FIFO blocks forever and
    a device such as /dev/zero never ends. A missing file is left to the reader's message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a regular file")
        raise WeightsError(f"{os.fspath(path)}: this is {kind}, not a weights file")


def read_caffemodel(path: PathLike) -> list[LayerBlobs]:
    """Read a binary ``.caffemodel`` (a serialised ``NetParameter``): every layer, in file order.

    Layers without blobs (ReLU, Pooling ...) are listed too, with ``blobs == []``. Both the
    modern ``layer`` field and the legacy V1 ``layers`` field (with V0 layers nested in it) are
    read; legacy types are mapped to V2 type strings (``CONVOLUTION`` -> ``"Convolution"``,
    V0 ``"conv"`` -> ``"Convolution"``; a V0 ``"padding"`` layer keeps its V0 type, it has no
    blobs). A V0 entry that also carries V1 name/type/blobs, or a file mixing V0 and V1 entries,
    is an error: Caffe's V0 upgrade would silently drop the V1 part.
    Layer parameters other than name, type and blobs are skipped: the prototxt holds them.
    Raises :class:`WeightsError` for any malformed file.
    """
    _regular_file(path)
    with _mapped(path) as (buf, size):
        head = bytes(buf[:256])
        u8 = np.frombuffer(buf, np.uint8)
        raws: list[_RawLayer] = []
        layer = None
        try:
            pos = 0
            kinds = set()
            while pos < size:
                t = pos
                fnum, wt, pos = _tag(buf, pos, size)
                if fnum in (2, 100):
                    what = "layer (field 100)" if fnum == 100 else "legacy layers (field 2)"
                    if wt != _LEN:
                        raise _Bad(f"NetParameter.{what} has wire type {_WIRE_NAMES[wt]}, "
                                   "expected length-delimited", t)
                    layer = _RawLayer(len(raws), t, None, "", [])
                    s, pos = _length(buf, pos, size, f"a {what}")
                    kinds.add(fnum)
                    layer.offset = s
                    _scan_layer(buf, s, pos, fnum == 2, layer)
                    raws.append(layer)
                    layer = None
                else:
                    pos = _skip(buf, pos, size, fnum, wt, t)
        except _Bad as err:
            raise _fail(path, size, head, err, layer, looks_valid=bool(raws)) from None
        if not raws:
            raise WeightsError(f"{os.fspath(path)}: no layers found in {size} bytes; "
                               f"{_hint(head)}")
        if len(kinds) > 1:
            raise WeightsError(
                f"{os.fspath(path)}: the file mixes `layer` (field 100) and legacy `layers` "
                "(field 2) entries; Caffe ignores one kind in that case, so the file is "
                "ambiguous (upgrade it with Caffe's upgrade_net_proto_binary)")
        legacy = {raw.v0 for raw in raws} - {None}
        if len(legacy) > 1:  # Caffe upgrades all entries as V0: the V1 ones lose name and blobs
            v1 = next(raw for raw in raws if raw.v0 is False)
            raise WeightsError(
                f"{os.fspath(path)}: the file mixes V0 `layers {{ layer {{ ... }} }}` entries "
                f"with V1 entries (the first: layer #{v1.index} {v1.name!r}); Caffe's V0 upgrade "
                "would drop the V1 entries' names and blobs, so the file is ambiguous")
        out = []
        for raw in raws:
            blobs = []
            for j, (s, e) in enumerate(raw.blob_spans):
                try:
                    arr = _scan_blob(buf, u8, s, e)
                except _Bad as err:
                    raise _fail(path, size, head, err, raw, f" (blob {j})") from None
                blobs.append(arr)
            out.append(LayerBlobs(raw.name if raw.name is not None else "", raw.type, blobs))
        del u8
        return out


def read_caffemodel_net(path: PathLike) -> caffe_pb2.NetParameter:
    """Parse a ``.caffemodel`` with protobuf: the full ``NetParameter``, blobs included.

    Much slower and more memory-hungry than :func:`read_caffemodel` for large nets; no
    V1->V2 upgrade is applied. Raises :class:`WeightsError` when protobuf cannot parse it.
    """
    _regular_file(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{os.fspath(path)}: cannot read weights file: {exc}") from exc
    if not data:
        raise WeightsError(f"{os.fspath(path)}: the file is empty (0 bytes)")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise WeightsError(f"{os.fspath(path)}: protobuf cannot parse it as a NetParameter "
                           f"({exc}); {_hint(data[:256])}") from exc
    return net


# --------------------------------------------------------------------------------------------
# .caffemodel writer


def _venc(v: int) -> bytes:
    """Encode a non-negative int as a varint."""
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_KEY_NET_NAME = _venc((1 << 3) | _LEN)
_KEY_NET_LAYER = _venc((100 << 3) | _LEN)
_KEY_LAYER_BLOBS = _venc((7 << 3) | _LEN)
_KEY_BLOB_SHAPE = _venc((7 << 3) | _LEN)
_KEY_BLOB_DATA = _venc((5 << 3) | _LEN)
_KEY_SHAPE_DIM = _venc((1 << 3) | _LEN)


def _as_f32(arr, where: str) -> np.ndarray:
    """A C-contiguous little-endian float32 array (no copy when it already is one)."""
    if hasattr(arr, "detach") and hasattr(arr, "cpu"):  # a torch tensor, maybe requiring grad
        arr = arr.detach().cpu()
    try:
        # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
        a = np.asarray(arr, dtype="<f4", order="C")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot convert to float32: {exc}") from exc
    return a


def _blob_wire(a: np.ndarray) -> tuple[bytes, bytes]:
    """Wire bytes of one ``blobs`` entry before and after its raw float data.

    Field order as protobuf (and so Caffe) writes it: data (5) before shape (7).
    """
    dims = b"".join(_venc(int(d)) for d in a.shape)
    shape_msg = (_KEY_SHAPE_DIM + _venc(len(dims)) + dims) if dims else b""
    tail = _KEY_BLOB_SHAPE + _venc(len(shape_msg)) + shape_msg
    nbytes = a.size * 4
    data_key = (_KEY_BLOB_DATA + _venc(nbytes)) if nbytes else b""
    head = _KEY_LAYER_BLOBS + _venc(len(data_key) + nbytes + len(tail)) + data_key
    return head, tail


def _split_before_field(msg: bytes, fnum: int) -> int:
    """Offset of the first top-level field numbered above ``fnum`` in a serialised message."""
    pos = 0
    while pos < len(msg):
        t = pos
        f, wt, pos = _tag(msg, pos, len(msg))
        if f > fnum:
            return t
        pos = _skip(msg, pos, len(msg), f, wt, t)
    return len(msg)


def _fsync(path: str) -> None:
    """fsync a file or a folder by path (a folder cannot be fsync'ed on some systems: skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _refuse_duplicate_names(path: PathLike, layers: Sequence[LayerBlobs], *,
                            blobless_too: bool) -> None:
    """Two layers of one name cannot both get their weights back: Caffe (and we) copy by name.

    A .caffemodel may repeat the name of layers without blobs (nothing to copy); an HDF5 file
    cannot repeat any name (one group per name).
    """
    first: dict[str, int] = {}
    for i, lb in enumerate(layers):
        if not isinstance(lb, LayerBlobs):
            continue  # the writers report it
        j = first.setdefault(lb.name, i)
        if j == i:
            continue
        if blobless_too or lb.blobs or layers[j].blobs:
            kinds = " and ".join(f"#{k}" + (f" ({layers[k].type})" if layers[k].type else "")
                                 for k in (j, i))
            raise UnwritableWeightsError(
                f"{os.fspath(path)}: layers {kinds} are both named '{shorten(lb.name)}'; weights "
                "are matched to layers by name (in Caffe too), so this file could not be read "
                "back into the net: give each layer its own name")


@contextmanager
def _atomic(path: PathLike) -> Iterator[str]:
    """A temp path in ``path``'s folder that replaces ``path`` on success, vanishes on error."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL + 0o666: the umask applies as for a plain open(), unlike mkstemp's 0o600.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
        _fsync(folder)  # and so is the new name
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_caffemodel(path: PathLike, layers: Sequence[LayerBlobs],
                     net: caffe_pb2.NetParameter | None = None) -> None:
    """Write a binary ``.caffemodel`` the way Caffe's ``Net::ToProto`` lays it out.

    Each entry of ``layers`` becomes one ``layer``: the ``LayerParameter`` of the same name in
    ``net`` (copied as is, phase rules included; the k-th entry of a name takes the k-th layer of
    that name) or, without one, a minimal ``LayerParameter`` with just name and type; its blobs
    are serialised as ``BlobProto`` with ``shape`` and packed little-endian float32 ``data``.
    Layer parameters are serialised by protobuf without blobs; the blobs are spliced in as raw
    wire bytes, so the float data is written straight from the arrays (float32 C-contiguous
    arrays are not copied at all). The file is written to a temporary file in the same folder
    and moved into place with ``os.replace`` (atomic; not fsync'ed).
    """
    by_name: dict[str, list] = {}
    if net is not None:
        if len(net.layers) and not len(net.layer):
            raise ValueError("write_caffemodel: `net` uses legacy V1 `layers`; upgrade it to "
                             "`layer` entries first")
        for lp in net.layer:
            by_name.setdefault(lp.name, []).append(lp)
    _refuse_duplicate_names(path, layers, blobless_too=False)
    parts: list[tuple[bytes, list[tuple[bytes, bytes, np.ndarray]], bytes]] = []
    for i, lb in enumerate(layers):
        if not isinstance(lb, LayerBlobs):
            raise TypeError(f"write_caffemodel: layers[{i}] is {type(lb).__name__}, "
                            "not LayerBlobs")
        matches = by_name.get(lb.name)
        if matches:
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(matches.pop(0))
            lp.ClearField("blobs")
        else:
            lp = caffe_pb2.LayerParameter(name=lb.name)
            if lb.type:
                lp.type = lb.type
        msg = lp.SerializeToString()
        cut = _split_before_field(msg, 7)  # blobs go where field 7 belongs
        blobs = []
        for j, b in enumerate(lb.blobs):
            a = _as_f32(b, f"layer {lb.name!r} blob {j}")
            head, tail = _blob_wire(a)
            blobs.append((head, tail, a))
        parts.append((msg[:cut], blobs, msg[cut:]))

    with _atomic(path) as tmp:
        with open(tmp, "wb") as f:
            if net is not None and net.HasField("name"):
                name = net.name.encode("utf-8")
                f.write(_KEY_NET_NAME + _venc(len(name)) + name)
            for before, blobs, after in parts:
                size = len(before) + len(after) + sum(
                    len(h) + a.nbytes + len(t) for h, t, a in blobs)
                f.write(_KEY_NET_LAYER + _venc(size) + before)
                for h, t, a in blobs:
                    f.write(h)
                    if a.size:
                        f.write(a.reshape(-1).view(np.uint8))  # no copy
                    f.write(t)
                f.write(after)


# --------------------------------------------------------------------------------------------
# Caffe HDF5 weights: datasets data/<layer name>/<blob index>

_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_ATTR_INDEX = "landmarknet_layer_index"
_ATTR_TYPE = "landmarknet_layer_type"
_HDF5_SIG = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: PathLike) -> bool:
    """HDF5's signature at offset 0, 512, 1024, 2048 ... (as H5Fis_hdf5 looks for it)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            off = 0
            while off + 8 <= size:
                f.seek(off)
                if f.read(8) == _HDF5_SIG:
                    return True
                off = 512 if off == 0 else off * 2
    except OSError:
        return False
    return False


def read_caffe_hdf5(path: PathLike) -> list[LayerBlobs]:
    """Read Caffe HDF5 weights (``Net::ToHDF5`` / ``snapshot_format: HDF5``).

    Every group under ``data/`` whose children include datasets named ``0``, ``1``, ...
    is a layer named by its path relative to ``data/`` (layer names with ``/`` are nested
    groups); empty groups are layers without blobs. Order: files written by
    :func:`write_caffe_hdf5` come back in the order written (it records each layer's index);
    for files written by Caffe, HDF5 lists links by name, so layers come back ordered by name,
    which is harmless since weights are matched to layers by name. ``type`` is ``""`` unless
    :func:`write_caffe_hdf5` recorded it. ``diff/`` is ignored. Float and integer datasets are
    read as float32. Raises :class:`WeightsError`.
    """
    import h5py

    p = os.fspath(path)
    _regular_file(p)
    try:
        f = h5py.File(p, "r")
    except FileNotFoundError as exc:
        raise WeightsError(f"{p}: cannot open weights file: {exc}") from exc
    except OSError as exc:
        try:
            with open(p, "rb") as fh:
                head = fh.read(256)
        except OSError:
            head = b""
        raise WeightsError(f"{p}: cannot open it as HDF5 ({exc}); it starts with "
                           f"{head[:24]!r}") from exc
    found: list[tuple[int | None, int, LayerBlobs]] = []
    try:
        with f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                keys = list(f.keys())[:10]
                raise WeightsError(f"{p}: no 'data' group (top-level keys: {keys}); Caffe HDF5 "
                                   "weights keep datasets data/<layer>/<blob index>")

            def walk(group, rel: str) -> None:
                blobs: dict[int, np.ndarray] = {}
                subgroups = []
                for key in group.keys():
                    where = f"{group.name}/{key}"
                    link = group.get(key, getlink=True)
                    if not isinstance(link, h5py.HardLink):
                        raise WeightsError(f"{p}: {where} is a {type(link).__name__}; Caffe "
                                           "weights files hold plain groups and datasets")
                    try:
                        obj = group[key]
                    except (KeyError, OSError, RuntimeError) as exc:
                        raise WeightsError(f"{p}: cannot open {where}: {exc}") from exc
                    if isinstance(obj, h5py.Group):
                        subgroups.append((key, obj))
                    elif isinstance(obj, h5py.Dataset):
                        if not _INDEX_RE.fullmatch(key):
                            raise WeightsError(f"{p}: dataset {where} is not named by a blob "
                                               "index (0, 1, 2 ...)")
                        if obj.dtype.kind not in "fiu":
                            raise WeightsError(f"{p}: dataset {where} has dtype {obj.dtype}, "
                                               "not a number type")
                        try:
                            blobs[int(key)] = np.asarray(obj[()], dtype=np.float32)
                        except (OSError, RuntimeError, ValueError, TypeError) as exc:
                            raise WeightsError(f"{p}: cannot read dataset {where}: {exc}") \
                                from exc
                    else:
                        raise WeightsError(f"{p}: {where} is neither a group nor a dataset")
                marked = _ATTR_INDEX in group.attrs
                if rel and (blobs or marked or not subgroups):
                    if sorted(blobs) != list(range(len(blobs))):
                        raise WeightsError(
                            f"{p}: layer group {group.name} has blob datasets {sorted(blobs)}, "
                            "not 0..n-1 (Caffe leaves out blobs shared with another layer "
                            "through `param { name }`; such files are not supported)")
                    ltype = group.attrs.get(_ATTR_TYPE, "")
                    if isinstance(ltype, bytes):
                        ltype = ltype.decode("utf-8", "replace")
                    idx = int(group.attrs[_ATTR_INDEX]) if marked else None
                    ordered = [blobs[i] for i in range(len(blobs))]
                    found.append((idx, len(found), LayerBlobs(rel, str(ltype), ordered)))
                for key, sub in subgroups:
                    walk(sub, f"{rel}/{key}" if rel else key)

            walk(data, "")
    except WeightsError:
        raise
    except Exception as exc:  # h5py raises a zoo of types on damaged files
        raise WeightsError(f"{p}: cannot read HDF5 weights: {type(exc).__name__}: {exc}") \
            from exc
    if not found:
        raise WeightsError(f"{p}: no layer groups under data/")
    if all(idx is not None for idx, _, _ in found):
        found.sort(key=lambda t: (t[0], t[1]))
    return [lb for _, _, lb in found]


def _h5_parts(path: PathLike, name: str) -> list[str]:
    parts = name.split("/")
    if not name or any(part in ("", ".") for part in parts):
        raise UnwritableWeightsError(
            f"{os.fspath(path)}: layer name '{shorten(name)}' cannot be an HDF5 path (empty, "
            "or empty/'.' components between '/'); save as .caffemodel instead")
    return parts


def write_caffe_hdf5(path: PathLike, layers: Sequence[LayerBlobs]) -> None:
    """Write Caffe HDF5 weights: float32 datasets ``data/<layer name>/<blob index>``.

    A group is written for every layer, blobs or not, as ``Net::ToHDF5`` does; names with ``/``
    become nested groups. Groups keep creation order (``track_order``) and carry two attributes
    Caffe ignores: the layer's index in ``layers`` and its type, so :func:`read_caffe_hdf5`
    returns the same list. Atomic (temp file + ``os.replace``).
    """
    import h5py

    _refuse_duplicate_names(path, layers, blobless_too=True)
    seen: dict[str, str] = {}  # HDF5 path -> "group" | "dataset"
    plan = []
    for i, lb in enumerate(layers):
        if not isinstance(lb, LayerBlobs):
            raise TypeError(f"write_caffe_hdf5: layers[{i}] is {type(lb).__name__}, "
                            "not LayerBlobs")
        parts = _h5_parts(path, lb.name)
        for k in range(1, len(parts) + 1):
            gpath = "/".join(parts[:k])
            if seen.get(gpath) == "dataset":
                raise UnwritableWeightsError(
                    f"{os.fspath(path)}: layer '{shorten(lb.name)}' clashes with the blob "
                    f"dataset data/{shorten(gpath)} of another layer; save as .caffemodel instead")
            if k == len(parts) and gpath in seen and seen[gpath] == "layer":
                raise UnwritableWeightsError(
                    f"{os.fspath(path)}: layer '{shorten(lb.name)}' clashes with the group of "
                    "another layer's name; save as .caffemodel instead")
            seen.setdefault(gpath, "group")
        seen[lb.name] = "layer"
        arrays = []
        for j, b in enumerate(lb.blobs):
            dpath = f"{lb.name}/{j}"
            if seen.get(dpath) in ("group", "layer"):
                raise UnwritableWeightsError(
                    f"{os.fspath(path)}: blob data/{shorten(dpath)} clashes with the group of "
                    "another layer's name; save as .caffemodel instead")
            seen[dpath] = "dataset"
            arrays.append(_as_f32(b, f"layer {lb.name!r} blob {j}"))
        plan.append((i, lb, parts, arrays))

    with _atomic(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            data = f.create_group("data", track_order=True)
            for i, lb, parts, arrays in plan:
                g = data
                for part in parts:
                    g = g[part] if part in g else g.create_group(part, track_order=True)
                g.attrs[_ATTR_INDEX] = i
                if lb.type:
                    g.attrs[_ATTR_TYPE] = lb.type
                for j, a in enumerate(arrays):
                    g.create_dataset(str(j), data=a)


# --------------------------------------------------------------------------------------------
# Dispatch

_TORCH_EXT = {".pt", ".pth", ".pkl", ".ckpt", ".safetensors"}
_HDF5_EXT = {".h5", ".hdf5"}


def read_weights(path: PathLike) -> list[LayerBlobs]:
    """Read Caffe weights, ``.caffemodel`` or Caffe HDF5, whatever the extension says.

    Like Caffe's ``CopyTrainedLayersFrom``, the format is taken from the content (the HDF5
    signature), not the name. PyTorch files are not Caffe weights: ``.pt``/``.pth`` (and ZIP
    archives) raise :class:`WeightsError` pointing to ``landmarknet.params``.
    """
    p = Path(path)
    if p.suffix.lower() in _TORCH_EXT:
        raise WeightsError(f"{p}: PyTorch files are not Caffe weights; use landmarknet.params "
                           "to map a state_dict to layers")
    _regular_file(p)
    if _is_hdf5(p):
        return read_caffe_hdf5(p)
    return read_caffemodel(p)


def write_weights(path: PathLike, layers: Sequence[LayerBlobs],
                  net: caffe_pb2.NetParameter | None = None) -> None:
    """Write ``.caffemodel`` (``net`` supplies layer parameters) or ``.h5``/``.hdf5`` by extension.

    HDF5 files hold blobs only, so ``net`` is not used for them. Other extensions, PyTorch ones
    included, raise :class:`WeightsError` (PyTorch files: see ``landmarknet.params``).
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext in _HDF5_EXT:
        write_caffe_hdf5(p, layers)
    elif ext == ".caffemodel":
        write_caffemodel(p, layers, net)
    elif ext in _TORCH_EXT:
        raise WeightsError(f"{p}: PyTorch files are written by landmarknet.params, not by "
                           "write_weights")
    else:
        raise WeightsError(f"{p}: unknown weights extension {ext!r}; use .caffemodel, .h5 "
                           "or .hdf5")
