"""Where landmarknet finds the read-only shared folder (zoo nets, data sets)."""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that points at the shared folder; default is ``../shared`` beside the repo.
SHARED_ENV = "LANDMARKNET_SHARED"

#: The folder above the package: the checkout (site-packages when installed). The shipped
#: models are package data, found from landmarknet.models, never through this.
REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """Return the shared folder (``$LANDMARKNET_SHARED`` or ``<repo>/../shared``); may not exist."""
    value = os.environ.get(SHARED_ENV)
    return Path(value).expanduser().resolve() if value else (REPO_ROOT.parent / "shared").resolve()
