"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


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
