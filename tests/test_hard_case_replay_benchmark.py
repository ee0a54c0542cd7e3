"""``benchmarks/hard_case_replay.py``: the selector replayed over stored frame records."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from hard_case_replay import FrameRecord, main, replay_site  # noqa: E402

from clients.hard_cases import HardCasePolicy, ScoreBand  # noqa: E402
from clients.privacy_filter import PrivacyPolicy, shown_regions  # noqa: E402
from fedge.core.records import Detection  # noqa: E402

POLICY = HardCasePolicy(
    max_per_minute=600, burst=100, track_min_iou=0.3, cold_start_per_minute=60, disagreement=()
)


def _record(
    t: float, boxes: list[tuple[float, float]], reasons: tuple[str, ...] = ()
) -> FrameRecord:
    found = tuple(Detection((x, 100.0, x + 40.0, 200.0), "person", score) for x, score in boxes)
    image = np.random.default_rng(int(t * 10)).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return FrameRecord(t, found, (), (), reasons, image)


def _site() -> list[list[FrameRecord]]:
    # stretch 0: cold start, nothing moving; stretch 1: object A in the band on every
    # frame, newcomer B in the band on frames 1 and 2 and found (above it) on frame 3
    cold = [_record(0.1 * i, []) for i in range(3)]
    a = [(400.0, 0.35)] * 4
    b = [None, (100.0, 0.35), (103.0, 0.38), (106.0, 0.9)]
    stored = [("uncertain_score",), ("uncertain_score",), (), ()]  # the run: first doubt
    live = [
        _record(1.0 + 0.1 * i, [x for x in (a[i], b[i]) if x is not None], stored[i])
        for i in range(4)
    ]
    return [cold, live]


def test_each_doubt_value_sends_what_the_selector_would() -> None:
    band = [ScoreBand(0.3, 0.4)]

    first = replay_site(POLICY, _site(), band)
    three = replay_site(dataclasses.replace(POLICY, track_min_doubt=3), _site(), band)

    # on first doubt: A on frame 0, B on frame 1; with 3 frames: A on frame 2 (which asks
    # about B too), B found by the detector on frame 3
    assert [(c.frames, c.qualify, c.upload) for c in first] == [(3, 0, 0), (4, 2, 2)]
    assert [(c.frames, c.qualify, c.upload) for c in three] == [(3, 0, 0), (4, 1, 1)]
    assert first[1].same == 4  # the stored verdicts are those of a first-doubt run
    assert three[1].same == 1  # only frame 3 is judged alike


def test_a_folder_without_a_plan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2


def test_shown_crops_leave_the_objects_a_case_did_not_show_to_be_asked() -> None:
    # a stretch with two uncertain people, the second smaller; with one crop a case shows
    # only the first, so the next frame asks again; taking every object as shown, it does not
    def frame(t: float) -> FrameRecord:
        found = (
            Detection((40.0, 20.0, 100.0, 200.0), "person", 0.35),
            Detection((300.0, 60.0, 330.0, 140.0), "person", 0.35),
        )
        image = np.random.default_rng(int(t * 10)).integers(0, 256, (240, 400, 3), np.uint8)
        return FrameRecord(t, found, (), (), (), image)

    site = [[], [frame(1.0 + 0.1 * i) for i in range(3)]]
    band = [ScoreBand(0.3, 0.4)]
    one_crop = shown_regions("crops", PrivacyPolicy(max_crops=1))
    every = replay_site(POLICY, site, band)
    shown = replay_site(POLICY, site, band, shows=one_crop)
    assert [c.upload for c in every] == [0, 1]
    assert [c.upload for c in shown] == [0, 3]  # the small one is never in the crop
