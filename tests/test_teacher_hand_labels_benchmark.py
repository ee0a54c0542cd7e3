"""benchmarks/teacher_hand_labels.py: the hand labels, the scoring rule and a short real run."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import teacher_hand_labels as bench  # noqa: E402


def test_the_hand_labels_are_29_people_inside_four_frames_of_the_clip() -> None:
    # Act
    clip, people = bench.load_labels()

    # Assert
    assert clip == REPO / "data" / "samples" / "vtest_clip.mp4" and clip.is_file()
    assert sorted(people) == [24, 120, 192, 216]
    assert sum(len(b) for b in people.values()) == 29
    for boxes in people.values():
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 480).all()


def test_a_box_finds_one_person_and_extra_or_loose_boxes_are_counted_apart() -> None:
    # Prepare: two people; one exact box, a duplicate of it, a loose box (IoU 0.4 with the
    # second person: found at 0.3, not at 0.5) and a box far from anyone
    people = np.array([[0, 0, 10, 20], [100, 100, 110, 120]], np.float64)
    boxes = np.array(
        [[0, 0, 10, 20], [0, 0, 10, 20], [100, 100, 110, 150], [300, 300, 310, 320]], np.float64
    )

    # Act
    found, strict, false = bench.score_boxes(people, boxes)

    # Assert
    assert (found, strict, false) == (2, 1, 2)
    assert bench.score_boxes(people, np.zeros((0, 4))) == (0, 0, 0)


def test_a_labels_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"frames": {}}))

    # Act / Assert
    with pytest.raises(ValueError, match="not a fedge hand-label file"):
        bench.load_labels(path)


def test_a_run_on_one_frame_scores_every_finder_and_writes_both_reports(
    model_dir: Path, tmp_path: Path
) -> None:
    # Prepare: frame 24 alone (6 people)
    data = json.loads(bench.LABELS.read_text(encoding="utf-8"))
    data["frames"] = {"24": data["frames"]["24"]}
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(data))

    # Act
    results = bench.run_benchmark(0.3, model_dir, labels)
    csv_path, md_path = bench.write_reports(results, tmp_path / "out", "header")

    # Assert: every finder saw the 6 people; the teacher finds most, BlazePose (a
    # close-range model) at most the near woman and the man behind her
    by_name = {(r.finder, r.min_score): r for r in results}
    assert {r.people for r in results} == {6}
    assert by_name[("teacher ensemble `avg`", 0.3)].found >= 4
    assert by_name[("node BlazePose", None)].found <= 2
    for r in results:
        assert r.found_strict <= r.found <= r.people
    with csv_path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["found"]) for row in rows] == [r.found for r in results]
    assert md_path.read_text(encoding="utf-8").count("\n| ") == len(results) + 1


@pytest.mark.parametrize("flags", [["--min-score", "1.5"], ["--min-score", "x"]])
def test_a_bad_flag_ends_with_exit_2_before_any_model_loads(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Act
    with pytest.raises(SystemExit) as stopped:
        bench.main(flags)

    # Assert
    assert stopped.value.code == 2
    assert "--min-score" in capsys.readouterr().err
