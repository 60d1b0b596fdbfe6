"""Read and write Caffe weights: binary ``.caffemodel`` files and Caffe's HDF5 weights files.

The prototxt holds a net's layer parameters; a weights file only contributes, per layer, its
name, its type and its blobs. This module moves exactly that, as a list of :class:`LayerBlobs`.
Mapping layers to a PyTorch ``state_dict`` is not done here (see ``landmarknet.params``), and
PyTorch files (``.pt``/``.pth``) are not read or written here either.

Each format has its own module: ``caffe/caffemodel.py`` (a protobuf wire-format scanner and
writer, fast on large files) and ``caffe/hdf5.py``; ``caffe/blobs.py`` holds ``LayerBlobs`` and
the file handling they share. This module picks the format (:func:`read_weights` by content,
:func:`write_weights` by extension) and re-exports the public names of both.

Every malformed input raises :class:`~landmarknet.errors.WeightsError` naming the file, the byte
offset and, where known, the layer; no other exception type escapes the readers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.blobs import LayerBlobs, PathLike, _regular_file
from landmarknet.caffe.caffemodel import (V1_LAYER_TYPES, read_caffemodel, read_caffemodel_net,
                                          write_caffemodel)
from landmarknet.caffe.hdf5 import _is_hdf5, read_caffe_hdf5, write_caffe_hdf5
from landmarknet.errors import WeightsError

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
