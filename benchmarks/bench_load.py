#!/usr/bin/env python
"""Benchmark: loading a VGG-16-sized .caffemodel (~553 MB), ours vs protobuf vs OpenCV.

Writes a caffemodel with VGG-16's layer shapes (random float32 values) and a matching deploy
prototxt into a work folder, then times, each in a fresh subprocess (imports not timed; the file
is in the page cache after the warm-up run):

* ``landmarknet.caffe.weights.read_caffemodel``;
* protobuf: ``NetParameter.ParseFromString`` + ``np.asarray(blob.data)`` per blob;
* ``cv2.dnn.readNetFromCaffe(prototxt, caffemodel)``;
* our HDF5 reader on the same weights;

and, in this process, ``write_caffemodel`` and ``write_caffe_hdf5``. Prints medians of
``--repeats`` runs after one warm-up, and the ratios. Not a test: run it by hand::

    .venv/bin/python benchmarks/bench_load.py [--workdir DIR] [--repeats 3] [--skip-protobuf]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# (name, weight shape) of VGG-16; every layer also has a bias of shape (out,)
VGG16 = [
    ("conv1_1", (64, 3, 3, 3)), ("conv1_2", (64, 64, 3, 3)),
    ("conv2_1", (128, 64, 3, 3)), ("conv2_2", (128, 128, 3, 3)),
    ("conv3_1", (256, 128, 3, 3)), ("conv3_2", (256, 256, 3, 3)), ("conv3_3", (256, 256, 3, 3)),
    ("conv4_1", (512, 256, 3, 3)), ("conv4_2", (512, 512, 3, 3)), ("conv4_3", (512, 512, 3, 3)),
    ("conv5_1", (512, 512, 3, 3)), ("conv5_2", (512, 512, 3, 3)), ("conv5_3", (512, 512, 3, 3)),
    ("fc6", (4096, 25088)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
]


def deploy_prototxt() -> str:
    lines = ['name: "VGG_ILSVRC_16_layers"', 'input: "data"',
             "input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }"]
    bottom = "data"
    for name, shape in VGG16:
        if name.startswith("conv"):
            lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" '
                         f'top: "{name}" convolution_param {{ num_output: {shape[0]} pad: 1 '
                         "kernel_size: 3 } }")
            lines.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" '
                         f'top: "{name}" }}')
            bottom = name
            if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
                pool = f"pool{name[4]}"
                lines.append(f'layer {{ name: "{pool}" type: "Pooling" bottom: "{bottom}" '
                             f'top: "{pool}" pooling_param {{ pool: MAX kernel_size: 2 '
                             "stride: 2 } }")
                bottom = pool
        else:
            lines.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" '
                         f'top: "{name}" inner_product_param {{ num_output: {shape[0]} }} }}')
            bottom = name
            if name != "fc8":
                lines.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" '
                             f'top: "{name}" }}')
                lines.append(f'layer {{ name: "drop{name[2:]}" type: "Dropout" '
                             f'bottom: "{name}" top: "{name}" '
                             "dropout_param { dropout_ratio: 0.5 } }")
    lines.append(f'layer {{ name: "prob" type: "Softmax" bottom: "{bottom}" top: "prob" }}')
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Child side: one timed load in a fresh interpreter


def _checksum(named_arrays) -> list:
    """Cheap fingerprint: per blob, its shape and the float64 sum of its first 4096 values."""
    import numpy as np
    return [[name, list(a.shape), float(np.asarray(a).reshape(-1)[:4096].sum(dtype=np.float64))]
            for name, a in named_arrays]


def _child(method: str, model: str, proto: str) -> dict:
    import resource

    import numpy as np  # imports are not timed
    result: dict = {}
    if method == "ours":
        from landmarknet.caffe.weights import read_caffemodel
        t = time.perf_counter()
        layers = read_caffemodel(model)
        result["seconds"] = time.perf_counter() - t
        result["check"] = _checksum((lb.name, b) for lb in layers for b in lb.blobs)
    elif method == "ours_h5":
        from landmarknet.caffe.weights import read_caffe_hdf5
        t = time.perf_counter()
        layers = read_caffe_hdf5(model)
        result["seconds"] = time.perf_counter() - t
        result["check"] = _checksum((lb.name, b) for lb in layers for b in lb.blobs)
    elif method == "protobuf":
        from landmarknet.caffe import caffe_pb2
        t = time.perf_counter()
        with open(model, "rb") as f:
            data = f.read()
        net = caffe_pb2.NetParameter()
        net.ParseFromString(data)
        t_parse = time.perf_counter() - t
        arrays = [(layer.name, np.asarray(b.data, dtype=np.float32).reshape(tuple(b.shape.dim)))
                  for layer in net.layer for b in layer.blobs]
        result["seconds"] = time.perf_counter() - t
        result["parse_seconds"] = t_parse
        result["check"] = _checksum(arrays)
    elif method == "opencv":
        import cv2
        if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
            return {"error": f"OpenCV {cv2.__version__} has no readNetFromCaffe"}
        t = time.perf_counter()
        net = cv2.dnn.readNetFromCaffe(proto, model)
        result["seconds"] = time.perf_counter() - t
        result["opencv"] = cv2.__version__
        result["n_layers"] = len(net.getLayerNames())
    else:
        raise SystemExit(f"unknown method {method}")
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _child_env(method: str) -> dict:
    env = dict(os.environ)
    if method == "opencv":  # as tests/opencv_ref.py: prefer an OpenCV 4 beside the venv
        extra = os.environ.get("LANDMARKNET_OPENCV_PATH")
        paths = [p for p in (extra or "").split(os.pathsep) if p]
        if extra is None and (REPO / ".venv" / "opencv4").is_dir():
            paths.append(str(REPO / ".venv" / "opencv4"))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_child(method: str, model: Path, proto: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", method, str(model), str(proto)],
        capture_output=True, text=True, env=_child_env(method), cwd=str(REPO))
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# Parent side


def make_layers(seed: int):
    import numpy as np

    from landmarknet.caffe.weights import LayerBlobs
    rng = np.random.default_rng(seed)
    layers = []
    for name, shape in VGG16:
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.01)
        b = rng.standard_normal(shape[0], dtype=np.float32)
        layers.append(LayerBlobs(name, "Convolution" if name.startswith("conv")
                                 else "InnerProduct", [w, b]))
    return layers


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where to write the files (default: a temp "
                    "folder, removed afterwards)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-protobuf", action="store_true",
                    help="leave out the (slow) protobuf baseline")
    ap.add_argument("--skip-hdf5", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "MODEL", "PROTOTXT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0

    from landmarknet.caffe import caffe_pb2  # noqa: F401  (import before timing)
    from landmarknet.caffe.weights import write_caffe_hdf5, write_caffemodel

    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lmn_bench_")) if own_tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model, proto, h5 = work / "vgg16.caffemodel", work / "vgg16_deploy.prototxt", work / "vgg16.h5"
    try:
        proto.write_text(deploy_prototxt())
        t = time.perf_counter()
        layers = make_layers(args.seed)
        print(f"generated {sum(b.size for lb in layers for b in lb.blobs) / 1e6:.1f} M random "
              f"float32 values in {time.perf_counter() - t:.1f} s", flush=True)

        rows: list[tuple[str, list[float], str]] = []
        w = timed(lambda: write_caffemodel(model, layers), args.repeats)
        size_mb = model.stat().st_size / 1e6
        print(f"{model}: {size_mb:.1f} MB", flush=True)
        rows.append(("landmarknet write_caffemodel", w, ""))
        if not args.skip_hdf5:
            rows.append(("landmarknet write_caffe_hdf5",
                         timed(lambda: write_caffe_hdf5(h5, layers), args.repeats), ""))
        del layers
        if hasattr(os, "sync"):
            os.sync()  # let writeback of the files just written not disturb the read timings

        methods = [("landmarknet read_caffemodel", "ours", model)]
        if not args.skip_protobuf:
            methods.append(("protobuf ParseFromString + np", "protobuf", model))
        methods.append(("cv2.dnn.readNetFromCaffe", "opencv", model))
        if not args.skip_hdf5:
            methods.append(("landmarknet read_caffe_hdf5", "ours_h5", h5))
        medians: dict[str, float] = {}
        checks: dict[str, list] = {}
        for label, method, path in methods:
            runs = [run_child(method, path, proto) for _ in range(args.repeats + 1)][1:]
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                rows.append((label, [], f"failed: {errors[0]}"))
                print(f"{label}: {errors[0]}", flush=True)
                continue
            secs = [r["seconds"] for r in runs]
            note = f"peak RSS {max(r['maxrss_mb'] for r in runs):.0f} MB"
            if method == "protobuf":
                parse = statistics.median(r["parse_seconds"] for r in runs)
                note += f"; ParseFromString alone {parse:.2f} s"
            if method == "opencv":
                note += f"; OpenCV {runs[0]['opencv']}"
            if "check" in runs[0]:
                checks[method] = runs[0]["check"]
            rows.append((label, secs, note))
            medians[method] = statistics.median(secs)
            print(f"{label}: {', '.join(f'{s:.3f}' for s in secs)} s", flush=True)

        if "protobuf" in checks and checks["protobuf"] != checks["ours"]:
            print("WARNING: our blobs differ from protobuf's", flush=True)
        if "ours_h5" in checks and checks["ours_h5"] != checks["ours"]:
            print("WARNING: HDF5 blobs differ from the caffemodel's", flush=True)

        print()
        print(f"VGG-16 weights, {size_mb:.1f} MB; median of {args.repeats} runs after 1 warm-up "
              f"(reads: fresh subprocess each, file in page cache); {os.cpu_count()} CPUs")
        print(f"{'method':<32} {'median s':>9} {'min s':>8} {'max s':>8}  notes")
        for label, secs, note in rows:
            if secs:
                print(f"{label:<32} {statistics.median(secs):>9.3f} {min(secs):>8.3f} "
                      f"{max(secs):>8.3f}  {note}")
            else:
                print(f"{label:<32} {'-':>9} {'-':>8} {'-':>8}  {note}")
        if "ours" in medians:
            for method, label in (("opencv", "OpenCV"), ("protobuf", "protobuf")):
                if method in medians:
                    print(f"ratio {label}/ours: {medians[method] / medians['ours']:.1f}x")
        if "protobuf" in checks:
            print("blob check (ours vs protobuf): "
                  + ("identical" if checks["protobuf"] == checks["ours"] else "DIFFERENT"))
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
