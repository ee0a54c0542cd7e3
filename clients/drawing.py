"""Drawing helpers for annotated edge video: skeletons, boxes and a status line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.core.records import Detection, Person

__all__ = [
    "POSE_CONNECTIONS",
    "draw_detections",
    "draw_persons",
    "draw_status",
    "annotate",
]

# The 33-landmark BlazePose topology (same pairs as MediaPipe's POSE_CONNECTIONS).
POSE_CONNECTIONS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
    (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32),
)  # fmt: skip

_BOX_COLOURS: dict[str, tuple[int, int, int]] = {"person": (255, 160, 0), "face": (0, 200, 255)}
_BONE = (80, 255, 80)
_JOINT = (40, 40, 255)
_HARD = (0, 0, 255)


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> None:
    """Draw each box with its label and score, in place."""
    import cv2

    for det in detections:
        colour = _BOX_COLOURS.get(det.label, (255, 255, 255))
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(
            image,
            f"{det.label} {det.score:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            colour,
            1,
            cv2.LINE_AA,
        )


def draw_persons(image: np.ndarray, persons: Sequence[Person], min_visibility: float = 0.5) -> None:
    """Draw each person's skeleton (landmarks visible above ``min_visibility``), in place."""
    import cv2

    for person in persons:
        points = person.landmarks
        visible = points[:, 3] >= min_visibility if points.shape[1] > 3 else np.ones(len(points))
        xy = [(int(round(p[0])), int(round(p[1]))) for p in points]
        for a, b in POSE_CONNECTIONS:
            if a < len(xy) and b < len(xy) and visible[a] and visible[b]:
                cv2.line(image, xy[a], xy[b], _BONE, 2, cv2.LINE_AA)
        for point, seen in zip(xy, visible, strict=True):
            if seen:
                cv2.circle(image, point, 3, _JOINT, -1, cv2.LINE_AA)


def draw_status(image: np.ndarray, fps: float, hard: bool, reasons: Sequence[str]) -> None:
    """Write FPS (and the hard-case reasons, in red) in the top-left corner, in place."""
    import cv2

    cv2.putText(
        image, f"{fps:5.1f} FPS", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2
    )
    if reasons:
        colour = _HARD if hard else (160, 160, 160)
        cv2.putText(image, ", ".join(reasons), (8, 44), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)


def annotate(
    image: np.ndarray,
    persons: Sequence[Person],
    detections: Sequence[Detection],
    *,
    fps: float,
    hard: bool,
    reasons: Sequence[str],
) -> np.ndarray:
    """Return a copy of ``image`` with skeletons, boxes and the status line drawn on it."""
    canvas = image.copy()
    draw_persons(canvas, persons)
    draw_detections(canvas, detections)
    draw_status(canvas, fps, hard, reasons)
    return canvas
