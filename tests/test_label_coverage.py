"""A label records what the cloud saw of its frame, and training trusts "nobody here" only there.

``frames`` cases show the whole frame (coverage ``None``), ``crops`` cases their crops,
``landmarks`` cases no pixel (coverage ``()``). Anchors outside what the cloud saw are
ignored, never background. Old (schema 1) labels still load, as whole-frame labels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from clients.privacy_filter import PrivacyFilter, case_coverage
from clients.tasks.detector_batches import StoreBatches
from clients.tasks.detector_data import (
    UNSEEN_BACKGROUND_WEIGHT,
    ExampleRules,
    covered_share,
    example_targets,
    list_examples,
    seen_detections,
)
from clients.tasks.detector_eval import FrameDetections, map50
from clients.uploader import Uploader, UploaderConfig
from data.frame_store import FrameStore, LabelStatus
from fedge.core.geometry import iou_matrix
from fedge.core.labels import LABEL_SCHEMA_VERSION, FrameLabel, LabelBox, LabelError
from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection, FrameResult
from models.box_coding import DEFAULT_ANCHORS, encode_targets, generate_anchors
from tests.uplink_support import RecordingCloud, clip_frames

PERSON = (200.0, 150.0, 260.0, 300.0)
CROP = (150.0, 100.0, 330.0, 360.0)  # around PERSON, as the privacy filter would crop
ALL_TRAIN = ExampleRules(held_out_share=0.0, own_weight=0.0)


def _label(coverage: tuple[tuple[float, float, float, float], ...] | None) -> FrameLabel:
    return FrameLabel(
        boxes=(LabelBox(PERSON, "person", 0.9, cloud_score=0.9),),
        source="cloud",
        fusion_method="mean",
        teacher_version="test/1",
        frame_width=640,
        frame_height=480,
        coverage=coverage,
    )


def _anchor_corners() -> np.ndarray:
    yc, xc, h, w = generate_anchors(DEFAULT_ANCHORS).astype(np.float64).T
    corners = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    return np.clip(corners, 0.0, 1.0)


SIZE = np.array([640, 480, 640, 480], np.float64)


# -- the schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("coverage", [None, (), (CROP, (0.0, 0.0, 64.0, 48.0))])
def test_coverage_round_trips_through_json(coverage: tuple | None) -> None:  # type: ignore[type-arg]
    label = _label(coverage)

    data = json.loads(json.dumps(label.to_json()))
    back = FrameLabel.from_json(data)

    assert back == label
    assert data["schema_version"] == LABEL_SCHEMA_VERSION == 2
    assert data["coverage"] == (None if coverage is None else [list(r) for r in coverage])
    assert back.whole_frame is (coverage is None)


def test_an_old_schema_label_loads_as_a_whole_frame_label() -> None:
    # the JSON a fedge of label schema 1 wrote (no coverage key)
    old = {
        "schema_version": 1, "source": "cloud", "fusion_method": "mean",
        "teacher_version": "hog/1", "frame_width": 640, "frame_height": 480,
        "boxes": [{"box": list(PERSON), "label": "person", "score": 0.9,
                   "edge_score": None, "cloud_score": 0.9}],
        "teacher_detections": [],
    }  # fmt: skip

    label = FrameLabel.from_json(old)

    assert label.schema_version == 1 and label.coverage is None and label.whole_frame
    assert label.to_json() == old  # rewritten as it was: no key a schema-1 reader lacks


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 1}, "cannot carry coverage"),
        ({"coverage": [[0, 0, 700, 10]]}, "coverage .* outside"),
        ({"coverage": [[5, 5, 1, 1]]}, "x1 > x2"),
        ({"coverage": [[0, 0, 1]]}, "4 finite numbers"),
        ({"coverage": "all"}, "null or a list"),
    ],
)
def test_malformed_coverage_is_rejected(change: dict[str, object], message: str) -> None:
    data = _label((CROP,)).to_json() | change

    with pytest.raises(LabelError, match=message):
        FrameLabel.from_json(data)


def test_a_schema_2_label_without_its_coverage_key_is_malformed() -> None:
    data = _label(None).to_json()
    del data["coverage"]

    with pytest.raises(LabelError, match="coverage"):
        FrameLabel.from_json(data)


def test_label_from_a_cloud_result_takes_the_coverage_it_is_given() -> None:
    result = cloud_pb2.CloudResult(schema_version=1, fusion_method="mean", teacher_version="t")

    crops = FrameLabel.from_cloud_result(result, frame_width=640, frame_height=480, coverage=[CROP])
    whole = FrameLabel.from_cloud_result(result, frame_width=640, frame_height=480)

    assert crops.coverage == (CROP,) and crops.schema_version == LABEL_SCHEMA_VERSION
    assert whole.coverage is None and whole.whole_frame


def test_case_coverage_is_what_each_mode_shows() -> None:
    frames = cloud_pb2.HardCase(privacy_mode=cloud_pb2.PRIVACY_MODE_FRAMES, frame_jpeg=b"x")
    crops = cloud_pb2.HardCase(privacy_mode=cloud_pb2.PRIVACY_MODE_CROPS)
    crops.crops.crops.add(jpeg=b"x", x=150, y=100, width=180, height=260)
    crops.crops.crops.add(jpeg=b"x", x=0, y=0, width=64, height=48)
    landmarks = cloud_pb2.HardCase(privacy_mode=cloud_pb2.PRIVACY_MODE_LANDMARKS)

    assert case_coverage(frames) is None
    assert case_coverage(crops) == (CROP, (0.0, 0.0, 64.0, 48.0))
    assert case_coverage(landmarks) == ()


# -- encoded targets ----------------------------------------------------------------------


def _targets(coverage: np.ndarray | None) -> np.ndarray:
    boxes = np.array([PERSON]) / SIZE
    return example_targets(
        boxes, np.array([1.0]), np.zeros((0, 4)), True, DEFAULT_ANCHORS, coverage=coverage
    )


def test_frames_mode_targets_are_the_plain_encoding() -> None:
    boxes = np.array([PERSON]) / SIZE

    targets = _targets(None)

    np.testing.assert_array_equal(targets, encode_targets(boxes, DEFAULT_ANCHORS, weights=[1.0]))
    assert (targets[:, 4] == 0).sum() > 0.9 * len(targets)  # nearly everything is background


def _full_background(targets: np.ndarray) -> np.ndarray:
    return (targets[:, 4] == 0) & (targets[:, 5] == 1.0)


def test_crops_mode_trains_full_background_only_inside_the_crops() -> None:
    crop = np.array([CROP]) / SIZE
    share = covered_share(_anchor_corners(), crop)

    crops, frames = _targets(crop), _targets(None)

    background = _full_background(crops)
    assert background.any(), "the crop's own anchors should still be background"
    assert (share[background] >= 0.6).all()  # full weight only where the cloud looked
    assert not background[share == 0].any()  # anchors wholly outside: never full weight
    outside = (share < 0.6) & (crops[:, 4] == 0)
    assert outside.sum() > 1000  # ... but a weak background, not ignored
    assert (crops[outside, 5] == UNSEEN_BACKGROUND_WEIGHT).all()
    assert (frames[share < 0.6, 4] == 0).sum() > 1000  # frames mode: full background
    np.testing.assert_array_equal(crops[:, 4] == 1, frames[:, 4] == 1)  # same positives
    np.testing.assert_array_equal(crops[crops[:, 4] == 1], frames[frames[:, 4] == 1])


def test_landmarks_mode_trains_its_boxes_and_only_a_weak_background() -> None:
    landmarks, frames = _targets(np.zeros((0, 4))), _targets(None)

    assert not _full_background(landmarks).any()
    assert (landmarks[landmarks[:, 4] == 0, 5] == UNSEEN_BACKGROUND_WEIGHT).all()
    np.testing.assert_array_equal(landmarks[landmarks[:, 4] == 1], frames[frames[:, 4] == 1])


# -- from the store to the batches --------------------------------------------------------


def _store_with_labels(root: Path, labels: list[FrameLabel | dict]) -> list[int]:  # type: ignore[type-arg]
    image = clip_frames([0])[0]
    ids = []
    with FrameStore(root, fsync=False) as store:
        for i, label in enumerate(labels):
            frame_id = store.add(image, FrameResult(frame=i, time=1000.0 + i, source="t"))
            store.set_label(frame_id, label, "cloud")
            ids.append(frame_id)
    return ids


def test_store_examples_carry_the_labels_coverage(tmp_path: Path) -> None:
    old = _label(None).to_json() | {"schema_version": 1}
    del old["coverage"]
    empty_landmarks = FrameLabel(
        boxes=(), source="cloud", fusion_method="mean", teacher_version="t",
        frame_width=640, frame_height=480, coverage=(),
    )  # fmt: skip
    ids = _store_with_labels(
        tmp_path, [_label((CROP,)), _label(None), old, _label(()), empty_landmarks]
    )

    examples = list_examples(tmp_path, ALL_TRAIN)

    by_id = {e.frame_id: e for e in examples.train}
    crops, frames, legacy, landmarks = (by_id[i] for i in ids[:4])
    np.testing.assert_array_equal(crops.coverage, [CROP])
    assert frames.coverage is None and legacy.coverage is None  # old labels: whole frame
    assert landmarks.coverage is not None and landmarks.coverage.shape == (0, 4)
    assert ids[4] not in by_id  # no pixel seen and no box: nothing to learn
    assert examples.unreadable_labels == 0


@pytest.mark.parametrize("augmentation", [False, True])
def test_batches_of_a_crops_label_keep_background_inside_the_crop(
    tmp_path: Path, augmentation: bool
) -> None:
    _store_with_labels(tmp_path, [_label((CROP,)), _label(None)])
    crops, frames = sorted(list_examples(tmp_path, ALL_TRAIN).train, key=lambda e: e.frame_id)

    def targets(example):  # type: ignore[no-untyped-def]
        batches = StoreBatches([example], batch_size=1, augmentation=augmentation, seed=3)
        return batches[0][1][0]

    crop_targets, frame_targets = targets(crops), targets(frames)

    crop_background = _full_background(crop_targets).sum()
    # the crop is 15 % of the frame (31 % at the strongest zoom of the crop jitter)
    assert 0 < crop_background < 0.5 * _full_background(frame_targets).sum()
    if not augmentation:  # the same view: full background exactly where the crop is
        share = covered_share(_anchor_corners(), np.array([CROP]) / SIZE)
        assert (share[_full_background(crop_targets)] >= 0.6).all()
    assert (crop_targets[:, 4] == 1).sum() == (frame_targets[:, 4] == 1).sum() > 0


# -- evaluation ---------------------------------------------------------------------------


def test_evaluation_does_not_count_detections_where_the_cloud_did_not_look(
    tmp_path: Path,
) -> None:
    _store_with_labels(tmp_path, [_label((CROP,)), _label(None)])
    crops, frames = sorted(list_examples(tmp_path, ALL_TRAIN).train, key=lambda e: e.frame_id)
    # the right person, and a more confident box far outside the crop (someone unlabelled)
    found = FrameDetections(
        np.array([PERSON, (500.0, 300.0, 560.0, 450.0)], np.float32), np.array([0.7, 0.9])
    )

    assert seen_detections(crops, found.boxes).tolist() == [True, False]
    assert seen_detections(frames, found.boxes).tolist() == [True, True]
    assert map50([crops], [found]) == pytest.approx(1.0)
    assert map50([frames], [found]) < 0.6  # whole frame: the other box is a false positive


# -- over the wire ------------------------------------------------------------------------


def test_a_crops_round_trip_stores_the_crops_as_coverage(tmp_path: Path, model_dir: Path) -> None:
    # Prepare: a clip frame with two person boxes and a moving region no person explains,
    # as a crops-mode hard case; a loopback gRPC cloud that answers every case
    image = clip_frames([120])[0]
    result = FrameResult(
        frame=0,
        time=1.8e9,
        source="t",
        detections=[
            Detection((147, 124, 172, 187), "person", 0.8),
            Detection((244, 298, 298, 407), "person", 0.7),
            Detection((513, 138, 541, 222), "motion", 0.6),
        ],
        hard=True,
        hard_reasons=["cold_start"],
    )
    privacy = PrivacyFilter.create("crops", str(model_dir))
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store, RecordingCloud() as cloud:
        frame_id = store.add(image, result)
        config = UploaderConfig(target=cloud.target, node_id="node-1", insecure=True)
        uploader = Uploader(store, privacy, config, rng=random.Random(0)).start()
        try:
            assert uploader.drain(120), uploader.stats
        finally:
            uploader.stop()
        stored = store.get(frame_id)

    # Assert: the label names exactly the crops the cloud received, and only those
    (case,) = cloud.received
    sent = [(c.x, c.y, c.x + c.width, c.y + c.height) for c in case.crops.crops]
    assert case.privacy_mode == cloud_pb2.PRIVACY_MODE_CROPS and len(sent) == 3
    assert stored.label_status is LabelStatus.LABELLED
    label = stored.frame_label
    assert label is not None and label.schema_version == LABEL_SCHEMA_VERSION
    assert label.coverage == tuple(tuple(float(v) for v in box) for box in sent)
    assert stored.label["coverage"] == [list(map(float, box)) for box in sent]
    assert [d.label for d in case.detections] == ["person", "person"]  # motion stays home


def test_the_node_judges_exactly_the_boxes_fusion_says_the_teacher_looked_at(
    tmp_path: Path,
) -> None:
    """One rule (``LOOKED_SHARE``) for both sides: a box 55% inside the crop is neither
    judged by the node nor silenced by fusion; one 65% inside is both."""
    from server.cloud.fusion import fuse_detections

    _store_with_labels(tmp_path, [_label((CROP,))])
    (crops,) = list_examples(tmp_path, ALL_TRAIN).train
    x0, y0, x1, y1 = CROP
    height = 100.0
    # 60-px-wide boxes straddling the crop's right edge: 33 px (55%) and 39 px (65%) inside
    boxes = np.array(
        [(x1 - 33.0, y0 + 50, x1 + 27.0, y0 + 50 + height),
         (x1 - 39.0, y0 + 50, x1 + 21.0, y0 + 50 + height)]
    )  # fmt: skip
    assert covered_share(boxes, [CROP]) == pytest.approx([0.55, 0.65])

    assert seen_detections(crops, boxes).tolist() == [False, True]
    edge = [Detection(tuple(float(v) for v in b), "person", 0.45) for b in boxes]
    fused = fuse_detections(edge, [], looked=[CROP])
    # mean of the edge's 0.45 and the cloud's 0.5 (no evidence) or 0 (looked, silent)
    assert [f.score for f in fused] == pytest.approx([0.475, 0.225])


def test_the_nodes_own_guess_where_the_cloud_did_not_look_is_no_cloud_label(
    tmp_path: Path,
) -> None:
    """In a crops label an edge-only box outside every crop trains only as the node's
    own box (from ``self_min_score``, weight ``own_weight``), else it is ignored; so does
    every edge-only box of a landmarks label (no pixel seen); inside a crop, or in a
    whole-frame label, the fused score decides as before."""
    outside_unsure = (500.0, 300.0, 560.0, 450.0)  # no crop holds it
    outside_sure = (400.0, 300.0, 460.0, 450.0)
    inside = (160.0, 110.0, 220.0, 260.0)  # in CROP
    boxes = (
        LabelBox(PERSON, "person", 0.9, edge_score=0.8, cloud_score=0.95),
        LabelBox(outside_unsure, "person", 0.4, edge_score=0.3),  # fused with "no evidence"
        LabelBox(outside_sure, "person", 0.7, edge_score=0.95),
        LabelBox(inside, "person", 0.35, edge_score=0.7),  # looked at, edge-confident
    )

    def label(coverage: tuple[tuple[float, float, float, float], ...] | None) -> FrameLabel:
        return FrameLabel(
            boxes=boxes, source="cloud", fusion_method="mean", teacher_version="t",
            frame_width=640, frame_height=480, coverage=coverage,
        )  # fmt: skip

    _store_with_labels(tmp_path, [label((CROP,)), label(None), label(())])
    rules = ExampleRules(held_out_share=0.0, own_weight=0.5, self_min_score=0.9)
    crops, frame, landmarks = sorted(list_examples(tmp_path, rules).train, key=lambda e: e.frame_id)

    assert crops.boxes.tolist() == [list(PERSON), list(outside_sure), list(inside)]
    assert crops.weights.tolist() == [1.0, 0.5, 1.0]
    assert crops.ignore.tolist() == [list(outside_unsure)]
    # landmarks: the cloud saw no pixel, so even the box "inside" is the node's guess
    assert landmarks.boxes.tolist() == [list(PERSON), list(outside_sure)]
    assert landmarks.weights.tolist() == [1.0, 0.5]
    assert landmarks.ignore.tolist() == [list(outside_unsure), list(inside)]
    # a whole frame: the fused score alone decides
    assert len(frame.boxes) == 4 and frame.weights.tolist() == [1.0] * 4
    assert len(frame.ignore) == 0


def test_a_box_the_teacher_looked_at_and_did_not_find_trains_as_background(
    tmp_path: Path,
) -> None:
    """The answer to a hard case about the node's own box is often "nobody here": an
    edge-only box below the label floor where the cloud looked. Its anchors are
    background at full weight (a window the student keeps scoring in its band must be
    learnt as background, or every site asks about it again); a weak teacher box (both
    sources, below the floor) stays an ignored region, and so does the node's unsure box
    where the cloud did not look."""
    rejected = (270.0, 110.0, 320.0, 200.0)  # inside CROP, no teacher box: the teacher's no
    weak_pair = (160.0, 290.0, 200.0, 350.0)  # inside CROP, the teacher unsure too
    unseen = (500.0, 300.0, 560.0, 450.0)  # outside CROP: the cloud never saw it
    boxes = (
        LabelBox(PERSON, "person", 0.9, edge_score=0.8, cloud_score=0.95),
        LabelBox(rejected, "person", 0.2, edge_score=0.4),
        LabelBox(weak_pair, "person", 0.25, edge_score=0.35, cloud_score=0.15),
        LabelBox(unseen, "person", 0.2, edge_score=0.4),
    )

    def label(coverage: tuple[tuple[float, float, float, float], ...] | None) -> FrameLabel:
        return FrameLabel(
            boxes=boxes, source="cloud", fusion_method="mean", teacher_version="t",
            frame_width=640, frame_height=480, coverage=coverage,
        )  # fmt: skip

    _store_with_labels(tmp_path, [label((CROP,)), label(None)])
    crops, frame = sorted(list_examples(tmp_path, ALL_TRAIN).train, key=lambda e: e.frame_id)

    assert crops.boxes.tolist() == [list(PERSON)] == frame.boxes.tolist()
    assert crops.ignore.tolist() == [list(weak_pair), list(unseen)]
    assert frame.ignore.tolist() == [list(weak_pair)]  # a whole frame: it looked everywhere
    targets = StoreBatches([crops], batch_size=1, augmentation=False, seed=3)[0][1][0]
    anchors = _anchor_corners()
    near_rejected = iou_matrix(anchors, np.array([rejected]) / SIZE)[:, 0] >= 0.4
    near_weak = iou_matrix(anchors, np.array([weak_pair]) / SIZE)[:, 0] >= 0.4
    assert near_rejected.sum() > 0 and near_weak.sum() > 0
    assert (targets[near_rejected, 4] == 0).all() and (targets[near_rejected, 5] == 1.0).all()
    assert (targets[near_weak, 4] == -1).all()
