"""LayerBlobs, what every Caffe weights format moves (a layer's name, type and blobs), and the
file handling the format modules share: refusing non-regular files, atomic replacement, layer
names that could not be read back, float32 conversion of blobs before writing."""
from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from landmarknet.errors import UnwritableWeightsError, WeightsError, shorten

PathLike = str | os.PathLike


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
