"""Hot swap of the person detector in the running edge agent.

Two real TFLite person detectors (``tests/tiny_detectors.py``) whose single box differs
tell which version found a frame's people. A real pipeline (capture of the sample clip,
top-down pose with the real BlazePose landmark model, two pose workers) runs while a new
version is installed, a broken one is refused and a rollback is followed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_detectors import tiny_artifact, tiny_person_ssd

from clients.capture import Capture, CaptureConfig
from clients.hot_swap import DetectorFollower, person_detector_loader, swap_into
from clients.model_installer import install_model, read_pointer, rollback
from clients.pipeline import Pipeline
from clients.pose import PoseLandmarker, TopDownPoseEstimator
from clients.privacy_filter import PrivacyFilter
from clients.uploader import Uploader, UploaderConfig
from data.frame_store import FrameStore
from fedge.cli import main as fedge_main
from fedge.core.records import FrameResult
from tests.uplink_support import RecordingCloud, wait_until

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
WIDTH, HEIGHT = 640, 480
# Two people of the clip's first frame, as fractions of the frame: one box per version.
BOX_V1 = (507 / WIDTH, 150 / HEIGHT, 534 / WIDTH, 222 / HEIGHT)
BOX_V2 = (130 / WIDTH, 138 / HEIGHT, 152 / WIDTH, 198 / HEIGHT)
V1, V2 = "person-detector-v1", "person-detector-v2"
WORKERS = 2


def _pixels(box: tuple[float, float, float, float]) -> list[float]:
    return [box[0] * WIDTH, box[1] * HEIGHT, box[2] * WIDTH, box[3] * HEIGHT]


@pytest.fixture(scope="module")
def models() -> dict[int, bytes]:
    return {1: tiny_person_ssd(BOX_V1), 2: tiny_person_ssd(BOX_V2)}


@pytest.fixture(scope="module")
def landmarkers(model_dir: Path) -> list[PoseLandmarker]:
    return [PoseLandmarker.from_cache(model_dir, num_threads=1) for _ in range(WORKERS)]


def _install(directory: Path, model: bytes, version: int) -> None:
    artifact = tiny_artifact(model, version)
    install_model(directory, artifact.model, artifact.manifest, smoke_frame=None)


def _follower(directory: Path, **options: object) -> DetectorFollower:
    return DetectorFollower(
        directory,
        load=person_detector_loader(0.3),
        copies=WORKERS,
        **options,  # type: ignore[arg-type]
    )


def _run_pipeline(
    follower: DetectorFollower,
    landmarkers: list[PoseLandmarker],
    frames: int,
    at_frame: int,
    action: Callable[[], None],
) -> list[FrameResult]:
    """Run a real pipeline over ``frames`` clip frames, calling ``action`` once frame
    ``at_frame`` came out; return the records in order."""
    loaded = follower.active
    assert loaded is not None
    estimators = [
        TopDownPoseEstimator(landmarker, detector, max_persons=1)
        for landmarker, detector in zip(landmarkers, loaded.detectors, strict=True)
    ]
    capture = Capture(CLIP, CaptureConfig(size=(WIDTH, HEIGHT), max_frames=frames))
    results = []
    with Pipeline(capture, pose=estimators, model_version=follower.version) as pipeline:
        follower.on_swap = swap_into(pipeline, estimators)
        for output in pipeline:
            results.append(output.result)
            if output.result.frame == at_frame:
                action()
    return results


def _person_boxes(result: FrameResult) -> list[list[float]]:
    return [list(d.box) for d in result.detections if d.label == "person"]


def test_a_new_version_is_swapped_in_between_frames_without_dropping_any(
    tmp_path: Path, models: dict[int, bytes], landmarkers: list[PoseLandmarker]
) -> None:
    # Prepare: v1 installed and serving
    _install(tmp_path, models[1], 1)
    follower = _follower(tmp_path)
    follower.load_current()

    def install_v2() -> None:  # what the SuperNode does while the agent runs
        _install(tmp_path, models[2], 2)
        assert follower.poll() is not None  # the watcher thread's step, here on cue

    # Execute
    results = _run_pipeline(follower, landmarkers, frames=40, at_frame=5, action=install_v2)

    # Assert: every frame, in order; the version changes once, at one frame
    assert [r.frame for r in results] == list(range(40))
    versions = [r.to_json()["model_version"] for r in results]
    switch = versions.index(V2)
    assert 5 < switch < 40
    assert versions == [V1] * switch + [V2] * (40 - switch)
    for result, version in zip(results, versions, strict=True):
        expected = _pixels(BOX_V1 if version == V1 else BOX_V2)
        assert len(_person_boxes(result)) == 1
        np.testing.assert_allclose(_person_boxes(result)[0], expected, atol=0.5)


def test_an_agent_started_before_any_version_leaves_cold_start_at_the_first(
    tmp_path: Path, models: dict[int, bytes], landmarkers: list[PoseLandmarker], model_dir: Path
) -> None:
    # Prepare: nothing installed; whole-frame pose and a cold-start selector
    from clients.hard_cases import HardCasePolicy, HardCaseSelector
    from clients.pose import create_pose_estimator

    follower = _follower(tmp_path)
    assert follower.load_current(required=False) is None
    whole_frame = [create_pose_estimator("litert", model_dir, num_threads=1) for _ in range(2)]
    selector = HardCaseSelector(HardCasePolicy(), detector_labels=("face",), cold_start=True)
    capture = Capture(CLIP, CaptureConfig(size=(WIDTH, HEIGHT), max_frames=30))
    spare = iter(landmarkers)  # one landmark model per worker: interpreters are not shared
    results = []

    # Execute: the first version arrives after frame 5
    with Pipeline(capture, pose=whole_frame, selector=selector) as pipeline:
        follower.on_swap = swap_into(
            pipeline,
            whole_frame,
            first_estimator=lambda d: TopDownPoseEstimator(next(spare), d, max_persons=1),
            selector=selector,
        )
        for output in pipeline:
            results.append(output.result)
            if output.result.frame == 5:
                _install(tmp_path, models[1], 1)
                assert follower.poll() is not None

    # Assert: no frame lost; before the switch no person boxes, after it v1's box on
    # every frame, and the selector left cold start with person boxes in its checks
    assert [r.frame for r in results] == list(range(30))
    versions = [r.model_version for r in results]
    switch = versions.index(V1)
    assert 5 < switch < 30 and versions == [""] * switch + [V1] * (30 - switch)
    assert all(not _person_boxes(r) for r in results[:switch])
    for result in results[switch:]:
        np.testing.assert_allclose(_person_boxes(result)[0], _pixels(BOX_V1), atol=0.5)
    assert selector.cold_start is False and "person" in selector.detector_labels


def test_a_version_that_fails_to_load_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path,
    models: dict[int, bytes],
    landmarkers: list[PoseLandmarker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: v1 serving; v2 installed, then damaged on disk before the agent loads it
    _install(tmp_path, models[1], 1)
    follower = _follower(tmp_path)
    follower.load_current()
    swapped: list[object] = []

    def install_broken_v2() -> None:
        _install(tmp_path, models[2], 2)
        path = tmp_path / "person-detector" / "v000002" / "person-detector-v000002.tflite"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        swapped.append(follower.poll())
        swapped.append(follower.poll())  # looked at once, not retried every poll

    # Execute
    with caplog.at_level(logging.ERROR, logger="clients.hot_swap"):
        results = _run_pipeline(
            follower, landmarkers, frames=12, at_frame=3, action=install_broken_v2
        )

    # Assert
    assert swapped == [None, None]
    assert [r.frame for r in results] == list(range(12))
    assert {r.model_version for r in results} == {V1}
    for result in results:
        np.testing.assert_allclose(_person_boxes(result)[0], _pixels(BOX_V1), atol=0.5)
    assert follower.version == V1 and list(follower.rejected) == [
        (2, read_pointer(tmp_path).sha256)
    ]  # type: ignore[union-attr]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "version 2 rejected by the running agent" in errors[0]
    assert "does not match the manifest's" in errors[0]


def test_the_follower_thread_follows_a_rollback(tmp_path: Path, models: dict[int, bytes]) -> None:
    # Prepare: v2 current and running; the watcher thread polls
    _install(tmp_path, models[1], 1)
    _install(tmp_path, models[2], 2)
    seen: list[str] = []
    follower = _follower(tmp_path, poll_s=0.05, on_swap=lambda loaded: seen.append(loaded.label))
    assert follower.load_current().label == V2

    # Execute
    with follower:
        rollback(tmp_path)
        wait_until(lambda: follower.version == V1, 20.0, "the agent to follow the rollback")

    # Assert
    assert seen == [V1]
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for detector in follower.active.detectors:  # type: ignore[union-attr]
        person = [d for d in detector.detect(frame) if d.label == "person"]
        np.testing.assert_allclose(person[0].box, _pixels(BOX_V1), atol=0.5)


def test_hard_cases_name_the_detector_version_running(
    tmp_path: Path, models: dict[int, bytes]
) -> None:
    # Prepare: one hard case in the store; the uploader follows the agent's version
    _install(tmp_path / "detector", models[1], 1)
    follower = _follower(tmp_path / "detector")
    follower.load_current()
    with (
        FrameStore(tmp_path / "store", 10**8, fsync=False) as store,
        RecordingCloud() as cloud,
    ):
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        result = FrameResult(frame=0, time=1.8e9, source="t", hard=True, hard_reasons=["x"])
        store.add(image, result)
        config = UploaderConfig(target=cloud.target, node_id="node-a", insecure=True)
        uploader = Uploader(store, PrivacyFilter("landmarks"), config)
        uploader.model_version = lambda: follower.version
        _install(tmp_path / "detector", models[2], 2)
        follower.poll()

        # Execute
        reached = uploader.run_once()

        # Assert
        assert reached is True
        assert [case.model_version for case in cloud.received] == [V2]


def test_models_list_and_rollback_commands(
    tmp_path: Path, models: dict[int, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    _install(tmp_path, models[1], 1)
    _install(tmp_path, models[2], 2)

    # Execute
    back = fedge_main(["models", "rollback", "--detector-dir", str(tmp_path)])
    rolled = capsys.readouterr().out
    fedge_main(["models", "list", "--detector-dir", str(tmp_path)])
    listing = capsys.readouterr().out
    refused = fedge_main(["models", "rollback", "--detector-dir", str(tmp_path / "none")])
    error = capsys.readouterr().err

    # Assert
    assert back == 0 and "v2 -> v1" in rolled
    lines = [line for line in listing.splitlines() if " v1 " in line or " v2 " in line]
    assert len(lines) == 2
    assert lines[0].lstrip().startswith("* v1") and "sha256 " in lines[0]
    assert "rolled back" in lines[1] and not lines[1].lstrip().startswith("*")
    assert refused == 2 and "nothing to roll back" in error


def test_fedge_edge_runs_the_installed_detector(
    tmp_path: Path, models: dict[int, bytes], model_dir: Path
) -> None:
    # Prepare
    _install(tmp_path / "detector", models[1], 1)
    jsonl = tmp_path / "records.jsonl"
    args = ["--detector-dir", str(tmp_path / "detector"), "--max-frames", "3", "--quiet"]
    args += ["--jsonl", str(jsonl), "--store-dir", str(tmp_path / "store")]
    args += ["--model-dir", str(model_dir), "--pose-workers", "1", "--max-persons", "1"]

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "fedge", "edge", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "edge",
            "--detector-dir",
            str(tmp_path / "none"),
            "--store-dir",
            str(tmp_path / "store2"),
            "--model-dir",
            str(model_dir),
            "--max-frames",
            "2",
            "--quiet",
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    assert {r["model_version"] for r in records} == {V1}
    for record in records:
        boxes = [d["box"] for d in record["detections"] if d["label"] == "person"]
        np.testing.assert_allclose(boxes, [_pixels(BOX_V1)], atol=0.5)
    # nothing installed yet: the agent starts in cold start (whole-frame pose, no version)
    assert missing.returncode == 0, missing.stderr
