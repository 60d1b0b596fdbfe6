"""Readers and writers for landmark data: 300W .pts folders, CelebA lists, Caffe HDF5Data files."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import cv2
import h5py
import numpy as np

from landmarknet.errors import DataError

PathLike = Union[str, Path]
Box = tuple[float, float, float, float]  # x, y, w, h in pixels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")

# Reasons a folder reader skips a sample (keys of ReadReport.skipped).
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
MALFORMED_PTS = "malformed_pts"
COUNT_MISMATCH = "count_mismatch"
OUTSIDE_IMAGE = "outside_image"
MISSING_LABEL = "missing_label"


class _FileLineError(DataError):
    """A data error located in a file, at a 1-based line (0: the file as a whole)."""

    def __init__(self, path: PathLike, line: int, message: str) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line > 0 else f"{self.path}"
        super().__init__(f"{where}: {message}")


class PtsError(_FileLineError):
    """A .pts file does not follow the 300W layout; the message names the file and line."""


class ListFileError(_FileLineError):
    """A text listing (CelebA lists, HDF5 listing) is malformed; the message names file and line."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated face: image file, points (K, 2) float32 in pixels, optional box (x, y, w, h)."""

    image_path: Path
    points: np.ndarray
    box: Optional[Box] = None

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"{self.image_path}: points must be (K, 2), got {pts.shape}")
        object.__setattr__(self, "image_path", Path(self.image_path))
        object.__setattr__(self, "points", pts)
        if self.box is not None:
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))


@dataclass
class ReadReport:
    """What a reader found, kept and skipped (reason -> list of 'path: detail')."""

    n_found: int = 0
    n_kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: PathLike, detail: str) -> None:
        """Record one skipped sample."""
        self.skipped.setdefault(reason, []).append(f"{path}: {detail}")

    @property
    def n_bad(self) -> int:
        """How many samples were skipped."""
        return sum(len(v) for v in self.skipped.values())

    def counts(self) -> dict[str, int]:
        """Number of skipped samples per reason."""
        return {k: len(v) for k, v in self.skipped.items()}

    def summary(self) -> str:
        """One line: found, kept and the skip counts."""
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items())) or "none skipped"
        return f"{self.n_found} found, {self.n_kept} kept ({bad})"


# ---------------------------------------------------------------- 300W .pts


def _parse_float(path: Path, lineno: int, token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise PtsError(path, lineno, f"not a number: {token!r}") from None
    if not math.isfinite(value):
        raise PtsError(path, lineno, f"not a finite number: {token!r}")
    return value


def parse_pts(text: str, path: PathLike = "<string>") -> np.ndarray:
    """Parse the text of a 300W .pts file into (K, 2) float32 points; raise PtsError on any deviation."""
    path = Path(path)
    lines = text.splitlines()  # also accepts the CRLF endings of the original 300W files

    def line(i: int) -> str:
        if i >= len(lines):
            raise PtsError(path, i + 1, "file ends early")
        return lines[i].strip()

    if line(0).lstrip("\ufeff").split() != ["version:", "1"]:
        raise PtsError(path, 1, f"expected 'version: 1', got {lines[0]!r}")
    head = line(1).split()
    if len(head) != 2 or head[0] != "n_points:" or not head[1].isdigit() or int(head[1]) == 0:
        raise PtsError(path, 2, f"expected 'n_points: <positive integer>', got {lines[1]!r}")
    n = int(head[1])
    if line(2) != "{":
        raise PtsError(path, 3, f"expected '{{', got {lines[2]!r}")
    pts = np.empty((n, 2), dtype=np.float32)
    for k in range(n):
        i = 3 + k
        tokens = line(i).split()
        if tokens == ["}"]:
            raise PtsError(path, i + 1, f"'}}' after {k} points, header says {n}")
        if len(tokens) != 2:
            raise PtsError(path, i + 1, f"expected 'x y', got {lines[i]!r}")
        pts[k] = [_parse_float(path, i + 1, t) for t in tokens]
    if line(3 + n) != "}":
        raise PtsError(path, 4 + n, f"expected '}}' after {n} points, got {lines[3 + n]!r}")
    for i in range(4 + n, len(lines)):
        if lines[i].strip():
            raise PtsError(path, i + 1, f"unexpected text after '}}': {lines[i]!r}")
    return pts


def read_pts(path: PathLike, n_points: Optional[int] = None) -> np.ndarray:
    """Read a 300W .pts file as (K, 2) float32; with n_points, also require that count."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PtsError(path, 0, f"cannot read: {exc}") from exc
    pts = parse_pts(text, path)
    if n_points is not None and len(pts) != n_points:
        raise PtsError(path, 2, f"has {len(pts)} points, expected {n_points}")
    return pts


def write_pts(path: PathLike, points: np.ndarray, decimals: int = 3) -> None:
    """Write (K, 2) points as a 300W .pts file, in the layout of the shared data."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"points must be (K, 2) with K > 0, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{path}: points contain NaN or infinity")
    rows = "".join(f"{x:.{decimals}f} {y:.{decimals}f}\n" for x, y in pts)
    Path(path).write_text(f"version: 1\nn_points:  {len(pts)}\n{{\n{rows}}}\n", encoding="utf-8")


def _image_for(pts_path: Path) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        for cand in (pts_path.with_suffix(suffix), pts_path.with_suffix(suffix.upper())):
            if cand.is_file():
                return cand
    return None


def _outside(points: np.ndarray, height: int, width: int, margin: float) -> Optional[str]:
    """Describe how far points leave the image when beyond margin * image size, else None."""
    lo = -margin * np.array([width, height])
    hi = np.array([width - 1, height - 1]) + margin * np.array([width, height])
    bad = np.any((points < lo) | (points > hi), axis=1)
    if not bad.any():
        return None
    k = int(np.argmax(bad))
    return f"{int(bad.sum())} point(s) far outside the {width}x{height} image, e.g. #{k} at {points[k].tolist()}"


def read_300w_folder(
    folder: PathLike,
    n_points: Optional[int] = None,
    check_images: bool = True,
    margin: float = 0.25,
) -> tuple[list[Sample], ReadReport]:
    """Read every image + .pts pair of a folder, sorted by name; bad samples are reported, not raised.

    With ``check_images`` each image is decoded (to catch unreadable files) and points lying more
    than ``margin`` x the image size outside it are rejected. ``n_points`` defaults to the count of
    the first well-formed file, so a folder with mixed counts reports the odd ones.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    samples: list[Sample] = []
    report = ReadReport()
    for pts_path in sorted(folder.glob("*.pts")):
        report.n_found += 1
        image = _image_for(pts_path)
        if image is None:
            report.add(MISSING_IMAGE, pts_path, "no image with the same name")
            continue
        try:
            pts = read_pts(pts_path)
        except PtsError as exc:
            report.add(MALFORMED_PTS, pts_path, str(exc))
            continue
        if n_points is None:
            n_points = len(pts)
        if len(pts) != n_points:
            report.add(COUNT_MISMATCH, pts_path, f"{len(pts)} points, expected {n_points}")
            continue
        if check_images:
            img = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
            if img is None or img.size == 0:
                report.add(UNREADABLE_IMAGE, image, "cannot be decoded")
                continue
            far = _outside(pts, img.shape[0], img.shape[1], margin)
            if far is not None:
                report.add(OUTSIDE_IMAGE, pts_path, far)
                continue
        samples.append(Sample(image, pts))
    report.n_kept = len(samples)
    return samples, report


# ---------------------------------------------------------------- CelebA layout

_PARTITIONS = {"train": 0, "val": 1, "test": 2}


def _read_table(path: PathLike, n_values: int, counted: bool) -> dict[str, tuple[int, tuple[float, ...]]]:
    """Read 'name v1 .. vn' rows as name -> (line, values); a counted file starts with a count and a header."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ListFileError(path, 0, f"cannot read: {exc}") from exc
    start, expected = 0, None
    if counted:
        if len(lines) < 2:
            raise ListFileError(path, len(lines) + 1, "file ends before the header")
        try:
            expected = int(lines[0].strip())
        except ValueError:
            raise ListFileError(path, 1, f"expected a count, got {lines[0]!r}") from None
        start = 2
    rows: dict[str, tuple[int, tuple[float, ...]]] = {}
    for i in range(start, len(lines)):
        tokens = lines[i].split()
        if not tokens:
            continue
        if len(tokens) != n_values + 1:
            raise ListFileError(path, i + 1, f"expected a name and {n_values} numbers, got {len(tokens)} fields")
        try:
            values = tuple(float(t) for t in tokens[1:])
        except ValueError:
            raise ListFileError(path, i + 1, f"not a number in {lines[i]!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ListFileError(path, i + 1, f"not a finite number in {lines[i]!r}")
        if tokens[0] in rows:
            raise ListFileError(path, i + 1, f"duplicate name {tokens[0]!r}")
        rows[tokens[0]] = (i + 1, values)
    if expected is not None and expected != len(rows):
        raise ListFileError(path, 1, f"count says {expected} rows, found {len(rows)}")
    return rows


def read_celeba_landmarks(path: PathLike) -> dict[str, np.ndarray]:
    """Read list_landmarks_celeba.txt: image name -> (5, 2) float32 points."""
    return {k: np.asarray(v, dtype=np.float32).reshape(5, 2) for k, (_, v) in _read_table(path, 10, True).items()}


def read_celeba_boxes(path: PathLike) -> dict[str, Box]:
    """Read list_bbox_celeba.txt: image name -> (x, y, w, h) as floats."""
    return {k: (v[0], v[1], v[2], v[3]) for k, (_, v) in _read_table(path, 4, True).items()}


def read_celeba_partition(path: PathLike) -> dict[str, int]:
    """Read list_eval_partition.txt: image name -> 0 (train), 1 (val) or 2 (test)."""
    out: dict[str, int] = {}
    for name, (lineno, (value,)) in _read_table(path, 1, False).items():
        if value not in (0.0, 1.0, 2.0):
            raise ListFileError(path, lineno, f"{name}: partition must be 0, 1 or 2, got {value}")
        out[name] = int(value)
    return out


def read_celeba(
    root: PathLike,
    partition: Union[None, int, str] = None,
    check_images: bool = False,
) -> tuple[list[Sample], ReadReport]:
    """Read a CelebA-layout folder (img/ + three lists) into Samples with boxes, sorted by name.

    ``partition`` selects 0/'train', 1/'val' or 2/'test' (None: all). Names missing from the box or
    partition list, and (with ``check_images``) missing or undecodable images, are reported.
    """
    root = Path(root)
    if isinstance(partition, str):
        if partition not in _PARTITIONS:
            raise ValueError(f"partition must be one of {sorted(_PARTITIONS)} or 0/1/2, got {partition!r}")
        partition = _PARTITIONS[partition]
    marks = read_celeba_landmarks(root / "list_landmarks_celeba.txt")
    boxes = read_celeba_boxes(root / "list_bbox_celeba.txt")
    parts = read_celeba_partition(root / "list_eval_partition.txt")
    samples: list[Sample] = []
    report = ReadReport()
    for name in sorted(marks):
        if partition is not None:
            if name not in parts:
                report.n_found += 1
                report.add(MISSING_LABEL, name, "not in list_eval_partition.txt")
                continue
            if parts[name] != partition:
                continue
        report.n_found += 1
        if name not in boxes:
            report.add(MISSING_LABEL, name, "not in list_bbox_celeba.txt")
            continue
        image = root / "img" / name
        if check_images:
            if not image.is_file():
                report.add(MISSING_IMAGE, image, "no such file")
                continue
            if cv2.imread(str(image), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
                report.add(UNREADABLE_IMAGE, image, "cannot be decoded")
                continue
        samples.append(Sample(image, marks[name], boxes[name]))
    report.n_kept = len(samples)
    return samples, report


# ---------------------------------------------------------------- Caffe HDF5Data


def read_hdf5_list(path: PathLike) -> list[Path]:
    """Read a Caffe HDF5Data source listing; relative entries are taken from the listing's folder."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ListFileError(path, 0, f"cannot read: {exc}") from exc
    files = []
    for i, raw in enumerate(lines):
        entry = raw.strip()
        if not entry:
            continue
        f = Path(entry)
        f = f if f.is_absolute() else path.parent / f
        if not f.is_file():
            raise ListFileError(path, i + 1, f"no such file: {f}")
        files.append(f)
    if not files:
        raise ListFileError(path, 1, "lists no files")
    return files


def write_hdf5_list(path: PathLike, files: Iterable[PathLike]) -> Path:
    """Write a Caffe HDF5Data source listing with absolute paths (Caffe opens them from its own cwd)."""
    path = Path(path)
    path.write_text("".join(f"{Path(f).resolve()}\n" for f in files), encoding="utf-8")
    return path


def load_hdf5(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load ``data`` (N, C, H, W) float32 and ``label`` (N, ...) from one Caffe HDF5 file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise DataError(f"{path}: needs datasets 'data' and 'label', has {sorted(f.keys())}")
            data = np.asarray(f["data"][...], dtype=np.float32)
            label = np.asarray(f["label"][...], dtype=np.float32)
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5: {exc}") from exc
    if data.ndim != 4 or len(label) != len(data):
        raise DataError(f"{path}: data must be (N, C, H, W) with one label row each, got {data.shape} / {label.shape}")
    return data, label


def write_hdf5(path: PathLike, data: np.ndarray, label: np.ndarray) -> Path:
    """Write one Caffe HDF5 file with float32 ``data`` (N, C, H, W) and ``label`` (N, ...)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    label = np.ascontiguousarray(label, dtype=np.float32)
    if data.ndim != 4 or len(label) != len(data):
        raise ValueError(f"data must be (N, C, H, W) with one label row each, got {data.shape} / {label.shape}")
    path = Path(path)
    # No compression: old Caffe builds link HDF5 without the gzip filter.
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
    return path


def crop_face(
    image: np.ndarray, points: np.ndarray, box: Optional[Box], size: int, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a square of side (1+pad) x max(box w, h) around the box centre, resized to size x size.

    The box defaults to the points' bounding box. Returns the crop and the points in its pixels.
    """
    if box is None:
        lo, hi = points.min(0), points.max(0)
        box = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    x, y, w, h = box
    side = max(1, int(math.ceil((1.0 + pad) * max(w, h))))
    x0 = x + w / 2 - side / 2
    y0 = y + h / 2 - side / 2
    # Translate first (zero padding outside the image), then resize with INTER_AREA to avoid aliasing.
    shift = np.array([[1, 0, -x0], [0, 1, -y0]], dtype=np.float64)
    square = cv2.warpAffine(image, shift, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(square, (size, size), interpolation=interp)
    # cv2.resize aligns pixel centres: x_out = (x_in + 0.5) * s - 0.5.
    s = size / side
    out_pts = ((points - np.array([x0, y0])) + 0.5) * s - 0.5
    return crop, out_pts.astype(np.float32)


def pack_hdf5(
    samples: Sequence[Sample],
    out_dir: PathLike,
    size: int = 64,
    gray: bool = False,
    pad: float = 0.2,
    scale: float = 1.0 / 255.0,
    mean: float = 0.0,
    per_file: int = 5000,
    prefix: str = "part",
    list_name: str = "list.txt",
) -> Path:
    """Crop, resize and pack samples into Caffe HDF5 files plus a listing; return the listing path.

    ``data`` is (pixel - mean) * scale, BGR (or gray) in N, C, H, W order, as Caffe reads it.
    ``label`` is (N, 2K): x0, y0, x1, y1, ... in crop pixels divided by ``size`` (so about 0..1).
    """
    if not samples:
        raise ValueError("pack_hdf5: no samples")
    if per_file < 1:
        raise ValueError(f"pack_hdf5: per_file must be positive, got {per_file}")
    n_pts = len(samples[0].points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    files = []
    for start in range(0, len(samples), per_file):
        chunk = samples[start : start + per_file]
        data = np.empty((len(chunk), 1 if gray else 3, size, size), dtype=np.float32)
        label = np.empty((len(chunk), 2 * n_pts), dtype=np.float32)
        for j, sample in enumerate(chunk):
            if len(sample.points) != n_pts:
                raise DataError(f"{sample.image_path}: {len(sample.points)} points, expected {n_pts}")
            img = cv2.imread(str(sample.image_path), flag)
            if img is None:
                raise DataError(f"{sample.image_path}: cannot read image")
            crop, pts = crop_face(img, sample.points, sample.box, size, pad)
            crop = crop.reshape(size, size, -1).transpose(2, 0, 1)
            data[j] = (crop.astype(np.float32) - mean) * scale
            label[j] = (pts / size).reshape(-1)
        files.append(write_hdf5(out_dir / f"{prefix}_{start // per_file:04d}.h5", data, label))
    return write_hdf5_list(out_dir / list_name, files)
