"""Hard-case selection: reasons, rate limit, duplicate suppression, the event feed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fake_clock import FakeClock

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


def test_with_top_down_pose_only_the_best_n_person_boxes_need_a_pose() -> None:
    # Prepare: 4 confident people, poses on the 2 best (--max-persons 2)
    boxes = [_det("person", s, (100 * i, 100, 100 * i + 80, 300)) for i, s in
             enumerate((0.95, 0.9, 0.8, 0.7))]  # fmt: skip
    poses = [_person(boxes[0].box), _person(boxes[1].box)]
    top2 = HardCasePolicy(disagreement=(DisagreementCheck("person", "iou", True, max_posed=2),))
    # Execute / Assert: the unposed 3rd and 4th boxes are expected, not disagreement
    assert find_hard_reasons(poses, boxes, top2, {"person"}) == ()
    assert find_hard_reasons(poses, boxes, POLICY, {"person"}) == (Reason.POSE_SSD_DISAGREE,)
    # ... but a missing pose among the best 2 still is
    assert find_hard_reasons(poses[:1], boxes, top2, {"person"}) == (Reason.POSE_SSD_DISAGREE,)


def test_overlapping_boxes_of_different_labels_with_close_scores_have_small_margin() -> None:
    boxes = [_det("dog", 0.81, (10, 10, 100, 100)), _det("cat", 0.78, (12, 8, 98, 102))]
    assert find_hard_reasons([], boxes, POLICY, {"dog", "cat"}) == (Reason.SMALL_MARGIN,)
    apart = [_det("dog", 0.81, (10, 10, 100, 100)), _det("cat", 0.78, (300, 8, 398, 102))]
    assert find_hard_reasons([], apart, POLICY, {"dog", "cat"}) == ()


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate_per_s=1.0, capacity=2)
    taken = [bucket.take(t * 0.1) for t in range(50)]  # 5 s at 10 FPS
    assert sum(taken) == 2 + 4  # the burst, then one a second


@pytest.mark.parametrize("epoch", [0.0, 1_764_000_000.0])
def test_token_bucket_at_the_frame_rate_gives_every_frame_a_token(epoch: float) -> None:
    """Absolute frame times (epoch seconds) round the 0.1 s gap below 0.1: without the
    tolerance a bucket refilling one token per frame skipped about 2 frames in 5."""
    bucket = TokenBucket(rate_per_s=10.0, capacity=1.0)
    assert all(bucket.take(epoch + index / 10.0) for index in range(200))
    slower = TokenBucket(rate_per_s=5.0, capacity=1.0)  # half the frame rate: every other
    assert sum(slower.take(epoch + index / 10.0) for index in range(200)) == 100


def test_static_scene_yields_one_hard_case_then_duplicates(scene: np.ndarray) -> None:
    clock = FakeClock(start=1000.0, step=0.1)  # 10 FPS
    policy = HardCasePolicy(max_per_minute=600, burst=100)
    selector = HardCaseSelector(policy, {"face"}, clock=clock)
    rng = np.random.default_rng(0)
    uncertain = [_det("face", 0.4, (10, 10, 30, 30))]
    decisions = []
    for _ in range(100):  # 10 s of one scene with sensor noise
        noisy = cv2.add(scene, rng.integers(0, 6, scene.shape, dtype=np.uint8))
        decisions.append(selector.decide(noisy, [], uncertain))

    assert sum(d.hard for d in decisions) == 1
    assert all(d.suppressed == Suppression.DUPLICATE for d in decisions[1:])
    assert decisions[1].record_reasons() == ["uncertain_score", "suppressed:duplicate"]
    assert selector.stats.duplicates == 99


def test_duplicate_window_expires_on_the_selector_clock(scene: np.ndarray) -> None:
    clock = FakeClock()
    selector = HardCaseSelector(HardCasePolicy(dedup_window_s=30.0), {"face"}, clock=clock)
    uncertain = [_det("face", 0.4, (10, 10, 30, 30))]
    assert selector.decide(scene, [], uncertain).hard
    clock.advance(20.0)
    assert not selector.decide(scene, [], uncertain).hard
    clock.advance(11.0)
    assert selector.decide(scene, [], uncertain).hard


def test_explicit_decision_time_overrides_the_clock(scene: np.ndarray) -> None:
    clock = FakeClock()
    selector = HardCaseSelector(HardCasePolicy(dedup_window_s=30.0), {"face"}, clock=clock)
    uncertain = [_det("face", 0.4, (10, 10, 30, 30))]
    assert selector.decide(scene, [], uncertain, now=0.0).hard
    assert selector.decide(scene, [], uncertain, now=31.0).hard
    assert clock.reads == 0


def test_rate_limit_runs_on_the_injected_clock_not_the_wall_clock() -> None:
    # Prepare: a clock that stands still while real time passes.
    clock = FakeClock()
    selector = HardCaseSelector(HardCasePolicy(max_per_minute=60, burst=3), {"face"}, clock=clock)
    rng = np.random.default_rng(2)
    uncertain = [_det("face", 0.5, (10, 10, 30, 30))]

    def distinct_frame() -> np.ndarray:
        return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)

    # Execute: ten distinct hard frames at one instant, 1.5 s of real time apart in all,
    # then one second later on the clock.
    at_start = []
    for _ in range(10):
        at_start.append(selector.decide(distinct_frame(), [], uncertain).hard)
        time.sleep(0.15)
    clock.advance(1.0)
    one_second_later = [selector.decide(distinct_frame(), [], uncertain).hard for _ in range(3)]

    # Assert: the burst, then exactly the one token a second of clock time adds.
    assert at_start == [True] * 3 + [False] * 7
    assert one_second_later == [True, False, False]
    assert selector.stats.rate_limited == 7 + 2


def test_rate_limit_holds_on_a_long_sequence_of_distinct_hard_frames() -> None:
    policy = HardCasePolicy(max_per_minute=6, burst=3)
    clock = FakeClock()
    selector = HardCaseSelector(policy, {"face"}, clock=clock)
    rng = np.random.default_rng(1)
    uncertain = [_det("face", 0.5, (10, 10, 30, 30))]
    hard_times = []
    for _ in range(600):  # 5 minutes at 2 FPS, every frame different and uncertain
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        now = clock.now
        if selector.decide(image, [], uncertain).hard:
            hard_times.append(now)
        clock.advance(0.5)

    assert len(hard_times) <= 3 + 6 * 5
    assert len(hard_times) >= 6 * 5 - 1
    for start in range(0, 300, 60):  # never more than burst + rate in any minute
        assert sum(start <= t < start + 60 for t in hard_times) <= 3 + 6
    assert selector.stats.rate_limited == 600 - len(hard_times) - selector.stats.duplicates


def test_cold_start_samples_distinct_frames_at_its_own_rate() -> None:
    # Prepare: no person detector yet; 5 minutes at 2 FPS of frames nobody is unsure of
    policy = HardCasePolicy(max_per_minute=6, burst=3, cold_start_per_minute=2)
    clock = FakeClock()
    selector = HardCaseSelector(policy, {"face"}, clock=clock, cold_start=True)
    rng = np.random.default_rng(2)
    sampled = []
    # Execute
    for _ in range(600):
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        decision = selector.decide(image, [], [])
        if decision.hard:
            sampled.append((clock.now, decision.reasons))
        assert decision.suppressed is None  # an unsampled frame is just not hard
        clock.advance(0.5)
    # Assert: about 2 a minute, tagged cold_start; never in a static scene twice
    assert all(reasons == (Reason.COLD_START,) for _, reasons in sampled)
    assert 2 * 5 - 1 <= len(sampled) <= 1 + 2 * 5
    static = HardCaseSelector(policy, {"face"}, clock=FakeClock(), cold_start=True)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    picks = 0
    static_clock = static.clock
    for _ in range(590):  # just under the 300 s duplicate window
        picks += static.decide(frame, [], []).hard
        static_clock.advance(0.5)  # type: ignore[attr-defined]
    assert picks == 1
    # Once a detector is installed the node selects by uncertainty alone
    assert (
        not HardCaseSelector(policy, {"face", "person"}, clock=FakeClock())
        .decide(frame, [], [])
        .hard
    )


def test_cold_start_with_a_proposer_spends_its_sample_only_on_frames_with_candidates() -> None:
    # Prepare: a caller that runs a motion proposer; the first frames show nothing moving
    from fedge.core.records import Detection

    policy = HardCasePolicy(cold_start_per_minute=2)
    selector = HardCaseSelector(policy, {"face"}, clock=FakeClock(), cold_start=True)
    rng = np.random.default_rng(3)
    moving = [Detection(box=(10.0, 10.0, 20.0, 40.0), label="motion", score=0.9)]

    # Execute
    empty = [
        selector.decide(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), [], [], proposals=[])
        for _ in range(5)
    ]
    first = selector.decide(
        rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), [], [], proposals=moving
    )

    # Assert: nothing sampled (and no budget spent) until a frame has a candidate
    assert not any(d.hard for d in empty)
    assert first.hard and first.reasons == (Reason.COLD_START,)


def test_cold_start_has_its_own_budget_beside_the_hard_case_rate_limit() -> None:
    # Prepare: cold start allowed 30 a minute, hard cases 6 a minute (burst 3)
    policy = HardCasePolicy(max_per_minute=6, burst=3, cold_start_per_minute=30)
    clock = FakeClock()
    selector = HardCaseSelector(policy, {"face"}, clock=clock, cold_start=True)
    rng = np.random.default_rng(4)
    # Execute: one minute at 2 FPS of distinct frames
    sampled = 0
    for _ in range(120):
        sampled += selector.decide(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), [], []).hard
        clock.advance(0.5)
    # Assert: the cold-start budget, not the 6 + 3 of the hard-case limit
    assert 28 <= sampled <= 31


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


def _event(index: int) -> HardCaseEvent:
    return HardCaseEvent(index, index, float(index), "test", ("uncertain_score",))


def _wake_without_event(feed: HardCaseFeed) -> None:
    """A spurious wake-up: notify the feed's waiters although nothing was published."""
    with feed._ready:
        feed._ready.notify_all()


def test_feed_get_returns_an_event_published_after_a_spurious_wake_up() -> None:
    # Prepare: a reader waiting with a long timeout on a clock that stands still.
    clock = FakeClock()
    feed = HardCaseFeed(clock=clock)
    got: list[HardCaseEvent | None] = []
    reader = threading.Thread(target=lambda: got.append(feed.get(timeout=10.0)))
    reader.start()
    clock.wait_for_reads(2)  # deadline taken, remaining time checked: now waiting

    # Execute: wake it for nothing, let it go back to waiting, then publish.
    _wake_without_event(feed)
    clock.wait_for_reads(3)
    feed.publish(_event(7))
    reader.join(timeout=30)

    # Assert
    assert not reader.is_alive()
    assert got == [_event(7)]


def test_feed_get_returns_none_only_once_the_timeout_has_passed() -> None:
    # Prepare
    clock = FakeClock()
    feed = HardCaseFeed(clock=clock)
    got: list[tuple[HardCaseEvent | None, float]] = []
    reader = threading.Thread(target=lambda: got.append((feed.get(timeout=5.0), clock.now)))
    reader.start()
    clock.wait_for_reads(2)

    # Execute: wake-ups at 4 s and 4.75 s are before the deadline; the one at 5 s is not.
    for advance, reads in ((4.0, 3), (0.75, 4), (0.25, 5)):
        clock.advance(advance)
        _wake_without_event(feed)
        clock.wait_for_reads(reads)
    reader.join(timeout=30)

    # Assert
    assert not reader.is_alive()
    assert got == [(None, 5.0)]


def test_feed_get_hands_out_queued_events_then_none_after_close() -> None:
    feed = HardCaseFeed()
    feed.publish(_event(1))
    assert feed.get(timeout=0) == _event(1)
    assert feed.get(timeout=0) is None  # nothing queued, no wait
    feed.close()
    assert feed.get() is None  # closed: does not block


# --- only the labels the cloud answers (ask_labels) ------------------------------------------


def test_once_a_person_detector_runs_only_person_boxes_make_a_frame_hard() -> None:
    # Prepare: an unsure face and a face outside every pose; an unsure person beside them
    policy = HardCasePolicy(max_per_minute=600, burst=100, ask_labels=("person",))
    faces = [_det("face", 0.45, (0, 0, 20, 20)), _det("face", 0.9, (400, 50, 440, 90))]
    person = _det("person", 0.45, (100, 100, 200, 400))
    cold = HardCaseSelector(policy, ("face",), clock=FakeClock())
    running = HardCaseSelector(policy, ("face", "person"), clock=FakeClock())
    every_label = HardCaseSelector(
        HardCasePolicy(max_per_minute=600, burst=100), ("face", "person"), clock=FakeClock()
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(4)]

    # Execute / Assert: before a person detector, faces are what the node has to go on
    assert cold.decide(images[0], [], faces).reasons == (
        Reason.UNCERTAIN_SCORE,
        Reason.POSE_SSD_DISAGREE,
    )
    # with one, faces are no question for the cloud's person teacher ...
    assert running.decide(images[1], [], faces).reasons == ()
    assert running.decide(images[2], [], [*faces, person]).reasons == (Reason.UNCERTAIN_SCORE,)
    # ... unless every label is asked about
    assert every_label.decide(images[3], [], faces).reasons == (
        Reason.UNCERTAIN_SCORE,
        Reason.POSE_SSD_DISAGREE,
    )


def test_ask_labels_flag_reads_a_list_or_all() -> None:
    from fedge.commands.selection_flags import parse_ask_labels
    from fedge.core.errors import ConfigError

    assert parse_ask_labels("person") == ("person",)
    assert parse_ask_labels(" person, face ,") == ("person", "face")
    assert parse_ask_labels("all") == ()
    with pytest.raises(ConfigError, match="needs a label"):
        parse_ask_labels(" , ")
