"""The exceptions landmarknet raises: each says where (file, line, layer, field) and what to do."""
from __future__ import annotations


class LandmarknetError(Exception):
    """Base class: every error landmarknet raises on purpose derives from it."""


class PrototxtError(LandmarknetError):
    """A prototxt (net or solver) that cannot be read as Caffe would read it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, layer: str | None = None) -> None:
        self.path, self.line, self.column, self.layer = path, line, column, layer
        where = path or "<text>"
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        if layer:
            where += f" (layer '{layer}')"
        super().__init__(f"{where}: {message}")


class GraphError(LandmarknetError):
    """A net whose layers do not form a valid graph (missing bottoms, cycles, duplicates)."""


class LayerError(LandmarknetError):
    """A layer that cannot be built: unknown type, bad parameters, incompatible shapes."""

    def __init__(self, message: str, *, layer: str | None = None, type: str | None = None) -> None:
        self.layer, self.type = layer, type
        prefix = f"layer '{layer}'" + (f" (type {type})" if type else "") + ": " if layer else ""
        super().__init__(prefix + message)


class ShapeError(LayerError):
    """Input shapes a layer cannot accept."""


class WeightsError(LandmarknetError):
    """A weights file (.caffemodel, .h5, .pt) that is unreadable or does not fit the net."""


class SolverError(LandmarknetError):
    """A solver.prototxt with settings we cannot honour."""


class DataError(LandmarknetError):
    """A data file or data set is missing, unreadable or malformed."""


class UnwritableWeightsError(WeightsError, ValueError):
    """Weights that cannot be written so that they read back (a duplicate or unrepresentable
    layer name); also a ValueError, which the writers raised before."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` with every run of non-blank characters longer than ``limit`` cut in its middle:
    error messages quote the input, and a 100,000-digit number must not make a 100 KB message."""
    import re
    keep_head, keep_tail = limit // 2, limit // 8

    def cut(m: re.Match) -> str:
        s = m.group(0)
        return f"{s[:keep_head]}...[{len(s) - keep_head - keep_tail} characters]...{s[-keep_tail:]}"
    return re.sub(r"\S{%d,}" % (limit + 1), cut, text)
