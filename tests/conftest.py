"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A developer's FEDGE_DATA_DIR would silently switch every test that uses the default
# data-dir ("auto") to another data set (e.g. the full 60k): tests name their data.
os.environ.pop("FEDGE_DATA_DIR", None)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The pretrained edge models (BlazePose, BlazeFace), fetched once and verified.

    They go to the default cache (``$FEDGE_MODEL_DIR`` or ``~/.cache/fedge/models``);
    the mediapipe wheel they come from is downloaded from PyPI only on the first run
    and kept in ``~/.cache/fedge/wheels``.
    """
    from models.pretrained import fetch_models, resolve_model_dir

    fetch_models()
    return resolve_model_dir(None)


APP_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_federation(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A private Flower home with a 4-node simulation connection; its SuperLink is
    stopped at the end of the session."""
    from fedge.local_federation import LocalFederation

    federation = LocalFederation(tmp_path_factory.mktemp("flwr-home"), num_supernodes=4)
    try:
        yield federation
    finally:
        federation.close()
        assert federation.superlink_pids() == [], "managed SuperLink still running"
        assert federation.leftover_pids() == [], "processes of the federation still running"
