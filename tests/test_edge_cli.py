"""``fedge edge`` end to end: the sample clip, the JSON-lines schema, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from data.frame_store import FrameStore

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"frame", "time", "source", "persons", "detections", "hard", "hard_reasons"}
RECORD_KEYS |= {"timings_ms"}
TIMING_KEYS = {"capture", "pose", "ssd", "store", "total"}


def _fedge(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "edge", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _check_box(box: Any) -> None:
    assert isinstance(box, list) and len(box) == 4
    assert all(isinstance(v, (int, float)) for v in box)
    assert box[0] <= box[2] and box[1] <= box[3]


def _check_record(record: dict[str, Any], index: int) -> None:
    """The documented JSON-lines schema of ``fedge edge --jsonl``."""
    assert set(record) == RECORD_KEYS
    assert record["frame"] == index
    assert isinstance(record["time"], float) and record["time"] > 1.6e9
    assert isinstance(record["source"], str) and record["source"]
    for person in record["persons"]:
        assert set(person) == {"landmarks", "score", "box"}
        assert np.asarray(person["landmarks"], dtype=float).shape == (33, 4)
        assert 0.0 <= person["score"] <= 1.0
        _check_box(person["box"])
    for detection in record["detections"]:
        assert set(detection) == {"box", "label", "score"}
        assert isinstance(detection["label"], str)
        assert 0.0 <= detection["score"] <= 1.0
        _check_box(detection["box"])
    assert isinstance(record["hard"], bool)
    assert all(isinstance(r, str) for r in record["hard_reasons"])
    assert not record["hard"] or record["hard_reasons"]
    assert set(record["timings_ms"]) == TIMING_KEYS
    assert all(v >= 0 for v in record["timings_ms"].values())


def test_sample_clip_writes_valid_jsonl_video_and_store(tmp_path: Path, model_dir: Path) -> None:
    jsonl, video, store_dir = tmp_path / "r.jsonl", tmp_path / "a.mp4", tmp_path / "store"

    done = _fedge(
        "--max-frames", "12", "--jsonl", str(jsonl), "--out", str(video),
        "--store-dir", str(store_dir), "--model-dir", str(model_dir), "--quiet",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 12
    for index, record in enumerate(records):
        _check_record(record, index)
    assert any(record["persons"] for record in records)
    assert "12 frames" in done.stderr
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert cap.read()[1].shape == (480, 640, 3)
    cap.release()
    with FrameStore.open_reader(store_dir) as store:
        assert [f.frame_index for f in store.iter_frames()] == list(range(12))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.mp4", "does not exist"),
        ("bogus.mp4", "cannot decode video file"),
        ("empty-dir", "has no images"),
        ("63", "cannot open camera 63"),
        ("http://127.0.0.1:9/stream.mjpg", "cannot open stream"),
    ],
)
def test_bad_source_exits_2_with_one_line(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "bogus.mp4").write_bytes(np.random.default_rng(0).bytes(40_000))
    (tmp_path / "empty-dir").mkdir()
    path = source if source.isdigit() or "://" in source else str(tmp_path / source)

    done = _fedge("--source", path, "--store-dir", str(tmp_path / "store"), timeout=60)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fedge edge: error:") and message in lines[0]


def test_show_without_display_exits_2_before_loading_models() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = _fedge("--show", "--no-store", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fedge edge: error: --show needs a display (DISPLAY is not set); use --out instead"
    )


def test_bad_size_is_a_config_error(tmp_path: Path) -> None:
    done = _fedge("--size", "big", "--no-store")
    assert done.returncode == 2
    assert "--size must look like 640x480" in done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--track-iou", "1.5", "--track-iou must lie in [0, 1], got 1.5"),
        ("--track-doubt", "0", "--track-doubt must be 1 or more, got 0"),
        ("--place-iou", "-1", "--place-iou must lie in [0, 1], got -1.0"),
        ("--place-change", "-1", "--place-change must lie in [0, 255], got -1.0"),
        ("--ask-labels", ",", "--ask-labels needs a label or 'all', got ','"),
    ],
)
def test_a_bad_selection_flag_is_a_config_error(flag: str, value: str, error: str) -> None:
    done = _fedge(flag, value, "--no-store")
    assert done.returncode == 2
    assert done.stderr.strip() == f"fedge edge: error: {error}"


def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path, model_dir: Path) -> None:
    jsonl = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge", "edge", "--realtime", "--quiet", "--jsonl", str(jsonl),
         "--store-dir", str(tmp_path / "store"), "--model-dir", str(model_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert 3 <= len(records) < 240
    with FrameStore.open_reader(tmp_path / "store") as store:
        assert len(store) >= len(records)
