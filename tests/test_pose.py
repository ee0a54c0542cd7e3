"""Pose: BlazePose on LiteRT and on MediaPipe Tasks, on frames of the sample clip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.inference.nms import iou
from clients.pose import (
    NUM_LANDMARKS,
    LiteRTPoseEstimator,
    PoseEstimator,
    TasksPoseEstimator,
    create_pose_estimator,
)
from fedge.core.errors import ConfigError
from fedge.core.records import Person

CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"
FRAME_IDS = tuple(range(0, 30, 3))  # a pedestrian close enough for BlazePose walks by
# Mean landmark distance (pixels, x/y) between the two backends, averaged over frames.
# Measured: 1.1 px on these frames (median 0.7, worst 2.5); 1.5 px over the 40 frames of
# the clip where both find someone (median 0.8, worst 15.7 on one ~100 px tall person).
# The runtimes resample images slightly differently, which moves small people a little.
AGREEMENT_TOLERANCE_PX = 3.0


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Frames ``FRAME_IDS`` of the sample clip (640x480 BGR)."""
    if not CLIP.is_file():
        pytest.fail(f"sample clip {CLIP} is missing")
    capture = cv2.VideoCapture(str(CLIP))
    out = []
    for index in range(max(FRAME_IDS) + 1):
        ok, frame = capture.read()
        assert ok, f"cannot read frame {index} of {CLIP}"
        if index in FRAME_IDS:
            out.append(frame)
    capture.release()
    return out


@pytest.fixture(scope="module")
def litert(model_dir: Path) -> LiteRTPoseEstimator:
    return LiteRTPoseEstimator.from_cache(model_dir)


@pytest.fixture(scope="module")
def tasks(model_dir: Path) -> Iterator[TasksPoseEstimator]:
    with TasksPoseEstimator.from_cache(model_dir) as estimator:
        yield estimator


def _nearest(person: Person, others: list[Person]) -> Person:
    centre = np.asarray(person.box).reshape(2, 2).mean(axis=0)
    return min(
        others,
        key=lambda o: float(np.linalg.norm(np.asarray(o.box).reshape(2, 2).mean(0) - centre)),
    )


def test_litert_finds_the_pedestrian_with_33_landmarks(
    litert: LiteRTPoseEstimator, frames: list[np.ndarray]
) -> None:
    # Execute
    results = [litert.estimate(frame) for frame in frames]

    # Assert
    assert isinstance(litert, PoseEstimator)
    assert sum(1 for persons in results if persons) >= len(frames) - 2
    for persons in results:
        for person in persons:
            assert person.landmarks.shape == (NUM_LANDMARKS, 4)
            assert 0.5 <= person.score <= 1.0
            assert np.all((person.landmarks[:, 3] >= 0) & (person.landmarks[:, 3] <= 1))


def test_landmarks_lie_in_the_frame_and_stand_upright(
    litert: LiteRTPoseEstimator, frames: list[np.ndarray]
) -> None:
    for frame in frames:
        height, width = frame.shape[:2]
        for person in litert.estimate(frame):
            visible = person.landmarks[person.landmarks[:, 3] > 0.5]
            assert len(visible) >= 20
            assert np.all((visible[:, 0] >= -1) & (visible[:, 0] <= width + 1))
            assert np.all((visible[:, 1] >= -1) & (visible[:, 1] <= height + 1))
            x1, y1, x2, y2 = person.box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            # A walking pedestrian: nose above the shoulders, shoulders above the ankles.
            nose_y, shoulders_y, ankles_y = (
                person.landmarks[0, 1],
                person.landmarks[11:13, 1].mean(),
                person.landmarks[27:29, 1].mean(),
            )
            assert nose_y < shoulders_y < ankles_y


def test_litert_and_tasks_backends_agree(
    litert: LiteRTPoseEstimator, tasks: TasksPoseEstimator, frames: list[np.ndarray]
) -> None:
    # Execute
    distances = []
    for frame in frames:
        ours, theirs = litert.estimate(frame), tasks.estimate(frame)
        assert len(ours) == len(theirs)
        for person in ours:
            other = _nearest(person, theirs)
            gap = np.linalg.norm(person.landmarks[:, :2] - other.landmarks[:, :2], axis=1)
            distances.append(float(gap.mean()))

    # Assert
    assert len(distances) >= len(frames) - 2
    assert float(np.mean(distances)) <= AGREEMENT_TOLERANCE_PX, distances


def test_tracking_follows_the_pedestrian_between_detections(model_dir: Path) -> None:
    # Prepare: 20 consecutive frames, the detector rerun only every 5th frame.
    capture = cv2.VideoCapture(str(CLIP))
    clip = [capture.read()[1] for _ in range(20)]
    capture.release()
    detecting = LiteRTPoseEstimator.from_cache(model_dir)
    tracking = LiteRTPoseEstimator.from_cache(model_dir, track=True, redetect_every=5)

    # Execute
    pairs = [(detecting.estimate(frame), tracking.estimate(frame)) for frame in clip]

    # Assert: found at least as often, and on the same person (overlapping boxes).
    assert sum(1 for _, t in pairs if t) >= sum(1 for d, _ in pairs if d)
    overlaps = [
        float(iou(np.asarray(d[0].box), np.asarray([t[0].box]))[0]) for d, t in pairs if d and t
    ]
    assert len(overlaps) >= 15
    assert float(np.median(overlaps)) >= 0.6, overlaps


def test_an_empty_scene_has_no_people(
    litert: LiteRTPoseEstimator, tasks: TasksPoseEstimator
) -> None:
    blank = np.full((480, 640, 3), 90, dtype=np.uint8)
    assert litert.estimate(blank) == []
    assert tasks.estimate(blank) == []


def test_unknown_backend_is_a_config_error(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown pose backend"):
        create_pose_estimator("openpose", model_dir)
    assert isinstance(create_pose_estimator("litert", model_dir), LiteRTPoseEstimator)


def test_both_backends_take_the_common_options(model_dir: Path) -> None:
    # Prepare
    capture = cv2.VideoCapture(str(CLIP))
    clip = [capture.read()[1] for _ in range(6)]
    capture.release()
    options = {"max_poses": 2, "min_detection_score": 0.5, "track": True, "num_threads": 1}

    for backend in ("litert", "tasks"):
        # Execute
        estimator = create_pose_estimator(backend, model_dir, **options)
        found = [estimator.estimate(frame) for frame in clip]

        if isinstance(estimator, TasksPoseEstimator):
            estimator.close()

        # Assert: tracking (VIDEO mode for Tasks) keeps the pedestrian.
        assert sum(1 for persons in found if persons) >= 5, backend
        assert all(len(persons) <= 2 for persons in found)
