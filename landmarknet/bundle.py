"""Writing model bundles (the folder :class:`landmarknet.infer.LandmarkModel` loads).

``save_bundle(dir, net, deploy_prototxt, ...)`` writes ``deploy.prototxt`` (copied),
``<name>.caffemodel`` (the net's weights, atomically) and ``model.json`` (format 1, see
:mod:`landmarknet.infer`), then loads the bundle back once to check it is complete (``check``).
The .caffemodel's layer parameters are the net's own NetParameter when the net was built from
that deploy prototxt (it is not parsed again); a training net bundled with its deploy file takes
them from the deploy file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from landmarknet.caffe import caffe_pb2
from landmarknet.infer import FORMAT, MODEL_JSON


def save_bundle(folder, net, deploy_prototxt, scheme: int, input_size: int, decoding: dict,
                metrics: Optional[dict] = None, provenance: Optional[dict] = None, *,
                crop_scale: float = 1.25, crop_shift=(0.0, 0.0), mean=127.5,
                scale: float = 1.0 / 128, channels: str = "BGR", name: Optional[str] = None,
                input_blob: str = "data", check: bool = True) -> Path:
    """Write a bundle folder; ``decoding`` is model.json's "output" section."""
    from landmarknet.params import save_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or folder.name
    deploy_dst = folder / "deploy.prototxt"
    if Path(deploy_prototxt).resolve() != deploy_dst.resolve():
        shutil.copyfile(deploy_prototxt, deploy_dst)
    weights = folder / f"{name}.caffemodel"
    for old in folder.glob("*.caffemodel"):
        if old != weights:
            old.unlink()
    save_weights(net, weights, _deploy_param(net, deploy_prototxt))
    spec = {
        "format": FORMAT, "name": name, "scheme": int(scheme),
        "prototxt": "deploy.prototxt", "weights": weights.name,
        "input": {"blob": input_blob, "channels": channels,
                  "mean": mean if isinstance(mean, (int, float)) else list(mean),
                  "scale": float(scale)},
        "output": {k: v for k, v in decoding.items()},
        "crop": {"size": int(input_size), "scale": float(crop_scale),
                 "shift": [float(crop_shift[0]), float(crop_shift[1])], "box": "landmarks"},
        "metrics": metrics or {}, "provenance": provenance or {},
    }
    tmp = folder / (MODEL_JSON + ".tmp")
    tmp.write_text(json.dumps(spec, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, folder / MODEL_JSON)
    if check:
        from landmarknet.infer import LandmarkModel
        # Not checked against a MANIFEST: a bundle being rewritten is listed with its old sums.
        LandmarkModel.load(folder, verify=False, fast=False)  # a load check: no fast form
    return folder


def _deploy_param(net, deploy_prototxt) -> caffe_pb2.NetParameter:
    """The deploy net's NetParameter: the built net's own when it came from that file."""
    built_from = net.parsed.path
    if built_from is not None and Path(built_from).resolve() == Path(deploy_prototxt).resolve():
        return net.net_param
    from landmarknet.caffe.prototxt import read_net
    return read_net(deploy_prototxt).net
