"""Small real-data samples committed with fedge (licences in the notes beside them).

A Flower App bundle (FAB) carries only ``.py/.toml/.md/.yaml/.json`` files, so when a
ServerApp or ClientApp runs from an unpacked FAB the binary samples are not beside this
module; they are then found in the installed ``fedge`` distribution.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fedge.core.errors import DatasetNotFoundError

__all__ = ["sample_path"]

_RELATIVE = Path("data") / "samples"


def _installed_sample_dirs() -> list[Path]:
    """Sample folders of the installed ``fedge`` distribution (regular or editable)."""
    try:
        dist = metadata.distribution("fedge")
    except metadata.PackageNotFoundError:
        return []
    dirs: list[Path] = []
    for file in dist.files or []:
        if file.parts[:2] == _RELATIVE.parts:
            dirs.append(Path(str(dist.locate_file(_RELATIVE))))
            break
    direct_url = dist.read_text("direct_url.json")
    if direct_url:
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file://"):
            dirs.append(Path(url.removeprefix("file://")) / _RELATIVE)
    return dirs


def sample_path(name: str, members: Sequence[str] = ()) -> Path:
    """Return the path of the committed sample ``name`` (a file, or a folder holding
    every file in ``members``)."""
    for directory in [Path(__file__).parent, *_installed_sample_dirs()]:
        candidate = directory / name
        if candidate.exists() and all((candidate / m).is_file() for m in members):
            return candidate
    raise DatasetNotFoundError(
        f"bundled sample {name!r} not found beside {__file__} nor in the installed fedge "
        "package; reinstall fedge with `pip install .` from a full checkout"
    )
