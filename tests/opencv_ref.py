"""OpenCV DNN's Caffe importer as an independent reference, run in a subprocess.

OpenCV can abort the whole process on a malformed prototxt or caffemodel, so every net runs in a
child ``python -m _opencv_worker``; arrays travel through temporary ``.npz`` files.

Which OpenCV: OpenCV 5 removed ``cv2.dnn.readNetFromCaffe``, so the project pins
``opencv-python-headless<5``. The worker imports ``cv2`` from the folders in
``$LANDMARKNET_OPENCV_PATH`` (``os.pathsep``-separated) when that is set, otherwise whatever
``import cv2`` finds in ``$LANDMARKNET_OPENCV_PYTHON`` (default: this interpreter).

An OpenCV without the Caffe importer, or no cv2 at all, raises :class:`OpenCVUnavailable`
(tests should skip); anything OpenCV rejects or crashes on raises :class:`OpenCVFailed` with
OpenCV's stderr.

Output names. OpenCV addresses outputs by LAYER name, not by top-blob name:

* ``forward("conv1")`` returns the output of the layer named ``conv1``. For an in-place chain
  ``conv1 -> relu1 (top: conv1)`` it is the convolution's output, before the ReLU; to get the
  blob ``conv1`` as Caffe holds it at the end of the net, pass the name of the LAST in-place
  layer that wrote it (``relu1``).
* A layer with several tops (Slice, Split) is addressed as ``"name"`` for its first top; further
  tops are not reachable by name in OpenCV 4.x. Ask for them through a following layer (e.g. an
  in-place-free ``Power`` with default parameters, which is the identity).
* ``outputs=None`` returns the net's unconnected outputs (``net.getUnconnectedOutLayersNames()``).

Determinism: threads are left at OpenCV's default; the worker fixes the RNG seed, uses the plain
OpenCV CPU backend and switches off layer fusion and Winograd convolution, which makes repeated
runs bit-identical and keeps each layer's numbers as the layer alone computes them.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "OpenCVUnavailable",
    "OpenCVFailed",
    "run_opencv",
    "run_opencv_text",
    "opencv_version",
    "OPENCV_PATH_ENV",
    "OPENCV_PYTHON_ENV",
]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
#: Extra import folders for the worker's ``cv2`` (``os.pathsep``-separated).
OPENCV_PATH_ENV = "LANDMARKNET_OPENCV_PATH"
#: Interpreter that runs the worker (default: the current one).
OPENCV_PYTHON_ENV = "LANDMARKNET_OPENCV_PYTHON"

_EXIT_UNAVAILABLE = 3
_EXIT_FAILED = 4


class OpenCVUnavailable(RuntimeError):
    """No usable OpenCV with a Caffe importer: callers should skip, not fail."""


class OpenCVFailed(RuntimeError):
    """OpenCV rejected the net, raised, crashed or timed out; the message quotes its stderr."""


def _worker_python() -> str:
    return os.environ.get(OPENCV_PYTHON_ENV) or sys.executable


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS_DIR)]
    extra = os.environ.get(OPENCV_PATH_ENV)
    if extra is not None:
        paths += [p for p in extra.split(os.pathsep) if p]
    old = env.get("PYTHONPATH")
    if old:
        paths.append(old)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # The worker must not pick up a different numpy through user site-packages.
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run_worker(request: dict, workdir: Path, timeout: float) -> subprocess.CompletedProcess:
    req_path = workdir / "request.json"
    req_path.write_text(json.dumps(request), encoding="utf-8")
    try:
        return subprocess.run(
            [_worker_python(), "-m", "_opencv_worker", str(req_path)],
            cwd=str(workdir),
            env=_worker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise OpenCVUnavailable(f"cannot start {_worker_python()}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise OpenCVFailed(f"OpenCV worker timed out after {timeout} s; stderr:\n"
                           f"{exc.stderr or ''}") from exc


def _describe_exit(proc: subprocess.CompletedProcess) -> str:
    code = proc.returncode
    if code < 0:
        try:
            what = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit status {code}"
    return f"OpenCV worker {what}; stderr:\n{proc.stderr.strip()}"


@functools.lru_cache(maxsize=None)
def _version_info() -> tuple[str, bool]:
    with tempfile.TemporaryDirectory(prefix="lmn_cv_") as tmp:
        proc = _run_worker({"version_only": True}, Path(tmp), timeout=60)
    if proc.returncode == _EXIT_UNAVAILABLE:
        raise OpenCVUnavailable(proc.stderr.strip())
    if proc.returncode != 0:
        raise OpenCVUnavailable(_describe_exit(proc))
    info = json.loads(proc.stdout)
    return str(info["version"]), bool(info["caffe"])


def opencv_version() -> str:
    """Version string of the cv2 the worker imports; raises OpenCVUnavailable if there is none."""
    return _version_info()[0]


def run_opencv(
    prototxt: Path,
    caffemodel: Path | None,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    timeout: float = 120,
    *,
    fusion: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``cv2.dnn.readNetFromCaffe(prototxt, caffemodel)`` on ``inputs`` in a subprocess.

    ``inputs`` maps input blob names to arrays (sent as float32, NCHW). ``outputs`` are LAYER
    names (see the module docstring for in-place layers and multi-top layers); ``None`` means the
    net's unconnected outputs. Returns ``{name: float32 array}``.

    Raises OpenCVUnavailable when no cv2 with a Caffe importer can be imported, and OpenCVFailed
    (with OpenCV's stderr) when OpenCV raises, crashes or exceeds ``timeout`` seconds.
    """
    prototxt = Path(prototxt).resolve()
    if caffemodel is not None:
        caffemodel = Path(caffemodel).resolve()
    with tempfile.TemporaryDirectory(prefix="lmn_cv_") as tmp:
        workdir = Path(tmp)
        in_path = workdir / "inputs.npz"
        out_path = workdir / "result.npz"
        names = list(inputs)
        arrays = {f"in{i}": np.ascontiguousarray(inputs[n], dtype=np.float32)
                  for i, n in enumerate(names)}
        np.savez(in_path, __names__=np.array(json.dumps(names)), **arrays)
        request = {
            "prototxt": str(prototxt),
            "caffemodel": str(caffemodel) if caffemodel is not None else "",
            "inputs": str(in_path),
            "outputs": list(outputs) if outputs is not None else None,
            "result": str(out_path),
            "fusion": bool(fusion),
        }
        proc = _run_worker(request, workdir, timeout)
        if proc.returncode == _EXIT_UNAVAILABLE:
            raise OpenCVUnavailable(proc.stderr.strip())
        if proc.returncode != 0:
            raise OpenCVFailed(_describe_exit(proc))
        if not out_path.exists():
            raise OpenCVFailed("OpenCV worker wrote no result; stderr:\n" + proc.stderr)
        with np.load(out_path) as data:
            out_names = json.loads(str(data["__names__"]))
            return {n: np.array(data[f"out{i}"]) for i, n in enumerate(out_names)}


def run_opencv_text(
    prototxt_text: str,
    caffemodel_bytes: bytes | None,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    timeout: float = 120,
    *,
    fusion: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`run_opencv` on a prototxt given as text and a caffemodel given as bytes."""
    with tempfile.TemporaryDirectory(prefix="lmn_net_") as tmp:
        proto = Path(tmp) / "net.prototxt"
        proto.write_text(prototxt_text, encoding="utf-8")
        model = None
        if caffemodel_bytes is not None:
            model = Path(tmp) / "net.caffemodel"
            model.write_bytes(caffemodel_bytes)
        return run_opencv(proto, model, inputs, outputs, timeout, fusion=fusion)
