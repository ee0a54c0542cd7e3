"""``benchmarks/crop_padding.py``: its one-to-one matching, and a short real run (the
node's privacy filter, the wire, the real teacher) that writes its reports."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.core.records import Detection

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from crop_padding import COLUMNS, matched  # noqa: E402


def test_matching_is_one_to_one_at_iou_half() -> None:
    # Prepare: two reference people; three found boxes, two on the first person
    reference = np.array([[0, 0, 10, 20], [50, 0, 60, 20]], np.float64)
    found = [
        Detection((0.0, 0.0, 10.0, 20.0), "person", 0.9),  # exact: matched
        Detection((1.0, 0.0, 11.0, 20.0), "person", 0.8),  # same person again: not matched
        Detection((55.0, 0.0, 65.0, 20.0), "person", 0.7),  # IoU 1/3 with the second
    ]

    # Execute
    scores = matched(reference, found)

    # Assert
    assert scores == [0.9]
    assert matched(reference, []) == []


@pytest.mark.slow
def test_a_short_run_writes_every_padding_and_the_frames_row(
    tmp_path: Path, model_dir: Path
) -> None:
    # Execute: 2 frames, 2 paddings
    result = subprocess.run(
        [
            sys.executable, "benchmarks/crop_padding.py", "--paddings", "0.2,0.5",
            "--every", "120", "--model-dir", str(model_dir), "--out-dir", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip

    # Assert
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with (tmp_path / "crop_padding.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == COLUMNS
    assert [r["case"] for r in rows] == ["crops 0.2", "crops 0.5", "frames"]
    for row in rows:
        assert int(row["frames"]) == 2
        assert int(row["people"]) > 0
        assert 0 <= int(row["found"]) <= int(row["people"])
        assert 0.0 < float(row["frame share shown"]) <= 1.0
    crops = [r for r in rows if r["case"].startswith("crops")]
    assert float(crops[1]["frame share shown"]) > float(crops[0]["frame share shown"])
    assert float(rows[-1]["frame share shown"]) == 1.0
    assert "| crops 0.5 |" in (tmp_path / "crop_padding.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("flags", [["--paddings", "a,b"], ["--paddings", "-1"], ["--every", "0"]])
def test_bad_flags_give_a_one_line_error_before_any_model_loads(flags: list[str]) -> None:
    # Execute
    result = subprocess.run(
        [sys.executable, "benchmarks/crop_padding.py", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    # Assert: argparse's usage line and one error line, exit status 2
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("crop_padding.py: error: --")
