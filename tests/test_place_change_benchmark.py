"""``benchmarks/place_change.py``: the place changes behind ``--place-change``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from place_change import main, sent_objects  # noqa: E402


def test_a_folder_without_a_plan_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    assert "holds no plan.json" in capsys.readouterr().err


def _stored(box: list[float], score: float, label: str = "person") -> dict[str, object]:
    return {"box": box, "label": label, "score": score}


def test_a_sent_frame_remembers_only_the_objects_its_crops_showed() -> None:
    # 17 people: the 16 least sure get the crops, the one found with 0.99 gets none
    boxes = [_stored([40.0 * i, 100.0, 40.0 * i + 30.0, 180.0], 0.4) for i in range(16)]
    boxes += [
        _stored([300.0, 300.0, 330.0, 380.0], 0.99),
        _stored([0.0, 0.0, 9.0, 9.0], 0.9, "face"),
    ]
    shown = sent_objects(boxes, [], 700, 480)
    assert len(shown) == 16 and [300.0, 300.0, 330.0, 380.0] not in shown
    # a frame with nothing big enough to crop goes as landmarks: every object counts
    tiny = [_stored([10.0, 10.0, 14.0, 14.0], 0.4)]
    assert sent_objects(tiny, [], 700, 480) == [[10.0, 10.0, 14.0, 14.0]]
