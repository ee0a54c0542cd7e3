"""The person-detector benchmark runs end to end on a tiny setting and reports every figure.

One federated round of one local epoch over two small sites of the sample clip (every
5th training frame), then the exports, the held-out comparisons, the training child's
peak RSS and the edge pipeline: about 2 minutes on 2 busy cores, hence ``slow``.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _benchmark() -> object:
    spec = importlib.util.spec_from_file_location("detector_bench", REPO / "benchmarks/detector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["detector_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_round_run_reports_every_figure_with_its_goal_verdict(
    tmp_path: Path, model_dir: Path
) -> None:
    # Prepare
    bench = _benchmark()
    argv = ["--rounds", "1", "--step", "5", "--eval-step", "6", "--local-epochs", "1"]
    argv += ["--out-dir", str(tmp_path), "--model-dir", str(model_dir)]
    # Execute
    assert bench.main(argv) == 0  # type: ignore[attr-defined]
    # Assert
    with open(tmp_path / "detector.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    value = {(r["section"], r["item"], r["metric"]): float(r["value"]) for r in rows}
    assert value[("export", "int8", "file bytes")] < value[("export", "float32", "file bytes")]
    assert 0 < value[("export", "int8 / float32", "size ratio")] < 1
    assert value[("export", "int8", "latency ms (median)")] > 0
    assert 0 <= value[("student vs teacher", "round 1", "recall")] <= 1
    assert 0 <= value[("student vs teacher", "round 1", "precision")] <= 1
    assert value[("persons", "cloud teacher (HOG)", "persons per frame")] > 0
    assert ("persons", "student int8 after round 1", "persons per frame") in value
    assert value[("training node", "one client's fit (child process)", "peak RSS MB")] > 100
    goals = [r for r in rows if r["goal"]]
    # with a score calibration (enough counts in the nodes' replies) the student is also
    # judged at its calibrated operating score and the edge runs again as a node would
    calibrated = any(
        "calibrated" in r["item"] for r in rows if r["section"] == "student vs teacher"
    )
    assert {r["met"] for r in goals} <= {"true", "false"}
    assert len(goals) == (11 if calibrated else 8)
    wrong = [r for r in rows if r["metric"] == "student-wrong share"]
    assert len(wrong) == (2 if calibrated else 1) and all(
        0 <= float(r["value"]) <= 1 for r in wrong
    )
    edge = next(r for r in rows if r["section"] == "edge" and r["metric"] == "FPS 640x480")
    assert float(edge["value"]) > 0
    report = (tmp_path / "detector.md").read_text(encoding="utf-8")
    assert "1 rounds were run (not 10)" in report and "other processes used" in report
