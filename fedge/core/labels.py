"""The one label schema of the frame store: what the cloud (or anyone) says a frame shows.

A :class:`FrameLabel` is typed and versioned. Its JSON form (``to_json``) is what the
store keeps in a frame's ``label`` column::

    {"schema_version": 2, "source": "cloud", "fusion_method": "mean",
     "teacher_version": "hog+blazepose-tiles/1", "frame_width": 640, "frame_height": 480,
     "boxes": [{"box": [x1, y1, x2, y2], "label": "person", "score": 0.85,
                "edge_score": 0.8, "cloud_score": 0.9}],
     "teacher_detections": [{"box": [...], "label": "person", "score": 0.9}],
     "coverage": [[x1, y1, x2, y2], ...]}

Boxes are ``[x1, y1, x2, y2]`` in pixels of the frame as the node stored it; ``score`` is
the fused confidence; ``edge_score`` / ``cloud_score`` are each source's own confidence,
``null`` when that source had no matching box.

``coverage`` says what of the frame the labeller looked at, so that only there may the
absence of a box mean "nobody here": ``null`` the whole frame (``--privacy frames``), a
list of rectangles the crops it saw (``crops``), an empty list no pixel at all
(``landmarks``: the boxes come from the node's own poses). The node fills it from the
hard case it sent (``clients.privacy_filter.case_coverage``); the cloud's answer does not
carry it.

Versions: schema 1 had no ``coverage`` (read as ``null``, the whole frame, which is what
labels of ``frames`` cases meant; a schema-1 label of a ``crops`` case over-claims, as it
always did). Schema 2 adds ``coverage``; labels are written as schema 2. ``from_json``
validates every field and refuses a label of a schema version it does not know
(:class:`LabelError`), so a newer writer's labels are never misread. The cloud's
``CloudResult`` has its own version (:data:`RESULT_SCHEMA_VERSIONS`): the boxes it carries
are the same in both label schemas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedge.core.errors import FedgeError
from fedge.core.records import Detection

if TYPE_CHECKING:
    from fedge.core.proto import cloud_pb2

__all__ = [
    "LABEL_SCHEMA_VERSION",
    "RESULT_SCHEMA_VERSIONS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "FrameLabel",
    "LabelBox",
    "LabelError",
]

LABEL_SCHEMA_VERSION = 2
"""The schema labels are written in (2: with ``coverage``)."""
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
"""Label schemas this fedge reads (1: before ``coverage``, read as the whole frame)."""
RESULT_SCHEMA_VERSIONS = frozenset({1})
"""``CloudResult.schema_version`` values this fedge reads (``server.cloud.inference``)."""
_COVERAGE_SINCE = 2

Box = tuple[float, float, float, float]


class LabelError(FedgeError, ValueError):
    """A label is malformed or of a schema version this fedge does not know."""


@dataclass(frozen=True)
class LabelBox:
    """One labelled box: fused ``score`` plus each source's own score (``None``: absent)."""

    box: Box
    label: str
    score: float
    edge_score: float | None = None
    cloud_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form of this box."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "label": self.label,
            "score": round(float(self.score), 4),
            "edge_score": None if self.edge_score is None else round(float(self.edge_score), 4),
            "cloud_score": None if self.cloud_score is None else round(float(self.cloud_score), 4),
        }


@dataclass(frozen=True)
class FrameLabel:
    """A typed, versioned label of one stored frame (see the module docstring)."""

    boxes: tuple[LabelBox, ...]
    source: str
    fusion_method: str
    teacher_version: str
    frame_width: int
    frame_height: int
    teacher_detections: tuple[Detection, ...] = field(default=())
    coverage: tuple[Box, ...] | None = None
    """What the labeller looked at: ``None`` the whole frame, else these rectangles
    (empty: no pixel); see the module docstring."""
    schema_version: int = LABEL_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check(
            self.schema_version in SUPPORTED_SCHEMA_VERSIONS,
            f"label schema version {self.schema_version!r} is not supported",
        )
        _check(
            self.coverage is None or self.schema_version >= _COVERAGE_SINCE,
            f"label coverage needs schema version {_COVERAGE_SINCE} or later",
        )
        _check(isinstance(self.source, str) and bool(self.source), "label source must be non-empty")
        _check(
            _is_int(self.frame_width) and self.frame_width > 0,
            "label frame_width must be positive",
        )
        _check(
            _is_int(self.frame_height) and self.frame_height > 0,
            "label frame_height must be positive",
        )
        for item in self.boxes:
            self._check_box(item.box, item.label, item.score)
            for name, value in (("edge_score", item.edge_score), ("cloud_score", item.cloud_score)):
                _check(value is None or _is_probability(value), f"label {name} must be 0..1")
        for det in self.teacher_detections:
            self._check_box(det.box, det.label, det.score)
        _check(
            self.coverage is None or isinstance(self.coverage, tuple),
            "label coverage must be None or a tuple of boxes",
        )
        for region in self.coverage or ():
            self._check_region(region, "label coverage")

    @property
    def whole_frame(self) -> bool:
        """Whether the labeller looked at the whole frame (``coverage`` is ``None``)."""
        return self.coverage is None

    def _check_box(self, box: Sequence[float], label: str, score: float) -> None:
        self._check_region(box, "label box")
        _check(isinstance(label, str) and bool(label), "label box needs a non-empty label")
        _check(_is_probability(score), f"label score must be 0..1, got {score!r}")

    def _check_region(self, box: Sequence[float], what: str) -> None:
        _check(
            len(box) == 4 and all(_is_number(v) for v in box),
            f"{what} must be 4 finite numbers, got {box!r}",
        )
        x1, y1, x2, y2 = box
        _check(x1 <= x2 and y1 <= y2, f"{what} {list(box)} has x1 > x2 or y1 > y2")
        slack = 1.0  # rounding to 0.01 px and clipping differences
        _check(
            x1 >= -slack
            and y1 >= -slack
            and x2 <= self.frame_width + slack
            and y2 <= self.frame_height + slack,
            f"{what} {list(box)} lies outside the {self.frame_width}x{self.frame_height} frame",
        )

    # -- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form the store keeps (see the module docstring); a schema-1
        label keeps its schema-1 form (no ``coverage`` key)."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "source": self.source,
            "fusion_method": self.fusion_method,
            "teacher_version": self.teacher_version,
            "frame_width": self.frame_width,
            "frame_height": self.frame_height,
            "boxes": [b.to_json() for b in self.boxes],
            "teacher_detections": [d.to_json() for d in self.teacher_detections],
        }
        if self.schema_version >= _COVERAGE_SINCE:
            data["coverage"] = (
                None
                if self.coverage is None
                else [[round(float(v), 2) for v in region] for region in self.coverage]
            )
        return data

    @classmethod
    def from_json(cls, data: Any) -> FrameLabel:
        """Parse and validate a label's JSON form; ``LabelError`` when it is not one."""
        _check(isinstance(data, Mapping), f"a label must be a JSON object, got {type(data)}")
        version = data.get("schema_version")
        if version is None:
            raise LabelError(
                "untyped label (no schema_version): written before fedge's label schema "
                f"{LABEL_SCHEMA_VERSION}; relabel the frame"
            )
        if not _is_int(version) or version not in SUPPORTED_SCHEMA_VERSIONS:
            raise LabelError(
                f"label schema version {version!r} is unknown to this fedge "
                f"(knows {sorted(SUPPORTED_SCHEMA_VERSIONS)}); upgrade fedge to read it"
            )
        try:
            boxes = tuple(
                LabelBox(
                    box=_box(b["box"]),
                    label=b["label"],
                    score=b["score"],
                    edge_score=b.get("edge_score"),
                    cloud_score=b.get("cloud_score"),
                )
                for b in data["boxes"]
            )
            teacher = tuple(
                Detection(box=_box(d["box"]), label=d["label"], score=d["score"])
                for d in data.get("teacher_detections", ())
            )
            coverage = _coverage(data, version)
            return cls(
                boxes=boxes,
                source=data["source"],
                fusion_method=_text(data["fusion_method"], "fusion_method"),
                teacher_version=_text(data["teacher_version"], "teacher_version"),
                frame_width=data["frame_width"],
                frame_height=data["frame_height"],
                teacher_detections=teacher,
                coverage=coverage,
                schema_version=version,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise LabelError(f"malformed label: missing or mistyped field {err}") from err

    @classmethod
    def from_cloud_result(
        cls,
        result: cloud_pb2.CloudResult,
        *,
        frame_width: int,
        frame_height: int,
        source: str = "cloud",
        coverage: Sequence[Sequence[float]] | None = None,
    ) -> FrameLabel:
        """Build the label of a ``fedge.cloud.v1.CloudResult`` for a frame of that size.

        ``coverage`` is what the cloud was shown (``None``: the whole frame; see the
        module docstring); the result itself does not say. Boxes a little outside the
        frame (rounding) are clipped to it; ``LabelError`` when the result's schema
        version is unknown or a box is malformed. The label is of schema
        :data:`LABEL_SCHEMA_VERSION`.
        """
        if result.schema_version not in RESULT_SCHEMA_VERSIONS:
            raise LabelError(
                f"cloud result schema version {result.schema_version} is unknown to this "
                f"fedge (knows {sorted(RESULT_SCHEMA_VERSIONS)}); upgrade fedge"
            )

        def clip(box: Any) -> Box:
            return (
                min(max(float(box.x1), 0.0), float(frame_width)),
                min(max(float(box.y1), 0.0), float(frame_height)),
                min(max(float(box.x2), 0.0), float(frame_width)),
                min(max(float(box.y2), 0.0), float(frame_height)),
            )

        boxes = tuple(
            LabelBox(
                box=clip(b.box),
                label=b.label,
                score=_unit(b.score),
                edge_score=_unit(b.edge_score) if b.has_edge else None,
                cloud_score=_unit(b.cloud_score) if b.has_cloud else None,
            )
            for b in result.boxes
        )
        teacher = tuple(
            Detection(box=clip(d.box), label=d.label, score=_unit(d.score))
            for d in result.teacher_detections
        )
        return cls(
            boxes=boxes,
            source=source,
            fusion_method=result.fusion_method,
            teacher_version=result.teacher_version,
            frame_width=frame_width,
            frame_height=frame_height,
            teacher_detections=teacher,
            coverage=_regions(coverage),
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise LabelError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_probability(value: Any) -> bool:
    return _is_number(value) and 0.0 <= value <= 1.0


def _unit(value: float) -> float:
    """A float32 score read back from protobuf, rounded so 1.0000001 stays a probability."""
    return round(float(value), 6)


def _box(value: Any) -> Box:
    _check(
        isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value),
        f"label box must be 4 finite numbers, got {value!r}",
    )
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _regions(coverage: Sequence[Sequence[float]] | None) -> tuple[Box, ...] | None:
    if coverage is None:
        return None
    return tuple(_box([float(v) for v in region]) for region in coverage)


def _coverage(data: Mapping[str, Any], version: int) -> tuple[Box, ...] | None:
    """The ``coverage`` of a label's JSON form (``None`` before schema 2)."""
    if version < _COVERAGE_SINCE:
        _check("coverage" not in data, f"schema-{version} label cannot carry coverage")
        return None
    value = data["coverage"]
    if value is None:
        return None
    _check(isinstance(value, list), f"label coverage must be null or a list, got {value!r}")
    return tuple(_box(region) for region in value)


def _text(value: Any, name: str) -> str:
    _check(isinstance(value, str), f"label {name} must be a string")
    return str(value)
