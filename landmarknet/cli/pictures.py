"""``forward --image``: pictures -> input blobs, and a detector's rows back on the pictures."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from landmarknet.cli.common import UsageError
from landmarknet.preprocess import ImageGeometry, blob_from_images, boxes_to_image

#: Types whose top is SSD's (1, 1, K, 7) rows [image, label, score, x1, y1, x2, y2].
DETECTION_ROW_TYPES = frozenset({"DetectionOutput", "YoloDetectionOutput",
                                 "Yolov3DetectionOutput"})


def _split(item: str, input_names: list[str]) -> tuple[str, str]:
    """NAME=FILE when NAME is one of the net's inputs, else the whole item is the file."""
    name, sep, file = item.partition("=")
    if sep and name in input_names:
        return name, file
    if not input_names:
        raise UsageError("--image: this net has no inputs to give a picture to")
    return input_names[0], item


def image_inputs(args: argparse.Namespace, graph) -> tuple[dict[str, np.ndarray],
                                                           dict[str, list[ImageGeometry]],
                                                           dict[str, list[np.ndarray]]]:
    """The blobs of every ``--image`` (grouped by input, in order: a batch), each picture's
    geometry and the pictures; the size is --size, else the input's declared H x W, else the
    picture's own."""
    import cv2

    from landmarknet.detect.images import read_image

    declared = {i.name: i.shape for i in graph.inputs}
    files: dict[str, list[str]] = {}
    for item in args.image:
        name, file = _split(item, list(declared))
        files.setdefault(name, []).append(file)
    blobs, geometries, loaded = {}, {}, {}
    for name, paths in files.items():
        shape = declared[name]
        size = args.size
        if size is None and shape is not None and len(shape) == 4:
            size = (shape[3], shape[2])
        gray = shape is not None and len(shape) == 4 and shape[1] == 1
        pictures = []
        for path in paths:
            image = read_image(path).image  # BGR uint8; the header is checked before decoding
            pictures.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if gray else image)
        try:
            blobs[name], geometries[name] = blob_from_images(
                pictures, scale=args.scale, size=size, mean=args.mean, swap_rb=args.swap_rb,
                crop=args.crop)
        except Exception as exc:  # a LandmarknetError: say which option and input it was
            raise UsageError(f"--image {name}: {exc}") from None
        loaded[name] = pictures
    return blobs, geometries, loaded


def read_labels(path: Path) -> dict[int, str]:
    """Class names: an SSD label map (``item { name label display_name }``, the display name
    preferred) or a plain list whose line i names label i."""
    from google.protobuf import text_format

    from landmarknet.caffe import caffe_pb2
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"--labels {path}: cannot read it ({exc.strerror or exc})") from None
    if re.search(r"^\s*item\s*\{", text, re.M):
        label_map = caffe_pb2.LabelMap()
        try:
            text_format.Parse(text, label_map)
        except text_format.ParseError as exc:
            raise UsageError(f"--labels {path}:{exc}") from None
        return {item.label: item.display_name or item.name for item in label_map.item}
    return {i: line.strip() for i, line in enumerate(text.splitlines()) if line.strip()}


def print_detections(net, arrays: dict[str, np.ndarray],
                     geometries: dict[str, list[ImageGeometry]],
                     labels: dict[int, str] | None = None) -> list[np.ndarray]:
    """Rows of detector tops, corners in the pictures' pixels (the first picture input's);
    returns them (one array per detector top)."""
    found: list[np.ndarray] = []
    if len(geometries) != 1:
        return found  # which input the boxes refer to is not clear
    (pictures,) = geometries.values()
    for node in net.caffe_graph.nodes:
        if node.type not in DETECTION_ROW_TYPES:
            continue
        top = node.param.top[0]
        if top not in arrays:
            continue
        normalized = True
        if node.type == "DetectionOutput":
            normalized = node.param.detection_output_param.normalized_bbox
        rows = boxes_to_image(arrays[top], pictures, normalized=normalized)
        print(f"{top}: {len(rows)} detection(s) from layer '{node.name}' "
              "(image, label, score, x1, y1, x2, y2 in the picture's pixels)")
        for row in rows:
            name = f" {labels.get(int(row[1]), '?')}" if labels else ""
            print(f"  {int(row[0]):>3} {int(row[1]):>4} {row[2]:7.4f} "
                  f"{row[3]:8.1f} {row[4]:8.1f} {row[5]:8.1f} {row[6]:8.1f}{name}")
        found.append(rows)
    return found


def draw_detections(out: Path, pictures: list[np.ndarray], rows: list[np.ndarray],
                    threshold: float, labels: dict[int, str] | None) -> list[Path]:
    """Each picture with its boxes of score >= threshold, written to ``out`` (``out_<i>`` with
    several pictures); returns the files written."""
    import cv2

    written = []
    for index, picture in enumerate(pictures):
        canvas = picture.copy()
        if canvas.ndim == 2:
            canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
        for table in rows:
            for row in table[(table[:, 0] == index) & (table[:, 2] >= threshold)]:
                x1, y1, x2, y2 = (int(round(v)) for v in row[3:7])
                cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 200, 0), 2)
                name = labels.get(int(row[1]), str(int(row[1]))) if labels else str(int(row[1]))
                cv2.putText(canvas, f"{name} {row[2]:.2f}", (x1, max(y1 - 4, 12)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1, cv2.LINE_AA)
        path = out if len(pictures) == 1 else out.with_name(f"{out.stem}_{index}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), canvas):
            raise UsageError(f"--draw {path}: cannot write it (is the suffix an image type?)")
        written.append(path)
    return written
