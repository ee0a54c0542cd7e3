"""The FAB `flwr run .` builds from this repository carries the apps and nothing else."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

REPO = Path(__file__).resolve().parents[1]
APP_PACKAGES = {"clients", "server", "strategies", "data", "export", "models", "fedge"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # flwr's pathspec patterns
def test_the_fab_carries_the_app_packages_and_no_benchmarks_tests_or_scripts() -> None:
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO)))
    names = [n for n in fab.namelist() if not n.startswith(".info/")]
    tops = {n.split("/", 1)[0] for n in names if "/" in n}

    assert tops <= APP_PACKAGES, sorted(tops - APP_PACKAGES)
    assert {"server/server_app.py", "clients/client_app.py", "pyproject.toml"} <= set(names)
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/", "scripts/"))]
    assert "README.md" not in names
    # every Python module of the app packages travels (a run imports any of them)
    packaged = {
        str(p.relative_to(REPO))
        for top in APP_PACKAGES
        for p in (REPO / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert packaged <= set(names), sorted(packaged - set(names))[:5]
