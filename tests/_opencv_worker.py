"""Subprocess side of ``tests/opencv_ref.run_opencv``: run one Caffe net with OpenCV DNN.

Run as ``python -m _opencv_worker REQUEST.json`` with this folder on ``PYTHONPATH``. The request
names the prototxt, the optional caffemodel, an ``.npz`` of inputs, the output names (or null for
the net's unconnected outputs) and the ``.npz`` to write. Nothing here imports landmarknet.

Exit codes: 0 success; 3 OpenCV unusable (cv2 missing, or built without the Caffe importer);
4 OpenCV raised while reading or running the net. A crash inside OpenCV shows up as a signal.
Diagnostics go to stderr, which the parent quotes in its exception.
"""
from __future__ import annotations

import json
import sys

EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4


def _fail(code: int, message: str) -> None:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        _fail(2, "usage: python -m _opencv_worker REQUEST.json")
    with open(argv[0], encoding="utf-8") as fh:
        req = json.load(fh)

    import numpy as np

    try:
        import cv2
    except Exception as exc:  # ImportError, or a broken binary wheel
        _fail(EXIT_UNAVAILABLE, f"cannot import cv2: {exc!r}")
    if req.get("version_only"):
        sys.stdout.write(json.dumps({"version": cv2.__version__,
                                     "caffe": hasattr(cv2.dnn, "readNetFromCaffe")}))
        return 0
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        _fail(EXIT_UNAVAILABLE,
              f"OpenCV {cv2.__version__} at {cv2.__file__} has no Caffe importer "
              "(OpenCV 5 removed it; install opencv-python-headless<5)")

    # Deterministic, reference-grade settings: one fixed RNG seed, the plain OpenCV CPU backend,
    # no layer fusion (fusing BatchNorm/Scale/ReLU into Convolution changes rounding and hides
    # intermediate blobs) and no Winograd convolution (it trades accuracy for speed).
    cv2.setRNGSeed(0)
    try:
        if req["caffemodel"]:
            net = cv2.dnn.readNetFromCaffe(req["prototxt"], req["caffemodel"])
        else:
            net = cv2.dnn.readNetFromCaffe(req["prototxt"])
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if not req.get("fusion", False):
            net.enableFusion(False)
        if hasattr(net, "enableWinograd"):
            net.enableWinograd(False)

        with np.load(req["inputs"]) as data:
            names = json.loads(str(data["__names__"]))
            for i, name in enumerate(names):
                arr = np.ascontiguousarray(data[f"in{i}"], dtype=np.float32)
                net.setInput(arr, name)

        outputs = req["outputs"]
        if outputs is None:
            outputs = list(net.getUnconnectedOutLayersNames())
        results = net.forward(outputs)
    except cv2.error as exc:
        _fail(EXIT_FAILED, f"cv2.error: {exc}")
    except Exception as exc:  # noqa: BLE001 - report anything OpenCV's binding raises
        _fail(EXIT_FAILED, f"{type(exc).__name__}: {exc}")

    payload = {f"out{i}": np.asarray(r, dtype=np.float32) for i, r in enumerate(results)}
    payload["__names__"] = np.array(json.dumps(list(outputs)))
    payload["__version__"] = np.array(cv2.__version__)
    np.savez(req["result"], **payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
