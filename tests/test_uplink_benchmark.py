"""``benchmarks/uplink.py`` on a few frames: it runs end to end (real node models, a real
``fedge cloud`` process, real uploaders) and writes every report with its columns and
finite numbers."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Frames 24-41 of the sample clip hold a BlazeFace box scored 0.31-0.35, inside the
# hard-case uncertainty band (0.3-0.6); 28 (0.349) and 37 (0.348) sit far enough above
# its bottom that any CPU's numerics keep them hard-case candidates.
FRAMES = 40
BURST = 6

SECTION_COLUMNS = {
    "uplink.csv": ["section", "item", "metric", "value", "unit"],
    "uplink_bytes.csv": [
        "mode", "cases", "bytes/case", "pixel bytes/case", "case / its frame JPEG (median)",
        "case / its frame JPEG (p95)", "crops/case", "node ms/case", "clip bytes up",
        "clip vs every frame JPEG",
    ],
    "uplink_latency.csv": [
        "mode", "schedule", "cases", "labelled", "p50 s", "p95 s", "max s",
        "uploader RTT ms (mean)", "others",
    ],
    "uplink_throughput.csv": [
        "mode", "cases", "answered", "cases/s", "teacher ms/case", "service CPU ms/case",
        "nodes at 6/min", "others",
    ],
    "uplink_persons.csv": ["finder", "frames", "persons/frame (mean)", "min", "max", "s/frame"],
    "uplink_burst.csv": [
        "burst (frames cases)", "answered", "refused (RESOURCE_EXHAUSTED)", "other errors",
        "most in flight", "idle RSS MiB", "peak RSS MiB", "peak - idle MiB", "wall s", "others",
    ],
    "uplink_cases.csv": [
        "mode", "frame", "accepted", "case bytes", "pixel bytes", "frame JPEG bytes", "crops",
        "person crop bytes", "sends pixels", "build ms",
    ],
    "uplink_round_trips.csv": ["mode", "schedule", "frame", "offset s", "round trip s"],
}  # fmt: skip
TEXT_COLUMNS = {"section", "item", "metric", "unit", "mode", "schedule", "finder"}


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """Run the benchmark once on a few frames; return its output folder."""
    out = tmp_path_factory.mktemp("uplink")
    command = [
        sys.executable, "benchmarks/uplink.py", "--frames", str(FRAMES), "--max-cases", "2",
        "--latency-cases", "2", "--throughput-cases", "1", "--teacher-frames", "1",
        "--bursts", str(BURST), "--model-dir", str(model_dir), "--out-dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_every_report_has_its_columns_and_finite_numbers(reports: Path) -> None:
    for name, columns in SECTION_COLUMNS.items():
        # Execute
        header, rows = _read(reports / name)

        # Assert
        assert header == columns, name
        assert rows, name
        for row in rows:
            for column, value in row.items():
                if column not in TEXT_COLUMNS:
                    assert math.isfinite(float(value)), (name, column, row)


@pytest.mark.slow
def test_summary_covers_every_section_and_landmarks_carry_no_pixels(reports: Path) -> None:
    # Execute
    _, rows = _read(reports / "uplink.csv")
    value = {(r["section"], r["item"], r["metric"]): float(r["value"]) for r in rows}

    # Assert
    sections = {r["section"] for r in rows}
    assert sections == {"node", "bytes", "latency", "throughput", "persons", "burst", "goals"}
    assert value[("node", "frames", "count")] == FRAMES
    assert value[("node", "hard cases", "accepted")] >= 1
    assert value[("bytes", "landmarks", "pixel bytes per case")] == 0
    assert value[("bytes", "frames", "pixel bytes per case")] > 0
    for mode in ("landmarks", "crops", "frames"):
        assert value[("latency", mode, "cases")] >= 1
        assert value[("latency", mode, "round trip p95")] > 0


@pytest.mark.slow
def test_burst_calls_are_all_answered_or_refused_with_resource_exhausted(
    reports: Path,
) -> None:
    # Execute
    _, rows = _read(reports / "uplink_burst.csv")

    # Assert: nothing failed another way, and no more than the service's limit ran at once
    (burst,) = rows
    answered = int(burst["answered"])
    refused = int(burst["refused (RESOURCE_EXHAUSTED)"])
    assert int(burst["burst (frames cases)"]) == BURST
    assert int(burst["other errors"]) == 0
    assert answered + refused == BURST
    assert 1 <= int(burst["most in flight"]) <= 4  # fedge cloud's default --max-concurrency


@pytest.mark.slow
def test_markdown_report_has_every_section_and_the_goals(reports: Path) -> None:
    # Execute
    text = (reports / "uplink.md").read_text(encoding="utf-8")

    # Assert
    for title in (
        "## Bytes up per privacy mode",
        "## Hard-case round trip on loopback",
        "## Cloud throughput",
        "## Persons per frame",
        "## Service memory under a burst",
        "## Goals",
    ):
        assert title in text
    assert "other processes used" in text  # the load line
