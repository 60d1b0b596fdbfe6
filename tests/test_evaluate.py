"""``landmarknet evaluate`` on a bundle made here (tiny heatmap net) and on real val faces."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from landmarknet.build import build_net
from landmarknet.bundle import save_bundle
from landmarknet.cli import evaluate as cli_eval
from landmarknet.infer import LandmarkModel

from test_train import tiny_net


def _parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    cli_eval.add_parser(sub)
    return p


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("net")
    tiny_net(folder)
    net = build_net(folder / "deploy.prototxt", seed=3)
    return save_bundle(folder / "bundle", net, folder / "deploy.prototxt", scheme=68,
                       input_size=32, decoding={"decoding": "heatmap", "stride": 4,
                                                "channels": [0, 68], "blob": "stage2_maps"},
                       metrics={}, provenance={"what": "test"})


def test_bundle_loads(bundle):
    m = LandmarkModel.load(bundle)
    assert m.spec.crop.size == 32 and m.scheme.n_points == 68


def test_evaluate_json_and_plot(bundle, data_dir, tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    for pts in sorted((data_dir / "ytf68" / "val").glob("*.pts"))[:12]:
        for f in (pts, pts.with_suffix(".jpg")):
            (val / f.name).symlink_to(f)
    png = tmp_path / "ced.png"
    args = _parser().parse_args(["evaluate", str(bundle), "--data", str(val), "--json",
                                 "--plot", str(png)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "nme_io", "nme_ip", "nme_box", "nme_thesis", "auc08", "auc10", "fr08",
                "fr10", "per_region"):
        assert key in out, key
    assert out["n"] == 12 and np.isfinite(out["nme_io"]) and out["nme_io"] > 0
    assert png.stat().st_size > 1000
