"""Pretrained model cache: fetch, verify on load, import .task bundles, CLI."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from clients.detector import Detector
from clients.pose import LiteRTPoseEstimator
from clients.pose.task_bundle import build_pose_task_bundle
from fedge.cli import main
from fedge.core.errors import ModelError
from models.pretrained import (
    PRETRAINED_MODELS,
    download_wheel,
    fetch_models,
    import_task_bundle,
    model_path,
    model_status,
    read_model,
    sha256_bytes,
)


@pytest.fixture(scope="module")
def mediapipe_wheel() -> Path:
    """The verified mediapipe wheel: the cached copy, else downloaded once.

    Not read from ``~/.cache/fedge/wheels`` directly: a model cache that is already full
    (a copied cache, ``$FEDGE_MODEL_DIR``, models imported from a ``.task`` bundle) never
    made ``fetch_models`` download it.
    """
    return download_wheel()


def _copy_models(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for model in PRETRAINED_MODELS.values():
        shutil.copy(src / model.filename, dst / model.filename)
    return dst


def test_fetch_puts_every_model_in_the_cache_with_the_pinned_digest(model_dir: Path) -> None:
    # Execute
    statuses = model_status(model_dir)

    # Assert
    assert [s.state for s in statuses] == ["ok"] * len(PRETRAINED_MODELS)
    for model in PRETRAINED_MODELS.values():
        assert sha256_bytes(read_model(model.name, model_dir)) == model.sha256
        assert model_path(model.name, model_dir) == model_dir / model.filename


def test_fetch_from_the_wheel_fills_an_empty_cache(mediapipe_wheel: Path, tmp_path: Path) -> None:
    # Execute
    paths = fetch_models(tmp_path, wheel=mediapipe_wheel)

    # Assert
    assert [p.name for p in paths] == [m.filename for m in PRETRAINED_MODELS.values()]
    assert all(s.state == "ok" for s in model_status(tmp_path))


def test_missing_model_raises_model_error_with_the_fetch_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="run `fedge models fetch`"):
        read_model("pose_detection", tmp_path)
    with pytest.raises(ModelError, match="run `fedge models fetch`"):
        Detector.blazeface(tmp_path)
    with pytest.raises(ModelError, match="run `fedge models fetch`"):
        LiteRTPoseEstimator.from_cache(tmp_path)


def test_corrupt_model_raises_model_error_with_the_fetch_hint(
    model_dir: Path, tmp_path: Path
) -> None:
    # Prepare: flip one byte of a valid model.
    cache = _copy_models(model_dir, tmp_path / "cache")
    target = cache / "face_detection_short_range.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))

    # Execute / Assert
    with pytest.raises(ModelError, match="corrupt.*run `fedge models fetch`"):
        Detector.blazeface(cache)
    assert {s.model.name: s.state for s in model_status(cache)}["face_detection_short_range"] == (
        "corrupt"
    )


def test_unknown_model_name_is_a_model_error(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown pretrained model"):
        read_model("yolo", model_dir)


def test_task_bundle_import_is_verified_like_the_wheel_models(
    model_dir: Path, tmp_path: Path
) -> None:
    # Prepare: a .task bundle whose landmark model differs from the wheel's (metadata added).
    bundle = tmp_path / "pose_landmarker_full.task"
    bundle.write_bytes(
        build_pose_task_bundle(
            read_model("pose_detection", model_dir), read_model("pose_landmark_full", model_dir)
        )
    )
    cache = tmp_path / "cache"

    # Execute
    written = import_task_bundle(bundle, cache)

    # Assert
    assert sorted(p.name for p in written) == ["pose_detection.tflite", "pose_landmark_full.tflite"]
    status = {s.model.name: s for s in model_status(cache)}
    assert status["pose_landmark_full"].state == "ok"
    assert status["pose_landmark_full"].source == "task:pose_landmarker_full.task"
    assert status["face_detection_short_range"].state == "missing"
    landmarks = read_model("pose_landmark_full", cache)
    assert sha256_bytes(landmarks) != PRETRAINED_MODELS["pose_landmark_full"].sha256

    # A corrupted import is still caught.
    target = cache / "pose_landmark_full.tflite"
    target.write_bytes(landmarks[:-1] + bytes([landmarks[-1] ^ 0xFF]))
    with pytest.raises(ModelError, match="corrupt"):
        read_model("pose_landmark_full", cache)


def test_task_bundle_with_the_wrong_model_is_rejected(model_dir: Path, tmp_path: Path) -> None:
    # Prepare: a bundle whose "pose detector" is really the face detector.
    bundle = tmp_path / "bad.task"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr(
            "pose_detector.tflite", read_model("face_detection_short_range", model_dir)
        )

    # Execute / Assert
    with pytest.raises(ModelError, match="does not look like pose_detection.tflite"):
        import_task_bundle(bundle, tmp_path / "cache")
    not_a_zip = tmp_path / "notes.task"
    not_a_zip.write_text("hello")
    with pytest.raises(ModelError, match="not a .task bundle"):
        import_task_bundle(not_a_zip, tmp_path / "cache")
    with pytest.raises(ModelError, match="holds none of"):
        import_task_bundle(model_dir / "pose_detection.tflite", tmp_path / "cache")


def test_cli_lists_then_fetches_into_a_cache_dir(
    mediapipe_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    cache = str(tmp_path / "cli-cache")

    # Execute / Assert: empty cache lists as missing with the hint, exit code 1.
    assert main(["models", "list", "--cache-dir", cache]) == 1
    assert "missing" in capsys.readouterr().out

    assert main(["models", "fetch", "--cache-dir", cache, "--wheel", str(mediapipe_wheel)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == len(PRETRAINED_MODELS)

    assert main(["models", "fetch", "--cache-dir", cache, "--from-task", "nope.task"]) == 2
    assert "fedge models: error: task bundle nope.task does not exist" in capsys.readouterr().err


def test_force_fetch_replaces_an_imported_model_with_the_wheel_copy(
    model_dir: Path, mediapipe_wheel: Path, tmp_path: Path
) -> None:
    # Prepare: a cache whose landmark model came from a .task bundle.
    bundle = tmp_path / "pose.task"
    bundle.write_bytes(
        build_pose_task_bundle(
            read_model("pose_detection", model_dir), read_model("pose_landmark_full", model_dir)
        )
    )
    cache = tmp_path / "cache"
    import_task_bundle(bundle, cache)

    # Execute
    fetch_models(cache, names=["pose_landmark_full"], wheel=mediapipe_wheel, force=True)

    # Assert
    status = {s.model.name: s for s in model_status(cache)}["pose_landmark_full"]
    assert status.state == "ok" and status.source == "mediapipe==0.10.21 wheel"
