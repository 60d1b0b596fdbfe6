"""Job ``solve``: N iterations of a Caffe solver on a net fed fixed batches, in the reference Caffe.

The net comes with one ``Input`` layer of two tops, data and label (what landmarknet builds); here
it becomes a ``MemoryData`` layer with the same tops, given every batch of the run at once
(``Net.set_input_arrays``; no transformation, no shuffling), so that forward pass k (iteration
k // iter_size, micro-batch k % iter_size) reads rows [k*B, (k+1)*B): the same batches the test
feeds landmarknet, in the same order, through Caffe's own Solver::Step (ClearParamDiffs,
iter_size ForwardBackward passes, ApplyUpdate).

Request fields:
  prototxt      path of the net (one Input layer: data, label)
  solver        SolverParameter text without a net (the job adds ``net:``)
  iters         iterations to run (Solver::Step)
  batch         rows per forward pass
  seed          seed of the initial weights (``_caffe_job_forward.randomize``)
  save_weights  where the initial weights are written (.caffemodel), before the first step
  net_file      false (default): the net goes inline, ``net_param { }``; true: ``net: "file"``.
                Only a net file goes through this fork's UpgradeNetAsNeeded, whose
                UpgradeNetBatchNorm *clears* the three ``param { }`` of a BatchNorm layer; as the
                fork's BatchNorm does not force lr_mult 0 either, its statistics then train with
                lr_mult 1 and decay_mult 1 (weight decay shrinks them). BVLC sets them to 0.
Arrays: ``data`` (every batch one after the other, 4-D) and ``label`` (one per row).
Returns meta {"params": [[layer, index], ...], "iter": solver.iter} and arrays ``w<j>``: the
data of every blob of every layer after the N iterations (BatchNorm's statistics included), in
``params`` order.
"""
from __future__ import annotations

import os

import numpy as np

from _caffe_job_forward import randomize


def _memory_data_net(text: str, data_shape: tuple, batch: int) -> str:
    """The net with its Input layer (tops data, label) replaced by a MemoryData layer."""
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    inputs = [layer for layer in net.layer if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 2:
        raise ValueError("the net needs exactly one Input layer with tops data, label")
    layer = inputs[0]
    layer.type = "MemoryData"
    layer.ClearField("input_param")
    mp = layer.memory_data_param
    mp.batch_size = batch
    mp.channels, mp.height, mp.width = (int(d) for d in data_shape[1:])
    return text_format.MessageToString(net)


def run(caffe, request: dict, arrays: dict):
    workdir = request["workdir"]
    data = np.ascontiguousarray(arrays["data"], dtype=np.float32)
    label = np.ascontiguousarray(arrays["label"], dtype=np.float32).reshape(-1, 1, 1, 1)
    with open(request["prototxt"], encoding="utf-8") as fh:
        text = _memory_data_net(fh.read(), data.shape, int(request["batch"]))
    net_path = os.path.join(workdir, "net.prototxt")
    with open(net_path, "w", encoding="utf-8") as fh:
        fh.write(text)
    net_field = (f'net: "{net_path}"' if request.get("net_file")
                 else "net_param {\n" + text + "\n}")
    solver_path = os.path.join(workdir, "solver.prototxt")
    with open(solver_path, "w", encoding="utf-8") as fh:
        fh.write(request["solver"] + "\n" + net_field + "\n")
    solver = caffe.get_solver(solver_path)
    randomize(solver.net, int(request.get("seed", 0)))
    solver.net.save(request["save_weights"])
    solver.net.set_input_arrays(data, label)  # Caffe reads this memory: keep the arrays alive
    solver.step(int(request["iters"]))
    params, out = [], {}
    for name, layer in zip(solver.net._layer_names, solver.net.layers):
        for i, blob in enumerate(layer.blobs):
            out[f"w{len(params)}"] = np.array(blob.data, dtype=np.float32)
            params.append([name, i])
    return {"params": params, "iter": int(solver.iter)}, out
