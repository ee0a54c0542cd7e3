"""Per-frame result types shared by the edge pipeline, the store and the uploader.

The JSON-lines record written by ``fedge edge --jsonl`` is ``FrameResult.to_json()``:
one object per frame with the keys ``frame``, ``time``, ``source``, ``persons``,
``detections``, ``hard``, ``hard_reasons`` and ``timings_ms`` (all coordinates in
pixels of the captured frame), plus ``model_version`` (the installed person detector
that found the boxes, e.g. ``person-detector-v3``) when ``fedge edge`` follows one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Detection", "FrameResult", "Person"]


@dataclass(frozen=True)
class Detection:
    """One detector box: ``box`` is ``[x1, y1, x2, y2]`` in pixels."""

    box: tuple[float, float, float, float]
    label: str
    score: float

    def to_json(self) -> dict[str, Any]:
        """Return the documented JSON form of this detection."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "label": self.label,
            "score": round(float(self.score), 4),
        }


@dataclass(frozen=True)
class Person:
    """One pose: ``landmarks`` is a (33, 4) array of pixel x, y, z and visibility."""

    landmarks: np.ndarray
    score: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        """Return the documented JSON form of this person."""
        return {
            "landmarks": np.round(self.landmarks.astype(float), 3).tolist(),
            "score": round(float(self.score), 4),
            "box": [round(float(v), 2) for v in self.box],
        }


@dataclass
class FrameResult:
    """Everything the edge pipeline knows about one frame."""

    frame: int
    time: float
    source: str
    persons: list[Person] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    hard: bool = False
    hard_reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    model_version: str = ""  # the person detector that found the boxes ("": none followed)

    def to_json(self) -> dict[str, Any]:
        """Return the documented JSON-lines record of this frame (``model_version`` only
        when set)."""
        record: dict[str, Any] = {
            "frame": self.frame,
            "time": self.time,
            "source": self.source,
            "persons": [p.to_json() for p in self.persons],
            "detections": [d.to_json() for d in self.detections],
            "hard": self.hard,
            "hard_reasons": list(self.hard_reasons),
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
        }
        if self.model_version:
            record["model_version"] = self.model_version
        return record
