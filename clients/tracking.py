"""Which box of this frame is which box of the frames before: greedy IoU tracking.

The IOU tracker's rule (Bochinski, Eiselein and Sikora, AVSS 2017): each box joins the
live track of its label that it overlaps most, pairs taken greedily from the highest IoU
down, down to ``min_iou``; a box left over starts a track; a track that no box joined
for more than ``max_age`` frames ends. There is no motion model: at camera frame rates a
walking person moves a fraction of its own width from one frame to the next.

Hard-case selection uses it to ask the cloud once per uncertain object rather than once
per frame, and to know the objects the detector was already sure of
(``clients.hard_cases``: ``HardCasePolicy.track_min_iou`` and ``track_confirm``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedge.core.geometry import iou_matrix
from fedge.core.records import Detection

__all__ = ["IouTracker", "Track"]

Box = tuple[float, float, float, float]


@dataclass
class Track:
    """One tracked object: its last box, frames since a box joined it, whether a hard
    case showing it has gone to the cloud (``asked``), which detector generation was
    sure of it (``confirmed_in``: set by the hard-case selector, ``None``: none was), and
    on how many frames generation ``doubted_in`` was unsure of it (``doubted``)."""

    id: int
    label: str
    box: Box
    missed: int = 0
    asked: bool = False
    confirmed_in: int | None = None
    doubted: int = 0
    doubted_in: int | None = None


class IouTracker:
    """Greedy IoU tracks of detections, one frame at a time (module docstring)."""

    def __init__(self, min_iou: float = 0.3, max_age: int = 3) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must lie in (0, 1], got {min_iou}")
        if max_age < 0:
            raise ValueError(f"max_age must be 0 or more, got {max_age}")
        self.min_iou = min_iou
        self.max_age = max_age
        self._tracks: list[Track] = []
        self._ids = itertools.count(1)

    @property
    def tracks(self) -> list[Track]:
        """The live tracks (a copy of the list; the tracks themselves are shared)."""
        return list(self._tracks)

    def update(self, detections: Sequence[Detection]) -> list[Track]:
        """Associate one frame's ``detections``; return the track of each, in order."""
        joined: list[Track | None] = [None] * len(detections)
        taken: set[int] = set()
        for label in {d.label for d in detections}:
            mine = [i for i, d in enumerate(detections) if d.label == label]
            live = [k for k, t in enumerate(self._tracks) if t.label == label]
            if not live:
                continue
            overlap = iou_matrix(
                np.asarray([detections[i].box for i in mine], np.float64),
                np.asarray([self._tracks[k].box for k in live], np.float64),
            )
            for flat in np.argsort(-overlap, axis=None, kind="stable"):
                row, col = np.unravel_index(int(flat), overlap.shape)
                if overlap[row, col] < self.min_iou:
                    break
                if joined[mine[row]] is None and live[col] not in taken:
                    joined[mine[row]] = self._tracks[live[col]]
                    taken.add(live[col])
        for k, track in enumerate(self._tracks):
            track.missed = 0 if k in taken else track.missed + 1
        for i, detection in enumerate(detections):
            track = joined[i]
            if track is None:
                track = Track(next(self._ids), detection.label, tuple(detection.box))
                self._tracks.append(track)
                joined[i] = track
            else:
                track.box = tuple(detection.box)
        self._tracks = [t for t in self._tracks if t.missed <= self.max_age]
        return [t for t in joined if t is not None]
