"""The model artifact: TFLite bytes plus a manifest, written atomically, verified by the node.

Files (in one folder, ``NAME`` = ``person-detector``)::

    NAME-v000003.tflite   the model
    NAME-v000003.json     its manifest (below), written after the model

The manifest (JSON, ``format_version`` 1)::

    {"format": "fedge-model", "format_version": 1, "name": "person-detector",
     "version": 3,                       # the federated round that produced it
     "sha256": "<hex of the .tflite>", "size_bytes": 380000, "quantization": "int8",
     "created": "2026-01-01T12:00:00Z",  # UTC, ISO 8601
     "input": {"shape": [1, 288, 384, 3], "dtype": "int8", "color": "RGB",
               "resize": "stretch", "mean": 127.5, "std": 127.5},
     "detector": {"labels": ["person"], "score_threshold": 0.5, "num_anchors": 4644,
                  "max_detections": 50, "nms_iou_threshold": 0.5,
                  "outputs": "TFLite_Detection_PostProcess"},
     "metrics": {...},                   # optional: ExportReport.to_json()
     "calibration": {...}}               # optional: export.score_calibration (below)

``input`` says how to feed the model: the whole frame stretched to ``shape``'s height
and width, RGB, ``(pixel - mean) / std``, then quantized with the input tensor's own
scale and zero point when ``dtype`` is an integer type. ``detector`` maps one to one
onto ``clients.detector.DetectorSpec`` (``labels``, ``score_threshold``,
``input_mean``/``input_std``, ``max_detections``; ``keep_aspect_ratio`` false); its
``score_threshold`` is the node's operating threshold (boxes counted as persons).

``calibration`` (optional, ``null`` or absent in artifacts written before it existed) is
what this version's scores mean, measured on the nodes' held-out frames in the round
that produced it (:class:`export.score_calibration.ScoreCalibration`: per-bin counts,
calibrated precision, ``operating_score`` (then also ``detector.score_threshold``) and
the uncertainty band ``uncertain_low``/``uncertain_high`` the node's hard-case
selection uses). Nodes that predate it ignore the key; a manifest without it loads with
``calibration = None`` (the node's defaults).

:func:`verify_artifact` is what a node runs before installing a model: sha256, input
spec, LiteRT load and a smoke inference; any failure is a :class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.score_calibration import ScoreCalibration
from fedge.core.errors import ModelError
from fedge.core.files import atomic_write

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_FORMAT_VERSION",
    "DEFAULT_NAME",
    "DetectionSpec",
    "InputSpec",
    "ModelArtifact",
    "ModelManifest",
    "artifact_paths",
    "make_artifact",
    "read_artifact",
    "read_manifest",
    "sha256_hex",
    "verify_artifact",
    "write_artifact",
]

ARTIFACT_FORMAT = "fedge-model"
ARTIFACT_FORMAT_VERSION = 1
DEFAULT_NAME = "person-detector"
_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}


@dataclass(frozen=True)
class InputSpec:
    """How to feed the model (module docstring)."""

    shape: tuple[int, int, int, int]
    dtype: str
    color: str = "RGB"
    resize: str = "stretch"
    mean: float = 127.5
    std: float = 127.5

    @property
    def height(self) -> int:
        """Input rows."""
        return self.shape[1]

    @property
    def width(self) -> int:
        """Input columns."""
        return self.shape[2]


@dataclass(frozen=True)
class DetectionSpec:
    """What the model detects and how its outputs are read (module docstring)."""

    labels: tuple[str, ...] = ("person",)
    score_threshold: float = 0.5
    num_anchors: int = 0
    max_detections: int = 50
    nms_iou_threshold: float = 0.5
    outputs: str = "TFLite_Detection_PostProcess"


@dataclass(frozen=True)
class ModelManifest:
    """The manifest of one artifact (module docstring)."""

    name: str
    version: int
    sha256: str
    size_bytes: int
    quantization: str
    created: str
    input: InputSpec
    detector: DetectionSpec
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = ARTIFACT_FORMAT
    format_version: int = ARTIFACT_FORMAT_VERSION
    calibration: ScoreCalibration | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object."""
        data = asdict(self)
        data["input"]["shape"] = list(self.input.shape)
        data["detector"]["labels"] = list(self.detector.labels)
        data["calibration"] = None if self.calibration is None else self.calibration.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> ModelManifest:
        """Parse a manifest; :class:`ModelError` names the first bad field."""
        try:
            if data.get("format") != ARTIFACT_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {ARTIFACT_FORMAT!r}")
            if data.get("format_version") != ARTIFACT_FORMAT_VERSION:
                raise ValueError(
                    f"format_version {data.get('format_version')!r} is not "
                    f"{ARTIFACT_FORMAT_VERSION} (upgrade fedge on this node)"
                )
            raw_input, raw_detector = dict(data["input"]), dict(data["detector"])
            shape = tuple(int(v) for v in raw_input.pop("shape"))
            if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
                raise ValueError(f"input shape {list(shape)} is not [1, height, width, 3]")
            input_spec = InputSpec(shape=shape, **raw_input)  # type: ignore[arg-type]
            if input_spec.dtype not in _DTYPES:
                raise ValueError(f"input dtype {input_spec.dtype!r} is not one of {list(_DTYPES)}")
            labels = tuple(str(v) for v in raw_detector.pop("labels"))
            detector = DetectionSpec(labels=labels, **raw_detector)
            raw_calibration = data.get("calibration")
            calibration = ScoreCalibration.from_json(raw_calibration) if raw_calibration else None
            sha = str(data["sha256"]).lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"sha256 {sha!r} is not 64 hex digits")
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                sha256=sha,
                size_bytes=int(data["size_bytes"]),
                quantization=str(data["quantization"]),
                created=str(data["created"]),
                input=input_spec,
                detector=detector,
                metrics=dict(data.get("metrics") or {}),
                calibration=calibration,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise ModelError(
                f"invalid model manifest: {detail}; fetch the artifact again"
            ) from None


@dataclass(frozen=True)
class ModelArtifact:
    """A model and its manifest."""

    model: bytes
    manifest: ModelManifest


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _interpreter(model: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"LiteRT cannot load the model ({err}); it is corrupt") from None
    return interpreter


def make_artifact(
    model: bytes,
    *,
    version: int,
    quantization: str,
    detector: DetectionSpec,
    mean: float = 127.5,
    std: float = 127.5,
    name: str = DEFAULT_NAME,
    metrics: dict[str, Any] | None = None,
    created: datetime | None = None,
    calibration: ScoreCalibration | None = None,
) -> ModelArtifact:
    """Wrap ``model`` (``.tflite`` bytes) in a manifest; the input spec is read from it.

    ``created`` defaults to now (UTC). ``calibration``: the version's measured score
    meaning (module docstring), if any.
    """
    from export.tflite_export import QUANTIZATIONS

    if version < 0:
        raise ModelError(f"artifact version {version} must be 0 or more (the round)")
    if quantization not in QUANTIZATIONS:
        raise ModelError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    details = _interpreter(model).get_input_details()
    if len(details) != 1:
        raise ModelError(f"the model has {len(details)} inputs; a detector takes one image")
    shape = tuple(int(v) for v in details[0]["shape"])
    dtype = np.dtype(details[0]["dtype"]).name
    if len(shape) != 4 or dtype not in _DTYPES:
        raise ModelError(f"model input {list(shape)} {dtype} is not an NHWC image")
    when = (created or datetime.now(UTC)).astimezone(UTC)
    manifest = ModelManifest(
        name=name,
        version=version,
        sha256=sha256_hex(model),
        size_bytes=len(model),
        quantization=quantization,
        created=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        input=InputSpec(shape=shape, dtype=dtype, mean=mean, std=std),  # type: ignore[arg-type]
        detector=detector,
        metrics=dict(metrics or {}),
        calibration=calibration,
    )
    return ModelArtifact(model=model, manifest=manifest)


def artifact_paths(directory: str | os.PathLike[str], name: str, version: int) -> tuple[Path, Path]:
    """``(model path, manifest path)`` of ``name`` version ``version`` in ``directory``."""
    stem = Path(directory) / f"{name}-v{version:06d}"
    return stem.with_suffix(".tflite"), stem.with_suffix(".json")


def write_artifact(directory: str | os.PathLike[str], artifact: ModelArtifact) -> tuple[Path, Path]:
    """Write the model, then its manifest, each atomically; return their paths.

    A manifest on disk therefore always has its complete model beside it.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = artifact.manifest
    model_path, manifest_path = artifact_paths(folder, manifest.name, manifest.version)
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(model_path, artifact.model)
    atomic_write(manifest_path, text.encode("utf-8"))
    return model_path, manifest_path


def read_manifest(path: str | os.PathLike[str]) -> ModelManifest:
    """Read and parse a manifest file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read model manifest {path}: {err}") from None
    return ModelManifest.from_json(data)


def read_artifact(
    directory: str | os.PathLike[str], version: int, name: str = DEFAULT_NAME
) -> ModelArtifact:
    """Read ``name`` version ``version`` from ``directory`` (not verified)."""
    model_path, manifest_path = artifact_paths(directory, name, version)
    manifest = read_manifest(manifest_path)
    try:
        model = model_path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {model_path} does not exist") from None
    return ModelArtifact(model=model, manifest=manifest)


def _smoke_input(frame_bgr: np.ndarray | None, spec: InputSpec, details: dict[str, Any]) -> Any:
    import cv2

    if frame_bgr is None:
        frame_bgr = np.full((spec.height, spec.width, 3), 128, dtype=np.uint8)
    frame = np.asarray(frame_bgr)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ModelError(f"smoke frame {frame.shape} {frame.dtype} is not a BGR uint8 image")
    pixels = cv2.resize(frame, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
    if spec.color == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    value = (pixels.astype(np.float32)[None] - np.float32(spec.mean)) / np.float32(spec.std)
    dtype = details["dtype"]
    scale, zero_point = details["quantization"]
    if np.issubdtype(dtype, np.integer) and scale > 0:
        info = np.iinfo(dtype)
        value = np.clip(np.rint(value / scale + zero_point), info.min, info.max)
    return value.astype(dtype)


def verify_artifact(
    model: str | os.PathLike[str] | bytes,
    manifest: ModelManifest,
    *,
    frame: np.ndarray | None = None,
) -> None:
    """Check ``model`` against ``manifest`` before installing it.

    Checks, in order: the bytes' sha256 equals the manifest's; LiteRT loads them; the one
    input tensor has the manifest's shape and dtype; there are the four post-processed
    outputs; a smoke inference on ``frame`` (a local BGR frame; mid-grey if ``None``)
    runs and gives finite outputs with a detection count within ``max_detections``.

    Raises
    ------
    ModelError
        The first check that fails, in one line saying what to do.
    """
    if isinstance(model, bytes | bytearray):
        content = bytes(model)
    else:
        try:
            content = Path(model).read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file {model} does not exist") from None
    digest = sha256_hex(content)
    if digest != manifest.sha256:
        raise ModelError(
            f"model sha256 {digest[:12]}... does not match the manifest's "
            f"{manifest.sha256[:12]}... (version {manifest.version}); the copy is corrupt or "
            "not the one announced: fetch it again"
        )
    interpreter = _interpreter(content)
    inputs = interpreter.get_input_details()
    shape = tuple(int(v) for v in inputs[0]["shape"]) if len(inputs) == 1 else ()
    dtype = np.dtype(inputs[0]["dtype"]).name if len(inputs) == 1 else "?"
    if shape != tuple(manifest.input.shape) or dtype != manifest.input.dtype:
        raise ModelError(
            f"model input {list(shape)} {dtype} does not match the manifest's "
            f"{list(manifest.input.shape)} {manifest.input.dtype}; the artifact is inconsistent: "
            "re-export it"
        )
    outputs = interpreter.get_output_details()
    if len(outputs) != 4:
        raise ModelError(
            f"model has {len(outputs)} outputs, not the 4 of {manifest.detector.outputs}; "
            "re-export it"
        )
    try:
        interpreter.set_tensor(inputs[0]["index"], _smoke_input(frame, manifest.input, inputs[0]))
        interpreter.invoke()
        values = [np.asarray(interpreter.get_tensor(o["index"])) for o in outputs]
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"smoke inference failed ({err}); keep the current model") from None
    # TFLite_Detection_PostProcess: boxes [1, N, 4], classes and scores [1, N], count [1]
    # (told apart by rank: LiteRT lists them in no fixed order). Only the first ``count``
    # slots are written; the rest is whatever the arena held, so only those are checked.
    by_rank = sorted(values, key=lambda v: v.ndim)
    ranks = [v.ndim for v in by_rank]
    ok = ranks == [1, 2, 2, 3] and by_rank[0].size == 1
    count = float(by_rank[0].ravel()[0]) if ok else float("nan")
    ok = ok and np.isfinite(count) and 0 <= count <= manifest.detector.max_detections
    if ok:
        n = int(count)
        written = [v.reshape(v.shape[1], -1)[:n] for v in by_rank[1:]]
        ok = all(np.all(np.isfinite(v.astype(np.float64))) for v in written)
    if not ok:
        raise ModelError(
            "smoke inference gave non-finite outputs or an impossible detection count; "
            "keep the current model"
        )
