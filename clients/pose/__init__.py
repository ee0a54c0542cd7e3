"""Pose estimation: 33 BlazePose landmarks per person, on LiteRT or MediaPipe Tasks."""

from __future__ import annotations

import os
from typing import Any

from clients.pose.base import LANDMARK_NAMES, NUM_LANDMARKS, PoseEstimator, person_from_landmarks
from clients.pose.litert_backend import LiteRTPoseEstimator
from clients.pose.tasks_backend import TasksPoseEstimator

__all__ = [
    "LANDMARK_NAMES",
    "NUM_LANDMARKS",
    "POSE_BACKENDS",
    "LiteRTPoseEstimator",
    "PoseEstimator",
    "TasksPoseEstimator",
    "create_pose_estimator",
    "person_from_landmarks",
]

POSE_BACKENDS: dict[str, Any] = {
    "litert": LiteRTPoseEstimator,
    "tasks": TasksPoseEstimator,
}
"""Backend name -> class with ``from_cache(cache_dir, **options)``."""


def create_pose_estimator(
    backend: str = "litert", cache_dir: str | os.PathLike[str] | None = None, **options: Any
) -> PoseEstimator:
    """Return a pose estimator of ``backend`` built from the model cache.

    Options both backends take: ``max_poses``, ``min_detection_score``,
    ``min_presence_score``, ``track`` and ``num_threads``.
    """
    from fedge.core.errors import ConfigError

    try:
        cls = POSE_BACKENDS[backend]
    except KeyError:
        known = ", ".join(sorted(POSE_BACKENDS))
        raise ConfigError(f"unknown pose backend {backend!r} (choose one of: {known})") from None
    estimator: PoseEstimator = cls.from_cache(cache_dir, **options)
    return estimator
