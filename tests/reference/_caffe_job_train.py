"""Job ``train``: one TRAIN-phase forward + backward of a train net in the reference Caffe.

The net's data layers (those the TRAIN phase keeps) become one ``Input`` layer each, with the
shapes the request gives, and every Dropout gets ``dropout_ratio: 0`` (an identity in Caffe:
scale 1/(1-0), every mask bit 1), so that TRAIN is deterministic. The rewrite is done here,
with Caffe's own ``caffe_pb2`` (the fork's schema reads the file exactly as this Caffe does), and
the rewritten text comes back so that the test builds the very same net.

Request fields:
  prototxt      path of the train net
  shapes        {top name: shape} of the data layers' tops
  seed          seed of the random weights (``_caffe_job_forward.randomize``)
  save_weights  where Caffe writes the weights it ran with (.caffemodel)
  net_out       where the rewritten prototxt is written
  blobs         true: also return every blob's data and diff after the backward (diagnosis)
Arrays: one per data top, named after it.
Returns meta {"outputs": [...], "params": [[layer, index, shape], ...], "stats": [...],
"maxpools": [layer names], "relus": [...], "dropped": [data layer names], "dropouts": [Dropout
layer names], "blobs": [names, when asked]}
and arrays: ``out<i>`` (net outputs after forward), ``grad<j>`` (diff of every param blob, in
``params`` order), ``stat<k>`` (BatchNorm blobs after the forward, in ``stats`` order) and
``pool<m>`` (the bottom of each MAX Pooling layer as that layer saw it) and ``relu<r>`` (each
ReLU's decision ``bottom > 0``, as ``np.packbits``; meta "relus": [[layer, shape], ...]). These
are Caffe's discrete choices: the test can make landmarknet take the same ones, to tell float32
near-ties that flip (a ReLU input within an ulp of 0, two equal maxima) from real differences.
"""
from __future__ import annotations

import numpy as np

from _caffe_job_forward import randomize

DATA_TYPES = {"Data", "ImageData", "HDF5Data", "ImageLabelmapData", "WindowData", "MemoryData",
              "DummyData", "AnnotatedData", "VideoData", "DenseImageData", "Input"}
TRAIN = 0


def _in_train(layer) -> bool:
    """Whether the TRAIN phase keeps the layer (phase rules only: the nets we feed use no
    levels or stages)."""
    if any(rule.HasField("phase") and rule.phase == TRAIN for rule in layer.exclude):
        return False
    rules = list(layer.include)
    return not rules or any(not rule.HasField("phase") or rule.phase == TRAIN for rule in rules)


def rewrite(text: str, shapes: dict) -> tuple[str, list[str], list[str]]:
    """(prototxt, data layers replaced, dropout layers zeroed) of the deterministic TRAIN net."""
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    if len(net.layers):
        raise ValueError("legacy V1 'layers' nets are not rewritten by this job")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    dropped, dropouts = [], []
    for layer in net.layer:
        if layer.type in DATA_TYPES and _in_train(layer):
            inp = caffe_pb2.LayerParameter(name=layer.name, type="Input")
            inp.top.extend(layer.top)
            inp.include.extend(layer.include)
            for top in layer.top:
                inp.input_param.shape.add().dim.extend(int(d) for d in shapes[top])
            out.layer.add().CopyFrom(inp)
            dropped.append(layer.name)
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        if layer.type == "Dropout":
            new.dropout_param.dropout_ratio = 0.0
            dropouts.append(layer.name)
    return text_format.MessageToString(out), dropped, dropouts


def _max_pool_layers(text: str) -> set[str]:
    """Names of the MAX Pooling layers of the TRAIN net (the ReLUs need no list: the type
    says it all)."""
    from google.protobuf import text_format

    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    return {layer.name for layer in net.layer if layer.type == "Pooling" and _in_train(layer)
            and layer.pooling_param.pool == caffe_pb2.PoolingParameter.MAX}


def _forward_recording_choices(net, max_pools: set[str]) -> tuple[dict, dict]:
    """net.forward(), one layer at a time, keeping what each MAX pool and ReLU read: (meta,
    arrays). In-place layers overwrite their bottom, hence the copy before the layer runs."""
    pools, relus, out = [], [], {}
    for i, (name, layer) in enumerate(zip(net._layer_names, net.layers)):
        bottom = net._blob_names[net._bottom_ids(i)[0]] if len(net._bottom_ids(i)) else None
        if layer.type == "Pooling" and name in max_pools:
            out[f"pool{len(pools)}"] = np.array(net.blobs[bottom].data, dtype=np.float32)
            pools.append(name)
        elif layer.type == "ReLU":
            data = net.blobs[bottom].data
            out[f"relu{len(relus)}"] = np.packbits(data > 0)
            relus.append([name, list(data.shape)])
        net._forward(i, i)
    return {"maxpools": pools, "relus": relus}, out


def run(caffe, request: dict, arrays: dict):
    with open(request["prototxt"], encoding="utf-8") as fh:
        text, dropped, dropouts = rewrite(fh.read(), request["shapes"])
    with open(request["net_out"], "w", encoding="utf-8") as fh:
        fh.write(text)
    net = caffe.Net(request["net_out"], caffe.TRAIN)
    randomize(net, int(request.get("seed", 0)))
    net.save(request["save_weights"])  # before the forward: BatchNorm blobs change in TRAIN
    for name, value in arrays.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    for name, value in arrays.items():
        net.blobs[name].data[...] = value
    net.clear_param_diffs()
    choices, out = _forward_recording_choices(net, _max_pool_layers(text))
    stats = []
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "BatchNorm":
            for i, blob in enumerate(layer.blobs):
                out[f"stat{len(stats)}"] = np.array(blob.data, dtype=np.float32)
                stats.append([name, i])
    net.backward()
    params = []
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "BatchNorm":
            continue
        for i, blob in enumerate(layer.blobs):
            out[f"grad{len(params)}"] = np.array(blob.diff, dtype=np.float32)
            params.append([name, i, list(blob.data.shape)])
    outputs = list(net.outputs)
    for i, name in enumerate(outputs):
        out[f"out{i}"] = np.array(net.blobs[name].data, dtype=np.float32)
    if request.get("blobs"):
        for b, name in enumerate(net.blobs):
            out[f"blob{b}"] = np.array(net.blobs[name].data, dtype=np.float32)
            out[f"diff{b}"] = np.array(net.blobs[name].diff, dtype=np.float32)
        meta_blobs = list(net.blobs)
    else:
        meta_blobs = []
    meta = dict(choices, blobs=meta_blobs, outputs=outputs, params=params, stats=stats,
                dropped=dropped, dropouts=dropouts)
    return meta, out
