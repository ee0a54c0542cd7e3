"""What every pose backend promises: BGR frame in, :class:`~fedge.core.records.Person` out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fedge.core.records import Person

__all__ = ["LANDMARK_NAMES", "NUM_LANDMARKS", "PoseEstimator", "person_from_landmarks"]

LANDMARK_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb",
    "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
"""The 33 BlazePose landmarks, in model order."""

NUM_LANDMARKS = len(LANDMARK_NAMES)


@runtime_checkable
class PoseEstimator(Protocol):
    """Finds people and their 33 BlazePose landmarks in a frame."""

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]:
        """Return one :class:`Person` per pose found, landmarks in frame pixels."""
        ...


def person_from_landmarks(
    landmarks: np.ndarray, score: float, frame_width: int, frame_height: int
) -> Person:
    """Build a :class:`Person` whose box bounds the landmarks, clipped to the frame.

    ``landmarks`` is ``(33, 4)``: pixel x, y, z (same scale as x) and visibility.
    """
    points = np.asarray(landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 4)
    x1, y1 = np.clip(points[:, :2].min(axis=0), 0, [frame_width, frame_height])
    x2, y2 = np.clip(points[:, :2].max(axis=0), 0, [frame_width, frame_height])
    return Person(
        landmarks=points, score=float(score), box=(float(x1), float(y1), float(x2), float(y2))
    )
