"""The front door: the few calls most users need, re-exported by ``landmarknet`` itself.

    import landmarknet as lm
    net = lm.load_caffe("deploy.prototxt", weights="net.caffemodel")   # a torch.fx GraphModule
    outputs = net(data=torch.zeros(1, 3, 112, 112))                  # dict of top blobs
    predictor = lm.load_model("heatmap4_68_bn")                      # detector + landmarks
    faces = predictor.predict("face.jpg")                            # [Face(box, points, ...)]
    lm.convert("net.caffemodel", "net.h5")                           # weights between formats

Each is a thin layer over the library modules the CLI uses too (build, params, models,
detect), so ``landmarknet build/convert/detect`` and these calls give the same numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Union

import numpy as np

if TYPE_CHECKING:  # torch and the detector are imported only when a function runs
    from landmarknet.build import CaffeNet
    from landmarknet.infer import LandmarkModel
    from landmarknet.params import Conversion, FitPolicy

PathLike = Union[str, os.PathLike]


def load_caffe(prototxt: PathLike, weights: Optional[PathLike] = None, *, phase: str = "test",
               level: int = 0, stages: Iterable[str] = (),
               input_shapes: Optional[Mapping[str, Iterable[int]]] = None,
               device: str = "cpu", seed: int = 0,
               fit: Optional["FitPolicy"] = None,
               python_path: Iterable[PathLike] = ()) -> "CaffeNet":
    """A Caffe net as a torch.fx GraphModule, with ``weights`` (.caffemodel/.h5/.pt) loaded.

    ``prototxt`` is a file, a bundle folder or an installed bundle's name. Without ``weights``
    the parameters hold the prototxt's fillers (seeded by ``seed``). Weights that do not fit
    the net raise WeightsError, as in Caffe, unless ``fit`` allows it. Call the net with its
    inputs by name; it returns a dict of its output blobs. ``python_path``: folders holding the
    modules of the net's own ``Python`` layers (caffe.Layer classes), imported from there as
    Caffe's PYTHONPATH would (landmarknet.python_layers); never searched otherwise.
    """
    from landmarknet.build import build_from_graph, net_graph
    from landmarknet.models import resolve_prototxt
    from landmarknet.params import load_weights

    graph = net_graph(resolve_prototxt(prototxt), phase=phase, level=level, stages=stages,
                      input_shapes=input_shapes)
    folders = list(python_path)
    if folders:
        from landmarknet.python_layers import load_python_layers
        load_python_layers(graph, folders)
    net = build_from_graph(graph, seed=seed, device=device)
    if weights is not None:
        load_weights(net, weights, fit=fit)
    return net


def convert(source: PathLike, output: PathLike, *, prototxt: Optional[PathLike] = None,
            phase: str = "test", input_shapes: Optional[dict] = None,
            copy_layers: Optional[str] = None, seed: int = 0,
            fit: Optional["FitPolicy"] = None) -> "Conversion":
    """Weights from ``source`` to ``output``, formats by extension (``landmarknet convert``).

    .caffemodel and .h5 convert directly; .pt files and ``copy_layers`` (``A,B,...`` or
    ``upto:NAME``) need ``prototxt``, the net that maps layer names to parameters.
    """
    from landmarknet.params import convert_weights
    return convert_weights(source, output, prototxt=prototxt, phase=phase,
                           input_shapes=input_shapes, copy_layers=copy_layers, seed=seed,
                           fit=fit)


@dataclass
class Face:
    """One face: detector box ``(x, y, w, h)`` and score, ``points`` (K, 2) in image pixels."""

    box: np.ndarray
    score: float
    points: Optional[np.ndarray]
    confidence: Optional[float]  # the landmark model's, None for regression models


class LandmarkPredictor:
    """A face detector and a landmark model bundle: ``predict(image)`` -> list of :class:`Face`.

    ``image`` is a file path, or an array as OpenCV holds it: uint8 (H, W, 3) in **BGR** order
    (``cv2.imread``), or gray (H, W). Convert RGB arrays first (``image[..., ::-1]``).
    """

    def __init__(self, model: "LandmarkModel", detector: str = "mtcnn", *,
                 device: str = "cpu", min_face: float = 20.0, align: bool = True) -> None:
        from landmarknet.detect import get_detector
        from landmarknet.detect.pipeline import Landmarker

        self.model = model
        options = {"device": device} if device != "cpu" and detector == "mtcnn" else {}
        self.landmarker = Landmarker(get_detector(detector, min_face=min_face, **options),
                                     model, align=align)

    @property
    def n_points(self) -> int:
        """Landmarks per face (5, 68 or 77)."""
        return self.model.scheme.n_points

    def predict(self, image: Union[PathLike, np.ndarray]) -> list[Face]:
        """Every face found in ``image`` (a path or a BGR uint8 array), best detections first."""
        result = self.landmarker.process_one(_bgr(image))
        return [Face(np.asarray(f.box, dtype=np.float64), float(f.score),
                     None if f.landmarks is None else np.asarray(f.landmarks),
                     f.confidence) for f in result.faces]


def load_model(name: PathLike = "heatmap4_68_bn", *, detector: str = "mtcnn",
               device: str = "cpu", min_face: float = 20.0) -> LandmarkPredictor:
    """A landmark predictor from a bundle name (``landmarknet models`` lists them) or folder.

    The bundle's files are checked against their sha256 first; ``detector`` is ``"mtcnn"``
    (boxes and five points that level the eyes) or ``"haar"``.
    """
    from landmarknet.models import load_bundle
    return LandmarkPredictor(load_bundle(name, device=device), detector, device=device,
                             min_face=min_face)


def _bgr(image: Union[PathLike, np.ndarray]) -> np.ndarray:
    """A path or an array as a BGR uint8 (H, W, 3) array (ImageError when unreadable)."""
    from landmarknet.detect.images import normalise_image, read_image
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image)).image
    return normalise_image(image)
