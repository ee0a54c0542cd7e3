"""Greedy IoU tracking, and hard-case selection that asks the cloud once per object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fake_clock import FakeClock

from clients.hard_cases import (
    DisagreementCheck,
    HardCasePolicy,
    HardCaseSelector,
    Reason,
    ScoreBand,
    find_hard_reasons,
)
from clients.privacy_filter import PrivacyPolicy, crop_regions, shown_regions
from clients.tracking import IouTracker
from fedge.core.records import Detection, Person

# no pose/box check: these frames have boxes and no pose, and only the scores matter here
TRACKING = HardCasePolicy(
    max_per_minute=600, burst=100, track_min_iou=0.3, track_max_age=2, disagreement=()
)


def _det(x: float, score: float = 0.9, label: str = "person", y: float = 100.0) -> Detection:
    return Detection(box=(x, y, x + 40.0, y + 100.0), label=label, score=score)


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # distinct images: no dHash look-alikes
    return [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(count)]


# --- the tracker ---------------------------------------------------------------------------


def test_a_walking_box_keeps_its_track_and_a_new_box_starts_one() -> None:
    tracker = IouTracker(min_iou=0.3, max_age=2)
    first = tracker.update([_det(100), _det(300)])
    second = tracker.update([_det(304), _det(105), _det(500)])  # both moved 4-5 px; a newcomer
    assert [t.id for t in second[:2]] == [first[1].id, first[0].id]
    assert second[2].id not in {first[0].id, first[1].id}
    assert second[0].box == (304.0, 100.0, 344.0, 200.0)  # the track follows its box


def test_each_track_takes_at_most_one_box_the_best_overlapping() -> None:
    tracker = IouTracker(min_iou=0.3)
    (track,) = tracker.update([_det(100)])
    far, near = tracker.update([_det(120), _det(102)])  # IoU 0.5 and 0.9 with the track
    assert near.id == track.id and far.id != track.id


def test_labels_do_not_share_tracks_and_a_lost_track_ends_after_max_age() -> None:
    tracker = IouTracker(min_iou=0.3, max_age=1)
    (person,) = tracker.update([_det(100)])
    (face,) = tracker.update([_det(100, label="face")])  # same place, other label
    assert face.id != person.id
    assert [t.id for t in tracker.tracks] == [person.id, face.id]  # person missed 1 frame
    tracker.update([])
    assert [t.id for t in tracker.tracks] == [face.id]  # person missed 2 > max_age
    (again,) = tracker.update([_det(100)])
    assert again.id not in {person.id, face.id}


def test_bad_tracker_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_iou"):
        IouTracker(min_iou=0.0)
    with pytest.raises(ValueError, match="max_age"):
        IouTracker(max_age=-1)


# --- hard cases, once per object -------------------------------------------------------------


def test_an_asked_objects_uncertain_box_is_no_reason() -> None:
    boxes = [_det(100, 0.45), _det(300, 0.95)]
    assert find_hard_reasons([], boxes, TRACKING, {"person"}, known=[False, False]) == (
        Reason.UNCERTAIN_SCORE,
    )
    assert find_hard_reasons([], boxes, TRACKING, {"person"}, known=[True, False]) == ()
    with pytest.raises(ValueError, match="known has 1 entries for 2"):
        find_hard_reasons([], boxes, TRACKING, {"person"}, known=[True])


def test_an_uncertain_person_walking_through_is_asked_about_once() -> None:
    # Prepare: a confident person standing, an uncertain one walking right 5 px a frame
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())
    frames = _frames(10)

    # Execute
    hard = [
        selector.decide(image, [], [_det(300, 0.95), _det(100 + 5 * i, 0.45)]).hard
        for i, image in enumerate(frames)
    ]

    # Assert: the first frame goes; the same uncertain person later is no new hard case
    assert hard == [True] + [False] * 9
    assert selector.stats.already_asked == 9 and selector.stats.hard == 1


def test_without_tracking_every_frame_of_that_person_is_hard() -> None:
    policy = dataclasses.replace(TRACKING, track_min_iou=0.0)  # off
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    hard = [
        selector.decide(image, [], [_det(300, 0.95), _det(100 + 5 * i, 0.45)]).hard
        for i, image in enumerate(_frames(10))
    ]
    assert hard == [True] * 10 and selector.stats.already_asked == 0


def test_a_newcomer_makes_a_frame_hard_again() -> None:
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())
    a, b, c = _frames(3)
    assert selector.decide(a, [], [_det(100, 0.45)]).hard
    assert not selector.decide(b, [], [_det(103, 0.45)]).hard
    # a second uncertain person enters: asked about, with the first one still in view
    assert selector.decide(c, [], [_det(106, 0.45), _det(400, 0.4)]).hard


def test_a_rate_limited_frame_leaves_its_objects_to_be_asked() -> None:
    # Prepare: one token, spent on another object first
    clock = FakeClock()
    policy = dataclasses.replace(TRACKING, max_per_minute=60, burst=1)
    selector = HardCaseSelector(policy, {"person"}, clock=clock)
    a, b, c = _frames(3)
    assert selector.decide(a, [], [_det(400, 0.45)]).hard

    # Execute: a new uncertain person while the bucket is empty, then a second later
    held = selector.decide(b, [], [_det(400, 0.95), _det(100, 0.45)])
    clock.advance(1.0)
    later = selector.decide(c, [], [_det(400, 0.95), _det(102, 0.45)])

    # Assert: held back, so still unasked: asked as soon as the rate limit allows
    assert held.reasons == (Reason.UNCERTAIN_SCORE,) and held.suppressed == "rate_limited"
    assert later.hard


def test_an_object_that_leaves_and_comes_back_is_asked_about_again() -> None:
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())
    frames = _frames(6)
    assert selector.decide(frames[0], [], [_det(100, 0.45)]).hard
    for image in frames[1:4]:  # 3 frames with no box: the track (max_age 2) ends
        assert not selector.decide(image, [], []).hard
    assert selector.decide(frames[4], [], [_det(100, 0.45)]).hard


# --- objects the detector was sure of ------------------------------------------------------


def test_the_dips_of_a_person_the_detector_was_sure_of_are_no_hard_case() -> None:
    # Prepare: a person found at 0.9, then dipping into the band (0.3-0.6) as they walk
    scores = [0.9, 0.45, 0.5, 0.8, 0.35, 0.55]
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())

    # Execute
    hard = [
        selector.decide(image, [], [_det(100 + 5 * i, score)]).hard
        for i, (image, score) in enumerate(zip(_frames(6), scores, strict=True))
    ]

    # Assert: never asked (no frame went), yet no dip made a frame hard
    assert hard == [False] * 6
    assert selector.stats.already_confirmed == 4 and selector.stats.already_asked == 0


def test_without_confirmation_the_first_dip_is_a_hard_case() -> None:
    policy = dataclasses.replace(TRACKING, track_confirm=False)
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    a, b = _frames(2)
    assert not selector.decide(a, [], [_det(100, 0.9)]).hard
    assert selector.decide(b, [], [_det(105, 0.45)]).hard
    assert selector.stats.already_confirmed == 0


def test_a_confirmed_person_does_not_excuse_an_uncertain_newcomer() -> None:
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())
    a, b = _frames(2)
    assert not selector.decide(a, [], [_det(100, 0.9)]).hard
    decision = selector.decide(b, [], [_det(104, 0.45), _det(400, 0.45)])
    assert decision.hard and decision.reasons == (Reason.UNCERTAIN_SCORE,)


def test_a_new_version_must_confirm_again_but_the_clouds_answers_stay() -> None:
    # Prepare: A and B on a frame that went to the cloud; C confirmed on a later frame
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock())
    a, b, c, d = _frames(4)
    assert selector.decide(a, [], [_det(100, 0.9), _det(400, 0.45)]).hard  # asks: A, B
    assert not selector.decide(b, [], [_det(102, 0.9), _det(404, 0.9), _det(600, 0.9)]).hard

    # Execute: a new version is swapped in, with its own band
    selector.set_band("person", ScoreBand(0.3, 0.5))
    asked = selector.decide(c, [], [_det(104, 0.45), _det(408, 0.45)])  # C out of sight
    confirmed_before = selector.decide(d, [], [_det(106, 0.9), _det(412, 0.9), _det(608, 0.45)])

    # Assert: the cloud's answers on A and B hold for any version; C was confirmed by the
    # old version only, so C's dip is a hard case under the new one
    assert not asked.hard and selector.stats.already_asked == 1
    assert confirmed_before.hard and confirmed_before.reasons == (Reason.UNCERTAIN_SCORE,)


# --- objects the detector is still making up its mind about (track_min_doubt) --------------

DOUBT3 = dataclasses.replace(TRACKING, track_min_doubt=3)


def test_an_object_found_by_the_detector_within_its_doubt_frames_is_never_asked() -> None:
    # Prepare: a newcomer in the band on two frames, then above it (the detector found it)
    scores = [0.45, 0.4, 0.9, 0.5, 0.45, 0.35]
    selector = HardCaseSelector(DOUBT3, {"person"}, clock=FakeClock())

    # Execute
    hard = [
        selector.decide(image, [], [_det(100 + 5 * i, score)]).hard
        for i, (image, score) in enumerate(zip(_frames(6), scores, strict=True))
    ]

    # Assert: no frame went; the first two were pending doubt, the dips after confirmed
    assert hard == [False] * 6
    assert selector.stats.doubt_pending == 2 and selector.stats.already_confirmed == 3


def test_an_object_doubted_on_min_doubt_frames_is_asked_about_once() -> None:
    selector = HardCaseSelector(DOUBT3, {"person"}, clock=FakeClock())
    hard = [
        selector.decide(image, [], [_det(100 + 5 * i, 0.45)]).hard
        for i, image in enumerate(_frames(6))
    ]
    assert hard == [False, False, True, False, False, False]
    assert selector.stats.doubt_pending == 2 and selector.stats.already_asked == 3


def test_doubt_counts_only_the_frames_an_object_is_in_the_band() -> None:
    # above the band is confirmation (tested above); below it, or out of sight, is no doubt
    policy = dataclasses.replace(DOUBT3, track_confirm=False, track_max_age=5)
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    frames = _frames(5)
    boxes = [[_det(100, 0.45)], [], [_det(102, 0.2)], [_det(104, 0.45)], [_det(106, 0.45)]]
    hard = [selector.decide(f, [], b).hard for f, b in zip(frames, boxes, strict=True)]
    assert hard == [False, False, False, False, True]


def test_a_new_version_doubts_afresh() -> None:
    selector = HardCaseSelector(DOUBT3, {"person"}, clock=FakeClock())
    frames = _frames(5)
    assert not selector.decide(frames[0], [], [_det(100, 0.45)]).hard
    assert not selector.decide(frames[1], [], [_det(102, 0.45)]).hard
    selector.set_band("person", ScoreBand(0.3, 0.5))  # the old version's doubt says nothing
    hard = [
        selector.decide(f, [], [_det(104 + 2 * i, 0.45)]).hard for i, f in enumerate(frames[2:])
    ]
    assert hard == [False, False, True]


def test_a_held_back_frame_keeps_a_doubted_object_to_be_asked() -> None:
    # Prepare: one token, spent on object A after its three frames of doubt
    clock = FakeClock()
    policy = dataclasses.replace(DOUBT3, max_per_minute=60, burst=1)
    selector = HardCaseSelector(policy, {"person"}, clock=clock)
    frames = _frames(7)
    first = [selector.decide(f, [], [_det(400, 0.45)]) for f in frames[:3]]
    assert [d.hard for d in first] == [False, False, True]

    # Execute: newcomer B doubted on three frames while the bucket is empty, then a second later
    held = [selector.decide(f, [], [_det(400, 0.45), _det(100, 0.45)]) for f in frames[3:6]]
    clock.advance(1.0)
    later = selector.decide(frames[6], [], [_det(400, 0.45), _det(100, 0.45)])

    # Assert: B's third frame qualifies and is held back; held back marks nothing, so B's
    # fourth frame goes as soon as the rate limit allows
    assert [d.reasons for d in held[:2]] == [(), ()]
    assert held[2].reasons == (Reason.UNCERTAIN_SCORE,) and held[2].suppressed == "rate_limited"
    assert later.hard


def test_min_doubt_must_be_one_or_more() -> None:
    with pytest.raises(ValueError, match="track_min_doubt"):
        HardCasePolicy(track_min_doubt=0)


# --- the pose/box check, once per object ----------------------------------------------------

POSED = dataclasses.replace(TRACKING, disagreement=(DisagreementCheck("person", "iou"),))


def _pose(x: float, score: float = 0.9) -> Person:
    box = (x, 100.0, x + 40.0, 200.0)  # where _det(x) puts its box
    return Person(landmarks=np.zeros((33, 4), dtype=np.float32), score=score, box=box)


def test_a_disagreement_whose_object_was_asked_is_no_reason() -> None:
    box, pose = [_det(100, 0.9)], [_pose(300)]  # a box without a pose, a pose without a box
    assert find_hard_reasons(pose, box, POSED, {"person"}) == (Reason.POSE_SSD_DISAGREE,)
    both = {"known_disagree": [True], "known_poses": [True]}
    assert find_hard_reasons(pose, box, POSED, {"person"}, **both) == ()
    box_only = {"known_disagree": [True], "known_poses": [False]}
    assert find_hard_reasons(pose, box, POSED, {"person"}, **box_only) == (
        Reason.POSE_SSD_DISAGREE,
    )
    with pytest.raises(ValueError, match="known_poses has 2 entries for 1 persons"):
        find_hard_reasons(pose, box, POSED, {"person"}, known_poses=[True, True])


def test_a_confident_box_without_a_pose_is_asked_about_once() -> None:
    # Prepare: a person walking right whom the pose model misses on every frame; the box
    # is above the band, so the detector is sure of it: sureness does not settle the pose
    selector = HardCaseSelector(POSED, {"person"}, clock=FakeClock())
    decisions = [
        selector.decide(image, [_pose(400)], [_det(100 + 5 * i), _det(400)])
        for i, image in enumerate(_frames(6))
    ]
    assert [d.hard for d in decisions] == [True] + [False] * 5
    assert decisions[0].reasons == (Reason.POSE_SSD_DISAGREE,)
    assert selector.stats.already_asked == 5


def test_a_confident_pose_without_a_box_is_asked_about_once() -> None:
    selector = HardCaseSelector(POSED, {"person"}, clock=FakeClock())
    hard = [
        selector.decide(image, [_pose(100 + 5 * i)], []).hard for i, image in enumerate(_frames(6))
    ]
    assert hard == [True] + [False] * 5 and selector.stats.already_asked == 5


def test_without_tracking_every_frame_of_a_disagreement_is_hard() -> None:
    selector = HardCaseSelector(
        dataclasses.replace(POSED, track_min_iou=0.0), {"person"}, clock=FakeClock()
    )
    hard = [
        selector.decide(image, [_pose(100 + 5 * i)], []).hard for i, image in enumerate(_frames(4))
    ]
    assert hard == [True] * 4


def test_a_pose_lost_for_fewer_than_min_doubt_frames_is_never_asked() -> None:
    # Prepare: the pose model loses a walking person on two frames (a turn), then finds it
    policy = dataclasses.replace(POSED, track_min_doubt=3)
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    posed = [True, False, False, True, True]

    # Execute
    hard = [
        selector.decide(image, [_pose(100 + 5 * i)] if has else [], [_det(100 + 5 * i)]).hard
        for i, (image, has) in enumerate(zip(_frames(5), posed, strict=True))
    ]

    # Assert
    assert hard == [False] * 5 and selector.stats.doubt_pending == 2


def test_a_lasting_disagreement_is_asked_after_min_doubt_frames() -> None:
    policy = dataclasses.replace(POSED, track_min_doubt=3)
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    hard = [
        selector.decide(image, [], [_det(100 + 5 * i)]).hard for i, image in enumerate(_frames(5))
    ]
    assert hard == [False, False, True, False, False]


def test_score_doubt_and_disagreement_add_up_once_per_frame() -> None:
    # Prepare: a posed person in the band on two frames, then sure of it and without a pose
    policy = dataclasses.replace(POSED, track_min_doubt=3)
    selector = HardCaseSelector(policy, {"person"}, clock=FakeClock())
    frames = _frames(3)

    # Execute
    young = [selector.decide(frames[i], [_pose(100)], [_det(100, 0.45)]) for i in range(2)]
    third = selector.decide(frames[2], [], [_det(100, 0.9)])

    # Assert: three frames of doubt about one object, whatever each frame's doubt was
    assert [d.reasons for d in young] == [(), ()]
    assert third.hard and third.reasons == (Reason.POSE_SSD_DISAGREE,)


# --- places already asked about (place_iou) --------------------------------------------------

PLACES = dataclasses.replace(TRACKING, place_iou=0.5, dedup_window_s=60.0, track_max_age=1)


def _flickering_door(selector: HardCaseSelector, frames: list[np.ndarray], t0: float) -> list[bool]:
    # a still background box in the band on frames 0, 3, 6, ...: its track ends between
    return [
        selector.decide(image, [], [_det(100, 0.45)] if i % 3 == 0 else [], now=t0 + 0.1 * i).hard
        for i, image in enumerate(frames)
    ]


def test_a_still_box_whose_track_restarts_is_asked_about_once() -> None:
    selector = HardCaseSelector(PLACES, {"person"}, clock=FakeClock())
    without = HardCaseSelector(
        dataclasses.replace(PLACES, place_iou=0.0), {"person"}, clock=FakeClock()
    )
    frames = _frames(9)
    assert _flickering_door(selector, frames, 0.0) == [True] + [False] * 8
    assert selector.stats.already_asked == 2
    assert _flickering_door(without, frames, 0.0) == [i % 3 == 0 for i in range(9)]


def test_a_place_is_remembered_for_the_look_alike_window_only() -> None:
    selector = HardCaseSelector(PLACES, {"person"}, clock=FakeClock())
    assert _flickering_door(selector, _frames(4), 0.0) == [True, False, False, False]
    # a minute later (dedup_window_s) the place has been forgotten: asked again, once
    later = _flickering_door(selector, _frames(4, seed=1), 60.5)
    assert later == [True, False, False, False]


def test_a_new_box_elsewhere_or_of_another_label_is_still_asked() -> None:
    selector = HardCaseSelector(PLACES, {"person", "dog"}, clock=FakeClock())
    frames = _frames(5)
    assert selector.decide(frames[0], [], [_det(100, 0.45)], now=0.0).hard
    for i in (1, 2):
        selector.decide(frames[i], [], [], now=0.1 * i)  # the track ends
    assert selector.decide(frames[3], [], [_det(300, 0.45)], now=0.3).hard  # elsewhere
    assert selector.decide(frames[4], [], [_det(100, 0.45, label="dog")], now=0.4).hard


def test_place_iou_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="place_iou"):
        HardCasePolicy(place_iou=1.5)


# --- places shown unchanged (place_max_change) -----------------------------------------------

UNCHANGED = dataclasses.replace(
    TRACKING, place_max_change=8.0, dedup_window_s=60.0, track_max_age=1
)
DOOR = (200.0, 40.0, 230.0, 120.0)  # a still background box in the right half
DOOR_REDRAWN = (196.0, 30.0, 234.0, 128.0)  # a new version's box there: IoU 0.64


def _scene(count: int, seed: int = 0) -> list[np.ndarray]:
    """Frames of one still camera: the right half is the same background on every frame,
    the left half changes (people passing: no two frames look alike to the dHash)."""
    rng = np.random.default_rng(seed)
    still = rng.integers(0, 256, (240, 160, 3), dtype=np.uint8)
    return [
        np.concatenate([rng.integers(0, 256, (240, 160, 3), dtype=np.uint8), still], axis=1)
        for _ in range(count)
    ]


def _box(box: tuple[float, float, float, float], score: float = 0.45) -> Detection:
    return Detection(box=box, label="person", score=score)


def _ask_then(selector: HardCaseSelector, later: np.ndarray, box: Detection) -> list[bool]:
    """The door on a frame (sent), two frames without it (its track ends), then ``box`` on
    ``later``: which frames were hard."""
    frames = _scene(3)
    boxes = [[_box(DOOR)], [], []]
    hard = [
        selector.decide(f, [], b, now=0.1 * i).hard
        for i, (f, b) in enumerate(zip(frames, boxes, strict=True))
    ]
    return hard + [selector.decide(later, [], [box], now=0.3).hard]


def test_a_place_shown_unchanged_is_not_asked_again_whatever_box_a_version_draws() -> None:
    later = _scene(4)[3]
    selector = HardCaseSelector(UNCHANGED, {"person"}, clock=FakeClock())
    assert _ask_then(selector, later, _box(DOOR_REDRAWN)) == [True, False, False, False]
    assert selector.stats.already_asked == 1
    # without the rule (and with the IoU rule's 0.7, which the new box misses) it asks again
    off = dataclasses.replace(UNCHANGED, place_max_change=0.0, place_iou=0.7)
    again = HardCaseSelector(off, {"person"}, clock=FakeClock())
    assert _ask_then(again, later, _box(DOOR_REDRAWN)) == [True, False, False, True]


def test_someone_stepping_into_a_place_shown_before_is_asked_about() -> None:
    later = _scene(4)[3].copy()
    x1, y1, x2, y2 = (int(v) for v in DOOR)
    later[y1:y2, x1:x2] = np.random.default_rng(7).integers(0, 256, (y2 - y1, x2 - x1, 3))
    selector = HardCaseSelector(UNCHANGED, {"person"}, clock=FakeClock())
    assert _ask_then(selector, later, _box(DOOR)) == [True, False, False, True]


def test_a_change_of_light_over_a_place_is_no_change() -> None:
    later = np.clip(_scene(4)[3].astype(np.int16) + 40, 0, 255).astype(np.uint8)
    selector = HardCaseSelector(UNCHANGED, {"person"}, clock=FakeClock())
    assert _ask_then(selector, later, _box(DOOR_REDRAWN)) == [True, False, False, False]


def test_an_unchanged_place_the_cloud_was_not_shown_is_asked_about() -> None:
    later = _scene(4)[3]
    elsewhere = (260.0, 140.0, 290.0, 220.0)  # still background too, far from the door's box
    selector = HardCaseSelector(UNCHANGED, {"person"}, clock=FakeClock())
    assert _ask_then(selector, later, _box(elsewhere)) == [True, False, False, True]


def test_a_place_shown_unchanged_is_remembered_for_the_look_alike_window_only() -> None:
    frames = _scene(5)
    selector = HardCaseSelector(UNCHANGED, {"person"}, clock=FakeClock())
    assert selector.decide(frames[0], [], [_box(DOOR)], now=0.0).hard
    for i in (1, 2):
        selector.decide(frames[i], [], [], now=0.1 * i)
    assert not selector.decide(frames[3], [], [_box(DOOR_REDRAWN)], now=59.0).hard
    for i in (1, 2):
        selector.decide(frames[i], [], [], now=59.0 + 0.1 * i)
    assert selector.decide(frames[4], [], [_box(DOOR_REDRAWN)], now=60.5).hard


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("place_max_change", -1.0, "place_max_change"),
        ("place_max_change", 256.0, "place_max_change"),
        ("place_margin", -0.1, "place_margin"),
    ],
)
def test_bad_unchanged_place_knobs_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HardCasePolicy(**{field: value})


# --- what a sent case shows ----------------------------------------------------------------

TWO_CROPS = PrivacyPolicy(max_crops=2)
CROWD = [  # three uncertain people; with two crops the smallest (the last) is not shown
    Detection((20.0, 20.0, 60.0, 120.0), "person", 0.45),
    Detection((200.0, 20.0, 240.0, 120.0), "person", 0.45),
    Detection((400.0, 40.0, 420.0, 90.0), "person", 0.45),
]


def _crowd_then(selector: HardCaseSelector, later: list[Detection]) -> list[bool]:
    """The crowd on a frame (sent), then ``later`` on a frame unlike it: which were hard."""
    first, second = (np.random.default_rng(i).integers(0, 256, (240, 480, 3), np.uint8)
                     for i in range(2))  # fmt: skip
    return [selector.decide(first, [], CROWD).hard, selector.decide(second, [], later).hard]


def test_an_object_a_crops_case_did_not_show_is_still_to_be_asked() -> None:
    shows = shown_regions("crops", TWO_CROPS)
    assert len(shows([], CROWD, 480, 240) or []) == 2
    selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock(), shows=shows)
    assert _crowd_then(selector, CROWD) == [True, True]  # the small one: not shown yet
    assert selector.stats.already_asked == 0
    shown = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock(), shows=shows)
    assert _crowd_then(shown, CROWD[:2]) == [True, False]  # those two were shown
    assert shown.stats.already_asked == 1


def test_without_shows_or_in_modes_that_describe_every_object_all_count_as_asked() -> None:
    for shows in (None, shown_regions("frames"), shown_regions("landmarks")):
        selector = HardCaseSelector(TRACKING, {"person"}, clock=FakeClock(), shows=shows)
        assert _crowd_then(selector, CROWD) == [True, False]
    # a crops case with nothing big enough to crop goes as a landmarks one: all described
    assert (
        shown_regions("crops")([], [Detection((1.0, 1.0, 5.0, 5.0), "person", 0.4)], 64, 64) is None
    )


def test_the_place_of_an_object_not_shown_is_not_remembered() -> None:
    policy = dataclasses.replace(TRACKING, place_iou=0.5, track_max_age=0, dedup_window_s=60.0)
    small = CROWD[2]
    for shows, asked_again in ((shown_regions("crops", TWO_CROPS), True), (None, False)):
        selector = HardCaseSelector(policy, {"person"}, clock=FakeClock(), shows=shows)
        frames = _frames(3)
        assert selector.decide(frames[0], [], CROWD, now=0.0).hard
        selector.decide(frames[1], [], [], now=0.1)  # every track ends
        assert selector.decide(frames[2], [], [small], now=0.2).hard is asked_again


def test_shown_regions_are_the_privacy_filters_crops() -> None:
    moving = Detection((300.0, 150.0, 340.0, 230.0), "motion", 1.0)
    crops = crop_regions([], [*CROWD, moving], 480, 240, TWO_CROPS)
    assert shown_regions("crops", TWO_CROPS)([], [*CROWD, moving], 480, 240) == [
        tuple(float(v) for v in region) for region in crops
    ]
    big = PrivacyPolicy(max_crops=16)
    assert len(crop_regions([], [*CROWD, moving], 480, 240, big)) == 4  # 3 people, 1 motion
