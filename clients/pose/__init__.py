"""Pose estimation: 33 BlazePose landmarks per person, on LiteRT or MediaPipe Tasks;
top-down (a person detector's boxes, then landmarks per box) on LiteRT."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from clients.pose.base import LANDMARK_NAMES, NUM_LANDMARKS, PoseEstimator, person_from_landmarks
from clients.pose.litert_backend import LiteRTPoseEstimator, PoseLandmarker
from clients.pose.top_down import TopDownPoseEstimator, roi_from_box

if TYPE_CHECKING:
    from clients.pose.tasks_backend import TasksPoseEstimator

__all__ = [
    "LANDMARK_NAMES",
    "NUM_LANDMARKS",
    "POSE_BACKENDS",
    "LiteRTPoseEstimator",
    "PoseEstimator",
    "PoseLandmarker",
    "TasksPoseEstimator",
    "TopDownPoseEstimator",
    "create_pose_estimator",
    "person_from_landmarks",
    "roi_from_box",
]

POSE_BACKENDS: dict[str, str] = {
    "litert": "clients.pose.litert_backend:LiteRTPoseEstimator",
    "tasks": "clients.pose.tasks_backend:TasksPoseEstimator",
}
"""Backend name -> ``module:class`` with ``from_cache(cache_dir, **options)``; the module is
imported only when its backend is chosen (the edge profile has no MediaPipe)."""


def __getattr__(name: str) -> Any:
    """Import ``TasksPoseEstimator`` on first use (PEP 562)."""
    if name == "TasksPoseEstimator":
        from clients.pose.tasks_backend import TasksPoseEstimator

        return TasksPoseEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_pose_estimator(
    backend: str = "litert", cache_dir: str | os.PathLike[str] | None = None, **options: Any
) -> PoseEstimator:
    """Return a pose estimator of ``backend`` built from the model cache.

    Options both backends take: ``max_poses``, ``min_detection_score``,
    ``min_presence_score``, ``track`` and ``num_threads``.
    """
    from fedge.core.errors import ConfigError

    try:
        module_name, _, class_name = POSE_BACKENDS[backend].partition(":")
    except KeyError:
        known = ", ".join(sorted(POSE_BACKENDS))
        raise ConfigError(f"unknown pose backend {backend!r} (choose one of: {known})") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    estimator: PoseEstimator = cls.from_cache(cache_dir, **options)
    return estimator
