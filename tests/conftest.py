"""Test settings: where ../shared and the reference Caffe are, and whether their absence skips
or fails."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from landmarknet.paths import SHARED_ENV, shared_dir
from reference.real_caffe import REQUIRE_ENV, CaffeUnavailable, caffe_ref_python

# CI sets LANDMARKNET_REQUIRE_SHARED=1 so that a missing ../shared fails instead of skipping.
REQUIRE_SHARED = os.environ.get("LANDMARKNET_REQUIRE_SHARED") == "1"
# CI sets LANDMARKNET_REQUIRE_CAFFE_REF=1 so that a missing reference Caffe fails instead of
# skipping the tests marked caffe_ref.
REQUIRE_CAFFE_REF = os.environ.get(REQUIRE_ENV) == "1"


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"{path} is absent (set {SHARED_ENV} to the shared folder)"
    if REQUIRE_SHARED:
        pytest.fail(msg)
    pytest.skip(msg)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked caffe_ref need the reference Caffe (`make caffe-ref`)."""
    if item.get_closest_marker("caffe_ref") is None:
        return
    try:
        caffe_ref_python()
    except CaffeUnavailable as exc:
        if REQUIRE_CAFFE_REF:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


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
