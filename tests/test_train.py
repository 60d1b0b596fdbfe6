"""Training loop on a tiny heatmap net and a small real subset of ytf68 (CPU, seconds)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.data.transforms import Augment
from landmarknet.train import TrainConfig, Trainer, TrainingDiverged

_CONV = """layer {{ name: "{n}" type: "Convolution" bottom: "{b}" top: "{n}"
  convolution_param {{ num_output: {c} kernel_size: {k} pad: {p}
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
"""
_RELU = 'layer {{ name: "{n}_relu" type: "ReLU" bottom: "{n}" top: "{n}" }}\n'
_POOL = ('layer {{ name: "{n}" type: "Pooling" bottom: "{b}" top: "{n}" '
         'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')


def _body(k: int) -> str:
    s = _CONV.format(n="conv1", b="data", c=8, k=3, p=1) + _RELU.format(n="conv1")
    s += _POOL.format(n="pool1", b="conv1")
    s += _CONV.format(n="conv2", b="pool1", c=16, k=3, p=1) + _RELU.format(n="conv2")
    s += _POOL.format(n="pool2", b="conv2")
    s += _CONV.format(n="stage1_maps", b="pool2", c=k + 1, k=3, p=1)
    s += ('layer { name: "concat" type: "Concat" bottom: "pool2" bottom: "stage1_maps" '
          'top: "concat" }\n')
    s += _CONV.format(n="stage2_conv", b="concat", c=16, k=3, p=1) + _RELU.format(n="stage2_conv")
    s += _CONV.format(n="stage2_maps", b="stage2_conv", c=k + 1, k=1, p=0)
    return s


def tiny_net(folder: Path, k: int = 68, size: int = 32, batch: int = 8) -> Path:
    """train_val, deploy and solver of a 2-stage heatmap net at size x size input, stride 4."""
    m = size // 4
    inp = ('layer {{ name: "input" type: "Input" top: "data" top: "heatmaps" input_param {{ '
           'shape {{ dim: {n} dim: 3 dim: {s} dim: {s} }} shape {{ dim: {n} dim: {c} dim: {m} '
           'dim: {m} }} }} }}\n').format(n=batch, s=size, c=k + 1, m=m)
    loss = ''.join(f'layer {{ name: "stage{i}_loss" type: "EuclideanLoss" bottom: '
                   f'"stage{i}_maps" bottom: "heatmaps" top: "stage{i}_loss" }}\n'
                   for i in (1, 2))
    (folder / "train_val.prototxt").write_text('name: "tiny"\n' + inp + _body(k) + loss)
    dep = ('name: "tiny"\nlayer {{ name: "input" type: "Input" top: "data" input_param {{ '
           'shape {{ dim: 1 dim: 3 dim: {s} dim: {s} }} }} }}\n').format(s=size)
    (folder / "deploy.prototxt").write_text(dep + _body(k))
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{folder}/train_val.prototxt"\n'
                      'type: "Adam"\nbase_lr: 0.003\nmomentum: 0.9\nmomentum2: 0.999\n'
                      'lr_policy: "fixed"\nweight_decay: 0.0005\nmax_iter: 20\ndisplay: 1\n'
                      'average_loss: 1\ntest_iter: 1\ntest_interval: 10\n'
                      'test_initialization: false\nsnapshot: 10\n'
                      f'snapshot_prefix: "{folder}/snap/tiny"\nrandom_seed: 7\n')
    return solver


@pytest.fixture(scope="module")
def subset(data_dir, tmp_path_factory) -> Path:
    """64 train and 16 val faces of ytf68, linked into a small folder (fast to read)."""
    root = tmp_path_factory.mktemp("ytf68_small")
    for split, n in (("train", 64), ("val", 16)):
        (root / split).mkdir()
        for pts in sorted((data_dir / "ytf68" / split).glob("*.pts"))[:n]:
            for f in (pts, pts.with_suffix(".jpg")):
                (root / split / f.name).symlink_to(f)
    return root


def config(solver: Path, data: Path, out: Path, **kw) -> TrainConfig:
    """The test run's TrainConfig (CPU, no loader processes)."""
    base = dict(solver=solver, data=data / "train", val=data / "val",
                out=out, workers=0, progress=False,
                augment=Augment(flip=0.5, rotate=30, occlusion=0.3, blur=0.3), sigma=1.0)
    base.update(kw)
    return TrainConfig(**base)


_config = config


def _weights(tr: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in tr.net.state_dict().items()}


def test_loss_goes_down_and_logs(tmp_path, subset):
    solver = tiny_net(tmp_path)
    tr = Trainer(config(solver, subset, tmp_path / "a", augment=Augment.none()))
    s = tr.run()
    assert s["final_iter"] == 20
    assert s["last"]["loss"] < 0.8 * s["first"]["loss"], (s["first"], s["last"])
    rows = list(csv.DictReader(open(s["log"])))
    assert [int(r["iter"]) for r in rows if r["loss"]] == list(range(20))
    val = [r for r in rows if r["val_nme_io"]]
    assert [int(r["iter"]) for r in val] == [10, 20]
    assert all(0 < float(r["val_nme_io"]) < 2 for r in val)
    assert "stage1_loss" in rows[0] and "val_stage2_loss" in rows[0]
    assert Path(s["curves"]).stat().st_size > 1000
    assert (tmp_path / "a" / "tiny_iter_10.caffemodel").is_file()
    assert (tmp_path / "a" / "tiny_iter_20.state.pt").is_file()
    assert (Path(s["bundle"]) / "model.json").is_file()


@pytest.mark.parametrize("pipeline", ["cpu", "device"])
def test_resume_is_exact(tmp_path, subset, pipeline):
    solver = tiny_net(tmp_path)
    config = lambda *a, **kw: _config(*a, pipeline=pipeline, **kw)  # noqa: E731
    full = Trainer(config(solver, subset, tmp_path / "full", bundle=False, test_interval=0,
                         batch_size=4))
    assert full.pipeline == pipeline
    full.run()
    w_full = _weights(full)
    half = Trainer(config(solver, subset, tmp_path / "half", bundle=False, test_interval=0,
                          max_iter=10, batch_size=4))
    half.run()
    state = tmp_path / "half" / "tiny_iter_10.state.pt"
    torch.load(state, weights_only=True)  # loads with weights_only
    rest = Trainer(config(solver, subset, tmp_path / "half", bundle=False, test_interval=0,
                          resume=state, batch_size=4))
    assert rest.start_iter == 10
    rest.run()
    w_rest = _weights(rest)
    for k in w_full:
        assert torch.equal(w_full[k], w_rest[k]), k
    rows = list(csv.DictReader(open(tmp_path / "half" / "tiny_log.csv")))
    assert [int(r["iter"]) for r in rows] == list(range(20))


def test_nan_stops_and_keeps_snapshot(tmp_path, subset):
    from landmarknet.params import load_weights
    solver = tiny_net(tmp_path)
    tr = Trainer(config(solver, subset, tmp_path / "n", bundle=False, test_interval=0,
                        snapshot=5))
    orig = tr.inputs

    def poisoned(batch):
        args = orig(batch)
        if tr.solver.iter == 7:
            args[0] = args[0] * float("nan")
        return args

    tr.inputs = poisoned
    with pytest.raises(TrainingDiverged, match=r"iteration 7: loss top 'stage1_loss' is nan"):
        tr.run()
    snap = tmp_path / "n" / "tiny_iter_5.caffemodel"
    assert snap.is_file() and not (tmp_path / "n" / "tiny_iter_10.caffemodel").exists()
    net2 = Trainer(config(solver, subset, tmp_path / "n2", bundle=False)).net
    load_weights(net2, snap, strict=True)
    assert all(torch.isfinite(p).all() for p in net2.parameters())


def _caffemodel_blobs(path: Path) -> dict:
    """{layer/i: array} read back from a .caffemodel with the Caffe reader."""
    from landmarknet.caffe.weights import read_weights
    return {f"{lb.name}/{i}": np.asarray(b) for lb in read_weights(path)
            for i, b in enumerate(lb.blobs)}


def test_ema_snapshot_holds_the_average(tmp_path, subset):
    """The .caffemodel of an --ema run = the average computed here from the live weights seen
    after every update, by the documented formula (decay min(d, (1 + t) / (10 + t)))."""
    solver = tiny_net(tmp_path)
    tr = Trainer(config(solver, subset, tmp_path / "e", bundle=False, test_interval=0,
                        max_iter=12, snapshot=12, batch_size=4, ema=0.9))
    live = []
    update = tr.solver.apply_update

    def recording():
        update()
        live.append({n: p.detach().double().clone() for n, p in tr.net.named_parameters()})
    tr.solver.apply_update = recording
    init = {n: p.detach().double().clone() for n, p in tr.net.named_parameters()}
    tr.run()
    avg = dict(init)
    for t, w in enumerate(live):
        d = min(0.9, (1 + t) / (10 + t))
        avg = {n: d * avg[n] + (1 - d) * w[n] for n in avg}
    saved = _caffemodel_blobs(tmp_path / "e" / "tiny_iter_12.caffemodel")
    final = live[-1]
    for name, value in avg.items():
        layer, slot = name.rsplit(".", 1)
        key = f"{layer}/{0 if slot == 'weight' else 1}"
        np.testing.assert_allclose(saved[key].reshape(value.shape), value.numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
        assert not np.allclose(saved[key].reshape(value.shape), final[name].numpy()), name
    # the live weights are back in the net after the snapshot
    for n, p in tr.net.named_parameters():
        assert torch.equal(p.detach().double(), final[n]), n


def test_ema_resume_is_exact(tmp_path, subset):
    solver = tiny_net(tmp_path)
    kw = dict(bundle=False, test_interval=0, batch_size=4, ema=0.95, snapshot=10)
    full = Trainer(config(solver, subset, tmp_path / "full", **kw))
    full.run()
    half = Trainer(config(solver, subset, tmp_path / "half", max_iter=10, **kw))
    half.run()
    rest = Trainer(config(solver, subset, tmp_path / "half",
                          resume=tmp_path / "half" / "tiny_iter_10.state.pt", **kw))
    rest.run()
    for k, v in _weights(full).items():
        assert torch.equal(v, _weights(rest)[k]), k
    a = _caffemodel_blobs(tmp_path / "full" / "tiny_iter_20.caffemodel")
    b = _caffemodel_blobs(tmp_path / "half" / "tiny_iter_20.caffemodel")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_ema_decay_checked(tmp_path, subset):
    from landmarknet.train import TrainingError
    with pytest.raises(TrainingError, match="--ema must be a decay in"):
        Trainer(config(tiny_net(tmp_path), subset, tmp_path / "x", ema=1.5))
