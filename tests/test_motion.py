"""Motion proposals: where the people are when the node's pose model cannot see them.

Real frames of the sample clip (small, far people BlazePose mostly misses), OpenCV's HOG
people detector (the cloud teacher's ``hog`` member) as the reference, real BlazeFace
for the blurring, real gRPC to the real ``fedge cloud``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.capture import Capture, CaptureConfig
from clients.detector import Detector
from clients.hard_cases import HardCaseSelector
from clients.motion import MOTION_LABEL, MotionPolicy, MotionProposer, merge_close_boxes
from clients.pipeline import Pipeline
from clients.privacy_filter import PrivacyFilter, PrivacyPolicy, build_hard_case
from clients.tasks.detector_data import ExampleRules, covered_share, list_examples
from clients.uploader import Uploader, UploaderConfig
from data.frame_store import FrameStore, LabelStatus
from fedge.core.errors import ConfigError
from fedge.core.geometry import iou
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, FrameResult
from server.cloud.cases import decode_case
from server.cloud.fusion import edge_person_detections
from server.cloud.teacher import build_teacher
from tests.uplink_support import CLIP, REPO, CloudProcess, clip_frames

FACE = REPO / "tests" / "assets" / "face_messi5_crop.jpg"
FACE_IN_CROP = (47, 47, 80, 79)  # the face's BlazeFace box on the 128x128 asset
CHECKED = (60, 120, 180, 235)
"""Clip frames compared with the teacher (the proposer has seen every frame before)."""


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Every frame of the sample clip at 640x480."""
    return clip_frames(range(240))


@pytest.fixture(scope="module")
def proposals(clip: list[np.ndarray]) -> list[list[Detection]]:
    """The motion boxes of every clip frame, fed in order from the first."""
    proposer = MotionProposer()
    return [proposer.update(frame) for frame in clip]


# -- the proposer on its own --------------------------------------------------------------


def test_motion_boxes_cover_the_people_the_teacher_finds(
    clip: list[np.ndarray], proposals: list[list[Detection]]
) -> None:
    # Prepare: the teacher's HOG member finds the reference people
    teacher = build_teacher(members=["hog"])
    covered = people = 0
    for index in CHECKED:
        found = [d.box for d in teacher.detect_image(clip[index]) if d.score >= 0.5]
        boxes = np.array([d.box for d in proposals[index]]).reshape(-1, 4)
        # Execute: how much of each person lies inside one motion box
        share = covered_share(np.array(found).reshape(-1, 4), boxes)
        covered += int((share >= 0.5).sum())
        people += len(found)
        # Assert: the boxes are regions, not the frame (each under a tenth of it, all
        # together under a quarter), and they are motion proposals
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (640 * 480)
        assert (areas < 0.1).all() and areas.sum() < 0.25, (index, areas)
        assert {d.label for d in proposals[index]} == {MOTION_LABEL}
        assert all(0.0 < d.score <= 1.0 for d in proposals[index])
    # Assert: most of the teacher's people are inside a motion box (measured: 23 of 25)
    assert people >= 15, f"HOG found only {people} people on frames {CHECKED}"
    assert covered >= 0.7 * people, f"{covered} of {people} people inside a motion box"


def test_no_boxes_while_warming_up_on_a_still_scene_or_when_everything_changes(
    clip: list[np.ndarray],
) -> None:
    proposer = MotionProposer(MotionPolicy(warmup_frames=5))
    still = clip[0]

    warming = [proposer.update(clip[i]) for i in range(5)]  # the scene moves, but warm-up
    settled = [proposer.update(still) for _ in range(40)]  # nothing moves
    flipped = proposer.update(255 - still)  # lights out: the whole frame changes

    assert warming == [[]] * 5
    assert settled[-1] == []
    assert flipped == []
    proposer.reset()
    assert proposer.frames == 0


def test_a_frame_of_another_size_restarts_the_background(clip: list[np.ndarray]) -> None:
    proposer = MotionProposer(MotionPolicy(warmup_frames=3))
    for frame in clip[:20]:
        proposer.update(frame)

    small = proposer.update(cv2.resize(clip[20], (320, 240)))

    assert small == [] and proposer.frames == 1


def test_close_boxes_merge_and_far_ones_do_not() -> None:
    head, body, far = [10.0, 10.0, 20.0, 20.0], [9.0, 23.0, 22.0, 50.0], [60.0, 10.0, 70.0, 40.0]

    merged = merge_close_boxes([head, body, far], gap=4)

    assert sorted(merged) == [[9.0, 10.0, 22.0, 50.0], far]
    assert merge_close_boxes([head, far], gap=4) == [head, far]


def test_a_nonsense_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_foreground"):
        MotionPolicy(max_foreground=0.0)
    with pytest.raises(ConfigError, match="work_width"):
        MotionPolicy(work_width=8)


# -- motion is a region to look at, not a person ------------------------------------------


def test_motion_regions_are_cropped_only_where_no_person_explains_them(model_dir: Path) -> None:
    person = Detection((100.0, 100.0, 150.0, 220.0), "person", 0.9)
    result = FrameResult(
        frame=0,
        time=1.0,
        source="t",
        detections=[
            person,
            Detection((104.0, 110.0, 148.0, 214.0), MOTION_LABEL, 0.5),  # the same person
            Detection((400.0, 200.0, 430.0, 280.0), MOTION_LABEL, 0.4),  # someone unseen
        ],
    )

    regions = PrivacyFilter.create("crops", str(model_dir)).crop_regions(result, 640, 480)
    off = PrivacyFilter.create(
        "crops", str(model_dir), policy=PrivacyPolicy(motion_crops=False)
    ).crop_regions(result, 640, 480)

    assert regions == [(75, 40, 175, 280), (385, 160, 445, 320)]  # person first, padded
    assert off == [(75, 40, 175, 280)]


def test_motion_boxes_are_never_person_evidence(tmp_path: Path) -> None:
    # Prepare: a frame whose only boxes are confident motion boxes
    moving = [Detection((400.0, 200.0, 430.0, 280.0), MOTION_LABEL, 0.95)]
    result = FrameResult(frame=0, time=1.0, source="t", detections=moving, hard=True)
    wire = build_hard_case(
        result, frame_id=1, frame_width=640, frame_height=480, node_id="n",
        mode=PrivacyFilter("landmarks").mode,
    )  # fmt: skip
    forged = cloud_pb2.HardCase()
    forged.CopyFrom(wire)
    forged.detections.add(box=cloud_pb2.Box(x1=400, y1=200, x2=430, y2=280), label="motion")
    forged.detections[0].score = 0.95
    with FrameStore(tmp_path, fsync=False) as store:
        store.add(clip_frames([0])[0], result)

    # Execute / Assert: not on the wire, not the cloud's edge evidence, not a training box
    assert list(wire.detections) == []
    assert edge_person_detections(decode_case(forged)) == []
    assert list_examples(tmp_path, ExampleRules(held_out_share=0.0)).train == []


def test_the_pipeline_records_motion_but_selection_never_sees_it(tmp_path: Path) -> None:
    # Prepare: no model at all; a selector that would call any uncertain box a hard case
    capture = Capture(CLIP, CaptureConfig(size=(640, 480), max_frames=60))
    selector = HardCaseSelector(detector_labels=("person", "face"))
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store:
        pipeline = Pipeline(capture, store=store, selector=selector, motion=MotionProposer())

        # Execute
        with pipeline:
            results = [output.result for output in pipeline]
        stored = [f.detections for f in store.iter_frames()]

    # Assert: motion boxes in the records and the store, some with "uncertain" scores,
    # and yet no frame is hard
    moving = [d for r in results for d in r.detections]
    assert len(results) == 60 and len(moving) > 60
    assert {d.label for d in moving} == {MOTION_LABEL}
    assert any(0.3 <= d.score < 0.6 for d in moving)
    assert not any(r.hard or r.hard_reasons for r in results)
    assert all("motion" in r.timings_ms for r in results)
    assert sum(len(d) for d in stored) == len(moving)


# -- cold start in crops mode -------------------------------------------------------------


def _moving_face(clip: list[np.ndarray]) -> tuple[list[np.ndarray], tuple[float, ...]]:
    """Clip frames with a real face (1.5x) crossing the lawn; the last face's box."""
    face = cv2.imread(str(FACE))
    face = cv2.resize(face, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    side = face.shape[0]
    frames = []
    for i, frame in enumerate(clip[:40]):
        frame = frame.copy()
        x, y = 40 + 8 * i, 250
        frame[y : y + side, x : x + side] = face
        frames.append(frame)
    box = tuple(v * 1.5 + (x if k % 2 == 0 else y) for k, v in enumerate(FACE_IN_CROP))
    return frames, box


def _face_score(detector: Detector, image: np.ndarray, box: tuple[float, ...]) -> float:
    return max((d.score for d in detector.detect(image) if iou(d.box, box)[0] > 0.1), default=0.0)


def test_a_cold_start_crops_case_crops_a_moving_face_and_blurs_it(
    clip: list[np.ndarray], model_dir: Path
) -> None:
    # Prepare: a face moves across the clip; nobody is detected (cold start)
    frames, face = _moving_face(clip)
    proposer = MotionProposer()
    moving = [proposer.update(frame) for frame in frames][-1]
    result = FrameResult(
        frame=39, time=1.0, source="t", detections=moving, hard=True, hard_reasons=["cold_start"]
    )
    privacy = PrivacyFilter.create("crops", str(model_dir))
    checker = Detector.blazeface(model_dir, score_threshold=0.3)

    # Execute
    case = privacy.case_for(
        result, frames[-1], frame_id=1, frame_width=640, frame_height=480, node_id="n"
    )

    # Assert: crops of the moving regions, one holding the face, which BlazeFace finds in
    # the raw pixels there but not in what is sent
    assert case is not None and case.privacy_mode == cloud_pb2.PRIVACY_MODE_CROPS
    crops = list(case.crops.crops)
    assert len(crops) >= 2
    holding = [
        c for c in crops
        if c.x <= face[0] and c.y <= face[1]
        and face[2] <= c.x + c.width and face[3] <= c.y + c.height
    ]  # fmt: skip
    assert holding, "no crop holds the moving face"
    for crop in crops:
        local = (face[0] - crop.x, face[1] - crop.y, face[2] - crop.x, face[3] - crop.y)
        raw = frames[-1][crop.y : crop.y + crop.height, crop.x : crop.x + crop.width]
        sent = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert sent.shape == raw.shape
        if crop in holding:
            assert _face_score(checker, raw, local) >= 0.5  # the control: a real face
        assert _face_score(checker, sent, local) < 0.3
        assert not privacy.blurrer.find_faces(sent)  # the filter's own verify pass


def test_cold_start_in_crops_mode_gets_the_clips_people_labelled(
    tmp_path: Path, clip: list[np.ndarray], proposals: list[list[Detection]], model_dir: Path
) -> None:
    # Prepare: frame 120 as a cold-start case, with its motion boxes and without (what
    # BlazePose alone gives there: nobody); the real cloud
    with (
        FrameStore(tmp_path / "store", 10**8, fsync=False) as store,
        CloudProcess(tmp_path) as cloud,
    ):
        ids = [
            store.add(
                clip[120],
                FrameResult(
                    frame=120,
                    time=1.8e9 + k,
                    source="t",
                    detections=list(found),
                    hard=True,
                    hard_reasons=["cold_start"],
                ),
            )
            for k, found in enumerate((proposals[120], []))
        ]
        config = UploaderConfig(target=cloud.target, node_id="node-1", insecure=True)
        privacy = PrivacyFilter.create("crops", str(model_dir))
        uploader = Uploader(store, privacy, config, rng=random.Random(0)).start()
        try:
            assert uploader.drain(180), uploader.stats
        finally:
            uploader.stop()
        with_motion, without = (store.get(i) for i in ids)
    listed = list_examples(tmp_path / "store", ExampleRules(held_out_share=0.0))
    examples = {e.frame_id: e for e in listed.train}

    # Assert: with motion, the cloud saw crops and labelled people inside them, and the
    # frame is a training example whose background is the crops only
    assert with_motion.label_status is without.label_status is LabelStatus.LABELLED
    label = with_motion.frame_label
    assert label is not None and label.coverage
    people = [b.box for b in label.boxes if b.label == "person" and b.score >= 0.3]
    assert len(people) >= 4, label.boxes
    assert (covered_share(np.array(people), np.array(label.coverage)) >= 0.9).all()
    example = examples[ids[0]]
    assert len(example.boxes) >= 4 and example.coverage is not None
    # without motion: a landmarks case, nothing seen, nothing labelled, nothing to train
    assert without.frame_label is not None and without.frame_label.coverage == ()
    assert without.frame_label.boxes == ()
    assert ids[1] not in examples


def test_fedge_edge_motion_flag(tmp_path: Path) -> None:
    def run(*flags: str) -> list[dict]:  # type: ignore[type-arg]
        jsonl = tmp_path / f"{len(flags)}.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "fedge", "edge", "--max-frames", "30", "--no-pose",
             "--no-ssd", "--no-store", "--quiet", "--jsonl", str(jsonl), *flags],
            cwd=REPO, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in jsonl.read_text().splitlines()]

    on, auto = run("--motion", "on"), run()

    assert sum(len(r["detections"]) for r in on[10:]) > 10
    assert all(d["label"] == MOTION_LABEL for r in on for d in r["detections"])
    assert all("motion" in r["timings_ms"] for r in on)
    assert all(r["detections"] == [] and "motion" not in r["timings_ms"] for r in auto)
