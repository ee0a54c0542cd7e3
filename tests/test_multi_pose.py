"""Top-down multi-person pose: person boxes, then BlazePose landmarks per box, on clip frames.

The person boxes come from the cloud teacher's HOG people detector (a real detector that
runs here; the node itself never imports the server) or, for ``fedge edge``, from a tiny
TFLite SSD with ``TFLite_Detection_PostProcess`` outputs built in the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from clients.capture import Capture, CaptureConfig
from clients.detector import Detector
from clients.hard_cases import HardCaseSelector
from clients.pipeline import Pipeline, TopDownPoseModel
from clients.pose import (
    NUM_LANDMARKS,
    LiteRTPoseEstimator,
    PoseEstimator,
    PoseLandmarker,
    TopDownPoseEstimator,
    create_pose_estimator,
    roi_from_box,
)
from clients.pose.landmarks import roi_from_keypoints
from clients.pose.top_down import load_person_detector
from fedge.core.errors import ConfigError, ModelError
from fedge.core.geometry import iou
from fedge.core.records import Detection, Person

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
CROWDED = (24, 120)  # frames with 5-6 people 60-130 px tall, which BlazePose alone misses
Box = tuple[float, float, float, float]

# People of frame 0 of the clip (HOG boxes, checked by eye): the tiny SSD's fixed boxes.
FRAME0_PEOPLE: tuple[Box, ...] = (
    (507.0, 150.0, 534.0, 222.0),
    (532.0, 235.0, 566.0, 326.0),
    (130.0, 138.0, 152.0, 198.0),
    (362.0, 148.0, 390.0, 223.0),
)
FRAME0_SCORES = (0.9, 0.8, 0.7, 0.6)


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Frames 0..max(CROWDED) of the sample clip (640x480 BGR)."""
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    for index in range(max(CROWDED) + 1):
        ok, frame = capture.read()
        assert ok, f"cannot read frame {index} of {CLIP}"
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def hog_boxes(clip_frames: list[np.ndarray]) -> dict[int, list[Detection]]:
    """The teacher's HOG person boxes on the crowded frames."""
    from server.cloud.teacher import build_teacher

    teacher = build_teacher(members=["hog"])
    return {i: teacher.detect_image(clip_frames[i]) for i in CROWDED}


@pytest.fixture(scope="module")
def landmarker(model_dir: Path) -> PoseLandmarker:
    return PoseLandmarker.from_cache(model_dir, num_threads=1)


class _CountingLandmarker(PoseLandmarker):
    """The real landmark model, counting its runs."""

    def __init__(self, base: PoseLandmarker) -> None:
        self.__dict__.update(base.__dict__)
        self.runs = 0

    def landmarks_in_roi(self, frame_bgr: np.ndarray, roi: Any) -> tuple[np.ndarray, float]:
        self.runs += 1
        return super().landmarks_in_roi(frame_bgr, roi)


def _fixed(boxes: Sequence[Detection]) -> Any:
    return lambda frame: list(boxes)


def _landmark_box(person: Person) -> np.ndarray:
    points = person.landmarks[:, :2]
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


# --- more people than the pose detector alone ----------------------------------------


def test_top_down_gives_more_people_landmarks_than_the_pose_detector_alone(
    model_dir: Path,
    clip_frames: list[np.ndarray],
    hog_boxes: dict[int, list[Detection]],
    landmarker: PoseLandmarker,
) -> None:
    # Prepare: today's edge pose (LiteRT, tracking) over the clip up to the crowded frames
    today = create_pose_estimator("litert", model_dir, num_threads=1, track=True)
    before = {}
    for index, frame in enumerate(clip_frames):
        persons = today.estimate(frame)
        if index in CROWDED:
            before[index] = len(persons)
    top_down = {
        i: TopDownPoseEstimator(landmarker, _fixed(hog_boxes[i]), max_persons=10) for i in CROWDED
    }

    # Execute
    after = {i: top_down[i].estimate(clip_frames[i]) for i in CROWDED}

    # Assert: measured 1 -> 4 (frame 24) and 0 -> 6 (frame 120); HOG finds 4 and 6 >= 0.5
    for i in CROWDED:
        confident = sum(d.score >= 0.5 for d in hog_boxes[i])
        assert len(after[i]) >= before[i] + 2, (i, before[i], len(after[i]))
        assert len(after[i]) >= confident - 1, (i, confident, len(after[i]))
        for person in after[i]:
            assert person.landmarks.shape == (NUM_LANDMARKS, 4)
            assert np.isfinite(person.landmarks).all()
            assert 0.5 <= person.score <= 1.0


def test_landmarks_lie_inside_their_person_box(
    clip_frames: list[np.ndarray],
    hog_boxes: dict[int, list[Detection]],
    landmarker: PoseLandmarker,
) -> None:
    for i in CROWDED:
        # Prepare
        boxes = [d for d in hog_boxes[i] if d.score >= 0.5]
        estimator = TopDownPoseEstimator(landmarker, _fixed(boxes), max_persons=10)

        # Execute
        persons = estimator.estimate(clip_frames[i])

        # Assert: each pose overlaps one box and its 33 landmarks lie within that box
        # grown by a quarter of its height (measured: all 33 inside, landmark-box IoU
        # 0.37-0.84 with the HOG box, which is wider than a landmark box)
        assert persons
        for person in persons:
            overlaps = iou(_landmark_box(person), [d.box for d in boxes])
            x1, y1, x2, y2 = boxes[int(overlaps.argmax())].box
            margin = 0.25 * (y2 - y1)
            xs, ys = person.landmarks[:, 0], person.landmarks[:, 1]
            inside = (xs >= x1 - margin) & (xs <= x2 + margin)
            inside &= (ys >= y1 - margin) & (ys <= y2 + margin)
            assert overlaps.max() >= 0.25
            assert inside.all(), (i, person.box, (x1, y1, x2, y2))


def _keypoint_roi_poses(
    estimator: LiteRTPoseEstimator, landmarker: PoseLandmarker, frame: np.ndarray
) -> list[np.ndarray]:
    """(33, 2) landmarks from BlazePose's own ROI rule (its detector's keypoints), the
    detector run on 160 px tiles (as the teacher does) so that it sees small people."""
    from server.cloud.teacher import PoseTileDetector

    height, width = frame.shape[:2]
    poses = []
    for x, y, w, h in PoseTileDetector(estimator).windows(width, height):
        for hit in estimator.detector.detect_keypoints(frame[y : y + h, x : x + w]):
            keypoints = hit.keypoints + np.array([x, y], dtype=np.float32)
            landmarks, presence = landmarker.landmarks_in_roi(
                frame, roi_from_keypoints(keypoints[0], keypoints[1])
            )
            if presence >= 0.9:
                poses.append(landmarks[:NUM_LANDMARKS, :2])
    return poses


def test_box_roi_agrees_with_the_pose_detector_keypoint_roi(
    model_dir: Path,
    clip_frames: list[np.ndarray],
    hog_boxes: dict[int, list[Detection]],
    landmarker: PoseLandmarker,
) -> None:
    # Prepare
    estimator = LiteRTPoseEstimator.from_cache(model_dir, max_poses=10, num_threads=1)
    references = {i: _keypoint_roi_poses(estimator, landmarker, clip_frames[i]) for i in CROWDED}

    # Execute
    persons = {
        i: TopDownPoseEstimator(
            landmarker, _fixed([d for d in hog_boxes[i] if d.score >= 0.5]), max_persons=10
        ).estimate(clip_frames[i])
        for i in CROWDED
    }

    # Assert: where both see a person, the median landmark distance is a small share of
    # the person's height. Measured at the 1.5 ROI scale: median 1.4 %, worst 2.6 % of
    # 9 people (20 frames: median 1.2 %, 90th percentile 2.7 %); the scale matters: 1.0
    # gives a worst 10 %, 1.75 9 %, 2.0 21 %.
    errors = []
    for i in CROWDED:
        ref_boxes = [np.concatenate([r.min(axis=0), r.max(axis=0)]) for r in references[i]]
        for person in persons[i]:
            overlaps = iou(_landmark_box(person), ref_boxes)
            if overlaps.max() < 0.5:
                continue
            reference = references[i][int(overlaps.argmax())]
            distances = np.linalg.norm(person.landmarks[:, :2] - reference, axis=1)
            errors.append(float(np.median(distances)) / float(np.ptp(reference[:, 1])))
    assert len(errors) >= 6
    assert float(np.median(errors)) <= 0.025, errors
    assert max(errors) <= 0.04, errors


# --- max_persons, best boxes first ----------------------------------------------------


@pytest.mark.parametrize("max_persons", [0, 1, 3])
def test_max_persons_caps_the_landmark_runs_and_keeps_the_best_boxes(
    clip_frames: list[np.ndarray],
    hog_boxes: dict[int, list[Detection]],
    landmarker: PoseLandmarker,
    max_persons: int,
) -> None:
    # Prepare: the boxes in reverse score order (the estimator must sort them)
    frame = clip_frames[CROWDED[1]]
    boxes = sorted((d for d in hog_boxes[CROWDED[1]] if d.score >= 0.5), key=lambda d: d.score)
    counting = _CountingLandmarker(landmarker)
    estimator = TopDownPoseEstimator(counting, _fixed(boxes), max_persons=max_persons)

    # Execute
    persons = estimator.estimate(frame)

    # Assert
    best = boxes[::-1][:max_persons]
    assert counting.runs == min(max_persons, len(boxes))
    assert len(persons) <= max_persons
    assert len(persons) >= max_persons - 1  # these people are all clearly visible
    for person in persons:
        assert iou(_landmark_box(person), [d.box for d in best]).max() >= 0.25


def test_boxes_under_the_score_threshold_or_without_area_get_no_landmarks(
    clip_frames: list[np.ndarray], hog_boxes: dict[int, list[Detection]], landmarker: PoseLandmarker
) -> None:
    # Prepare: every HOG box with a score under the threshold, plus a degenerate one
    weak = [Detection(d.box, d.label, 0.49) for d in hog_boxes[CROWDED[1]]]
    weak.append(Detection((100.0, 100.0, 100.0, 180.0), "person", 0.99))
    counting = _CountingLandmarker(landmarker)
    estimator = TopDownPoseEstimator(counting, _fixed(weak), min_box_score=0.5)

    # Execute
    persons, boxes = estimator.find_people(clip_frames[CROWDED[1]])

    # Assert: no landmark run, but the boxes are still reported (for hard cases)
    assert persons == [] and counting.runs == 0
    assert len(boxes) == len(weak)


# --- frame edges, background, labels -------------------------------------------------


@pytest.mark.parametrize("edge", ["right", "left"])
def test_a_person_cut_by_the_frame_edge_still_gets_landmarks(
    clip_frames: list[np.ndarray], landmarker: PoseLandmarker, edge: str
) -> None:
    # Prepare: frame 120 cut so that the walker at x 568-602 touches the frame edge (the
    # ROI then reaches 20 px past it and is filled by replicating the edge pixels)
    full = clip_frames[CROWDED[1]]
    if edge == "right":
        frame, box = np.ascontiguousarray(full[:, :598]), (568.0, 251.0, 598.0, 343.0)
    else:
        frame, box = np.ascontiguousarray(full[:, 570:]), (0.0, 251.0, 32.0, 343.0)
    estimator = TopDownPoseEstimator(landmarker, _fixed([Detection(box, "person", 0.9)]))

    # Execute
    persons = estimator.estimate(frame)

    # Assert: measured presence 0.99 (right) and 1.00 (left)
    assert len(persons) == 1
    person = persons[0]
    assert np.isfinite(person.landmarks).all()
    x1, y1, x2, y2 = person.box
    assert 0 <= x1 <= x2 <= frame.shape[1] and 0 <= y1 <= y2 <= frame.shape[0]
    assert iou(person.box, [box])[0] >= 0.3


def test_a_box_on_empty_background_gives_no_person(
    clip_frames: list[np.ndarray], landmarker: PoseLandmarker
) -> None:
    # Prepare: boxes on the floor and walls where nobody stands in frame 120
    empty = [(0.0, 0.0, 30.0, 90.0), (600.0, 0.0, 640.0, 80.0), (0.0, 400.0, 60.0, 480.0)]
    boxes = [Detection(b, "person", 0.9) for b in empty]
    estimator = TopDownPoseEstimator(landmarker, _fixed(boxes))

    # Execute
    persons = estimator.estimate(clip_frames[CROWDED[1]])

    # Assert: the landmark model sees no pose there (measured presence 0.00)
    assert persons == []


def test_only_person_boxes_are_kept_best_first(landmarker: PoseLandmarker) -> None:
    # Prepare
    found = [
        Detection((0.0, 0.0, 10.0, 10.0), "face", 0.99),
        Detection((0.0, 0.0, 20.0, 40.0), "person", 0.4),
        Detection((5.0, 0.0, 25.0, 40.0), "person", 0.8),
        Detection((0.0, 0.0, 20.0, 40.0), "1", 0.9),
    ]
    estimator = TopDownPoseEstimator(landmarker, _fixed(found))

    # Execute
    boxes = estimator.detect_persons(np.zeros((48, 64, 3), dtype=np.uint8))

    # Assert
    assert [d.score for d in boxes] == [0.8, 0.4]
    assert isinstance(estimator, PoseEstimator) and isinstance(estimator, TopDownPoseModel)


def test_roi_from_box_is_a_centred_upright_square() -> None:
    roi = roi_from_box((100.0, 50.0, 140.0, 250.0))

    assert (roi.center_x, roi.center_y, roi.rotation) == (120.0, 150.0, 0.0)
    assert roi.width == roi.height == pytest.approx(1.5 * 200.0)


def test_bad_options_are_config_errors(landmarker: PoseLandmarker) -> None:
    with pytest.raises(ConfigError, match="max persons"):
        TopDownPoseEstimator(landmarker, _fixed([]), max_persons=-1)
    with pytest.raises(ConfigError, match="ROI scale"):
        TopDownPoseEstimator(landmarker, _fixed([]), roi_scale=0.0)


def test_a_model_without_postprocessed_outputs_is_not_a_person_detector(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="class 0 is a person"):
        load_person_detector(model_dir / "pose_landmark_full.tflite")


# --- a real person SSD: the pipeline and fedge edge ---------------------------------


def _person_ssd_bytes() -> bytes:
    """A TFLite SSD (``TFLite_Detection_PostProcess``, one class: person) that finds the
    people of frame 0 at ``FRAME0_PEOPLE`` with ``FRAME0_SCORES`` on any frame."""
    import tensorflow as tf

    from export.tflite_export import PostProcessOptions, postprocess_signature

    width, height = 640.0, 480.0
    anchors = np.array(  # yc, xc, h, w normalized: box encodings 0 decode to the anchors
        [
            [(y1 + y2) / 2 / height, (x1 + x2) / 2 / width, (y2 - y1) / height, (x2 - x1) / width]
            for x1, y1, x2, y2 in FRAME0_PEOPLE
        ],
        dtype=np.float32,
    )
    count = len(FRAME0_PEOPLE)
    options = PostProcessOptions(max_detections=count, score_threshold=0.1, iou_threshold=0.5)
    signature = postprocess_signature(options=options)

    @tf.function(experimental_implements=signature)
    def postprocess(box_encodings: Any, class_predictions: Any, anchor_boxes: Any) -> Any:
        # Placeholder body: the converter replaces the call with the TFLite custom op.
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    class PersonSsd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
        def __call__(self, image: Any) -> Any:
            zero = tf.reduce_mean(image) * 0.0  # depends on the input, adds nothing
            encodings = tf.zeros([1, count, 4]) + zero
            person = tf.constant(FRAME0_SCORES, dtype=tf.float32)[None, :, None] + zero
            scores = tf.concat([tf.zeros_like(person), person], axis=2)  # background, person
            return postprocess(encodings, scores, tf.constant(anchors))

    module = PersonSsd()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def person_ssd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("person-ssd") / "person_ssd.tflite"
    path.write_bytes(_person_ssd_bytes())
    return path


def test_the_person_ssd_runs_through_detector(person_ssd: Path) -> None:
    # Execute
    found = load_person_detector(person_ssd).detect(np.zeros((480, 640, 3), dtype=np.uint8))

    # Assert
    assert [d.label for d in found] == ["person"] * len(FRAME0_PEOPLE)
    assert [d.score for d in found] == pytest.approx(FRAME0_SCORES, abs=1e-5)
    for detection, box in zip(found, FRAME0_PEOPLE, strict=True):
        assert detection.box == pytest.approx(box, abs=0.5)


def test_pipeline_puts_person_boxes_beside_the_ssd_boxes(
    model_dir: Path, person_ssd: Path, landmarker: PoseLandmarker
) -> None:
    # Prepare: the person SSD + top-down pose, BlazeFace as the SSD stage
    estimator = TopDownPoseEstimator(landmarker, load_person_detector(person_ssd), max_persons=3)
    faces = Detector.blazeface(model_dir, score_threshold=0.3, num_threads=1)
    capture = Capture(CLIP, CaptureConfig(size=(640, 480), max_frames=3))
    selector = HardCaseSelector(detector_labels=("face", "person"))

    # Execute
    with Pipeline(capture, pose=estimator, detector=faces, selector=selector) as pipeline:
        results = [output.result for output in pipeline]

    # Assert
    assert [r.frame for r in results] == [0, 1, 2]
    for result in results:
        person_boxes = [d for d in result.detections if d.label == "person"]
        np.testing.assert_allclose([d.box for d in person_boxes], FRAME0_PEOPLE, atol=0.5)
        assert all(d.label in {"person", "face"} for d in result.detections)
        assert 2 <= len(result.persons) <= 3
        assert "pose" in result.timings_ms


def test_fedge_edge_with_a_person_model_runs_top_down_pose(
    tmp_path: Path, model_dir: Path, person_ssd: Path
) -> None:
    # Prepare
    jsonl = tmp_path / "records.jsonl"
    args = ["--person-model", str(person_ssd), "--max-persons", "2", "--max-frames", "4"]
    args += ["--jsonl", str(jsonl), "--store-dir", str(tmp_path / "store"), "--quiet"]
    args += ["--model-dir", str(model_dir), "--pose-workers", "1"]

    # Execute
    done = _fedge(*args)

    # Assert
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    for record in records:
        boxes = [d["box"] for d in record["detections"] if d["label"] == "person"]
        assert np.allclose(boxes, FRAME0_PEOPLE, atol=0.5)
        assert len(record["persons"]) <= 2
        for person in record["persons"]:
            assert np.asarray(person["landmarks"]).shape == (NUM_LANDMARKS, 4)
    assert sum(len(r["persons"]) for r in records) >= 6  # two walkers, on most frames
    assert set(records[0]["timings_ms"]) == {"capture", "pose", "ssd", "store", "total"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-persons", "-1"], "--max-persons must be 0 or more"),
        (["--person-model", "x.tflite", "--pose-backend", "tasks"], "--person-model runs"),
        (["--person-model", "x.tflite", "--no-pose"], "--person-model runs"),
        (["--person-model", "missing.tflite"], "person model: model file missing.tflite"),
    ],
)
def test_bad_person_flags_exit_2_with_one_line(
    tmp_path: Path, model_dir: Path, flags: list[str], message: str
) -> None:
    done = _fedge(
        *flags, "--max-frames", "1", "--store-dir", str(tmp_path), "--model-dir", str(model_dir)
    )

    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _fedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "edge", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
