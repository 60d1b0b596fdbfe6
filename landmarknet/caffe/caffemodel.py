"""Binary ``.caffemodel`` files: read by a protobuf wire-format scanner, written with the blobs
spliced in as raw wire bytes.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.blobs import (LayerBlobs, PathLike, _as_f32, _atomic,
                                     _refuse_duplicate_names, _regular_file)
from landmarknet.caffe.prototxt import V1_TYPE_NAMES
from landmarknet.caffe.upgrade_v0 import V0_TYPES
from landmarknet.errors import WeightsError


# --------------------------------------------------------------------------------------------
# Legacy layer types (V1 enum, V0 strings) -> V2 type strings, as src/caffe/util/upgrade_proto.cpp
# (the V1 names: prototxt.V1_TYPE_NAMES, shared with the text reader)

#: V1LayerParameter.LayerType number -> V2 type string (UpgradeV1LayerType).
V1_LAYER_TYPES: dict[int, str] = {
    caffe_pb2.V1LayerParameter.LayerType.Value(k): v for k, v in V1_TYPE_NAMES.items()
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
            layer.type = V1_TYPE_NAMES[v1_name] if v1_name else v0_type
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


class _Repeated(NamedTuple):
    """A blob's repeated real field: its one-byte key when unpacked, its width and names."""

    key: int
    width: int
    dtype: str
    field: str  # BlobProto's name of it
    value: str  # "float" or "double", for messages


_FLOATS = _Repeated(0x2D, 4, "<f4", "data", "float")  # data = 5, fixed32
_DOUBLES = _Repeated(0x41, 8, "<f8", "double_data", "double")  # double_data = 8, fixed64


def _packed_values(buf, t: int, pos: int, end: int, kind: _Repeated) -> tuple[np.ndarray, int]:
    """A packed run (a view into the file) and the position after it."""
    s, pos = _length(buf, pos, end, f"the blob's {kind.field}")
    if (pos - s) % kind.width:
        raise _Bad(f"packed {kind.value} data has {pos - s} bytes, not a multiple of "
                   f"{kind.width}", t)
    return np.frombuffer(buf, kind.dtype, (pos - s) // kind.width, s), pos


def _unpacked_values(buf, u8: np.ndarray, t: int, pos: int, end: int,
                     kind: _Repeated) -> tuple[np.ndarray, int]:
    """Unpacked elements from tag position ``t``: with the canonical one-byte key, the whole
    run of them at once (copied); otherwise the one element."""
    if pos + kind.width > end:
        raise _Bad(f"a {kind.value} runs past the end of the blob", t, truncated=True)
    if buf[t] == kind.key and pos - t == 1:
        n = _unpacked_run(u8, t, end, kind.key, kind.width)  # >= 1
        rec = kind.width + 1
        recs = u8[t: t + rec * n].reshape(n, rec)[:, 1:]
        return np.ascontiguousarray(recs).view(kind.dtype).reshape(n), t + rec * n
    return np.frombuffer(buf, kind.dtype, 1, pos).copy(), pos + kind.width


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
            values, pos = _packed_values(buf, t, pos, end, _FLOATS)
            floats.append(values)
        elif fnum == 5 and wt == _FIXED32:
            values, pos = _unpacked_values(buf, u8, t, pos, end, _FLOATS)
            floats.append(values)
        elif fnum == 8 and wt == _LEN:
            values, pos = _packed_values(buf, t, pos, end, _DOUBLES)
            doubles.append(values)
        elif fnum == 8 and wt == _FIXED64:
            values, pos = _unpacked_values(buf, u8, t, pos, end, _DOUBLES)
            doubles.append(values)
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
