"""Job ``load``: does the reference Caffe build this net? Nothing is run.

Request fields:
  prototxt  path of the net
  phase     "test" (default) or "train"
Returns {"layers": [{"name", "type", "bottoms", "tops"}, ...], "shapes": {blob: [dims]}} and no
arrays. A net Caffe refuses aborts the child process: the parent raises CaffeFailed.
"""
from __future__ import annotations

from _caffe_job_forward import describe_layers


def run(caffe, request: dict, arrays: dict):
    phase = caffe.TRAIN if request.get("phase", "test") == "train" else caffe.TEST
    net = caffe.Net(request["prototxt"], phase)
    shapes = {name: list(blob.data.shape) for name, blob in net.blobs.items()}
    return {"layers": describe_layers(net), "shapes": shapes}, {}
