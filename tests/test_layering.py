"""Imports flow one way: the command line on top, the core at the bottom, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("fedge", "clients", "server", "strategies", "data", "models", "export")

# What each package may import from the project (besides itself). ``fedge`` here means
# the command line (everything in fedge/ but fedge.core), which may import anything.
ALLOWED: dict[str, set[str]] = {
    "fedge.core": set(),
    "strategies": {"fedge.core"},
    "data": {"fedge.core"},
    "models": {"fedge.core", "data"},
    "export": {"fedge.core", "data", "models"},
    "clients": {"fedge.core", "data", "models", "strategies", "export"},
    # the cloud runs the node's detector classes in its teacher; clients never import server
    "server": {"fedge.core", "data", "models", "strategies", "export", "clients"},
}


def _layer(module: str) -> str | None:
    if module == "fedge.core" or module.startswith("fedge.core."):
        return "fedge.core"
    top = module.split(".")[0]
    return top if top in PROJECT else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _project_files() -> list[Path]:
    return sorted(p for pkg in PROJECT for p in (ROOT / pkg).rglob("*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize("path", _project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    own = _layer(_module_name(path))
    if own == "fedge":  # the command line may use everything
        return
    assert own is not None
    bad = [
        name
        for name in _imports(path)
        if (layer := _layer(name)) is not None and layer != own and layer not in ALLOWED[own]
    ]
    assert not bad, f"{path.relative_to(ROOT)} ({own}) imports {bad}; allowed: {ALLOWED[own]}"


def test_run_config_does_not_import_flower_or_tensorflow() -> None:
    # A fresh interpreter: building a RunConfig must not pull the heavy stacks.
    code = (
        "import sys; from fedge.core.run_config import RunConfig; "
        "RunConfig.from_mapping({'strategy': 'fedyogi', 'compression-bits': 8}); "
        "heavy = [m for m in ('flwr', 'tensorflow', 'cv2', 'ray') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_client_app_loads_without_tensorflow() -> None:
    # A SuperNode starts a ClientApp process per message: a query (node info, model
    # install) must not pay TensorFlow's import (seconds); training loads it on demand.
    code = (
        "import sys; import clients.client_app, clients.model_updates; "
        "print(','.join(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
