"""Job ``backward``: one forward and one backward pass of a net in the reference Caffe.

The net reads its data from ``Input`` layers (the test writes it that way); give it
``force_backward: true`` to get the diffs of the inputs too. Caffe's own loss (the return value
of ``Net::ForwardFromTo``, the weighted sum over every loss top, automatic tops included) comes
back with every blob's data and diff and every parameter blob's data and diff.

Request fields:
  prototxt      path of the net
  phase         "train" (default) or "test"
  weights       a .caffemodel to load, or null for seeded random weights
                (``_caffe_job_forward.randomize``)
  seed          seed of the random weights (default 0)
  save_weights  where Caffe writes the weights it ran with (before the forward), or null
Arrays: one per net input, named after it; the net is reshaped to their shapes.
Returns meta {"loss": float, "blobs": [name of blob i in Caffe's order; anonymous tops are
"(automatic)"], "loss_weights": [Caffe's loss weight of blob i], "params": [[layer, index,
shape], ...]} and arrays ``data<i>``/``diff<i>`` (blob i) and ``pdata<k>``/``pdiff<k>``
(parameter blob k; BatchNorm statistics are read after the forward, which updates them).
"""
from __future__ import annotations

import numpy as np

from _caffe_job_forward import load_net


def run(caffe, request: dict, arrays: dict):
    net = load_net(caffe, request, default_phase="train")
    if request.get("save_weights"):
        net.save(request["save_weights"])
    for name, value in arrays.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    for name, value in arrays.items():
        net.blobs[name].data[...] = value
    last = len(net.layers) - 1
    loss = float(net._forward(0, last))
    net.clear_param_diffs()
    net._backward(last, 0)
    out = {}
    names = list(net._blob_names)
    for i, blob in enumerate(net._blobs):
        out[f"data{i}"] = np.array(blob.data, dtype=np.float32)
        out[f"diff{i}"] = np.array(blob.diff, dtype=np.float32)
    params = []
    for name, layer in zip(net._layer_names, net.layers):
        for j, blob in enumerate(layer.blobs):
            k = len(params)
            out[f"pdata{k}"] = np.array(blob.data, dtype=np.float32)
            out[f"pdiff{k}"] = np.array(blob.diff, dtype=np.float32)
            params.append([name, j, list(blob.data.shape)])
    meta = {"loss": loss, "blobs": names, "loss_weights": [float(w) for w in
                                                           net._blob_loss_weights],
            "params": params}
    return meta, out
