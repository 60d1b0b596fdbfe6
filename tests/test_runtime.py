"""The CPU policy (landmarknet.runtime): threads set deliberately, denormals flushed to zero,
and shipped weights free of denormal values."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.weights import read_caffemodel
from landmarknet.cli import main as cli_main
from landmarknet.models import MODELS_DIR
from landmarknet.params import load_weights
from landmarknet.runtime import (QUIET_SPINCOUNT, apply_cpu_policy, busy_cores,
                                 choose_openmp_waiting, flush_denormals, machine_is_quiet, ort_session_options,
                                 usable_cores)

TINY = np.finfo(np.float32).tiny
SHIPPED = sorted(MODELS_DIR.glob("*/*.caffemodel"))


@pytest.fixture
def restore_cpu_state():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_flush_denormals_zeroes_denormal_results(restore_cpu_state):
    x = torch.tensor([1e-30], dtype=torch.float32)
    torch.set_flush_denormal(False)
    assert float(x * 1e-9) != 0.0  # 1e-39: a denormal, kept
    if not flush_denormals(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    assert float(x * 1e-9) == 0.0
    assert float(x * 1e-7) == pytest.approx(1e-37, rel=1e-5)  # normal numbers are untouched


@pytest.mark.parametrize("bundle", ["heatmap4_68", "squeeze77"])
def test_flushing_keeps_the_outputs_of_shipped_nets(bundle, restore_cpu_state):
    folder = MODELS_DIR / bundle
    net = build_net(folder / "deploy.prototxt")
    load_weights(net, folder / f"{bundle}.caffemodel", strict=True)
    rng = np.random.default_rng(0)
    x = {n: torch.from_numpy(rng.uniform(-1, 1, s).astype(np.float32))
         for n, s in ((i.name, tuple(i.shape)) for i in net.caffe_graph.inputs)}
    torch.set_flush_denormal(False)
    with torch.no_grad():
        plain = {k: v.numpy().copy() for k, v in net.run(x).items()}
    if not flush_denormals(True):
        pytest.skip("this CPU cannot flush denormals")
    with torch.no_grad():
        flushed = {k: v.numpy() for k, v in net.run(x).items()}
    for k in plain:
        scale = float(np.abs(plain[k]).max()) or 1.0
        assert float(np.abs(plain[k] - flushed[k]).max()) / scale <= 1e-6, k


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_weights_hold_no_denormal_values(path):
    """Denormal weights send x86 cores without flush-to-zero down a slow path (tools/dev/
    flush_denormal_weights.py zeroes them)."""
    count = sum(int(((b != 0) & (np.abs(b) < TINY)).sum())
                for layer in read_caffemodel(path) for b in layer.blobs)
    assert count == 0


def test_ort_options_flush_and_set_threads():
    opts = ort_session_options(3)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.set_denormal_as_zero") == "1"
    assert ort_session_options(flush=False).intra_op_num_threads == usable_cores()


def test_policy_defaults_to_the_usable_cores(restore_cpu_state):
    assert apply_cpu_policy() == usable_cores() == torch.get_num_threads()
    assert apply_cpu_policy(1, flush=False) == 1 == torch.get_num_threads()


def test_cli_threads_option(zoo, restore_cpu_state, capsys):
    net = str(zoo / "mtcnn_det1/det1.prototxt")
    assert cli_main.main(["build", net, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert cli_main.main(["build", net, "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_inference_commands_offer_keep_denormals():
    parser = cli_main.make_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in cli_main.INFERENCE_COMMANDS:
        assert any("--keep-denormals" in a.option_strings for a in sub[name]._actions), name
    assert not any("--keep-denormals" in a.option_strings for a in sub["train"]._actions)
    assert all(any("--threads" in a.option_strings for a in p._actions) for p in sub.values())


@pytest.mark.parametrize("busy, expected", [(0.0, "spin"), (0.49, "spin"), (0.5, "passive"),
                                            (3.0, "passive")])
def test_openmp_waiting_follows_the_load(busy, expected, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert choose_openmp_waiting(busy) == expected
    if expected == "spin":  # quiet: brief spinning, no PASSIVE (which would set the count to 0)
        assert os.environ["GOMP_SPINCOUNT"] == QUIET_SPINCOUNT
        assert "OMP_WAIT_POLICY" not in os.environ
    else:  # busy: sleep at once
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("var, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "7")])
def test_openmp_waiting_leaves_the_users_choice(var, value, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv(var, value)
    before = dict(os.environ)
    assert choose_openmp_waiting(0.0) == "user"
    assert dict(os.environ) == before


def test_busy_cores_sees_a_spinning_process():
    if busy_cores() is None:
        pytest.skip("no /proc/stat here")
    code = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        assert busy_cores(0.3) >= 0.6  # one core of a spinning process (+ noise)
        assert not machine_is_quiet()
    finally:
        spinner.kill()


@pytest.mark.parametrize("argv, runs", [(["bench", "m"], True), (["detect", "x"], True),
                                        (["models"], False), (["detect", "--help"], False),
                                        (["--version"], False), ([], False)])
def test_only_commands_that_run_nets_sample_the_load(argv, runs):
    from landmarknet.cli.main import _runs_nets
    assert _runs_nets(argv) is runs
