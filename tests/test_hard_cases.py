"""Hard-case selection: reasons, rate limit, duplicate suppression, the event feed."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.hard_cases import (
    DisagreementCheck,
    HardCaseEvent,
    HardCaseFeed,
    HardCasePolicy,
    HardCaseSelector,
    Reason,
    Suppression,
    TokenBucket,
    dhash,
    find_hard_reasons,
)
from fedge.core.records import Detection, Person

CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"
POLICY = HardCasePolicy()


def _person(box: tuple[float, float, float, float], score: float = 0.9) -> Person:
    return Person(landmarks=np.zeros((33, 4), dtype=np.float32), score=score, box=box)


def _det(label: str, score: float, box: tuple[float, float, float, float]) -> Detection:
    return Detection(box=box, label=label, score=score)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    cap = cv2.VideoCapture(str(CLIP))
    image = cap.read()[1]
    cap.release()
    return image


def test_confident_frame_is_not_hard() -> None:
    pose = _person((100, 100, 200, 400))
    boxes = [_det("person", 0.92, (105, 95, 205, 405)), _det("face", 0.9, (130, 110, 170, 150))]
    assert find_hard_reasons([pose], boxes, POLICY, {"person", "face"}) == ()


def test_score_in_uncertainty_band_is_hard() -> None:
    reasons = find_hard_reasons([], [_det("face", 0.45, (0, 0, 20, 20))], POLICY, {"face"})
    assert reasons == (Reason.UNCERTAIN_SCORE,)


def test_confident_pose_without_person_box_disagrees() -> None:
    pose = _person((100, 100, 200, 400))
    far_box = _det("person", 0.9, (400, 100, 500, 400))
    assert Reason.POSE_SSD_DISAGREE in find_hard_reasons([pose], [], POLICY, {"person"})
    assert Reason.POSE_SSD_DISAGREE in find_hard_reasons([], [far_box], POLICY, {"person"})


def test_face_detector_checks_faces_inside_poses_only() -> None:
    pose = _person((100, 100, 200, 400))
    inside = _det("face", 0.9, (130, 110, 170, 150))
    outside = _det("face", 0.9, (400, 50, 440, 90))
    faces = {"face"}
    assert find_hard_reasons([pose], [inside], POLICY, faces) == ()
    assert find_hard_reasons([pose], [], POLICY, faces) == ()  # seen from behind: fine
    assert find_hard_reasons([pose, _person((380, 30, 480, 300))], [outside], POLICY, faces) == ()
    assert find_hard_reasons([pose], [outside], POLICY, faces) == (Reason.POSE_SSD_DISAGREE,)


def test_person_check_is_skipped_when_detector_has_no_person_label() -> None:
    pose = _person((100, 100, 200, 400))
    assert find_hard_reasons([pose], [], POLICY, {"face"}) == ()


def test_disagreement_checks_are_configurable() -> None:
    policy = HardCasePolicy(disagreement=(DisagreementCheck("face", "inside", True),))
    assert find_hard_reasons([_person((0, 0, 50, 100))], [], policy, {"face"}) == (
        Reason.POSE_SSD_DISAGREE,
    )


def test_overlapping_boxes_of_different_labels_with_close_scores_have_small_margin() -> None:
    boxes = [_det("dog", 0.81, (10, 10, 100, 100)), _det("cat", 0.78, (12, 8, 98, 102))]
    assert find_hard_reasons([], boxes, POLICY, {"dog", "cat"}) == (Reason.SMALL_MARGIN,)
    apart = [_det("dog", 0.81, (10, 10, 100, 100)), _det("cat", 0.78, (300, 8, 398, 102))]
    assert find_hard_reasons([], apart, POLICY, {"dog", "cat"}) == ()


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate_per_s=1.0, capacity=2)
    taken = [bucket.take(t * 0.1) for t in range(50)]  # 5 s at 10 FPS
    assert sum(taken) == 2 + 4  # the burst, then one a second


def test_static_scene_yields_one_hard_case_then_duplicates(scene: np.ndarray) -> None:
    selector = HardCaseSelector(HardCasePolicy(max_per_minute=600, burst=100), {"face"})
    rng = np.random.default_rng(0)
    uncertain = [_det("face", 0.4, (10, 10, 30, 30))]
    decisions = []
    for i in range(100):  # 10 s of one scene with sensor noise
        noisy = cv2.add(scene, rng.integers(0, 6, scene.shape, dtype=np.uint8))
        decisions.append(selector.decide(noisy, [], uncertain, 1000.0 + i * 0.1))

    assert sum(d.hard for d in decisions) == 1
    assert all(d.suppressed == Suppression.DUPLICATE for d in decisions[1:])
    assert decisions[1].record_reasons() == ["uncertain_score", "suppressed:duplicate"]
    assert selector.stats.duplicates == 99


def test_duplicate_window_expires(scene: np.ndarray) -> None:
    selector = HardCaseSelector(HardCasePolicy(dedup_window_s=30.0), {"face"})
    uncertain = [_det("face", 0.4, (10, 10, 30, 30))]
    assert selector.decide(scene, [], uncertain, 0.0).hard
    assert not selector.decide(scene, [], uncertain, 20.0).hard
    assert selector.decide(scene, [], uncertain, 31.0).hard


def test_rate_limit_holds_on_a_long_sequence_of_distinct_hard_frames() -> None:
    policy = HardCasePolicy(max_per_minute=6, burst=3)
    selector = HardCaseSelector(policy, {"face"})
    rng = np.random.default_rng(1)
    uncertain = [_det("face", 0.5, (10, 10, 30, 30))]
    hard_times = []
    for i in range(600):  # 5 minutes at 2 FPS, every frame different and uncertain
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        if selector.decide(image, [], uncertain, i * 0.5).hard:
            hard_times.append(i * 0.5)

    assert len(hard_times) <= 3 + 6 * 5
    assert len(hard_times) >= 6 * 5 - 1
    for start in range(0, 300, 60):  # never more than burst + rate in any minute
        assert sum(start <= t < start + 60 for t in hard_times) <= 3 + 6
    assert selector.stats.rate_limited == 600 - len(hard_times) - selector.stats.duplicates


def test_dhash_is_stable_under_noise_and_changes_with_content(scene: np.ndarray) -> None:
    noisy = cv2.add(scene, np.full(scene.shape, 3, dtype=np.uint8))
    flipped = cv2.flip(scene, 1)
    assert (dhash(scene) ^ dhash(noisy)).bit_count() <= 2
    assert (dhash(scene) ^ dhash(flipped)).bit_count() > 16


def test_feed_drops_oldest_when_full_and_ends_on_close() -> None:
    feed = HardCaseFeed(maxsize=3)
    seen: list[int] = []
    feed.subscribe(lambda event: seen.append(event.frame_index))
    for i in range(5):
        feed.publish(HardCaseEvent(i, i, float(i), "test", ("uncertain_score",)))
    consumed: list[int] = []
    reader = threading.Thread(target=lambda: consumed.extend(e.frame_index for e in feed))
    reader.start()
    feed.close()
    reader.join(timeout=5)

    assert consumed == [2, 3, 4]
    assert seen == [0, 1, 2, 3, 4]
    assert feed.dropped == 2
