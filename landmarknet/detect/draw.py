"""Pictures of results: the overlay (boxes, points, indices) and the heatmap figure."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from landmarknet.detect.pipeline import FaceResult

BOX_COLOUR = (80, 220, 60)  # BGR
POINT_COLOUR = (40, 40, 255)
TEXT_COLOUR = (255, 255, 255)


# OpenCV draws with int pixel coordinates: anything beyond this (or not finite, as a broken
# model can give) is not drawn rather than overflowing inside cv2.
_DRAWABLE = 1e6


def _drawable(*values: float) -> bool:
    return all(math.isfinite(v) and abs(v) < _DRAWABLE for v in values)


def overlay(image: np.ndarray, faces: Sequence[FaceResult], indices: bool = False) -> np.ndarray:
    """A copy of the BGR image with each face's box, score and landmarks drawn (points that
    are not finite or far outside the picture are left out)."""
    out = image.copy()
    h, w = out.shape[:2]
    unit = max(1, int(round(max(h, w) / 600)))
    for face in faces:
        x, y, bw, bh = face.box
        if not _drawable(x, y, bw, bh):
            continue
        p1 = (int(round(x)), int(round(y)))
        p2 = (int(round(x + bw)), int(round(y + bh)))
        cv2.rectangle(out, p1, p2, BOX_COLOUR, 2 * unit, cv2.LINE_AA)
        label = f"{face.score:.2f}" if face.score <= 1 else f"{face.score:.0f}"
        if face.confidence is not None and math.isfinite(face.confidence):
            label += f" | {face.confidence:.2f}"
        scale = 0.45 * unit
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, unit)
        ty = max(th + base, p1[1] - 3 * unit)
        cv2.rectangle(out, (p1[0], ty - th - base), (p1[0] + tw + 2 * unit, ty + base // 2),
                      BOX_COLOUR, -1)
        cv2.putText(out, label, (p1[0] + unit, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), unit, cv2.LINE_AA)
        if face.landmarks is None:
            continue
        face_unit = max(bw, bh)
        radius = max(2, int(round(face_unit / 60)))
        for k, (px, py) in enumerate(face.landmarks):
            if not _drawable(px, py):
                continue
            c = (int(round(px)), int(round(py)))
            cv2.circle(out, c, radius + unit, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(out, c, radius, POINT_COLOUR, -1, cv2.LINE_AA)
            if indices:
                cv2.putText(out, str(k), (c[0] + radius + 1, c[1] - radius - 1),
                            cv2.FONT_HERSHEY_SIMPLEX, max(0.25, face_unit / 700), TEXT_COLOUR,
                            1, cv2.LINE_AA)
    return out


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image; raise OSError when OpenCV cannot."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    buf.tofile(str(path))


def heatmap_figure(path: str | os.PathLike, faces: Sequence[FaceResult], title: str,
                   max_faces: int = 4, max_maps: int = 16) -> bool:
    """Save a matplotlib figure of the faces' heatmaps; False when no face carries heatmaps."""
    faces = [f for f in faces if f.heatmaps is not None and f.crop is not None][:max_faces]
    if not faces:
        return False
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_maps = min(max_maps, faces[0].heatmaps.shape[0])
    cols = 2 + min(n_maps, 8)
    rows_per_face = 1 + (n_maps > 8)
    fig, axes = plt.subplots(len(faces) * rows_per_face, cols,
                             figsize=(1.6 * cols, 1.7 * len(faces) * rows_per_face), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, face in enumerate(faces):
        crop = face.crop
        rgb = crop[:, :, 0] if crop.shape[2] == 1 else crop
        size = crop.shape[0]
        r = i * rows_per_face
        ax = axes[r, 0]
        ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
        ax.scatter(face.crop_points[:, 0], face.crop_points[:, 1], s=4, c="red")
        ax.set_title(f"face {i}: crop", fontsize=7)
        maps = face.heatmaps
        ax = axes[r, 1]
        ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
        ax.imshow(cv2.resize(maps.max(0).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_LINEAR), alpha=0.6, cmap="jet")
        ax.set_title("max of all maps", fontsize=7)
        for k in range(n_maps):
            ax = axes[r + k // 8, 2 + k % 8]
            ax.imshow(maps[k], cmap="viridis")
            ax.set_title(f"point {k}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
