"""The shipped models, and the one place that turns "a model" on a command line into a folder.

This package folder holds the models that travel with landmarknet, as package data (so a plain
``pip install .`` carries them, and a source checkout or ``pip install -e .`` reads the very same
files)::

    landmarknet/models/
      MANIFEST            sha256 of every file below ("HASH  ./FOLDER/FILE", sha256sum's format)
      mtcnn/              the MTCNN detector's three Caffe nets (MIT licence in LICENSE)
      heatmap4_68_bn/     landmark model bundles: deploy.prototxt, .caffemodel, model.json and
      heatmap4_68/        a model card (README.md); see landmarknet.infer for model.json
      heatmap4_5/
      squeeze77/

Wherever a command asks for a model, :func:`resolve_bundle` accepts a bundle folder (any path)
or a bundle NAME: the folders of ``$LANDMARKNET_MODELS`` (``os.pathsep``-separated, searched
first, so a user's own bundles are found by name too) and then this folder.

Before a model is used its files are checked against the MANIFEST beside its folder
(:func:`verify_files`): a changed byte is an error naming the file. A folder that no MANIFEST
lists (a user's own bundle) is used as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from landmarknet.errors import LandmarknetError

#: The folder of the shipped models (this package's folder, wherever it is installed).
MODELS_DIR = Path(__file__).resolve().parent
#: Extra folders of bundles, searched by name before the shipped ones.
MODELS_ENV = "LANDMARKNET_MODELS"
MANIFEST = "MANIFEST"
MODEL_JSON = "model.json"
CARD = "README.md"
#: The MTCNN detector's folder (det1..det3 .prototxt and .caffemodel).
MTCNN_DIR = MODELS_DIR / "mtcnn"


class ChecksumError(LandmarknetError):
    """A shipped model file whose bytes differ from its sha256 in MANIFEST (or that is gone)."""


# -- where models are --------------------------------------------------------------------------


def model_dirs() -> list[Path]:
    """Folders searched for bundles by name: ``$LANDMARKNET_MODELS``'s, then the shipped one."""
    extra = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return extra + [MODELS_DIR]


def find_bundles(root: str | os.PathLike) -> list[Path]:
    """Folders directly under ``root`` that hold a model.json, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{MODEL_JSON}"))


def installed_bundles() -> list[Path]:
    """Every bundle found by name (folders holding a model.json); a name's first folder wins."""
    seen: dict[str, Path] = {}
    for root in model_dirs():
        for folder in find_bundles(root):
            seen.setdefault(folder.name, folder)
    return list(seen.values())


def _looks_like_a_name(value: str) -> bool:
    """A bare name (no folder separator, not . or ..), which may name an installed bundle."""
    return bool(value) and value not in (".", "..") and "/" not in value and os.sep not in value


def resolve_bundle(value: str | os.PathLike) -> Path:
    """A bundle folder for ``value``: an existing folder as given, else an installed bundle NAME.

    Raises :class:`landmarknet.infer.ModelError` naming the installed bundles when it is neither.
    """
    from landmarknet.infer import ModelError

    path = Path(value).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(value)
    if _looks_like_a_name(text):
        for bundle in installed_bundles():
            if bundle.name == text:
                return bundle
    names = ", ".join(b.name for b in installed_bundles()) or "none"
    raise ModelError(f"{text}: no such model (no such bundle folder, nor an installed bundle "
                     f"of that name; installed: {names}; `landmarknet models` lists them)")


def resolve_prototxt(value: str | os.PathLike) -> Path:
    """A net file for ``value``: a file as given; a bundle folder or NAME gives its prototxt."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    is_bundle = path.is_dir() and (path / MODEL_JSON).is_file()
    named = not path.exists() and _looks_like_a_name(os.fspath(value)) and any(
        b.name == os.fspath(value) for b in installed_bundles())
    if not (is_bundle or named):
        return path  # the builder reports a missing file in its own words
    from landmarknet.infer import ModelSpec
    return ModelSpec.read(resolve_bundle(value)).prototxt


def default_bundle() -> tuple[Optional[Path], str]:
    """The bundle used when none is asked for, or None and why there is none."""
    bundles = installed_bundles()
    if not bundles:
        return None, "no landmark model bundle installed"
    flagged = [b for b in bundles if _read_json(b / MODEL_JSON).get("default")]
    if len(flagged) == 1 or len(bundles) == 1:
        return (flagged or bundles)[0], ""
    names = ", ".join(b.name for b in bundles)
    return None, (f"several landmark model bundles ({names}) and none marked \"default\": true;"
                  " choose one with --model")


def load_bundle(value: str | os.PathLike, device: str = "cpu"):
    """Resolve, check against MANIFEST and load a bundle as a LandmarkModel."""
    from landmarknet.infer import LandmarkModel
    return LandmarkModel.load(resolve_bundle(value), device=device)


# -- integrity ---------------------------------------------------------------------------------


#: sha256 already computed, by (resolved path, size, mtime): a process checks a file once.
_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks; cached while the file is unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def read_manifest(path: Path) -> dict[str, str]:
    """MANIFEST lines ``HASH  ./FOLDER/FILE`` -> {"FOLDER/FILE": HASH}."""
    entries = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")  # sha256sum marks binary mode with '*'
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise ChecksumError(f"{path}:{n}: expected 'SHA256  ./FOLDER/FILE', got {line!r}")
        entries[name[2:] if name.startswith("./") else name] = digest
    return entries


def manifest_entries(folder: Path) -> dict[str, str]:
    """The MANIFEST entries of this model folder ({file name: sha256}); {} when none lists it."""
    folder = Path(folder).resolve()
    manifest = folder.parent / MANIFEST
    if not manifest.is_file():
        return {}
    prefix = folder.name + "/"
    return {k[len(prefix):]: v for k, v in read_manifest(manifest).items()
            if k.startswith(prefix)}


def verify_files(folder: str | os.PathLike, files: Iterable[str | os.PathLike]) -> bool:
    """Check the files a loader is about to read against the MANIFEST beside ``folder``.

    True when the folder is listed and every file matched; False when no MANIFEST lists the
    folder (a user's own bundle: nothing to check). A listed folder whose file differs, is
    missing, or is not in the MANIFEST raises :class:`ChecksumError` naming the file.
    """
    folder = Path(folder)
    entries = manifest_entries(folder)
    if not entries:
        return False
    manifest = folder.resolve().parent / MANIFEST
    for f in files:
        path = Path(f)
        # Relative names are the folder's own ("model.json") unless the caller joined them
        # to the (relative) folder already: "landmarknet/models/x/model.json" from the cwd.
        if not path.is_absolute() and path.parts[:len(folder.parts)] != folder.parts:
            path = folder / path
        try:
            rel = path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            raise ChecksumError(f"{path}: outside its model folder {folder}, which {manifest} "
                                "lists; a shipped model reads only its own files") from None
        if rel not in entries:
            raise ChecksumError(f"{path}: not listed in {manifest}, which lists this model "
                                "folder; a shipped model reads only the files listed there")
        if not path.is_file():
            raise ChecksumError(f"{path}: missing (listed in {manifest}); reinstall landmarknet")
        actual = sha256_of(path)
        if actual != entries[rel]:
            raise ChecksumError(f"{path}: sha256 {actual} differs from {entries[rel]} in "
                                f"{manifest}: the file is corrupted or was changed; reinstall "
                                "landmarknet (or restore the file from git)")
    return True


def check_manifest(manifest: Path = MODELS_DIR / MANIFEST) -> list[str]:
    """Every entry of a MANIFEST checked: the problems found, one line each ([] when all match)."""
    problems = []
    for rel, digest in read_manifest(manifest).items():
        path = manifest.parent / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_of(path) != digest:
            problems.append(f"{path}: sha256 {sha256_of(path)} differs from {digest}")
    return problems


def write_manifest(root: Path = MODELS_DIR) -> Path:
    """Rewrite ``root/MANIFEST`` with the sha256 of every file of every model folder in ``root``.

    For maintainers, after a bundle is added or changed (tools/dev/install_bundle.py calls it).
    """
    lines = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            lines.append(f"{sha256_of(path)}  ./{folder.name}/{path.name}")
    manifest = root / MANIFEST
    tmp = manifest.with_name(MANIFEST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest


# -- what `landmarknet models` shows -----------------------------------------------------------


@dataclass
class BundleInfo:
    """One installed bundle as listed: name, folder, points, metrics, licence terms."""

    name: str
    folder: str
    points: Optional[int]
    decoding: str
    default: bool
    metrics: dict
    licence: str
    verified: Optional[bool] = None  # True: MANIFEST matched; False: not listed; None: unchecked
    problem: str = ""

    def to_json(self) -> dict:
        """A plain dict (JSON-ready)."""
        return {"name": self.name, "folder": self.folder, "points": self.points,
                "decoding": self.decoding, "default": self.default, "metrics": self.metrics,
                "licence": self.licence, "verified": self.verified, "problem": self.problem}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def licence_of(folder: Path, spec: Optional[dict] = None) -> str:
    """The terms of use: the model card's bold "Terms:" or "Licence:" text, else model.json's."""
    try:
        card = (folder / CARD).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        card = ""
    found = re.search(r"\*\*Terms:\s*(.+?)\*\*", card, re.S) or \
        re.search(r"Licen[cs]e:\s*(.+?)(?:;|\n\s*\n|$)", card, re.S)
    if found:
        return " ".join(found.group(1).split()).rstrip(".")
    terms = ((spec or {}).get("provenance") or {}).get("terms")
    return str(terms) if terms else f"not stated (see {folder / CARD})"


def bundle_info(folder: Path, verify: bool = False) -> BundleInfo:
    """What `landmarknet models` shows of a bundle (model.json read, not the net)."""
    spec = _read_json(folder / MODEL_JSON)
    info = BundleInfo(str(spec.get("name", folder.name)), str(folder),
                      spec.get("scheme"), str((spec.get("output") or {}).get("decoding",
                                                                             "heatmap")),
                      bool(spec.get("default")), dict(spec.get("metrics") or {}),
                      licence_of(folder, spec))
    if not spec:
        info.problem = f"{folder / MODEL_JSON} is not readable JSON"
    if verify:
        try:
            info.verified = verify_files(folder, [p.name for p in sorted(folder.iterdir())
                                                  if p.is_file()])
        except ChecksumError as exc:
            info.verified, info.problem = False, str(exc)
    return info


def detector_info(verify: bool = False) -> dict:
    """The shipped MTCNN detector as listed: folder, licence, MANIFEST check."""
    out = {"name": "mtcnn", "folder": str(MTCNN_DIR), "licence": licence_of(MTCNN_DIR),
           "verified": None, "problem": ""}
    if verify:
        try:
            out["verified"] = verify_files(MTCNN_DIR, sorted(p.name for p in MTCNN_DIR.iterdir()
                                                             if p.is_file()))
        except ChecksumError as exc:
            out["verified"], out["problem"] = False, str(exc)
    return out
