"""Small helpers shared by layer converters: Caffe's axis rules, kernel geometry, side files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landmarknet.layers.registry import LayerSpec


def canonical_axis(axis: int, ndim: int, spec: LayerSpec, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise spec.error(f"{what} {axis} is out of range for a {ndim}-D bottom", shape=True)
    return axis % ndim


def side_file(spec: LayerSpec, name: str) -> Path:
    """A file a layer's parameter names (InfogainLoss' H, DetectionEvaluate's sizes): Caffe
    opens it from its working folder; a file beside the prototxt is the other place a user
    means, taken when the first does not exist. The path may not exist: the caller says so."""
    path = Path(name)
    if not path.is_absolute() and not path.exists() and spec.graph is not None \
            and spec.graph.path:
        beside = Path(spec.graph.path).parent / path
        if beside.exists():
            path = beside
    return path


def where_looked(name: str) -> str:
    """The words that say where :func:`side_file` looked, for a 'no such file' error."""
    return "" if Path(name).is_absolute() else \
        " (looked in the working folder and beside the prototxt)"


@dataclass(frozen=True)
class Geometry2d:
    """Kernel, stride, pad and dilation of a 2-D window, each as (h, w)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)


def _pair(spec: LayerSpec, name: str, repeated: list[int], h: int | None, w: int | None,
          default: int | None) -> tuple[int, int]:
    """One (h, w) pair from Caffe's repeated field or its _h/_w twins (never both)."""
    if h is not None or w is not None:
        if repeated:
            raise spec.error(f"give either {name} or {name}_h/{name}_w, not both")
        if h is None or w is None:
            raise spec.error(f"{name}_h and {name}_w must be given together")
        return int(h), int(w)
    if not repeated:
        if default is None:
            raise spec.error(f"{name} is required")
        return default, default
    if len(repeated) == 1:
        return int(repeated[0]), int(repeated[0])
    if len(repeated) == 2:
        return int(repeated[0]), int(repeated[1])
    raise spec.error(f"{name} has {len(repeated)} values; only 2-D layers are supported")


def conv_geometry(spec: LayerSpec, cp) -> Geometry2d:
    """Geometry of a Convolution/Deconvolution layer from its ConvolutionParameter."""
    opt = lambda f: getattr(cp, f) if cp.HasField(f) else None  # noqa: E731
    kernel = _pair(spec, "kernel_size", list(cp.kernel_size), opt("kernel_h"), opt("kernel_w"), None)
    stride = _pair(spec, "stride", list(cp.stride), opt("stride_h"), opt("stride_w"), 1)
    pad = _pair(spec, "pad", list(cp.pad), opt("pad_h"), opt("pad_w"), 0)
    dilation = _pair(spec, "dilation", list(cp.dilation), None, None, 1)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise spec.error("kernel_size, stride and dilation must be positive")
    return Geometry2d(kernel, stride, pad, dilation)


def pool_geometry(spec: LayerSpec, pp) -> Geometry2d:
    """Geometry of a Pooling layer (its fields are scalars, with _h/_w twins)."""
    opt = lambda f: getattr(pp, f) if pp.HasField(f) else None  # noqa: E731
    ks = [pp.kernel_size] if pp.HasField("kernel_size") else []
    st = [pp.stride] if pp.HasField("stride") else []
    pd = [pp.pad] if pp.HasField("pad") else []
    if pp.global_pooling:
        if ks or pp.HasField("kernel_h"):
            raise spec.error("global_pooling ignores kernel_size: remove it (Caffe refuses both)")
        h, w = spec.bottom_shapes[0][-2:]
        return Geometry2d((h, w), (1, 1), (0, 0))
    kernel = _pair(spec, "kernel_size", ks, opt("kernel_h"), opt("kernel_w"), None)
    stride = _pair(spec, "stride", st, opt("stride_h"), opt("stride_w"), 1)
    pad = _pair(spec, "pad", pd, opt("pad_h"), opt("pad_w"), 0)
    return Geometry2d(kernel, stride, pad)


def field_pair(rep: list[int], h: int | None, w: int | None, default: int) -> tuple[int, int]:
    """(h, w) from a repeated field or its _h/_w twins, leniently (for drawing labels)."""
    if h is not None and w is not None:
        return int(h), int(w)
    if not rep:
        return default, default
    if len(rep) == 1:
        return int(rep[0]), int(rep[0])
    return int(rep[0]), int(rep[1])


def dims_text(pair: tuple[int, int], short: bool = False) -> str:
    """(3, 3) -> '3×3' ('3' when short), (3, 5) -> '3×5'."""
    a, b = pair
    if a == b:
        return str(a) if short else f"{a}×{b}"
    return f"{a}×{b}"
