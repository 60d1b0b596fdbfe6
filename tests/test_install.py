"""``pip install .`` gives a working product: the wheel carries the models, and the installed
``landmarknet detect`` finds 68 points on the sample from a folder that is not the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "astronaut.png"
#: What a source distribution of landmarknet is made of (the build needs nothing else).
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "landmarknet")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources and installed into a fresh folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy: the in-tree build/ and egg-info stay untouched
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")}
               if (REPO / name).is_dir() else {}))
    # --no-build-isolation: setuptools from this environment, so no download is needed
    _run(PIP + ["wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(tmp / "dist")], cwd=src)
    wheels = list((tmp / "dist").glob("landmarknet-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
    for rel in ("MANIFEST", "mtcnn/det1.prototxt", "mtcnn/det3.caffemodel", "mtcnn/LICENSE",
                "heatmap4_68_bn/heatmap4_68_bn.caffemodel", "heatmap4_68_bn/model.json",
                "squeeze77/README.md"):
        assert f"landmarknet/models/{rel}" in names, rel
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    site = tmp / "site"
    _run(PIP + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])])
    return site


def _installed_env(site: Path) -> dict[str, str]:
    """Only the installed copy of landmarknet importable; its dependencies from this env."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LANDMARKNET_MODELS")}
    env["PYTHONPATH"] = str(site)
    return env


def _landmarknet(site: Path) -> list[str]:
    """The installed console script (pip wrote it for this interpreter), else python -m."""
    script = site / "bin" / "landmarknet"
    return [str(script)] if script.is_file() else [sys.executable, "-m",
                                                   "landmarknet.cli.main"]


@pytest.mark.slow
def test_installed_detect_runs_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(SAMPLE, elsewhere / "photo.png")
    proc = _run(_landmarknet(installed) + ["detect", "photo.png", "--json", "-o", "out"],
                cwd=elsewhere, env=_installed_env(installed))
    objs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(objs) == 1 and objs[0]["error"] is None
    faces = objs[0]["faces"]
    assert len(faces) == 1 and len(faces[0]["landmarks"]) == 68
    assert 0.0 < faces[0]["confidence"] <= 1.0
    # the model came from the installed package, not from the checkout
    model_dir = installed / "landmarknet" / "models" / "heatmap4_68_bn"
    assert f"landmark model: heatmap4_68_bn ({model_dir})" in proc.stderr
    assert (elsewhere / "out" / "photo_overlay.png").stat().st_size > 1000


@pytest.mark.slow
def test_installed_models_lists_the_packaged_bundles(installed, tmp_path):
    proc = _run(_landmarknet(installed) + ["models", "--json", "--verify"], cwd=tmp_path,
                env=_installed_env(installed))
    out = json.loads(proc.stdout)
    assert out["models_dir"] == str(installed / "landmarknet" / "models")
    assert sorted(b["name"] for b in out["bundles"]) == ["heatmap4_5", "heatmap4_68",
                                                         "heatmap4_68_bn", "light3w_5",
                                                         "light3w_68", "light3w_77", "squeeze77"]
    assert all(b["verified"] is True for b in out["bundles"]) and out["detector"]["verified"]


@pytest.mark.slow
def test_installed_evaluate_visualize_bench_take_names(installed, data_dir, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for pts in sorted((data_dir / "ytf68" / "val").glob("*.pts"))[:4]:
        for f in (pts, pts.with_suffix(".jpg")):
            (val / f.name).symlink_to(f)
    cli, env = _landmarknet(installed), _installed_env(installed)
    out = json.loads(_run(cli + ["evaluate", "heatmap4_68", "--data", str(val), "--json"],
                          cwd=tmp_path, env=env).stdout)
    assert out["model"] == "heatmap4_68" and out["n"] == 4 and out["nme_io"] < 0.1
    _run(cli + ["visualize", "squeeze77", "-o", "net.html", "--layout", "builtin"],
         cwd=tmp_path, env=env)
    assert "fire9" in (tmp_path / "net.html").read_text()
    rows = json.loads(_run(cli + ["bench", "heatmap4_5", "--batch", "1", "--repeats", "1",
                                  "--warmup", "0", "--backends", "eager", "--json"],
                           cwd=tmp_path, env=env).stdout)
    assert rows["weights"] == str(installed / "landmarknet" / "models" / "heatmap4_5" /
                                  "heatmap4_5.caffemodel")
