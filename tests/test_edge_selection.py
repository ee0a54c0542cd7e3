"""``fedge edge``'s hard-case selector counts as asked only what its uplink's privacy mode
shows the cloud (``clients.privacy_filter.shown_regions``), as the demo's agents do."""

from __future__ import annotations

import numpy as np

from clients.hard_cases import HardCasePolicy
from fedge.commands.edge import hard_case_selector
from fedge.core.records import Detection

POLICY = HardCasePolicy(track_min_iou=0.3, uncertain_low=0.3, uncertain_high=0.6)


def _crowd(count: int) -> list[Detection]:
    return [
        Detection((40.0 * i, 100.0, 40.0 * i + 30.0, 180.0), "person", 0.4) for i in range(count)
    ]


def test_without_an_uplink_every_object_on_a_sent_frame_counts_as_shown() -> None:
    selector = hard_case_selector(POLICY, ("person",), True, None)
    assert selector.shows is None and not selector.cold_start


def test_the_uplinks_privacy_mode_says_what_a_case_shows() -> None:
    crops = hard_case_selector(POLICY, ("person",), True, "crops")
    frames = hard_case_selector(POLICY, ("person",), True, "frames")
    assert crops.shows is not None and frames.shows is not None
    assert len(crops.shows([], _crowd(17), 700, 480) or []) == 16  # max_crops
    assert frames.shows([], _crowd(17), 700, 480) is None  # the whole frame
    assert hard_case_selector(POLICY, None, False, "crops").cold_start


def test_in_crops_mode_the_person_left_out_of_the_crops_stays_to_be_asked() -> None:
    # Prepare: 17 equally unsure people, one more than a crops case holds
    image = np.zeros((480, 700, 3), np.uint8)
    crowd = _crowd(17)
    for privacy, asked_again in (("crops", True), ("frames", False)):
        selector = hard_case_selector(POLICY, ("person",), True, privacy)

        # Execute: the first frame goes; the same people stay in view
        first = selector.decide(image, [], crowd, now=0.0)
        second = selector.decide(image, [], crowd, now=100.0)

        # Assert: the person no crop showed is still a reason in crops mode only
        assert first.hard
        assert bool(second.reasons) == asked_again, privacy
