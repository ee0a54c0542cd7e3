"""The node's model directory: verified installs, a ``current`` pointer, rollback.

Layout (``NAME`` is the artifact's name, ``person-detector``)::

    DETECTOR_DIR/NAME/
        v000003/NAME-v000003.tflite   one folder per installed version, written by
        v000003/NAME-v000003.json     ``export.artifact.write_artifact`` (model, then manifest)
        v000002/...
        current.json                  the pointer: which version the node runs
        .lock                         held while installing or rolling back

The directory (:func:`resolve_detector_dir`) is the one named, else
``$FEDGE_DETECTOR_DIR``, else ``detector/`` inside the node's frame store, else
``~/.cache/fedge/detector``.

**Install** (:func:`install_model`): the manifest is parsed, the model is checked against
it (``export.artifact.verify_artifact``: sha256, LiteRT loads it, input shape and dtype,
the four post-processed outputs, a smoke inference on a local frame), against the input
the node expects (optional) and against a local mAP floor (optional). Only then is it
written into a staging folder (each file with ``fedge.core.files.atomic_write``), the
folder is renamed to ``vNNNNNN`` and the pointer is replaced atomically. A model that
fails any check raises :class:`~fedge.core.errors.ModelError` with the reason, is logged,
and leaves every file, the pointer included, as it was.

**The pointer** (``current.json``, JSON, replaced atomically)::

    {"format": "fedge-current-model", "name": "person-detector", "version": 3,
     "sha256": "...", "dir": "v000003", "history": [1, 2, 3], "rolled_back": [],
     "updated": "2026-01-01T12:00:00Z"}

``history`` lists the versions in the order they were made current; the newest
``keep`` of them stay on disk, older folders are removed. :func:`rollback` makes the
version before the current one in ``history`` current again and remembers the one it
left in ``rolled_back``: the server sending that version again does not reinstall it
(a newer version is installed as usual). A version number names one model: the same
version with other bytes is refused.

The running agent (``clients.hot_swap``) watches the pointer and swaps the model in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import (
    DEFAULT_NAME,
    InputSpec,
    ModelArtifact,
    ModelManifest,
    artifact_paths,
    read_manifest,
    sha256_hex,
    verify_artifact,
    write_artifact,
)
from fedge.core.errors import ConfigError, ModelError
from fedge.core.files import atomic_write

__all__ = [
    "DEFAULT_DETECTOR_DIR",
    "DEFAULT_KEEP",
    "DETECTOR_DIR_ENV",
    "POINTER_FILE",
    "STORE_SUBDIR",
    "CurrentPointer",
    "InstalledVersion",
    "MapCheck",
    "current_version",
    "install_model",
    "list_versions",
    "read_pointer",
    "resolve_detector_dir",
    "rollback",
    "version_label",
]

log = logging.getLogger(__name__)

DETECTOR_DIR_ENV = "FEDGE_DETECTOR_DIR"
DEFAULT_DETECTOR_DIR = Path("~/.cache/fedge/detector")
STORE_SUBDIR = "detector"
POINTER_FILE = "current.json"
POINTER_FORMAT = "fedge-current-model"
DEFAULT_KEEP = 3
_LOCK_FILE = ".lock"
_STAGING = ".staging-"

MapCheck = Callable[[bytes, ModelManifest], float]
"""``(model bytes, manifest) -> mAP@0.5`` of the model on the node's held-out frames."""


def resolve_detector_dir(
    path: str | os.PathLike[str] | None = None, store_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the node keeps its detector versions.

    ``path`` if given, else ``$FEDGE_DETECTOR_DIR``, else ``<store_dir>/detector`` (beside
    the frames the detector runs on; the SuperNode and ``fedge edge`` share the store),
    else ``~/.cache/fedge/detector``.
    """
    chosen = path or os.environ.get(DETECTOR_DIR_ENV)
    if not chosen and store_dir:
        chosen = Path(store_dir) / STORE_SUBDIR
    return Path(chosen or DEFAULT_DETECTOR_DIR).expanduser()


def version_label(name: str, version: int) -> str:
    """The version string frames and hard cases carry: ``person-detector-v3``."""
    return f"{name}-v{version}"


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


@dataclass(frozen=True)
class CurrentPointer:
    """The parsed ``current.json`` (module docstring)."""

    name: str
    version: int
    sha256: str
    dir: str
    history: tuple[int, ...]
    rolled_back: tuple[int, ...] = ()
    updated: str = ""

    def to_json(self) -> dict[str, Any]:
        """The pointer as its JSON object."""
        return {
            "format": POINTER_FORMAT,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "dir": self.dir,
            "history": list(self.history),
            "rolled_back": list(self.rolled_back),
            "updated": self.updated,
        }


@dataclass(frozen=True)
class InstalledVersion:
    """One installed model version."""

    name: str
    version: int
    sha256: str
    size_bytes: int
    created: str
    quantization: str
    model_path: Path
    manifest_path: Path
    current: bool = False
    rolled_back: bool = False

    @property
    def label(self) -> str:
        """``person-detector-v3``: what frames and hard cases carry."""
        return version_label(self.name, self.version)


def _root(model_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(model_dir).expanduser() / name


def read_pointer(
    model_dir: str | os.PathLike[str], name: str = DEFAULT_NAME
) -> CurrentPointer | None:
    """The ``current`` pointer, or ``None`` when no version was installed yet.

    Raises
    ------
    ModelError
        The pointer file exists but cannot be parsed.
    """
    path = _root(model_dir, name) / POINTER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(
            f"cannot read the current-model pointer {path}: {err}; reinstall a model "
            "(the next round sends one) or remove the file"
        ) from None
    try:
        if data.get("format") != POINTER_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}")
        return CurrentPointer(
            name=str(data["name"]),
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            dir=str(data["dir"]),
            history=tuple(int(v) for v in data["history"]),
            rolled_back=tuple(int(v) for v in data.get("rolled_back", ())),
            updated=str(data.get("updated", "")),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ModelError(
            f"current-model pointer {path} is invalid ({err}); reinstall a model or remove it"
        ) from None


def _write_pointer(root: Path, pointer: CurrentPointer) -> None:
    text = json.dumps(pointer.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(root / POINTER_FILE, text.encode("utf-8"))
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One installer or rollback at a time (the SuperNode and ``fedge models``)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _installed(root: Path, version: int, name: str) -> ModelManifest | None:
    """The manifest of an installed version, or ``None`` when its folder is absent."""
    folder = root / _version_dir(version)
    if not folder.is_dir():
        return None
    return read_manifest(artifact_paths(folder, name, version)[1])


def _check(
    model: bytes,
    manifest: ModelManifest,
    *,
    name: str,
    smoke_frame: np.ndarray | None,
    expected_input: InputSpec | None,
    min_map: float | None,
    evaluate_map: MapCheck | None,
) -> None:
    if manifest.name != name:
        raise ModelError(f"artifact is a {manifest.name!r} model, not {name!r}; not installed")
    if len(model) != manifest.size_bytes:
        raise ModelError(
            f"model is {len(model)} bytes, the manifest says {manifest.size_bytes} "
            f"(version {manifest.version}); the copy is truncated or corrupt: fetch it again"
        )
    if expected_input is not None and (
        tuple(manifest.input.shape) != tuple(expected_input.shape)
        or manifest.input.dtype != expected_input.dtype
    ):
        raise ModelError(
            f"model input {list(manifest.input.shape)} {manifest.input.dtype} is not the "
            f"{list(expected_input.shape)} {expected_input.dtype} this node expects "
            f"(version {manifest.version}); keep the current model or change the node's spec"
        )
    verify_artifact(model, manifest, frame=smoke_frame)
    if min_map is not None:
        if evaluate_map is None:
            raise ConfigError("min_map needs evaluate_map (the node's local mAP check)")
        value = float(evaluate_map(model, manifest))
        if not value >= min_map:  # NaN fails too
            raise ModelError(
                f"local mAP@0.5 {value:.3f} of version {manifest.version} is under the "
                f"floor {min_map:.3f}; keeping the current model"
            )


def install_model(
    model_dir: str | os.PathLike[str],
    artifact_bytes: bytes,
    manifest: ModelManifest | dict[str, Any],
    *,
    smoke_frame: np.ndarray | None,
    expected_input: InputSpec | None = None,
    min_map: float | None = None,
    evaluate_map: MapCheck | None = None,
    keep: int = DEFAULT_KEEP,
    name: str = DEFAULT_NAME,
) -> InstalledVersion:
    """Verify a model artifact, install it beside the previous versions, make it current.

    Parameters
    ----------
    model_dir
        The node's detector directory (:func:`resolve_detector_dir`).
    artifact_bytes
        The ``.tflite`` bytes.
    manifest
        Its manifest (``export.artifact.ModelManifest`` or its JSON object).
    smoke_frame
        A local BGR frame for the smoke inference (mid-grey when ``None``).
    expected_input
        Refuse a model whose input shape or dtype differs from this one.
    min_map, evaluate_map
        Refuse a model whose ``evaluate_map`` (local mAP@0.5) is under ``min_map``;
        the caller sets the floor (e.g. the current model's mAP minus the allowed drop).
    keep
        Versions kept on disk (the current one and the ``keep - 1`` made current before it).
    name
        The artifact name this directory holds.

    Returns
    -------
    InstalledVersion
        The version now current (already current: returned unchanged).

    Raises
    ------
    ModelError
        Corrupt, mismatched or failing model, a version this node rolled back, or the
        same version with other bytes; nothing on disk changed.
    """
    if keep < 1:
        raise ConfigError(f"keep must be 1 or more versions, got {keep}")
    model = bytes(artifact_bytes)
    version = None
    try:
        if not isinstance(manifest, ModelManifest):
            manifest = ModelManifest.from_json(manifest)
        version = manifest.version
        root = _root(model_dir, name)
        pointer = read_pointer(model_dir, name)
        if pointer is not None and pointer.version == version and pointer.sha256 == manifest.sha256:
            current = current_version(model_dir, name)
            if current is not None and _intact(current):
                return current
        if pointer is not None and version in pointer.rolled_back:
            raise ModelError(
                f"version {version} was rolled back on this node (fedge models rollback); "
                "it is not installed again: a newer version will be"
            )
        _check(
            model,
            manifest,
            name=name,
            smoke_frame=smoke_frame,
            expected_input=expected_input,
            min_map=min_map,
            evaluate_map=evaluate_map,
        )
        with _locked(root):
            _place(root, ModelArtifact(model=model, manifest=manifest))
            pointer = read_pointer(model_dir, name)
            history = [v for v in (pointer.history if pointer else ()) if v != version]
            history.append(version)
            rolled_back = tuple(v for v in (pointer.rolled_back if pointer else ()) if v != version)
            new = CurrentPointer(
                name=name,
                version=version,
                sha256=manifest.sha256,
                dir=_version_dir(version),
                history=tuple(history),
                rolled_back=rolled_back,
                updated=_now(),
            )
            _write_pointer(root, new)
            _prune(root, new, keep)
    except ModelError as err:
        log.warning("rejected %s version %s: %s", name, "?" if version is None else version, err)
        raise
    installed = current_version(model_dir, name)
    assert installed is not None
    log.warning("installed %s version %d (sha256 %s...)", name, version, manifest.sha256[:12])
    return installed


def _intact(installed: InstalledVersion) -> bool:
    try:
        return sha256_hex(installed.model_path.read_bytes()) == installed.sha256
    except OSError:
        return False


def _place(root: Path, artifact: ModelArtifact) -> None:
    """Write ``artifact`` into ``root/vNNNNNN`` through a staging folder and a rename."""
    manifest = artifact.manifest
    final = root / _version_dir(manifest.version)
    existing = None
    if final.exists():
        with contextlib.suppress(ModelError):  # an unreadable copy is replaced below
            existing = _installed(root, manifest.version, manifest.name)
    if existing is not None and existing.sha256 != manifest.sha256:
        raise ModelError(
            f"version {manifest.version} is already installed with sha256 "
            f"{existing.sha256[:12]}..., not {manifest.sha256[:12]}...; a version names one "
            "model: export the new one under a new version"
        )
    if existing is not None:
        model_path = artifact_paths(final, manifest.name, manifest.version)[0]
        with contextlib.suppress(OSError):
            if sha256_hex(model_path.read_bytes()) == manifest.sha256:
                return  # intact copy already there (installed before a rollback)
    staging = root / f"{_STAGING}{_version_dir(manifest.version)}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    write_artifact(staging, artifact)
    _fsync_dir(staging)
    if final.exists():  # a damaged copy of the same version: replace it
        trash = root / f"{_STAGING}old-{_version_dir(manifest.version)}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staging, final)
    _fsync_dir(root)


def _prune(root: Path, pointer: CurrentPointer, keep: int) -> None:
    """Remove version folders beyond the newest ``keep`` of the history, and leftovers."""
    kept = {_version_dir(v) for v in pointer.history[-keep:]} | {pointer.dir}
    for path in root.iterdir():
        stale = path.name.startswith(_STAGING) and path.is_dir()
        old = path.is_dir() and path.name.startswith("v") and path.name not in kept
        if stale or old:
            shutil.rmtree(path, ignore_errors=True)


def current_version(
    model_dir: str | os.PathLike[str], name: str = DEFAULT_NAME
) -> InstalledVersion | None:
    """The version the pointer names, or ``None`` when none is installed."""
    current = [v for v in list_versions(model_dir, name) if v.current]
    return current[0] if current else None


def list_versions(
    model_dir: str | os.PathLike[str], name: str = DEFAULT_NAME
) -> list[InstalledVersion]:
    """Installed versions, oldest first by version number; ``current`` marks the pointer's.

    A folder whose manifest cannot be read is skipped (and logged).
    """
    root = _root(model_dir, name)
    pointer = read_pointer(model_dir, name)
    found: list[InstalledVersion] = []
    if not root.is_dir():
        return found
    for folder in sorted(root.glob("v[0-9]*")):
        try:
            version = int(folder.name[1:])
            model_path, manifest_path = artifact_paths(folder, name, version)
            manifest = read_manifest(manifest_path)
        except (ValueError, ModelError) as err:
            log.warning("skipping %s: %s", folder, err)
            continue
        found.append(
            InstalledVersion(
                name=name,
                version=version,
                sha256=manifest.sha256,
                size_bytes=manifest.size_bytes,
                created=manifest.created,
                quantization=manifest.quantization,
                model_path=model_path,
                manifest_path=manifest_path,
                current=pointer is not None and pointer.dir == folder.name,
                rolled_back=pointer is not None and version in pointer.rolled_back,
            )
        )
    return sorted(found, key=lambda v: v.version)


def rollback(model_dir: str | os.PathLike[str], name: str = DEFAULT_NAME) -> InstalledVersion:
    """Make the version current before this one (in install order) current again.

    Raises
    ------
    ModelError
        Nothing is installed, or no earlier version is left on disk.
    """
    root = _root(model_dir, name)
    with _locked(root):
        pointer = read_pointer(model_dir, name)
        if pointer is None:
            raise ModelError(f"no {name} is installed in {Path(model_dir)}: nothing to roll back")
        history = list(pointer.history)
        if pointer.version in history:
            history = history[: history.index(pointer.version)]
        previous = None
        while history:
            candidate = history.pop()
            manifest = _installed(root, candidate, name)
            if manifest is not None:
                previous = (candidate, manifest)
                break
        if previous is None:
            raise ModelError(
                f"no {name} version made current before {pointer.version} is left in "
                f"{Path(model_dir)}: nothing to roll back to"
            )
        version, manifest = previous
        new = CurrentPointer(
            name=name,
            version=version,
            sha256=manifest.sha256,
            dir=_version_dir(version),
            history=(*history, version),
            rolled_back=(
                *[v for v in pointer.rolled_back if v != pointer.version],
                pointer.version,
            ),
            updated=_now(),
        )
        _write_pointer(root, new)
    log.info("rolled %s back from version %d to %d", name, pointer.version, version)
    installed = current_version(model_dir, name)
    assert installed is not None
    return installed
