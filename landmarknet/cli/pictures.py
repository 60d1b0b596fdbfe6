"""``forward --image``: pictures -> input blobs, and a detector's rows back on the pictures."""
from __future__ import annotations

import argparse

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
                                                           dict[str, list[ImageGeometry]]]:
    """The blobs of every ``--image`` (grouped by input, in order: a batch) and each picture's
    geometry; the size is --size, else the input's declared H x W, else the picture's own."""
    import cv2

    from landmarknet.detect.images import read_image

    declared = {i.name: i.shape for i in graph.inputs}
    files: dict[str, list[str]] = {}
    for item in args.image:
        name, file = _split(item, list(declared))
        files.setdefault(name, []).append(file)
    blobs, geometries = {}, {}
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
    return blobs, geometries


def print_detections(net, arrays: dict[str, np.ndarray],
                     geometries: dict[str, list[ImageGeometry]]) -> None:
    """Rows of detector tops, corners in the pictures' pixels (the first picture input's)."""
    if len(geometries) != 1:
        return  # which input the boxes refer to is not clear
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
            print(f"  {int(row[0]):>3} {int(row[1]):>4} {row[2]:7.4f} "
                  f"{row[3]:8.1f} {row[4]:8.1f} {row[5]:8.1f} {row[6]:8.1f}")
