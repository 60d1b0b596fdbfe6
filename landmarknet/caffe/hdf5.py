"""Caffe's HDF5 weights files (``Net::ToHDF5``, ``snapshot_format: HDF5``): float32 datasets
``data/<layer name>/<blob index>``, read and written with h5py (imported when first used).
Every malformed input raises :class:`~landmarknet.errors.WeightsError` naming the file and the
group or dataset."""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from landmarknet.caffe.blobs import (LayerBlobs, PathLike, _as_f32, _atomic,
                                     _refuse_duplicate_names, _regular_file)
from landmarknet.errors import UnwritableWeightsError, WeightsError, shorten


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
