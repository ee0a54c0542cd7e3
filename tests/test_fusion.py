"""Confidence fusion: matching, the methods, the unmatched-box rule, calibration and ECE."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fedge.core.errors import ConfigError
from fedge.core.geometry import iou_matrix
from fedge.core.records import Detection, Person
from server.cloud.calibration import (
    Calibration,
    CalibrationError,
    CalibrationSample,
    fit_calibration,
    sigmoid,
)
from server.cloud.cases import CropImage, DecodedCase
from server.cloud.fusion import (
    FUSION_METHODS,
    case_looked,
    edge_person_detections,
    expected_calibration_error,
    fuse_detections,
    fuse_scores,
    label_fused_boxes,
    match_boxes,
    method_ece,
)
from server.cloud.person_boxes import landmark_person_box


def _person(box: tuple[float, float, float, float], score: float) -> Detection:
    return Detection(box=box, label="person", score=score)


def test_mean_of_an_edge_0_8_and_a_cloud_0_9_is_0_85() -> None:
    # Prepare
    edge = [_person((10, 10, 50, 110), 0.8)]
    cloud = [_person((12, 10, 52, 112), 0.9)]

    # Execute
    fused = fuse_detections(edge, cloud, "mean")

    # Assert
    assert len(fused) == 1
    assert fused[0].score == pytest.approx(0.85)
    assert (fused[0].edge_score, fused[0].cloud_score) == (0.8, 0.9)


def test_fused_box_is_the_score_weighted_average_of_the_pair() -> None:
    # Prepare
    edge = [_person((0, 0, 100, 100), 0.2)]
    cloud = [_person((10, 0, 110, 100), 0.6)]

    # Execute
    (fused,) = fuse_detections(edge, cloud, "mean")

    # Assert: x1 = (0.2 * 0 + 0.6 * 10) / 0.8
    assert fused.box == pytest.approx((7.5, 0.0, 107.5, 100.0))


def test_matching_is_optimal_where_greedy_highest_iou_first_would_lose_a_pair() -> None:
    # Prepare: IoU(E1, C1) = 0.82 is the best single pair, but taking it leaves E2 with
    # only C2 (IoU 0.35 < 0.5); pairing E1-C2 (0.57) and E2-C1 (0.75) matches both.
    edge_boxes = [(0, 0, 10, 10), (2, 0, 13, 10)]
    cloud_boxes = [(1, 0, 11, 10), (-4, 0, 8, 10)]
    from fedge.core.geometry import iou_matrix

    overlaps = iou_matrix(edge_boxes, cloud_boxes)
    assert overlaps[0, 0] == overlaps.max() and overlaps[1, 1] < 0.5 <= overlaps[0, 1]

    # Execute
    pairs = match_boxes(edge_boxes, cloud_boxes, iou_threshold=0.5)
    fused = fuse_detections(
        [_person(b, 0.7) for b in edge_boxes], [_person(b, 0.9) for b in cloud_boxes]
    )

    # Assert
    assert pairs == [(0, 1), (1, 0)]
    assert len(fused) == 2
    assert all(f.edge_score is not None and f.cloud_score is not None for f in fused)


def test_pairs_below_the_iou_threshold_are_not_matched() -> None:
    # Prepare: IoU of the two boxes is 1/3
    edge = [_person((0, 0, 10, 10), 0.8)]
    cloud = [_person((5, 0, 15, 10), 0.9)]

    # Execute
    loose = fuse_detections(edge, cloud, iou_threshold=0.3)
    strict = fuse_detections(edge, cloud, iou_threshold=0.5)

    # Assert
    assert len(loose) == 1
    assert len(strict) == 2


def test_boxes_of_different_labels_are_never_matched() -> None:
    # Prepare
    edge = [Detection((0, 0, 10, 10), "face", 0.8)]
    cloud = [_person((0, 0, 10, 10), 0.9)]

    # Execute
    fused = fuse_detections(edge, cloud)

    # Assert
    assert sorted((f.label, f.edge_score, f.cloud_score) for f in fused) == [
        ("face", 0.8, None),
        ("person", None, 0.9),
    ]


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_unmatched_boxes_are_fused_with_the_silent_sources_absent_score(method: str) -> None:
    # Prepare: one box only the edge reported, one only the cloud reported
    calibration = Calibration(
        edge_temperature=2.0, cloud_temperature=0.5, edge_weight=0.3,
        edge_absent=0.6, cloud_absent=0.2,
    )  # fmt: skip
    edge = [_person((0, 0, 10, 20), 0.8)]
    cloud = [_person((100, 0, 110, 20), 0.9)]

    # Execute
    fused = {
        ("edge" if f.cloud_score is None else "cloud"): f
        for f in fuse_detections(edge, cloud, method, calibration=calibration)
    }

    # Assert: the same formula as a matched pair, with the absent score in the gap
    logit = np.log(np.array([0.8, 0.9, 0.6, 0.2]) / (1 - np.array([0.8, 0.9, 0.6, 0.2])))
    expected = {
        "mean": (0.5 * 0.8 + 0.5 * 0.2, 0.5 * 0.6 + 0.5 * 0.9),
        "logit": (
            float(sigmoid(0.3 * logit[0] / 2.0 + 0.7 * logit[3])),
            float(sigmoid(0.3 * logit[2] + 0.7 * logit[1] / 0.5)),
        ),
        "edge": (0.8, 0.6),
        "cloud": (0.2, 0.9),
    }[method]
    assert set(fused) == {"edge", "cloud"}
    assert fused["edge"].box == (0, 0, 10, 20) and fused["cloud"].box == (100, 0, 110, 20)
    assert (fused["edge"].score, fused["cloud"].score) == pytest.approx(expected)
    assert (fused["edge"].edge_score, fused["edge"].cloud_score) == (0.8, None)


def test_without_calibration_silence_is_no_evidence() -> None:
    # Execute
    mean = fuse_scores([0.8, np.nan], [np.nan, 0.9], "mean")
    logit = fuse_scores([0.8, np.nan], [np.nan, 0.9], "logit")

    # Assert: an absent score of 0.5 pulls toward 0.5 and adds 0 log-odds
    assert mean == pytest.approx([0.65, 0.7])
    assert logit == pytest.approx(sigmoid(0.5 * np.log([4.0, 9.0])))


@pytest.mark.parametrize(
    ("looked", "expected"),
    [
        ((), (0.65, 0.65, 0.65)),  # landmarks: the teacher saw no pixel
        (((0, 0, 100, 100),), (0.4, 0.65, 0.65)),  # one crop over the first box only
        (None, (0.4, 0.4, 0.4)),  # frames: the teacher saw everything
    ],
)
def test_without_calibration_the_clouds_silence_where_it_looked_scores_zero(
    looked: tuple | None,
    expected: tuple[float, float, float],  # type: ignore[type-arg]
) -> None:
    # Prepare: three edge-only boxes: inside the crop, outside it, and half inside (less
    # than LOOKED_SHARE of it, so the teacher did not see enough of it to judge)
    edge = [
        _person((10, 10, 50, 90), 0.8),
        _person((200, 10, 240, 90), 0.8),
        _person((80, 10, 120, 90), 0.8),
    ]

    # Execute
    fused = fuse_detections(edge, [], "mean", looked=looked)

    # Assert: 0.5 * 0.8 + 0.5 * 0 where it looked, 0.5 * 0.8 + 0.5 * 0.5 elsewhere
    scores = {f.box[0]: f.score for f in fused}
    assert (scores[10], scores[200], scores[80]) == pytest.approx(expected)
    assert all(f.cloud_score is None for f in fused)  # the cloud reported none of them


def test_a_fitted_calibrations_absent_score_holds_where_the_teacher_looked() -> None:
    # Prepare
    calibration = Calibration(cloud_absent=0.2)

    # Execute
    (fused,) = fuse_detections(
        [_person((10, 10, 50, 90), 0.8)], [], "mean", calibration=calibration, looked=None
    )

    # Assert: the measured absent score, not the uncalibrated zero
    assert fused.score == pytest.approx(0.5 * 0.8 + 0.5 * 0.2)


def test_case_looked_is_what_each_mode_showed_the_teacher() -> None:
    # Prepare
    crop = CropImage(np.zeros((30, 20, 3), np.uint8), x=5, y=7)
    common = dict(
        node_id="n", frame_id=1, capture_time=0.0, model_version="", frame_width=64,
        frame_height=48, detections=(), persons=(), hard_reasons=(),
    )  # fmt: skip

    # Execute
    crops = DecodedCase(mode="crops", frame=None, crops=(crop,), **common)  # type: ignore[arg-type]
    frames = DecodedCase(
        mode="frames",
        frame=np.zeros((48, 64, 3), np.uint8),
        crops=(),
        **common,  # type: ignore[arg-type]
    )
    landmarks = DecodedCase(mode="landmarks", frame=None, crops=(), **common)  # type: ignore[arg-type]

    # Assert
    assert case_looked(crops) == ((5.0, 7.0, 25.0, 37.0),)
    assert case_looked(frames) is None
    assert case_looked(landmarks) == ()


def test_a_real_teacher_scores_an_unconfirmed_edge_box_in_a_crop_below_the_label_floor() -> None:
    # Prepare: a clip frame; the edge reports a person at 0.45 on a patch of empty floor
    # (the HOG teacher finds nobody there) and sends it as a crops case
    from clients.privacy_filter import PrivacyMode, build_hard_case
    from clients.tasks.detector_data import ExampleRules
    from fedge.core.records import FrameResult
    from server.cloud.cases import decode_case
    from server.cloud.inference import infer_case
    from server.cloud.teacher import build_teacher
    from tests.uplink_support import clip_frames

    image = clip_frames([120])[0]
    box = (330.0, 400.0, 380.0, 470.0)
    teacher = build_teacher(members=["hog"])
    result = FrameResult(frame=0, time=0.0, source="t", detections=[_person(box, 0.45)])
    outcomes = {}
    for mode in ("crops", "landmarks"):
        case = build_hard_case(
            result, frame_id=1, frame_width=image.shape[1], frame_height=image.shape[0],
            node_id="n", mode=PrivacyMode(mode),
        )  # fmt: skip
        if mode == "crops":
            x1, y1, x2, y2 = (int(v) for v in (310, 380, 400, 480))
            ok, data = cv2.imencode(".jpg", image[y1:y2, x1:x2])
            assert ok
            case.crops.crops.add(jpeg=data.tobytes(), x=x1, y=y1, width=x2 - x1, height=y2 - y1)
        decoded = decode_case(case)
        assert not [d for d in teacher.detect(decoded) if iou_matrix([box], [d.box])[0, 0] > 0.1]

        # Execute
        reply = infer_case(decoded, teacher, "mean")
        outcomes[mode] = next(b.score for b in reply.boxes if b.has_edge and not b.has_cloud)

    # Assert: below the label floor where the teacher looked at the box, above it where it
    # saw no pixel (landmarks: silence is no evidence)
    assert outcomes["crops"] == pytest.approx(0.225)
    assert outcomes["crops"] < ExampleRules().label_min_score
    assert outcomes["landmarks"] == pytest.approx(0.475)


def test_logit_uses_the_calibrated_log_odds_pool() -> None:
    # Prepare
    calibration = Calibration(edge_temperature=2.0, cloud_temperature=0.5, edge_weight=0.25)

    # Execute
    fused = fuse_scores([0.8], [0.9], "logit", calibration=calibration)

    # Assert
    expected = sigmoid(0.25 * np.log(4.0) / 2.0 + 0.75 * np.log(9.0) / 0.5)
    assert fused == pytest.approx(expected)


def test_baselines_keep_their_own_source_score() -> None:
    # Execute
    edge = fuse_scores([0.8, 0.3], [0.9, 0.1], "edge")
    cloud = fuse_scores([0.8, 0.3], [0.9, 0.1], "cloud")

    # Assert
    assert edge == pytest.approx([0.8, 0.3])
    assert cloud == pytest.approx([0.9, 0.1])


def test_an_unknown_method_is_a_config_error_listing_the_methods() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="mean, logit, cloud, edge"):
        fuse_detections([], [], "sum")


@pytest.mark.parametrize(
    "options", [{"edge_weight": 1.5}, {"iou_threshold": 0.0}, {"edge_weight": -0.1}]
)
def test_out_of_range_weight_or_threshold_is_a_config_error(options: dict[str, float]) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="must lie"):
        fuse_detections([_person((0, 0, 1, 1), 0.5)], [], "mean", **options)


def _synthetic_samples(seed: int, n: int) -> list[CalibrationSample]:
    """Boxes from two sources whose scores are over- and under-confident.

    Each box is a real person with probability 1/2. Each source sees independent
    Gaussian evidence ``z = mu * (+-1) + N(0, 1)``, whose calibrated probability is
    ``sigma(2 mu z)``; the node reports ``sigma(3 * 2 mu z)`` (over-confident, like a small
    int8 model) and the teacher ``sigma(0.4 * 2 mu z)`` (under-confident, like a box
    fusion that averages scores). The node misses 40% of the people (far, small ones)
    and the teacher 5%; the teacher also reports fewer false boxes.
    """
    rng = np.random.default_rng(seed)
    real = rng.random(n) < 0.5
    sign = np.where(real, 1.0, -1.0)
    edge = sigmoid(3.0 * 2 * 1.0 * (1.0 * sign + rng.normal(size=n)))
    cloud = sigmoid(0.4 * 2 * 1.5 * (1.5 * sign + rng.normal(size=n)))
    edge_seen = rng.random(n) < np.where(real, 0.6, 0.5)
    cloud_seen = rng.random(n) < np.where(real, 0.95, 0.7)
    return [
        CalibrationSample(
            edge_score=float(edge[i]) if edge_seen[i] else None,
            cloud_score=float(cloud[i]) if cloud_seen[i] else None,
            correct=bool(real[i]),
        )
        for i in range(n)
        if edge_seen[i] or cloud_seen[i]
    ]


def test_logit_calibration_lowers_ece_on_a_held_out_split() -> None:
    # Prepare
    samples = _synthetic_samples(seed=7, n=4000)
    fit_split, held_out = samples[::2], samples[1::2]

    # Execute
    calibration = fit_calibration(fit_split)
    before = method_ece(held_out)
    after = method_ece(held_out, calibration)

    # Assert: the over-confident node is softened, the under-confident teacher sharpened
    assert calibration.edge_temperature > 1.5 and calibration.cloud_temperature < 0.7
    assert calibration.fitted_on == len(fit_split)
    assert after["logit"] < 0.75 * before["logit"]
    assert after["logit"] < min(before["mean"], before["edge"], before["cloud"])


def test_ece_of_calibrated_scores_is_small_and_of_overconfident_ones_large() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    p = rng.random(20000)
    outcomes = rng.random(20000) < p

    # Execute
    calibrated = expected_calibration_error(p, outcomes, bins=10)
    overconfident = expected_calibration_error(np.where(p > 0.5, 1.0, 0.0), outcomes, bins=10)

    # Assert: |accuracy - confidence| of 0/1 scores is E[min(p, 1 - p)] = 0.25
    assert calibrated < 0.02
    assert overconfident == pytest.approx(0.25, abs=0.02)


def test_ece_bins_are_equal_width_with_the_last_one_closed() -> None:
    # Execute: bin [0.9, 1.0] holds 0.95 and 1.0 (mean 0.975, accuracy 0.5)
    ece = expected_calibration_error([0.95, 1.0], [True, False], bins=10)

    # Assert
    assert ece == pytest.approx(0.475)


def test_calibration_json_round_trip(tmp_path: Path) -> None:
    # Prepare
    calibration = fit_calibration(_synthetic_samples(seed=1, n=400))
    path = tmp_path / "calibration.json"

    # Execute
    calibration.save(path)
    loaded = Calibration.load(path)

    # Assert
    assert loaded == calibration
    assert json.loads(path.read_text())["kind"] == "fedge-fusion-calibration"


def test_a_corrupt_calibration_file_is_a_calibration_error(tmp_path: Path) -> None:
    # Prepare
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"edge": 1}')

    # Execute / Assert
    with pytest.raises(CalibrationError, match="not JSON"):
        Calibration.load(broken)
    with pytest.raises(CalibrationError, match="not a fusion calibration"):
        Calibration.load(foreign)
    with pytest.raises(CalibrationError, match="cannot read"):
        Calibration.load(tmp_path / "missing.json")


def test_fitting_needs_both_outcomes_per_source() -> None:
    # Prepare: every edge-scored box is correct
    samples = [CalibrationSample(0.9, 0.8, True)] * 5 + [CalibrationSample(None, 0.2, False)] * 5

    # Execute / Assert
    with pytest.raises(CalibrationError, match="edge scores .* 5 correct and 0 wrong"):
        fit_calibration(samples)


def test_label_fused_boxes_marks_matches_with_the_reference_correct() -> None:
    # Prepare
    fused = fuse_detections(
        [_person((0, 0, 10, 20), 0.8)], [_person((100, 0, 110, 20), 0.9)], "mean"
    )
    truth = [_person((1, 0, 11, 20), 1.0)]

    # Execute
    samples = label_fused_boxes(fused, truth)

    # Assert
    assert sorted((s.edge_score, s.correct) for s in samples if s.edge_score) == [(0.8, True)]
    assert [s.correct for s in samples if s.edge_score is None] == [False]


def _case(detections: tuple[Detection, ...], persons: tuple[Person, ...]) -> DecodedCase:
    return DecodedCase(
        node_id="node-1", frame_id=1, capture_time=0.0, mode="landmarks", model_version="v1",
        frame_width=640, frame_height=480, detections=detections, persons=persons,
        hard_reasons=(), frame=None, crops=(),
    )  # fmt: skip


def _standing_pose(x: float, top: float, height: float) -> np.ndarray:
    """33 landmarks spread over a standing person's skeleton, all visible."""
    ys = np.linspace(top, top + height, 33)
    xs = x + 10 * np.sin(np.arange(33))
    return np.stack([xs, ys, np.zeros(33), np.ones(33)], axis=1).astype(np.float32)


def test_edge_person_evidence_is_person_detections_plus_pose_boxes_once_per_person() -> None:
    # Prepare: a pose, the node's detector box of the same person, a face, another pose
    first = _standing_pose(100, 100, 200)
    second = _standing_pose(400, 50, 100)
    pose_box = landmark_person_box(first, 640, 480)
    case = _case(
        detections=(
            Detection(pose_box, "person", 0.6),
            Detection((90, 90, 120, 120), "face", 0.9),
        ),
        persons=(Person(first, 0.95, (0, 0, 1, 1)), Person(second, 0.7, (0, 0, 1, 1))),
    )

    # Execute
    evidence = edge_person_detections(case)

    # Assert
    assert [(d.label, d.score) for d in evidence] == [("person", 0.95), ("person", 0.7)]
    assert evidence[0].box == pose_box
    assert evidence[1].box == landmark_person_box(second, 640, 480)


def test_landmark_box_pads_the_skeleton_and_ignores_invisible_landmarks() -> None:
    # Prepare: skeleton from y=100 to 300, x within 90..110; one stray invisible point
    pose = _standing_pose(100, 100, 200)
    pose[5] = (600, 450, 0, 0.1)

    # Execute
    box = landmark_person_box(pose, 640, 480)

    # Assert: padded by 0.1 * 200 on top, 0.03 * 200 below, 0.05 * 200 at the sides
    x1, y1 = pose[pose[:, 3] > 0.5, :2].min(axis=0)
    x2, y2 = pose[pose[:, 3] > 0.5, :2].max(axis=0)
    assert box == pytest.approx((x1 - 10, y1 - 20, x2 + 10, y2 + 6), abs=1e-4)
