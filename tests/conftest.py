"""Shared fixtures."""

from __future__ import annotations

import fcntl
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
    and kept in ``~/.cache/fedge/wheels``. A lock file beside the cache makes parallel
    test workers (``scripts/test.sh`` runs two) fetch one after another.
    """
    from models.pretrained import fetch_models, resolve_model_dir

    model_dir = resolve_model_dir(None)
    model_dir.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's workers each run this once: the first fetches, the others wait
    with (model_dir.parent / f".{model_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fetch_models()
    return model_dir


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files that hold slow tests first, each file's tests in their own order.

    ``scripts/test.sh`` hands whole files to two workers, mostly in this order, so the
    long files tend to start early and the quick ones fill the gaps beside them (xdist's
    scheduling does not promise the order).
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: False (slow) first
