"""Shipped models (landmarknet.models): names resolved everywhere, sha256 checked before use,
``landmarknet models`` listing metrics and licences."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from landmarknet.cli.main import main
from landmarknet.infer import LandmarkModel, ModelError, ModelSpec
from landmarknet.models import (MANIFEST, MODELS_DIR, MODELS_ENV, MTCNN_DIR, ChecksumError,
                                check_manifest, default_bundle, installed_bundles, read_manifest,
                                resolve_bundle, resolve_prototxt, verify_files)
from synthetic_bundles import regression_bundle

SHIPPED = ["heatmap4_5", "heatmap4_68", "heatmap4_68_bn", "light3w_5", "light3w_68", "light3w_77",
           "squeeze77"]


@pytest.fixture(autouse=True)
def no_user_models(monkeypatch):
    """Only the shipped models, whatever the caller's environment says."""
    monkeypatch.delenv(MODELS_ENV, raising=False)


def _copy_with_manifest(tmp_path: Path, name: str) -> Path:
    """A copy of a shipped model folder with its own MANIFEST (that folder's lines only)."""
    root = tmp_path / "models"
    shutil.copytree(MODELS_DIR / name, root / name)
    lines = [line for line in (MODELS_DIR / MANIFEST).read_text().splitlines()
             if line.split()[1].startswith(f"./{name}/")]
    (root / MANIFEST).write_text("\n".join(lines) + "\n")
    return root / name


def _flip_a_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_shipped_file_matches_the_manifest():
    entries = read_manifest(MODELS_DIR / MANIFEST)
    assert check_manifest() == []
    # every file of every model folder is listed: nothing ships unchecked
    on_disk = {f"{p.parent.name}/{p.name}" for p in MODELS_DIR.glob("*/*")
               if p.is_file() and p.parent.name != "__pycache__"}
    assert on_disk == set(entries)
    assert {p.name for p in installed_bundles()} == set(SHIPPED)


def test_names_and_folders_resolve_alike(tmp_path, monkeypatch):
    assert resolve_bundle("heatmap4_68_bn") == MODELS_DIR / "heatmap4_68_bn"
    assert resolve_bundle(MODELS_DIR / "squeeze77") == MODELS_DIR / "squeeze77"
    assert resolve_prototxt("heatmap4_5") == MODELS_DIR / "heatmap4_5" / "deploy.prototxt"
    assert resolve_prototxt(MODELS_DIR / "heatmap4_5") == \
        MODELS_DIR / "heatmap4_5" / "deploy.prototxt"
    missing = tmp_path / "nope.prototxt"
    assert resolve_prototxt(missing) == missing  # the builder says it is missing
    with pytest.raises(ModelError, match=r"heatmap4_69: no such model \(no such bundle "
                                         r"folder.*installed: heatmap4_5, heatmap4_68, "
                                         r"heatmap4_68_bn, light3w_5, light3w_68, "
                                         r"light3w_77, squeeze77"):
        resolve_bundle("heatmap4_69")
    with pytest.raises(ModelError, match="no such bundle folder"):
        resolve_bundle("sub/heatmap4_68")  # a path is never looked up as a name
    assert default_bundle() == (MODELS_DIR / "heatmap4_68_bn", "")
    # a folder in the current directory wins over an installed name
    monkeypatch.chdir(tmp_path)
    regression_bundle(tmp_path / "squeeze77")
    assert resolve_bundle("squeeze77") == Path("squeeze77")
    assert LandmarkModel.load(resolve_bundle("squeeze77")).scheme.n_points == 5


def test_a_shipped_folder_given_by_a_relative_path_is_checked(monkeypatch, capsys):
    """A relative folder, with file names joined to it or not, is the same folder (a relative
    path was once joined twice: 'models/x/models/x/model.json: not listed')."""
    monkeypatch.chdir(MODELS_DIR.parent)
    rel = Path(MODELS_DIR.name) / "light3w_5"
    assert verify_files(rel, [rel / "model.json", "deploy.prototxt"]) is True
    with pytest.raises(ChecksumError, match="not listed"):
        verify_files(rel, [rel / "README.txt"])
    assert LandmarkModel.load(rel).scheme.n_points == 5
    assert main(["bench", str(rel), "--batch", "1", "--backends", "eager", "--repeats", "1",
                 "--warmup", "0"]) == 0


def test_user_models_folder_gives_names(tmp_path, monkeypatch):
    regression_bundle(tmp_path / "user" / "fixed5")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "user"))
    assert resolve_bundle("fixed5") == tmp_path / "user" / "fixed5"
    assert [p.name for p in installed_bundles()] == ["fixed5"] + SHIPPED
    # no MANIFEST lists a user's bundle: it loads, unchecked
    spec = ModelSpec.read(resolve_bundle("fixed5"))
    assert spec.verify() is False


def test_a_changed_weight_byte_is_refused_naming_the_file(tmp_path):
    folder = _copy_with_manifest(tmp_path, "squeeze77")
    assert ModelSpec.read(folder).verify() is True
    model = folder / "squeeze77.caffemodel"
    _flip_a_byte(model, model.stat().st_size // 2)
    with pytest.raises(ChecksumError, match=rf"{model}: sha256 [0-9a-f]{{64}} differs from "
                                            rf"bc7bf271[0-9a-f]+ in {folder.parent / MANIFEST}"):
        LandmarkModel.load(folder)
    # the same folder without a MANIFEST is a user's own bundle: used as it is
    (folder.parent / MANIFEST).unlink()
    assert LandmarkModel.load(folder).name == "squeeze77"


def test_missing_and_unlisted_files_are_refused(tmp_path):
    folder = _copy_with_manifest(tmp_path, "heatmap4_5")
    spec = folder / "model.json"
    raw = json.loads(spec.read_text())
    (folder / "heatmap4_5.caffemodel").rename(folder / "other.caffemodel")
    raw["weights"] = "other.caffemodel"
    spec.write_text(json.dumps(raw))
    with pytest.raises(ChecksumError, match="heatmap4_5/model.json: sha256"):
        LandmarkModel.load(folder)
    with pytest.raises(ChecksumError, match="other.caffemodel: not listed in"):
        verify_files(folder, ["other.caffemodel"])
    with pytest.raises(ChecksumError, match="heatmap4_5.caffemodel: missing"):
        verify_files(folder, ["heatmap4_5.caffemodel"])


def test_mtcnn_files_are_checked(tmp_path):
    from landmarknet.detect.mtcnn import MTCNN

    folder = tmp_path / "models" / "mtcnn"
    shutil.copytree(MTCNN_DIR, folder)
    shutil.copy(MODELS_DIR / MANIFEST, folder.parent / MANIFEST)
    assert verify_files(folder, ["det1.prototxt", "det3.caffemodel"]) is True
    with open(folder / "det2.prototxt", "a") as f:
        f.write("# an edit that still parses\n")
    with pytest.raises(ChecksumError, match=r"mtcnn/det2.prototxt: sha256"):
        MTCNN(folder)


def test_models_command_lists_metrics_and_licences(capsys):
    assert main(["models", "--json", "--verify"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models_dir"] == str(MODELS_DIR)
    by = {b["name"]: b for b in out["bundles"]}
    assert sorted(by) == SHIPPED
    assert by["heatmap4_68_bn"]["default"] and not by["heatmap4_68"]["default"]
    assert by["heatmap4_68_bn"]["metrics"]["nme_io"] == pytest.approx(0.0439, abs=5e-5)
    assert by["squeeze77"]["points"] == 77 and by["squeeze77"]["decoding"] == "regression"
    for b in by.values():
        assert b["verified"] is True and b["problem"] == ""
        assert "non-commercial research use only" in b["licence"]
    assert out["detector"]["licence"].startswith("MIT") and out["detector"]["verified"] is True
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "heatmap4_68_bn (default)" in text and "0.0439" in text and "MIT" in text


def test_models_command_reports_a_corrupted_bundle(tmp_path, monkeypatch, capsys):
    folder = _copy_with_manifest(tmp_path, "squeeze77")
    (folder / "model.json").write_text((folder / "model.json").read_text()
                                       .replace('"n": 338', '"n": NaN'))
    monkeypatch.setenv(MODELS_ENV, str(folder.parent))
    assert main(["models", "--json", "--verify"]) == 1
    text = capsys.readouterr().out
    out = json.loads(text)  # valid JSON: the NaN became null
    first = out["bundles"][0]
    assert first["folder"] == str(folder) and first["verified"] is False
    assert "model.json: sha256" in first["problem"] and first["metrics"]["n"] is None


def test_bench_and_visualize_take_a_name(tmp_path, capsys):
    assert main(["bench", "squeeze77", "--batch", "1", "--repeats", "1", "--warmup", "0",
                 "--backends", "eager", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["net"] == "squeeze77" and out["weights"].endswith("squeeze77.caffemodel")
    html = tmp_path / "net.html"
    assert main(["visualize", "heatmap4_5", "-o", str(html), "--layout", "builtin"]) == 0
    assert "stage4_maps" in html.read_text()  # the bundle's last layer was drawn
    assert main(["bench", "nothing_here"]) == 2
    assert "nothing_here: no such model (no such bundle folder" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_takes_a_name(data_dir, tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    for pts in sorted((data_dir / "ytf68" / "val").glob("*.pts"))[:8]:
        for f in (pts, pts.with_suffix(".jpg")):
            (val / f.name).symlink_to(f)
    assert main(["evaluate", "heatmap4_68_bn", "--data", str(val), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the trained model, not random weights: 0.044 on the whole split
    assert out["model"] == "heatmap4_68_bn" and out["n"] == 8 and out["nme_io"] < 0.08
