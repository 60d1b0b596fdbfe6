"""MTCNN (Zhang et al. 2016) run by landmarknet: P-, R- and O-Net from their original Caffe files.

The three nets are built from ``landmarknet/models/mtcnn/det{1,2,3}.prototxt`` (package data,
checked against their sha256 in landmarknet/models/MANIFEST first) by :func:`build_net` and filled
by :func:`load_weights` (strict). Everything around them follows the authors' MATLAB code
(``code/codes/MTCNNv2/detect_face.m``), vectorised:

* image pyramid: scales ``12 / min_face * factor**k`` while the short side stays >= 12 px;
  each level is resized with area averaging (what MATLAB's ``imResample`` does when shrinking);
* P-Net on every level (one net, any size: it is fully convolutional), candidates where the face
  probability >= ``thresholds[0]``, 12x12 windows at stride 2, NMS 0.5 per level, NMS 0.7 over all,
  box regression, square-ing;
* R-Net on all candidates at once (24x24 crops, zero padding outside the image), threshold, NMS
  0.7, regression, square-ing; O-Net likewise (48x48), which also gives five points; final NMS 0.7
  on the smaller area ("Min").

The transposed-input convention: the weights were trained from MATLAB, whose column-major arrays
reach Caffe with rows and columns swapped. Every crop therefore goes in as ``N x 3 x W x H``
(RGB, ``(v - 127.5) * 0.0078125``), and P-Net's output maps are indexed ``[x, y]``.

Internally boxes are MATLAB's 1-based inclusive pixel corners (x1, y1, x2, y2); the public result
is converted to ``(x, y, w, h)`` with ``x = x1 - 1`` and ``w = x2 - x1 + 1``, the frame in which
O-Net's points are expressed (``x = x1 - 1 + p * w``).

On a GPU (``device="cuda"``) the pyramid is built there too: the frame goes up once and each
level is OpenCV's INTER_AREA resize written as two matrix products (:func:`area_weights`, the
same weights OpenCV uses), P-Net runs on the level where it was made, and only the candidate
windows (probability over the threshold) come back. R-Net's and O-Net's crops are cut on the CPU
(a few hundred small resizes) and run on the device in one batch each. NMS stays in numpy: it
sees tens to hundreds of boxes. ``pyramid="torch"`` takes the same path on the CPU (tests).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from landmarknet.detect import DetectError, Face
from landmarknet.detect.boxes import nms
from landmarknet.models import MTCNN_DIR, verify_files

#: Where the original MTCNN prototxts and caffemodels live (MIT licence beside them).
DEFAULT_WEIGHTS = MTCNN_DIR
MEAN, SCALE = 127.5, 0.0078125


def _load_net(folder: Path, stem: str, size: int):
    """Build det{n} at its own input size and load its caffemodel strictly."""
    from landmarknet.build import build_net
    from landmarknet.params import load_weights

    proto, model = folder / f"{stem}.prototxt", folder / f"{stem}.caffemodel"
    for f in (proto, model):
        if not f.is_file():
            raise DetectError(f"MTCNN file {f} is missing; landmarknet ships them in "
                              "landmarknet/models/mtcnn/ (det1..det3 .prototxt and .caffemodel): "
                              "reinstall landmarknet, or restore them from git")
    verify_files(folder, [proto, model])
    net = build_net(proto, phase="test", input_shapes={"data": (1, 3, size, size)})
    load_weights(net, model, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    # NHWC convolutions are about 1.5x faster on CPU here; results are the same (tested vs OpenCV).
    return net.to(memory_format=torch.channels_last)


def _fix(x: np.ndarray) -> np.ndarray:
    """MATLAB's fix: round towards zero."""
    return np.trunc(x)


def _square(boxes: np.ndarray) -> np.ndarray:
    """MATLAB rerec: grow each box to a square of side max(w, h) about its centre (w = x2 - x1)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool) -> np.ndarray:
    """Apply (dx1, dy1, dx2, dy2) offsets in units of the box size (MATLAB bbreg)."""
    one = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    out = boxes.copy()
    out[:, :4] = boxes[:, :4] + reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return out


def crop_boxes(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut integer 1-based inclusive boxes out of ``image`` (zeros outside), resized to size x size.

    Returns float32 (N, size, size, C). This is MATLAB's ``pad`` + ``imResample``: the part of
    each box inside the image is copied into a zero canvas of the box's size, then resampled
    (area averaging when shrinking, bilinear when enlarging).
    """
    h_img, w_img = image.shape[:2]
    b = boxes[:, :4].astype(np.int64)
    out = np.zeros((len(b), size, size, image.shape[2]), dtype=np.float32)
    # Vectorised clipping of every box against the image (0-based, end-exclusive slices).
    x1, y1, x2, y2 = b[:, 0] - 1, b[:, 1] - 1, b[:, 2], b[:, 3]
    bw, bh = x2 - x1, y2 - y1
    sx1, sy1 = np.clip(x1, 0, w_img), np.clip(y1, 0, h_img)
    sx2, sy2 = np.clip(x2, 0, w_img), np.clip(y2, 0, h_img)
    for k in range(len(b)):  # one cv2.resize per box: crops differ in size
        if bw[k] <= 0 or bh[k] <= 0 or sx2[k] <= sx1[k] or sy2[k] <= sy1[k]:
            continue
        canvas = np.zeros((bh[k], bw[k], image.shape[2]), dtype=image.dtype)
        canvas[sy1[k] - y1[k]:sy2[k] - y1[k], sx1[k] - x1[k]:sx2[k] - x1[k]] = \
            image[sy1[k]:sy2[k], sx1[k]:sx2[k]]
        interp = cv2.INTER_AREA if bw[k] > size or bh[k] > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(canvas, (size, size), interpolation=interp).reshape(size, size, -1)
    return out


@functools.lru_cache(maxsize=64)
def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) float64 weights of OpenCV's INTER_AREA resize of ``src`` samples to ``dst``
    (shrinking, ``dst <= src``): output sample d averages the source interval
    ``[d * src / dst, (d + 1) * src / dst)``, partly covered samples by their covered fraction,
    as OpenCV's ``computeResizeAreaTab`` does. A resize is then ``A_h @ image @ A_w.T``.
    """
    if not 0 < dst <= src:
        raise ValueError(f"area weights shrink: need 0 < dst <= src, got {src} -> {dst}")
    scale = src / dst
    w = np.zeros((dst, src))
    for d in range(dst):
        lo, hi = d * scale, d * scale + scale
        cell = min(scale, src - lo)
        first, last = math.ceil(lo), math.floor(hi)
        last = min(last, src - 1)
        first = min(first, last)
        if first - lo > 1e-3:
            w[d, first - 1] = (first - lo) / cell
        w[d, first:last] = 1.0 / cell
        if hi - last > 1e-3:
            w[d, last] = min(hi - last, 1.0, cell) / cell
    return w


def _round_like_opencv(level: torch.Tensor, halving: bool) -> torch.Tensor:
    """The uint8 values cv2's INTER_AREA gives: halves to even, except its 2x shrink, whose
    integer path rounds them up."""
    out = (level + 0.5).floor_() if halving else level.round_()
    return out.clamp_(0, 255)


def to_blob(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) RGB pixels -> normalised N x 3 x W x H tensor (transposed: see module doc)."""
    x = (np.asarray(images, dtype=np.float32) - MEAN) * SCALE
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 2, 1)))


class MTCNN:
    """The MTCNN face detector; ``detect(bgr_image) -> [Face]`` with five points per face."""

    name = "mtcnn"

    def __init__(self, weights_dir: str | os.PathLike | None = None, *, min_face: float = 20.0,
                 factor: float = 0.709, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 max_input_side: int = 1280, device: str = "cpu",
                 turns: Sequence[int] = (0,), pyramid: str | None = None) -> None:
        """Load the nets. ``min_face``: smallest face side searched (px). ``max_input_side``:
        the pyramid's largest level is at most this long, so on very large images the smallest
        face searched grows to ``12 * long_side / max_input_side`` px (keeps time bounded).
        ``turns``: quarter turns (degrees, multiples of 90) of the image also searched; MTCNN
        finds faces within about +-45 degrees of upright, so (0, 90, 180, 270) finds them at
        any roll, at that many times the cost. Boxes and points come back in the image's
        coordinates (exact for quarter turns); overlapping finds keep the best score.
        ``device``: where the nets run. ``pyramid``: "opencv" (levels resized by cv2 on the
        CPU) or "torch" (on the device, see the module doc); default: opencv on the CPU,
        torch elsewhere."""
        if not 0 < factor < 1:
            raise DetectError(f"MTCNN pyramid factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise DetectError(f"MTCNN needs three thresholds (P, R, O nets), got {thresholds}")
        if min_face < 12:
            raise DetectError(f"MTCNN min_face must be at least 12 px, got {min_face}")
        folder = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS
        self.device = torch.device(device)
        self.pyramid = pyramid or ("opencv" if self.device.type == "cpu" else "torch")
        if self.pyramid not in ("opencv", "torch"):
            raise DetectError(f"MTCNN pyramid must be 'opencv' or 'torch', got {pyramid!r}")
        self._weights_on_device: dict[tuple[int, int], torch.Tensor] = {}
        self.pnet = _load_net(folder, "det1", 12).to(self.device)
        self.rnet = _load_net(folder, "det2", 24).to(self.device)
        self.onet = _load_net(folder, "det3", 48).to(self.device)
        self.min_face = float(min_face)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_input_side = int(max_input_side)
        self.turns = tuple(sorted({int(t) % 360 for t in turns}))
        if not self.turns or any(t % 90 for t in self.turns):
            raise DetectError(f"MTCNN turns must be multiples of 90 degrees, got {list(turns)}")

    # -- the three stages ----------------------------------------------------------------------
    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid's scales for an image of this size (MATLAB's loop, with the size cap)."""
        min_face = max(self.min_face, 12.0 * max(height, width) / self.max_input_side)
        m = 12.0 / min_face
        side = min(height, width) * m
        out = []
        k = 0
        while side >= 12:
            out.append(m * self.factor ** k)
            side *= self.factor
            k += 1
        return out

    def _run(self, net, blob: torch.Tensor, chunk: int = 512) -> dict[str, np.ndarray]:
        outs: dict[str, list[np.ndarray]] = {}
        with torch.inference_mode():
            for i in range(0, blob.shape[0], chunk):
                x = blob[i:i + chunk].to(self.device).contiguous(memory_format=torch.channels_last)
                for k, v in net(x).items():
                    outs.setdefault(k, []).append(v.float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    def stage1(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: (N, 9) rows x1, y1, x2, y2, score, dx1, dy1, dx2, dy2."""
        levels = self._levels_torch(rgb) if self.pyramid == "torch" else self._levels_opencv(rgb)
        found = []
        for scale, xs, ys, score, reg in levels:
            if xs.size == 0:
                continue
            boxes = np.empty((xs.size, 9), dtype=np.float64)
            boxes[:, 0] = _fix((2 * xs + 1) / scale)
            boxes[:, 1] = _fix((2 * ys + 1) / scale)
            boxes[:, 2] = _fix((2 * xs + 12) / scale)
            boxes[:, 3] = _fix((2 * ys + 12) / scale)
            boxes[:, 4] = score
            boxes[:, 5:9] = reg
            keep = nms(boxes[:, :4], boxes[:, 4], 0.5, "union", inclusive=True)
            found.append(boxes[keep])
        if not found:
            return np.zeros((0, 9))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, "union", inclusive=True)]
        boxes = _regress(boxes, boxes[:, 5:9], inclusive=False)
        boxes = _square(boxes)
        boxes[:, :4] = _fix(boxes[:, :4])
        return boxes

    def _levels_opencv(self, rgb: np.ndarray):
        """Per pyramid level: scale and P-Net's candidates (x, y, score, (n, 4) regression)."""
        h, w = rgb.shape[:2]
        for scale in self.scales(h, w):
            hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
            level = cv2.resize(rgb, (ws, hs), interpolation=cv2.INTER_AREA)
            out = self._run(self.pnet, to_blob(level[None]))
            prob = out["prob1"][0, 1]  # indexed [x, y]: transposed input
            xs, ys = np.nonzero(prob >= self.thresholds[0])
            yield scale, xs, ys, prob[xs, ys], out["conv4-2"][0][:, xs, ys].T

    def _levels_torch(self, rgb: np.ndarray):
        """As :meth:`_levels_opencv`, with the levels made and searched on the device."""
        h, w = rgb.shape[:2]
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
            image = image.permute(2, 0, 1).float()  # (3, H, W)
            for scale in self.scales(h, w):
                hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
                level = self._area_matrix(h, hs) @ image @ self._area_matrix(w, ws).T
                level = _round_like_opencv(level, h == 2 * hs and w == 2 * ws)
                x = ((level - MEAN) * SCALE).transpose(1, 2)[None]  # N x 3 x W x H
                out = self.pnet(x.contiguous(memory_format=torch.channels_last))
                prob = out["prob1"][0, 1].float()
                idx = torch.nonzero(prob >= self.thresholds[0])  # row-major, as np.nonzero
                xs, ys = idx[:, 0], idx[:, 1]
                score = prob[xs, ys].cpu().numpy()
                reg = out["conv4-2"][0][:, xs, ys].T.float().cpu().numpy()
                yield scale, xs.cpu().numpy(), ys.cpu().numpy(), score, reg

    def _area_matrix(self, src: int, dst: int) -> torch.Tensor:
        """:func:`area_weights` as a float32 tensor on the device (kept per size)."""
        key = (src, dst)
        if key not in self._weights_on_device:
            self._weights_on_device[key] = torch.from_numpy(area_weights(src, dst)).to(
                self.device, torch.float32)
        return self._weights_on_device[key]

    def stage2(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on all candidates at once: (N, 5) rows x1, y1, x2, y2, score."""
        if len(boxes) == 0:
            return np.zeros((0, 5))
        out = self._run(self.rnet, to_blob(crop_boxes(rgb, boxes, 24)))
        score = out["prob1"][:, 1]
        keep = score > self.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        reg = out["conv5-2"][keep]
        if len(boxes) == 0:
            return boxes
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "union", inclusive=True)
        boxes = _regress(boxes[pick], reg[pick], inclusive=True)
        return _square(boxes)

    def stage3(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """O-Net: (N, 5) boxes x1, y1, x2, y2, score and (N, 5, 2) points (0-based pixels)."""
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes = boxes.copy()
        boxes[:, :4] = _fix(boxes[:, :4])
        out = self._run(self.onet, to_blob(crop_boxes(rgb, boxes, 48)))
        score = out["prob1"][:, 1]
        keep = score > self.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        reg, pts = out["conv6-2"][keep], out["conv6-3"][keep]
        if len(boxes) == 0:
            return boxes, np.zeros((0, 5, 2))
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * pts[:, 0:5] + boxes[:, 0:1] - 1
        py = bh[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=2)
        boxes = _regress(boxes, reg, inclusive=True)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "min", inclusive=True)
        return boxes[pick], points[pick]

    # -- public -------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image (H, W, 3), best score first."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DetectError(f"MTCNN expects a BGR uint8 image (H, W, 3), got {image.dtype} "
                              f"{image.shape}; read images with "
                              "landmarknet.detect.images.read_image")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.turns == (0,):
            return self._detect_rgb(rgb)
        faces, turn_of = [], []
        for turn in self.turns:
            k = turn // 90
            found = self._detect_rgb(np.ascontiguousarray(np.rot90(rgb, k)))
            faces += [_turn_face_back(f, k, rgb.shape) for f in found]
            turn_of += [turn] * len(found)
        return _merge_turns(faces, turn_of)

    def _detect_rgb(self, rgb: np.ndarray) -> list[Face]:
        boxes = self.stage1(rgb)
        boxes = self.stage2(rgb, boxes)
        boxes, points = self.stage3(rgb, boxes)
        order = np.argsort(-boxes[:, 4], kind="stable")
        faces = []
        for i in order:
            x1, y1, x2, y2, s = boxes[i]
            faces.append(Face(np.array([x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]), float(s),
                              points[i]))
        return faces


def _merge_turns(faces: list[Face], turn_of: list[int], overlap: float = 0.5) -> list[Face]:
    """One Face per face found in several turns: the best score, the others as alternatives.

    MTCNN often also "finds" a face in a wrong turn, with a high score and its eye points in
    the wrong order, so the score cannot tell the turn; the landmark model's confidence does.
    A detection overlapping a kept face by more than ``overlap`` of the smaller box (wrong-turn
    readings are often smaller boxes inside the face's) from a turn not yet in it joins it.
    """
    if not faces:
        return []
    order = np.argsort([-f.score for f in faces], kind="stable")
    boxes = np.stack([f.box for f in faces])
    kept: list[int] = []
    turns: dict[int, set] = {}
    for i in order:
        over = _overlap_of_smaller(boxes[i], boxes[kept]) if kept else np.zeros(0)
        near = [kept[j] for j in np.argsort(-over) if over[j] > overlap]
        if not near:
            kept.append(i)
            turns[i] = {turn_of[i]}
        elif turn_of[i] not in turns[near[0]]:
            faces[near[0]].alternatives.append(faces[i])
            turns[near[0]].add(turn_of[i])
    return [faces[i] for i in kept]


def _overlap_of_smaller(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection of ``box`` (x, y, w, h) with each of ``others`` over the smaller area."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[:2] + box[2:], others[:, :2] + others[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    smaller = np.minimum(box[2:].prod(), others[:, 2:].prod(1))
    return np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1), 0.0)


def _turn_points_back(points: np.ndarray, k: int, shape: tuple) -> np.ndarray:
    """Points of ``np.rot90(image, k)`` -> points of ``image`` (pixel centres at integers).

    One counter-clockwise quarter turn of an image of width W takes (x, y) to (y, W - 1 - x);
    undo the k turns last first.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    widths = [shape[1] if j % 2 == 0 else shape[0] for j in range(k)]  # width before turn j+1
    for w in reversed(widths):
        p = np.stack([w - 1 - p[:, 1], p[:, 0]], axis=1)
    return p


def _turn_face_back(face: Face, k: int, shape: tuple) -> Face:
    """A face found in ``np.rot90(image, k)`` in ``image``'s coordinates."""
    x, y, w, h = face.box
    c = _turn_points_back(np.array([[x, y], [x + w, y + h]]), k, shape)
    lo, hi = c.min(0), c.max(0)
    pts = None if face.points is None else _turn_points_back(face.points, k, shape)
    return Face(np.concatenate([lo, hi - lo]), face.score, pts)
