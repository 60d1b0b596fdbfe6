"""Test settings: where ../shared is, and whether its absence skips or fails."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from landmarknet.paths import SHARED_ENV, shared_dir

# CI sets LANDMARKNET_REQUIRE_SHARED=1 so that a missing ../shared fails instead of skipping.
REQUIRE_SHARED = os.environ.get("LANDMARKNET_REQUIRE_SHARED") == "1"


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"{path} is absent (set {SHARED_ENV} to the shared folder)"
    if REQUIRE_SHARED:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder; skips (or fails under CI) when it is absent."""
    return _need(shared_dir())


@pytest.fixture(scope="session")
def zoo(shared: Path) -> Path:
    """The zoo of real public Caffe nets."""
    return _need(shared / "zoo")


@pytest.fixture(scope="session")
def data_dir(shared: Path) -> Path:
    """The annotated face data sets."""
    return _need(shared / "data")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator: tests are deterministic."""
    return np.random.default_rng(1234)
