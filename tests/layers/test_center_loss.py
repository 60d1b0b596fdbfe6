"""ydwen/caffe-face's CenterLoss against a numpy restatement of its center_loss_layer.cpp.

Forward: loss = sum_i |x_i - c_(y_i)|^2 / M / 2. Backward: the diff of x is (x - c_y) times
the top's diff / M; the centres' diff is the fork's update rule, sum over the samples of class
n of (c_n - x_m) divided by (1 + their count), whatever the loss weight.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarknet.layers import converter_for
from layers.checker import assert_refused, layer_spec, seeded
from reference.compare import rel_err

TOL = 1e-5


def center_loss_ref(x, labels, centers, top_diff):
    x, centers = x.astype(np.float64), centers.astype(np.float64)
    m = x.shape[0]
    flat = x.reshape(m, -1)
    distance = flat - centers[labels]
    loss = (distance * distance).sum() / m / 2
    dx = distance * top_diff / m
    dc = np.zeros_like(centers)
    for n in range(centers.shape[0]):
        members = labels == n
        dc[n] = -distance[members].sum(axis=0) / (1.0 + members.sum())
    return loss, dx.reshape(x.shape), dc


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2, 2)])
def test_center_loss_matches_caffe_face(shape) -> None:
    rng = seeded(95)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = np.array([0, 2, 2, 1, 0, 2][:shape[0]])
    classes, dim = 4, int(np.prod(shape[1:]))  # class 3 has no sample: its diff stays 0
    spec = layer_spec("CenterLoss", f"center_loss_param {{ num_output: {classes} "
                      "center_filler { type: 'xavier' } }", [shape, (shape[0], 1, 1, 1)])
    built = converter_for(spec)(spec)
    assert [(b.attr, b.shape) for b in built.blobs] == [("centers", (classes, dim))]
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    with torch.no_grad():
        built.module.centers.copy_(torch.tensor(centers))
    tx = torch.tensor(x, requires_grad=True)
    loss = built.module(tx, torch.tensor(labels, dtype=torch.float32).reshape(-1, 1, 1, 1))
    (0.008 * loss).backward()  # the face net's loss_weight: scales dx only
    value, dx, dc = center_loss_ref(x, labels, centers, 0.008)
    assert abs(float(loss.detach()) - value) <= TOL * value
    assert rel_err(tx.grad.numpy(), dx) <= TOL
    assert rel_err(built.module.centers.grad.numpy(), dc) <= TOL


def test_center_loss_checks() -> None:
    assert_refused("CenterLoss", "center_loss_param { }", [(4, 5), (4, 1, 1, 1)],
                   match="num_output")
    assert_refused("CenterLoss", "center_loss_param { num_output: 3 }", [(4, 5), (2, 1, 1, 1)],
                   match="one label per sample")
    spec = layer_spec("CenterLoss", "center_loss_param { num_output: 3 }",
                      [(2, 5), (2, 1, 1, 1)])
    module = converter_for(spec)(spec).module
    with pytest.raises(Exception, match="label 3 has no centre"):
        module(torch.zeros(2, 5), torch.tensor([[[[0.0]]], [[[3.0]]]]))
