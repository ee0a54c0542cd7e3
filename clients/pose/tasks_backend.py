"""BlazePose through the MediaPipe Tasks runtime (``mediapipe.tasks``' PoseLandmarker).

The same two models as the LiteRT backend, packed into a ``.task`` bundle by
:func:`~clients.pose.task_bundle.build_pose_task_bundle`. Needs the ``mediapipe``
package (not needed on a Pi, which uses :class:`LiteRTPoseEstimator`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from clients.pose.base import NUM_LANDMARKS, person_from_landmarks
from fedge.core.errors import ConfigError, ModelError
from fedge.core.records import Person

__all__ = ["TasksPoseEstimator"]


class TasksPoseEstimator:
    """MediaPipe's ``PoseLandmarker`` on the same models as the LiteRT backend.

    Without ``track`` it runs in IMAGE mode (every frame detected afresh); with it, in
    VIDEO mode (ROIs tracked between frames and landmarks smoothed over time, with
    wall-clock timestamps). ``num_threads`` is accepted for a common signature and
    ignored: the Tasks runtime sizes its own thread pool. ``Person.score`` is the mean
    landmark presence: the Tasks API does not expose the pose-presence score.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | bytes,
        *,
        max_poses: int = 5,
        min_detection_score: float = 0.5,
        min_presence_score: float = 0.5,
        track: bool = False,
        num_threads: int | None = None,
    ) -> None:
        _require_mediapipe()
        from mediapipe.tasks.python import BaseOptions, vision

        del num_threads  # see the class docstring
        self.track = track
        self._last_timestamp_ms = -1

        if isinstance(bundle, bytes):
            base = BaseOptions(model_asset_buffer=bundle)
        else:
            base = BaseOptions(model_asset_path=str(Path(bundle)))
        options = vision.PoseLandmarkerOptions(
            base_options=base,
            running_mode=vision.RunningMode.VIDEO if track else vision.RunningMode.IMAGE,
            num_poses=max_poses,
            min_pose_detection_confidence=min_detection_score,
            min_pose_presence_confidence=min_presence_score,
        )
        try:
            self._landmarker: Any = vision.PoseLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as err:
            raise ModelError(f"MediaPipe Tasks rejected the pose bundle: {err}") from None

    @classmethod
    def from_cache(
        cls, cache_dir: str | os.PathLike[str] | None = None, **options: Any
    ) -> TasksPoseEstimator:
        """Build the bundle from the verified model cache (``fedge models fetch``)."""
        from clients.pose.task_bundle import build_pose_task_bundle
        from models.pretrained import read_model

        _require_mediapipe()
        bundle = build_pose_task_bundle(
            read_model("pose_detection", cache_dir), read_model("pose_landmark_full", cache_dir)
        )
        return cls(bundle, **options)

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]:
        """Return the people in ``frame_bgr`` with 33 landmarks each, in pixels."""
        import mediapipe as mp

        height, width = frame_bgr.shape[:2]
        rgb = np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
        if self.track:
            now_ms = max(int(time.monotonic() * 1000), self._last_timestamp_ms + 1)
            self._last_timestamp_ms = now_ms
            result = self._landmarker.detect_for_video(image, now_ms)
        else:
            result = self._landmarker.detect(image)
        persons = []
        for pose in result.pose_landmarks:
            points = np.array(
                [[lm.x * width, lm.y * height, lm.z * width, lm.visibility or 0.0] for lm in pose],
                dtype=np.float32,
            )
            score = float(np.mean([lm.presence or 0.0 for lm in pose]))
            persons.append(person_from_landmarks(points[:NUM_LANDMARKS], score, width, height))
        return persons

    def close(self) -> None:
        """Release the MediaPipe graph."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> TasksPoseEstimator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _require_mediapipe() -> None:
    """Raise a one-line ``ConfigError`` when MediaPipe is not installed (edge profile)."""
    try:
        import mediapipe.tasks.python  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "the 'tasks' pose backend needs MediaPipe: pip install \"fedge[tasks]\" "
            "(or use --pose-backend litert)"
        ) from err
