"""Python layers as a Caffe user writes them (``caffe.Layer`` subclasses, numpy inside).

The same file runs in the reference Caffe (its pycaffe) and in landmarknet (its stand-in for
pycaffe, landmarknet.python_layers), so tests/test_python_layers.py can compare the two. Written
for the test, in the style of py-faster-rcnn's and FCN's layers.
"""
import caffe
import numpy as np


class ScaleShift(caffe.Layer):
    """top = a * bottom + b, with "a b" in param_str."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("ScaleShift takes one bottom")
        self.a, self.b = (float(v) for v in self.param_str.split())

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.a * bottom[0].data + self.b

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.a * top[0].diff


class RowNormsAndSum(caffe.Layer):
    """Two bottoms (N, ...): top 0 the L2 norm of each row of bottom 0 (N, 1), top 1 the sum of
    both bottoms; uses the legacy num/channels accessors and count."""

    def setup(self, bottom, top):
        assert bottom[0].count == bottom[1].count

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].num, 1)
        top[1].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        flat = bottom[0].data.reshape(bottom[0].num, -1)
        top[0].data[:, 0] = np.sqrt((flat ** 2).sum(axis=1))
        top[1].data[...] = bottom[0].data + bottom[1].data

    def backward(self, top, propagate_down, bottom):
        flat = bottom[0].data.reshape(bottom[0].num, -1)
        norms = np.sqrt((flat ** 2).sum(axis=1, keepdims=True))
        if propagate_down[0]:
            bottom[0].diff[...] = (top[0].diff * flat / norms).reshape(bottom[0].shape) \
                + top[1].diff
        if propagate_down[1]:
            bottom[1].diff[...] = top[1].diff


class PhaseFlag(caffe.Layer):
    """top = bottom + 1 in TRAIN, bottom - 1 in TEST; no backward (deploy-style ``pass``)."""

    def setup(self, bottom, top):  # pycaffe needs every method defined (its base recurses)
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + (1 if self.phase == caffe.TRAIN else -1)

    def backward(self, top, propagate_down, bottom):
        pass


class Broken(caffe.Layer):
    """Fails in forward, as user code may."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise ValueError("boom: the user's own error")

    def backward(self, top, propagate_down, bottom):
        pass
