"""``benchmarks/demo_runs_table.py``: demo runs side by side, and their means."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from demo_runs_table import main, summarize  # noqa: E402


def _run(folder: Path, maps: list[float], sent_last: list[int], minutes: float) -> Path:
    """A finished run's rounds.jsonl (rounds 0..2, 3 sites of 12 frames a stretch)."""
    folder.mkdir(parents=True)
    lines = []
    for r, value in enumerate(maps):
        sites = sent_last if r == len(maps) - 1 else [1, 0, 0]
        lines.append(
            {
                "round": r,
                "map50_mean": value,
                "hard_case_rate": 0.25,
                "frames": 36,
                "upload_share": sum(sites) / 36,
                "upload_share_per_site": {f"site-{i}": n / 12 for i, n in enumerate(sites)},
                "bytes_up": {"site-0": 10, "site-1": 0, "site-2": 0},
                "bytes_all_frames": {"site-0": 100, "site-1": 100, "site-2": 100},
            }
        )
    (folder / "rounds.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (folder / "report.md").write_text(f"# fedge demo\n\nSource ...; seed 0; {minutes} min.\n")
    return folder


def test_a_run_is_summarized_from_its_rounds(tmp_path: Path) -> None:
    row = summarize("a", "0", _run(tmp_path / "r", [0.0, 0.5, 0.9], [0, 1, 2], 9.5))

    assert row["mAP@0.5 per round"] == "0.50 / 0.90"
    assert row["frames sent per round"] == "1 / 1 / 3"
    assert row["last round per site"] == "0/12 · 1/12 · 2/12"
    assert row["bytes sent"] == "3.3%" and row["minutes"] == "9.5"
    assert row.numbers["last_round_sent"] == 3
    assert row.numbers["last_round_worst_site"] == pytest.approx(2 / 12)


def test_each_setting_gets_its_mean_and_spread(tmp_path: Path) -> None:
    a0 = _run(tmp_path / "a0", [0.0, 0.5, 0.8], [0, 0, 0], 9.0)
    a1 = _run(tmp_path / "a1", [0.0, 0.5, 0.9], [0, 1, 1], 9.0)
    b0 = _run(tmp_path / "b0", [0.0, 0.5, 0.7], [2, 2, 2], 9.0)

    main([
        "--run", f"A:0={a0}", "--run", f"A:1={a1}", "--run", f"B:0={b0}",
        "--name", "t", "--out-dir", str(tmp_path),
    ])  # fmt: skip

    table = (tmp_path / "t.md").read_text()
    assert "| **A: mean of 2** | 0,1 | last 0.850 ± 0.071 |" in table
    assert "| **B: mean of 1** | 0 | last 0.700 |" in table
    assert "1.0 ± 1.4 sent; worst site 4.2 ± 5.9%" in table


def test_a_folder_without_rounds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--run", f"A:0={tmp_path}", "--name", "t", "--out-dir", str(tmp_path)])
    assert stop.value.code == 2
