"""Pretrained edge models (BlazePose, BlazeFace) in a local, sha256-verified cache.

The three ``.tflite`` files are read out of the ``mediapipe==0.10.21`` wheel on PyPI,
which ``pip download`` fetches (it is never installed: it pins ``protobuf<5``). Their
sha256 digests are pinned in :data:`PRETRAINED_MODELS` and checked on every load, so a
missing or corrupt file raises :class:`~fedge.core.errors.ModelError` telling the user to run
``fedge models fetch``. A user may instead supply an official MediaPipe ``.task`` bundle
(a zip of ``.tflite`` files); its members are checked against the expected tensor
shapes and their digests are recorded in ``sources.json`` beside the models.

Where the cache lives: ``--cache-dir`` / ``cache_dir=``, else ``$FEDGE_MODEL_DIR``, else
``~/.cache/fedge/models``. The downloaded wheel is kept in ``~/.cache/fedge/wheels``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedge.core.errors import ModelError

__all__ = [
    "FETCH_HINT",
    "MEDIAPIPE_WHEEL",
    "MODEL_DIR_ENV",
    "PRETRAINED_MODELS",
    "ModelStatus",
    "PretrainedModel",
    "WheelSpec",
    "default_model_dir",
    "default_wheel_dir",
    "download_wheel",
    "fetch_models",
    "import_task_bundle",
    "model_path",
    "model_status",
    "read_model",
    "resolve_model_dir",
    "sha256_bytes",
]

MODEL_DIR_ENV = "FEDGE_MODEL_DIR"
FETCH_HINT = "run `fedge models fetch`"
SOURCES_FILE = "sources.json"


@dataclass(frozen=True)
class WheelSpec:
    """The PyPI wheel the models are read from."""

    requirement: str
    filename: str
    platform: str
    python_version: str
    sha256: str


MEDIAPIPE_WHEEL = WheelSpec(
    requirement="mediapipe==0.10.21",
    filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    platform="manylinux_2_28_x86_64",
    python_version="311",
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
)


@dataclass(frozen=True)
class PretrainedModel:
    """One pinned model: where it comes from, its digest and its tensor shapes."""

    name: str
    filename: str
    wheel_member: str
    task_members: tuple[str, ...]
    sha256: str
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    description: str


PRETRAINED_MODELS: dict[str, PretrainedModel] = {
    model.name: model
    for model in (
        PretrainedModel(
            name="pose_detection",
            filename="pose_detection.tflite",
            wheel_member="mediapipe/modules/pose_detection/pose_detection.tflite",
            task_members=("pose_detector.tflite",),
            sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
            input_shape=(1, 224, 224, 3),
            output_shapes=((1, 2254, 12), (1, 2254, 1)),
            description="BlazePose person detector (SSD, 224x224, 2254 anchors)",
        ),
        PretrainedModel(
            name="pose_landmark_full",
            filename="pose_landmark_full.tflite",
            wheel_member="mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
            task_members=("pose_landmarks_detector.tflite",),
            sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
            input_shape=(1, 256, 256, 3),
            output_shapes=((1, 195), (1, 1), (1, 256, 256, 1), (1, 64, 64, 39), (1, 117)),
            description="BlazePose GHUM full landmark model (33 landmarks, 256x256)",
        ),
        PretrainedModel(
            name="face_detection_short_range",
            filename="face_detection_short_range.tflite",
            wheel_member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
            task_members=("face_detector.tflite",),
            sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            input_shape=(1, 128, 128, 3),
            output_shapes=((1, 896, 16), (1, 896, 1)),
            description="BlazeFace short-range face detector (SSD, 128x128, 896 anchors)",
        ),
    )
}


@dataclass(frozen=True)
class ModelStatus:
    """What ``fedge models list`` shows for one model."""

    model: PretrainedModel
    path: Path
    state: str  # "ok", "missing" or "corrupt"
    source: str  # "mediapipe==0.10.21 wheel", "task:<file>" or ""


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def default_model_dir() -> Path:
    """Return ``$FEDGE_MODEL_DIR`` if set, else ``~/.cache/fedge/models``."""
    env = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedge" / "models"


def default_wheel_dir() -> Path:
    """Return where downloaded wheels are kept (``~/.cache/fedge/wheels``)."""
    return Path.home() / ".cache" / "fedge" / "wheels"


def resolve_model_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``cache_dir`` as a path, or the default model directory when ``None``."""
    return Path(cache_dir).expanduser() if cache_dir else default_model_dir()


def _lookup(name: str) -> PretrainedModel:
    try:
        return PRETRAINED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PRETRAINED_MODELS))
        raise ModelError(f"unknown pretrained model {name!r} (known: {known})") from None


def _read_sources(model_dir: Path) -> dict[str, dict[str, str]]:
    path = model_dir / SOURCES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sources(model_dir: Path, sources: dict[str, dict[str, str]]) -> None:
    tmp = model_dir / f".{SOURCES_FILE}.tmp"
    tmp.write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(model_dir / SOURCES_FILE)


def _accepted_digests(model: PretrainedModel, model_dir: Path) -> dict[str, str]:
    """Digest -> source label for every version of ``model`` this cache may hold."""
    accepted = {model.sha256: f"{MEDIAPIPE_WHEEL.requirement} wheel"}
    entry = _read_sources(model_dir).get(model.filename)
    if entry and entry.get("sha256"):
        accepted.setdefault(entry["sha256"], entry.get("source", "imported"))
    return accepted


def read_model(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """Return the verified bytes of pretrained model ``name``.

    Raises
    ------
    ModelError
        If the file is missing or its sha256 is not the pinned (or recorded) one.
    """
    model = _lookup(name)
    model_dir = resolve_model_dir(cache_dir)
    path = model_dir / model.filename
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"model {model.filename} is missing from {model_dir}; {FETCH_HINT}"
        ) from None
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror}; {FETCH_HINT}") from None
    if sha256_bytes(data) not in _accepted_digests(model, model_dir):
        raise ModelError(
            f"model {path} is corrupt (sha256 does not match the manifest); {FETCH_HINT} --force"
        )
    return data


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of pretrained model ``name`` after verifying its sha256."""
    read_model(name, cache_dir)
    return resolve_model_dir(cache_dir) / _lookup(name).filename


def model_status(cache_dir: str | os.PathLike[str] | None = None) -> list[ModelStatus]:
    """Return the state of every pinned model in the cache (for ``fedge models list``)."""
    model_dir = resolve_model_dir(cache_dir)
    statuses = []
    for model in PRETRAINED_MODELS.values():
        path = model_dir / model.filename
        if not path.is_file():
            statuses.append(ModelStatus(model, path, "missing", ""))
            continue
        source = _accepted_digests(model, model_dir).get(sha256_bytes(path.read_bytes()))
        statuses.append(ModelStatus(model, path, "ok" if source else "corrupt", source or ""))
    return statuses


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(wheel_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cached mediapipe wheel, downloading it with ``pip download`` if needed.

    Raises
    ------
    ModelError
        If pip is unavailable, the download fails, or the wheel's sha256 is wrong.
    """
    target_dir = Path(wheel_dir).expanduser() if wheel_dir else default_wheel_dir()
    wheel = target_dir / MEDIAPIPE_WHEEL.filename
    if wheel.is_file() and _sha256_file(wheel) == MEDIAPIPE_WHEEL.sha256:
        return wheel
    target_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--only-binary=:all:", "--implementation", "cp",
        "--python-version", MEDIAPIPE_WHEEL.python_version,
        "--platform", MEDIAPIPE_WHEEL.platform,
        "--dest", str(target_dir), MEDIAPIPE_WHEEL.requirement,
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise ModelError(f"cannot run pip to download the models: {err}") from None
    if result.returncode != 0 or not wheel.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(
            f"`pip download {MEDIAPIPE_WHEEL.requirement}` failed ({last}); check the network "
            "to PyPI, or pass a downloaded wheel with --wheel FILE or a bundle with --from-task"
        )
    if _sha256_file(wheel) != MEDIAPIPE_WHEEL.sha256:
        wheel.unlink()
        raise ModelError(f"downloaded {MEDIAPIPE_WHEEL.filename} has an unexpected sha256")
    return wheel


def _extract_from_wheel(wheel: Path, models: Iterable[PretrainedModel], model_dir: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelError(f"{wheel} is not a readable wheel: {err}") from None
    with archive:
        for model in models:
            try:
                data = archive.read(model.wheel_member)
            except KeyError:
                raise ModelError(f"{wheel.name} has no {model.wheel_member}") from None
            if sha256_bytes(data) != model.sha256:
                raise ModelError(f"{model.wheel_member} in {wheel.name} has an unexpected sha256")
            _write_atomic(model_dir / model.filename, data)


def fetch_models(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    names: Iterable[str] | None = None,
    wheel: str | os.PathLike[str] | None = None,
    wheel_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> list[Path]:
    """Make sure the pinned models are in the cache; return their paths.

    Models already present with a valid digest are kept unless ``force``. Missing ones
    are extracted from ``wheel`` or from the mediapipe wheel, downloaded if not cached.
    """
    model_dir = resolve_model_dir(cache_dir)
    wanted = [_lookup(n) for n in names] if names is not None else list(PRETRAINED_MODELS.values())
    states = {s.model.name: s.state for s in model_status(model_dir)}
    todo = [m for m in wanted if force or states[m.name] != "ok"]
    if todo:
        wheel_path = Path(wheel).expanduser() if wheel else download_wheel(wheel_dir)
        _extract_from_wheel(wheel_path, todo, model_dir)
        sources = _read_sources(model_dir)
        replaced = [sources.pop(m.filename) for m in todo if m.filename in sources]
        if replaced:  # the wheel's copies replace imported ones
            _write_sources(model_dir, sources)
    return [model_dir / m.filename for m in wanted]


def _check_shapes(model: PretrainedModel, data: bytes, origin: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=data)
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"{origin} is not a valid TFLite model: {err}") from None
    inputs = [tuple(int(v) for v in d["shape"]) for d in interpreter.get_input_details()]
    outputs = sorted(tuple(int(v) for v in d["shape"]) for d in interpreter.get_output_details())
    if inputs != [model.input_shape] or outputs != sorted(model.output_shapes):
        raise ModelError(
            f"{origin} does not look like {model.filename}: inputs {inputs}, outputs {outputs}"
        )


def import_task_bundle(
    task_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Copy the known models out of an official MediaPipe ``.task`` bundle into the cache.

    Each member is checked against the expected tensor shapes; its sha256 is recorded in
    ``sources.json`` so later loads still detect corruption. Returns the written paths.
    """
    task_path = Path(task_file).expanduser()
    model_dir = resolve_model_dir(cache_dir)
    try:
        archive = zipfile.ZipFile(task_path)
    except FileNotFoundError:
        raise ModelError(f"task bundle {task_path} does not exist") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelError(
            f"{task_path} is not a .task bundle (a zip of .tflite files): {err}"
        ) from None
    written: list[Path] = []
    sources = _read_sources(model_dir)
    with archive:
        members = {Path(n).name: n for n in archive.namelist()}
        for model in PRETRAINED_MODELS.values():
            member = next((members[m] for m in model.task_members if m in members), None)
            if member is None:
                continue
            data = archive.read(member)
            _check_shapes(model, data, f"{task_path.name}:{member}")
            _write_atomic(model_dir / model.filename, data)
            sources[model.filename] = {
                "sha256": sha256_bytes(data),
                "source": f"task:{task_path.name}",
            }
            written.append(model_dir / model.filename)
    if not written:
        expected = sorted(m for model in PRETRAINED_MODELS.values() for m in model.task_members)
        raise ModelError(f"{task_path.name} holds none of {', '.join(expected)}")
    _write_sources(model_dir, sources)
    return written
