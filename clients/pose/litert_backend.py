"""BlazePose on LiteRT with NumPy and OpenCV only (what a Raspberry Pi runs).

Per frame: the SSD person detector (224x224, letterboxed) gives boxes with 4 keypoints;
keypoints 0 and 1 give a rotated square ROI; the ROI is warped to 256x256 for the
landmark model, whose 39 landmarks are refined with the heatmap and projected back.
With ``track=True`` the next frame's ROIs come from the auxiliary landmarks instead of
the detector, which then only runs every ``redetect_every`` frames or when a pose is lost.
"""

from __future__ import annotations

import os
from dataclasses import replace

import cv2
import numpy as np

from clients.detector import BLAZEPOSE_DETECTOR, Detector
from clients.inference.image_tensor import RotatedRect, crop_to_tensor, normalize_pixels
from clients.inference.litert_model import LiteRTModel
from clients.pose.base import NUM_LANDMARKS, person_from_landmarks
from clients.pose.landmarks import (
    NUM_MODEL_LANDMARKS,
    decode_landmarks,
    project_landmarks,
    refine_with_heatmap,
    roi_from_keypoints,
)
from fedge.core.errors import ModelError
from fedge.core.geometry import iou
from fedge.core.records import Person

__all__ = ["LiteRTPoseEstimator", "PoseLandmarker"]

_TRACK_DUPLICATE_IOU = 0.6


class PoseLandmarker:
    """The BlazePose landmark model alone: a rotated ROI of a frame in, 39 landmarks out.

    Parameters
    ----------
    landmark_model
        ``pose_landmark_*.tflite`` as a path or bytes.
    num_threads
        LiteRT interpreter threads.
    """

    def __init__(
        self, landmark_model: str | os.PathLike[str] | bytes, *, num_threads: int | None = None
    ) -> None:
        self.model = LiteRTModel(landmark_model, num_threads=num_threads)
        self._outputs = _landmark_output_order(self.model)
        self.input_size = self.model.inputs[0].shape[1]

    @classmethod
    def from_cache(
        cls, cache_dir: str | os.PathLike[str] | None = None, *, num_threads: int | None = None
    ) -> PoseLandmarker:
        """Build from the verified model cache (``fedge models fetch``)."""
        from models.pretrained import read_model

        return cls(read_model("pose_landmark_full", cache_dir), num_threads=num_threads)

    def landmarks_in_roi(self, frame_bgr: np.ndarray, roi: RotatedRect) -> tuple[np.ndarray, float]:
        """Return ``(39, 4)`` pixel landmarks (33 body + 6 auxiliary) and pose presence."""
        crop = crop_to_tensor(frame_bgr, roi, self.input_size, self.input_size, "replicate")
        pixels = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        outputs = self.model.run(normalize_pixels(pixels, 0.0, 255.0))
        raw, presence, heatmap = (outputs[i] for i in self._outputs)
        landmarks = refine_with_heatmap(decode_landmarks(raw, self.input_size), heatmap)
        return project_landmarks(landmarks, roi), float(presence.reshape(-1)[0])


class LiteRTPoseEstimator:
    """BlazePose (detector + full landmark model) run directly with ``ai_edge_litert``.

    Parameters
    ----------
    detector_model, landmark_model
        ``pose_detection.tflite`` and ``pose_landmark_*.tflite`` as paths or bytes.
    max_poses
        Most people returned per frame.
    min_detection_score
        Detector score threshold.
    min_presence_score
        Landmark-model pose-presence threshold (also ends a track).
    track, redetect_every
        Reuse last frame's landmarks as ROIs; rerun the detector every N frames.
    num_threads
        LiteRT interpreter threads per model.
    """

    def __init__(
        self,
        detector_model: str | os.PathLike[str] | bytes,
        landmark_model: str | os.PathLike[str] | bytes,
        *,
        max_poses: int = 5,
        min_detection_score: float = 0.5,
        min_presence_score: float = 0.5,
        track: bool = False,
        redetect_every: int = 10,
        num_threads: int | None = None,
    ) -> None:
        spec = replace(
            BLAZEPOSE_DETECTOR, score_threshold=min_detection_score, max_detections=max_poses
        )
        self.detector = Detector(detector_model, spec, num_threads=num_threads)
        self.landmarker = PoseLandmarker(landmark_model, num_threads=num_threads)
        self.landmark_model = self.landmarker.model
        self.input_size = self.landmarker.input_size
        self.min_presence_score = min_presence_score
        self.track = track
        self.redetect_every = max(1, redetect_every)
        self._tracked: list[RotatedRect] = []
        self._since_detection = 0

    @classmethod
    def from_cache(
        cls, cache_dir: str | os.PathLike[str] | None = None, **options: object
    ) -> LiteRTPoseEstimator:
        """Build from the verified model cache (``fedge models fetch``)."""
        from models.pretrained import read_model

        return cls(
            read_model("pose_detection", cache_dir),
            read_model("pose_landmark_full", cache_dir),
            **options,  # type: ignore[arg-type]
        )

    def reset(self) -> None:
        """Forget tracked poses (call between unrelated videos)."""
        self._tracked = []
        self._since_detection = 0

    def detect_rois(self, frame_bgr: np.ndarray) -> list[RotatedRect]:
        """Return the landmark ROIs of the people the detector finds."""
        return [
            roi_from_keypoints(found.keypoints[0], found.keypoints[1])
            for found in self.detector.detect_keypoints(frame_bgr)
        ]

    def landmarks_in_roi(self, frame_bgr: np.ndarray, roi: RotatedRect) -> tuple[np.ndarray, float]:
        """Return ``(39, 4)`` pixel landmarks (33 body + 6 auxiliary) and pose presence."""
        return self.landmarker.landmarks_in_roi(frame_bgr, roi)

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]:
        """Return the people in ``frame_bgr`` with 33 landmarks each, in pixels."""
        tracking = self.track and bool(self._tracked)
        tracking = tracking and self._since_detection < self.redetect_every
        rois = self._tracked if tracking else self.detect_rois(frame_bgr)
        self._since_detection = self._since_detection + 1 if tracking else 1
        persons, next_rois = self._landmarks_for(frame_bgr, rois)
        if tracking and not persons:  # lost everyone: look again on this frame
            self._since_detection = 1
            persons, next_rois = self._landmarks_for(frame_bgr, self.detect_rois(frame_bgr))
        self._tracked = next_rois if self.track else []
        return persons

    def _landmarks_for(
        self, frame_bgr: np.ndarray, rois: list[RotatedRect]
    ) -> tuple[list[Person], list[RotatedRect]]:
        height, width = frame_bgr.shape[:2]
        persons: list[Person] = []
        next_rois: list[RotatedRect] = []
        for roi in rois:
            landmarks, presence = self.landmarks_in_roi(frame_bgr, roi)
            if presence < self.min_presence_score:
                continue
            person = person_from_landmarks(landmarks[:NUM_LANDMARKS], presence, width, height)
            if self.track and _duplicates(person, persons):
                continue
            persons.append(person)
            next_rois.append(roi_from_keypoints(landmarks[33, :2], landmarks[34, :2]))
        return persons, next_rois


def _duplicates(person: Person, others: list[Person]) -> bool:
    if not others:
        return False
    boxes = np.asarray([p.box for p in others], dtype=np.float32)
    return bool((iou(np.asarray(person.box, dtype=np.float32), boxes) > _TRACK_DUPLICATE_IOU).any())


def _landmark_output_order(model: LiteRTModel) -> tuple[int, int, int]:
    """Return the output positions of (landmarks, pose presence, heatmap) by shape."""
    sizes = [int(np.prod(s.shape)) for s in model.outputs]
    try:
        landmarks = sizes.index(NUM_MODEL_LANDMARKS * 5)
        presence = sizes.index(1)
        heatmap = next(
            i for i, s in enumerate(model.outputs)
            if len(s.shape) == 4 and s.shape[-1] == NUM_MODEL_LANDMARKS
        )  # fmt: skip
    except (ValueError, StopIteration):
        shapes = [s.shape for s in model.outputs]
        raise ModelError(
            f"{model.name} is not a BlazePose landmark model (outputs {shapes})"
        ) from None
    return landmarks, presence, heatmap
