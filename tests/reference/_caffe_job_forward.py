"""Job ``forward``: load a net in the reference Caffe, give it weights, run it, return its blobs.

Request fields:
  prototxt      path of the net
  phase         "test" (default) or "train"
  weights       path of a .caffemodel to load, or null for seeded random weights
  seed          seed of the random weights (default 0)
  save_weights  where Caffe writes the weights it ran with (.caffemodel), or null
  blobs         names of the blobs to return, or null for every blob of the net
Arrays: one per net input, named after it; the net is reshaped to their shapes.
Returns {"blobs": [names in order], "inputs": [...], "outputs": [...], "layers": [...]} and
arrays b0, b1, ...; each entry of "layers" is {"name", "type", "bottoms", "tops"} in Caffe's
order, the Split layers that Caffe inserts included (their tops are copies, named
``<blob>_<layer>_<i>_split_<j>``).
"""
from __future__ import annotations

import numpy as np


def randomize(net, seed: int) -> None:
    """Seeded weights of order one, in layer order; statistics blobs get plausible values."""
    rng = np.random.default_rng(seed)
    for name, layer in zip(net._layer_names, net.layers):
        blobs = layer.blobs
        if not len(blobs):
            continue
        if layer.type == "BatchNorm":
            c = blobs[0].data.shape
            factor = float(rng.uniform(0.5, 2.0))
            blobs[0].data[...] = rng.normal(0.0, 0.5, c) * factor
            blobs[1].data[...] = rng.uniform(0.5, 2.0, c) * factor
            blobs[2].data[...] = factor
            continue
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:])) or 1
                blob.data[...] = rng.normal(0.0, 1.0, shape) / np.sqrt(fan_in)
            elif layer.type in ("Scale", "Normalize") and i == 0:
                blob.data[...] = rng.uniform(0.5, 1.5, shape)
            elif layer.type == "PReLU":
                blob.data[...] = rng.uniform(0.0, 0.5, shape)
            else:
                blob.data[...] = rng.normal(0.0, 0.2, shape)


def describe_layers(net) -> list[dict]:
    """Every layer of the built net, by index (layer names may repeat in a prototxt)."""
    names = list(net._blob_names)
    return [{"name": name, "type": layer.type,
             "bottoms": [names[j] for j in net._bottom_ids(i)],
             "tops": [names[j] for j in net._top_ids(i)]}
            for i, (name, layer) in enumerate(zip(net._layer_names, net.layers))]


def load_net(caffe, request: dict, default_phase: str = "test"):
    """The request's net in its phase, with its weights file or seeded random weights."""
    phase = caffe.TRAIN if request.get("phase", default_phase) == "train" else caffe.TEST
    weights = request.get("weights")
    if weights:
        return caffe.Net(request["prototxt"], weights, phase)
    net = caffe.Net(request["prototxt"], phase)
    randomize(net, int(request.get("seed", 0)))
    return net


def run(caffe, request: dict, arrays: dict):
    net = load_net(caffe, request)
    for name, value in arrays.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    for name, value in arrays.items():
        net.blobs[name].data[...] = value
    net.forward()
    if request.get("save_weights"):
        net.save(request["save_weights"])
    names = request.get("blobs") or list(net.blobs.keys())
    out = {f"b{i}": np.array(net.blobs[n].data, dtype=np.float32) for i, n in enumerate(names)}
    meta = {"blobs": names, "inputs": list(net.inputs), "outputs": list(net.outputs),
            "layers": describe_layers(net)}
    return meta, out
