"""Landmark model bundles: image + face boxes -> crops -> network -> points in image coordinates.

A bundle is a folder (the shipped ones are in ``landmarknet/models/``; a bundle NAME or folder
is turned into a path by :func:`landmarknet.models.resolve_bundle`)::

    NAME/
      deploy.prototxt     the network (the source of truth, as everywhere in landmarknet)
      *.caffemodel        its weights (or the file model.json names; .h5 / .pt also load)
      model.json          how to feed it and read it (below)

``model.json`` (``format`` 1; unknown top-level keys are kept, unknown keys inside the sections
below are errors so typos do not pass silently)::

    {
      "format": 1,
      "name": "heatmap4_68",                    # shown to users
      "scheme": 68,                             # 5, 68 or 77 (landmarknet.data.schemes)
      "prototxt": "deploy.prototxt",            # optional, this is the default
      "weights": "heatmap4_68.caffemodel",      # optional when the folder has one .caffemodel
      "input": {"blob": "data", "channels": "BGR",       # BGR | RGB | GRAY
                "mean": 127.5, "scale": 0.0078125},      # (pixel - mean) * scale; mean may be
                                                         # per channel, in that channel order
      "output": {"blob": "Mconv7_stage4",                # default: the net's only output
                 "decoding": "heatmap",                  # or "regression"
                 "stride": 4, "offset": null,            # heatmap pixel u -> u*stride + offset
                 "channels": [0, 68],                    # which maps are the points
                 "refine": "taylor", "blur_sigma": 0.0,  # sub-pixel refinement (decode.py)
                 "unit": "unit"},                        # regression: unit | fraction | pixel |
                                                         # centered (decode.decode_regression)
      "crop": {"size": 112, "scale": 1.25, "shift": [0, 0], "box": "landmarks"},
      "box_calibration": {"mtcnn": [dx, dy, sw, sh], "haar": [...]},   # optional overrides
      "provenance": {...}, "metrics": {...}     # free-form: data, commit, command, NME ...
    }

The crop is :func:`landmarknet.data.crop.face_crop` with the "crop" policy, applied to the
detector's box after its calibration to a landmarks' bounding box (the box kind training used).
When the detector gives eye points (MTCNN), the crop is turned with the face so its eyes are
level (``prepare(..., points=...)``); the points are mapped back through the same crop.
Confidence: for heatmaps the mean over points of the peak value clipped to [0, 1]; regression
nets have none (``None``).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from landmarknet.data.crop import CropPolicy, FaceCrop, alignment_angle, crop_batch
from landmarknet.data.schemes import get_scheme
from landmarknet.decode import (REFINEMENTS, REGRESSION_UNITS, decode_heatmaps,
                                decode_regression)
from landmarknet.detect import DetectError
from landmarknet.detect.boxes import BoxCalibration
from landmarknet.models import find_bundles  # noqa: F401 (re-exported: bundles under a folder)

MODEL_JSON = "model.json"
FORMAT = 1
_INPUT_KEYS = {"blob", "channels", "mean", "scale", "size"}
_OUTPUT_KEYS = {"blob", "decoding", "stride", "offset", "channels", "refine", "blur_sigma", "unit",
                "flip_test"}


class ModelError(DetectError):
    """A model bundle that is missing, incomplete or inconsistent."""


@dataclass
class ModelSpec:
    """model.json, checked."""

    folder: Path
    name: str
    scheme: int
    prototxt: Path
    weights: Path
    input_blob: Optional[str]
    channels: str
    mean: np.ndarray
    scale: float
    output_blob: Optional[str]
    decoding: str
    stride: float
    offset: Optional[float]
    map_channels: Optional[tuple[int, int]]
    refine: str
    blur_sigma: float
    unit: str
    crop: CropPolicy
    calibrations: dict[str, BoxCalibration]
    raw: dict
    #: Also run the mirrored crop and average the two predictions (points mapped back).
    flip_test: bool = False

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "ModelSpec":
        """Read and check ``folder/model.json``."""
        folder = Path(folder)
        path = folder / MODEL_JSON
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such model folder")
        if not path.is_file():
            raise ModelError(f"{folder}: not a model bundle (no {MODEL_JSON}); a bundle holds "
                             "deploy.prototxt, a .caffemodel and model.json")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls._parse(folder, raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: {exc}") from None

    @classmethod
    def _parse(cls, folder: Path, raw: dict) -> "ModelSpec":
        if raw.get("format", FORMAT) != FORMAT:
            raise ValueError(f"format {raw.get('format')!r} is not supported (this landmarknet "
                             f"reads format {FORMAT})")
        scheme = get_scheme(int(raw["scheme"])).n_points
        prototxt = folder / raw.get("prototxt", "deploy.prototxt")
        if not prototxt.is_file():
            raise ValueError(f"the prototxt {prototxt.name} is missing from the bundle")
        if "weights" in raw:
            weights = folder / raw["weights"]
            if not weights.is_file():
                raise ValueError(f"the weights file {weights.name} is missing from the bundle")
        else:
            found = sorted(folder.glob("*.caffemodel"))
            if len(found) != 1:
                raise ValueError(f"name the weights file (\"weights\": ...): the folder has "
                                 f"{len(found)} .caffemodel files")
            weights = found[0]
        inp = dict(raw.get("input", {}))
        out = dict(raw.get("output", {}))
        for section, keys, known in (("input", inp, _INPUT_KEYS), ("output", out, _OUTPUT_KEYS)):
            extra = set(keys) - known
            if extra:
                raise ValueError(f"unknown {section} keys {sorted(extra)}; known: {sorted(known)}")
        channels = str(inp.get("channels", "BGR")).upper()
        if channels not in ("BGR", "RGB", "GRAY"):
            raise ValueError(f"input channels must be BGR, RGB or GRAY, got {channels!r}")
        n_ch = 1 if channels == "GRAY" else 3
        mean = np.asarray(inp.get("mean", 0.0), dtype=np.float32).reshape(-1)
        if mean.size not in (1, n_ch):
            raise ValueError(f"input mean needs 1 or {n_ch} values, got {mean.size}")
        crop = CropPolicy.from_dict(raw.get("crop", {}))
        if raw.get("crop", {}).get("box", "landmarks") != "landmarks":
            raise ValueError("crop box kind must be 'landmarks' (the points' bounding box)")
        if "size" in inp and int(inp["size"]) != crop.size:
            raise ValueError(f"input size {inp['size']} differs from crop size {crop.size}")
        decoding = out.get("decoding", "heatmap")
        if decoding not in ("heatmap", "regression"):
            raise ValueError(f"output decoding must be heatmap or regression, got {decoding!r}")
        if decoding == "regression" and out.get("unit") not in REGRESSION_UNITS:
            raise ValueError(f"a regression model must say its output.unit, one of "
                             f"{REGRESSION_UNITS} (got {out.get('unit')!r})")
        refine = out.get("refine", "taylor")
        if refine not in REFINEMENTS:
            raise ValueError(f"output refine must be one of {REFINEMENTS}, got {refine!r}")
        chans = out.get("channels")
        cal = {k: BoxCalibration.from_list(v) for k, v in raw.get("box_calibration", {}).items()}
        return cls(folder, str(raw.get("name", folder.name)), scheme, prototxt, weights,
                   inp.get("blob"), channels, mean, float(inp.get("scale", 1.0)), out.get("blob"),
                   decoding, float(out.get("stride", 1.0)),
                   None if out.get("offset") is None else float(out["offset"]),
                   None if chans is None else (int(chans[0]), int(chans[1])), refine,
                   float(out.get("blur_sigma", 0.0)), str(out.get("unit", "unit")), crop, cal,
                   raw, bool(out.get("flip_test", False)))

    def verify(self) -> bool:
        """Check model.json, the prototxt and the weights against the MANIFEST beside the folder.

        True when they matched, False when no MANIFEST lists the folder (a user's own bundle);
        a changed or missing file raises ChecksumError naming it.
        """
        from landmarknet.models import verify_files
        return verify_files(self.folder, [self.folder / MODEL_JSON, self.prototxt, self.weights])


@dataclass
class Prediction:
    """Landmarks of the faces of one image."""

    points: np.ndarray  # (N, K, 2) image pixels
    confidence: list[Optional[float]]  # per face; None when the model has no confidence
    crops: list[FaceCrop]
    heatmaps: Optional[np.ndarray] = None  # (N, K, h, w) when asked for and decoded from heatmaps
    images: Optional[np.ndarray] = None  # (N, S, S, C) the crops fed, when heatmaps are asked for


class LandmarkModel:
    """A loaded bundle: ``predict(image, boxes)`` gives points in image coordinates."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", *, fast: bool = True) -> None:
        from landmarknet.build import build_from_graph, net_graph
        from landmarknet.params import load_weights

        self.spec = spec
        self.device = torch.device(device)
        s = spec.crop.size
        n_ch = 1 if spec.channels == "GRAY" else 3
        # Build once with the bundle's size; batch size varies per call (the modules do not
        # depend on N). A net with a different declared input name is told by model.json.
        # The graph tells the inputs before their shapes are chosen; it is built from once.
        graph = net_graph(spec.prototxt, phase="test")
        names = [i.name for i in graph.inputs]
        self.input_blob = spec.input_blob or (names[0] if len(names) == 1 else None)
        if self.input_blob is None or self.input_blob not in names:
            raise ModelError(f"{spec.folder}: cannot tell the image input among {names}; set "
                             "input.blob in model.json")
        others = [n for n in names if n != self.input_blob]
        if others:
            raise ModelError(f"{spec.folder}: the net has inputs besides the image: {others}")
        self.net = build_from_graph(graph, input_shapes={self.input_blob: (1, n_ch, s, s)})
        load_weights(self.net, spec.weights, strict=True)
        self.net.eval().to(self.device)
        outputs = [self.net.caffe_graph.blob_of[t] for t in self.net.caffe_graph.outputs()]
        self.output_blob = spec.output_blob or (outputs[0] if len(outputs) == 1 else None)
        if self.output_blob is None:
            raise ModelError(f"{spec.folder}: the net has several outputs {outputs}; set "
                             "output.blob in model.json")
        self.scheme = get_scheme(spec.scheme)
        self._fast = self._fast_net(n_ch, s) if fast else None

    def _fast_net(self, channels: int, size: int):
        """On a CPU, the net for inference with BatchNorm/Scale folded into the convolutions
        and each convolution + ReLU one prepacked oneDNN call (landmarknet.fast's ``fuse``:
        the same numbers within ~1e-5 relative; light3w_68 at batch 1 on two cores: 4.9 ms
        against 19.5 ms eager). None on other devices, or when the output blob is not one of
        the net's outputs (the fast net returns outputs only)."""
        if self.device.type != "cpu":
            return None
        from landmarknet.fast import optimize_for_inference
        example = torch.zeros(1, channels, size, size)
        fast = optimize_for_inference(self.net, "inference+channels_last+fuse", [example])
        return fast if self.output_blob in fast.output_names else None

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str = "cpu", *,
             verify: bool = True, fast: bool = True) -> "LandmarkModel":
        """Load a bundle folder; a shipped one is first checked against its sha256 (MANIFEST).
        ``fast=False`` runs the built net as it is (eager) instead of its CPU fast form."""
        spec = ModelSpec.read(folder)
        if verify:
            spec.verify()
        return cls(spec, device, fast=fast)

    @property
    def name(self) -> str:
        """The bundle's name."""
        return self.spec.name

    @property
    def decodes_heatmaps(self) -> bool:
        """True for heatmap models."""
        return self.spec.decoding == "heatmap"

    def calibration(self, detector: Optional[str]) -> BoxCalibration:
        """A detector's box calibration: model.json's, else the built-in one, else identity."""
        if detector is None or detector == "landmarks":
            return BoxCalibration()
        if detector in self.spec.calibrations:
            return self.spec.calibrations[detector]
        from landmarknet.detect.evaluate import DEFAULT_CALIBRATIONS
        key = (detector, self.spec.scheme)
        if key in DEFAULT_CALIBRATIONS:
            return DEFAULT_CALIBRATIONS[key]
        warnings.warn(f"model {self.name}: no box calibration for detector {detector!r}; its "
                      "boxes are used as they are")
        return BoxCalibration()

    # -- the three steps ------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, boxes: np.ndarray, detector: Optional[str] = None,
                points: Optional[Sequence[Optional[np.ndarray]]] = None,
                ) -> tuple[np.ndarray, list[FaceCrop], np.ndarray]:
        """Crop every face: network batch (N, C, S, S) float32, crop geometries, crop pixels.

        ``points``: per face, the detector's points (MTCNN's five) or None. A face with eye
        points gets an aligned crop (turned so its eyes are level, see
        :func:`landmarknet.data.crop.alignment_angle`); without points (None, Haar) it is
        upright, as are all faces when ``points`` is None.
        """
        import cv2
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        angles = None
        if points is not None:
            if len(points) != len(boxes):
                raise ValueError(f"{len(points)} point sets for {len(boxes)} boxes")
            angles = [alignment_angle(p) for p in points]
        boxes = self.calibration(detector).apply(boxes, angles)
        if self.spec.channels == "GRAY":
            src = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
        elif self.spec.channels == "RGB":
            src = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            src = image
        crops, geoms = crop_batch(src, boxes, self.spec.crop, angles)
        batch = (crops.astype(np.float32) - self.spec.mean) * np.float32(self.spec.scale)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), geoms, crops

    def run(self, batch: np.ndarray, keep_heatmaps: bool = False,
            ) -> tuple[np.ndarray, list[Optional[float]], Optional[np.ndarray]]:
        """Network batch -> crop points (N, K, 2), confidences, heatmaps (when kept).

        With ``flip_test`` the mirrored crops run too (in the same forward pass); their points
        are mirrored back (``x -> S - 1 - x``, re-ordered by the scheme's flip permutation)
        and averaged with the direct ones.
        """
        if not self.spec.flip_test or len(batch) == 0:
            return self._run_once(batch, keep_heatmaps)
        n = len(batch)
        both = np.concatenate([batch, np.ascontiguousarray(batch[..., ::-1])])
        pts, conf, maps = self._run_once(both, keep_heatmaps)
        back = self.scheme.flip_points(pts[n:], self.spec.crop.size)
        avg = (pts[:n] + back) / 2
        if conf[0] is not None:
            conf = [(a + b) / 2 for a, b in zip(conf[:n], conf[n:])]
        return avg, conf[:n], (maps[:n] if maps is not None else None)

    def _run_once(self, batch: np.ndarray, keep_heatmaps: bool = False,
                  ) -> tuple[np.ndarray, list[Optional[float]], Optional[np.ndarray]]:
        k = self.spec.scheme
        if len(batch) == 0:
            return np.zeros((0, k, 2)), [], None
        x = torch.from_numpy(batch).to(self.device)
        if self._fast is not None:
            out = self._fast(x)[self.output_blob]
        else:
            with torch.inference_mode():
                out = self.net.run({self.input_blob: x}, blobs=[self.output_blob])[
                    self.output_blob]
        out = out.float().cpu().numpy()
        if self.spec.decoding == "regression":
            pts = decode_regression(out, k, unit=self.spec.unit, size=self.spec.crop.size)
            return pts, [None] * len(pts), None
        if out.ndim != 4:
            raise ModelError(f"model {self.name}: output {self.output_blob} has shape "
                             f"{list(out.shape)}, not (N, K, H, W) heatmaps")
        lo, hi = self.spec.map_channels or (0, k)
        maps = out[:, lo:hi]
        if maps.shape[1] != k:
            raise ModelError(f"model {self.name}: {maps.shape[1]} heatmaps for a {k}-point "
                             "scheme; set output.channels in model.json")
        pts, peak = decode_heatmaps(maps, stride=self.spec.stride, offset=self.spec.offset,
                                    refine=self.spec.refine, blur_sigma=self.spec.blur_sigma)
        conf = [float(c) for c in np.clip(peak, 0, 1).mean(axis=1)]
        return pts, conf, (maps if keep_heatmaps else None)

    def predict(self, image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]],
                detector: Optional[str] = None, return_heatmaps: bool = False,
                points: Optional[Sequence[Optional[np.ndarray]]] = None) -> Prediction:
        """Points (N, K, 2) in image pixels for the face boxes (x, y, w, h) of a BGR image.

        ``detector`` names where the boxes come from ("mtcnn", "haar", or "landmarks" /
        None for boxes that already are landmarks' bounding boxes) to pick the calibration.
        ``points``: the detector's points per face (or None) to align the crops (``prepare``).
        """
        batch, geoms, crops = self.prepare(image, boxes, detector, points)
        pts, conf, maps = self.run(batch, keep_heatmaps=return_heatmaps)
        return Prediction(self.to_image(pts, geoms), conf, geoms, maps,
                          crops if return_heatmaps else None)

    @staticmethod
    def to_image(points: np.ndarray, geoms: Sequence[FaceCrop]) -> np.ndarray:
        """Crop points (N, K, 2) -> image points through each face's crop."""
        if len(geoms) == 0:
            return np.zeros((0,) + tuple(points.shape[1:]))
        return np.stack([g.to_image(p) for g, p in zip(geoms, points)])
