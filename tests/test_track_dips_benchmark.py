"""``benchmarks/track_dips.py``: the counts of in-band boxes, dips and new tracks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from track_dips import main, site_dips  # noqa: E402


def _box(x: float) -> tuple[float, float, float, float]:
    return (x, 100.0, x + 40.0, 200.0)


def test_dips_count_only_confirmations_of_the_versions_own_stretch() -> None:
    # Prepare: frame 0 is the stretch before; A walks right, B appears on the last frame
    frames = [
        [(_box(100), 0.9)],  # before: A sure, but under the previous version
        [(_box(103), 0.35)],  # in band: A not confirmed by this version yet
        [(_box(106), 0.9)],  # A confirmed
        [(_box(109), 0.35), (_box(400), 0.35)],  # A dips; B is new and in band
    ]
    # Execute
    dips = site_dips("site-0", frames, own_from=1, low=0.3, high=0.4)
    # Assert
    assert (dips.frames, dips.in_band, dips.dips, dips.new_tracks) == (3, 3, 1, 1)
    assert dips.row()["dip share"] == "33%"


def test_a_folder_without_a_plan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
