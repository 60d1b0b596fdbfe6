"""landmarknet's side of a run against the reference Caffe's ``forward`` and ``backward`` jobs.

Not imported by the Caffe worker (it needs torch and landmarknet).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from landmarknet.build import build_net
from landmarknet.params import load_weights


def run_backward(proto: Path, weights: Path, arrays: dict[str, np.ndarray], phase: str,
                 blobs: list[str], *, retain_grads: bool = False):
    """The net with Caffe's weights run on ``arrays`` (inputs that require grad), its weighted
    loss tops summed as Caffe does and back-propagated: (net, {blob: tensor}, {input: tensor},
    loss). ``retain_grads`` keeps the gradients of the intermediate blobs too."""
    net = build_net(proto, phase=phase, input_shapes={k: v.shape for k, v in arrays.items()})
    load_weights(net, weights, strict=True)
    inputs = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    weighted = [net.caffe_graph.blob_of[t] for info in net.layers.values()
                for t, w in zip(info.node.tops, info.loss_weights) if w]
    out = net.run(inputs, blobs=list(dict.fromkeys(blobs + weighted)))
    if retain_grads:
        for name, t in out.items():
            if t.requires_grad and name not in inputs:
                t.retain_grad()
    loss = net.loss({k: out[k] for k in weighted})
    loss.backward()
    return net, out, inputs, float(loss.detach())


def forward_blobs(prototxt: Path, inputs: dict[str, np.ndarray], blobs: list[str],
                  weights: Path | None = None) -> dict[str, np.ndarray]:
    """Run landmarknet on ``prototxt`` (warnings silenced, ``weights`` loaded strictly when
    given); the named blobs as numpy arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_net(prototxt, input_shapes={k: v.shape for k, v in inputs.items()})
    if weights is not None:
        load_weights(net, weights, strict=True)
    with torch.no_grad():
        got = net.run(inputs, blobs=blobs)
    return {k: v.numpy() for k, v in got.items()}
