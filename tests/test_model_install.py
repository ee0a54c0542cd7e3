"""Verified model install on the node: versions beside each other, the current pointer,
rollback, rejections that change nothing, and the broadcast to every connected node.

The models are real TFLite person detectors ending in ``TFLite_Detection_PostProcess``
(``tests/tiny_detectors.py``), wrapped by ``export.artifact.make_artifact``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from loopback_grid import LoopbackGrid
from tiny_detectors import tiny_artifact, tiny_person_ssd

from clients.client_app import app as client_app
from clients.model_installer import (
    DETECTOR_DIR_ENV,
    POINTER_FILE,
    install_model,
    list_versions,
    read_pointer,
    resolve_detector_dir,
    rollback,
)
from clients.model_updates import (
    INSTALL_RESULT_KEY,
    artifact_from_record,
    artifact_record,
)
from data.frame_store import FrameStore
from export.artifact import InputSpec, ModelArtifact, sha256_hex, write_artifact
from fedge.core.errors import ModelError
from fedge.core.records import FrameResult
from fedge.core.run_config import RunConfig
from server.central_evaluation import CentralEvaluator
from server.model_broadcast import INSTALL_MODEL_TYPE, broadcast_exported, broadcast_model
from server.rounds import RoundReport, run_rounds
from server.server_app import configured_strategy
from tests.uplink_support import clip_frames

BOX_A = (0.1, 0.2, 0.4, 0.8)
BOX_B = (0.5, 0.1, 0.9, 0.6)
NAME = "person-detector"


@pytest.fixture(scope="module")
def model_a() -> bytes:
    return tiny_person_ssd(BOX_A)


@pytest.fixture(scope="module")
def model_b() -> bytes:
    return tiny_person_ssd(BOX_B)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def _install(directory: Path, artifact: ModelArtifact, frame: np.ndarray, **options: object):  # type: ignore[no-untyped-def]
    return install_model(
        directory,
        artifact.model,
        artifact.manifest,
        smoke_frame=frame,
        **options,  # type: ignore[arg-type]
    )


def test_install_puts_each_version_beside_the_previous_and_moves_current(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    # Prepare
    first, second = tiny_artifact(model_a, 1), tiny_artifact(model_b, 2)

    # Execute
    installed_1 = _install(tmp_path, first, frame)
    installed_2 = _install(tmp_path, second, frame)

    # Assert
    assert (installed_1.version, installed_2.version) == (1, 2)
    assert installed_2.current
    assert installed_2.model_path == tmp_path / NAME / "v000002" / "person-detector-v000002.tflite"
    assert installed_2.model_path.read_bytes() == model_b
    assert installed_1.model_path.read_bytes() == model_a  # the previous version stays
    versions = list_versions(tmp_path)
    assert [(v.version, v.current) for v in versions] == [(1, False), (2, True)]
    assert versions[1].sha256 == sha256_hex(model_b)
    pointer = read_pointer(tmp_path)
    assert pointer is not None and pointer.version == 2 and pointer.history == (1, 2)
    assert installed_2.label == "person-detector-v2"


def test_rollback_goes_back_one_and_the_rolled_back_version_is_not_reinstalled(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    # Prepare
    _install(tmp_path, tiny_artifact(model_a, 1), frame)
    _install(tmp_path, tiny_artifact(model_b, 2), frame)

    # Execute
    back = rollback(tmp_path)

    # Assert: v1 serves again, v2 stays on disk marked rolled back
    assert back.version == 1 and back.current
    assert [(v.version, v.current, v.rolled_back) for v in list_versions(tmp_path)] == [
        (1, True, False),
        (2, False, True),
    ]
    with pytest.raises(ModelError, match="version 2 was rolled back on this node"):
        _install(tmp_path, tiny_artifact(model_b, 2), frame)
    assert _install(tmp_path, tiny_artifact(model_b, 3), frame).current  # a newer one is
    with pytest.raises(ModelError, match="nothing to roll back"):
        rollback(tmp_path / "empty")


def test_rollback_of_the_only_version_is_refused(
    tmp_path: Path, model_a: bytes, frame: np.ndarray
) -> None:
    _install(tmp_path, tiny_artifact(model_a, 1), frame)
    before = (tmp_path / NAME / POINTER_FILE).read_bytes()

    with pytest.raises(ModelError, match="made current before 1 is left"):
        rollback(tmp_path)

    assert (tmp_path / NAME / POINTER_FILE).read_bytes() == before


def test_only_the_last_keep_versions_stay_on_disk(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    # Execute
    for version in (1, 2, 3, 4):
        model = model_a if version % 2 else model_b
        _install(tmp_path, tiny_artifact(model, version), frame, keep=2)

    # Assert
    assert [v.version for v in list_versions(tmp_path)] == [3, 4]
    assert sorted(p.name for p in (tmp_path / NAME).iterdir() if p.is_dir()) == [
        "v000003",
        "v000004",
    ]


def test_reinstalling_the_current_version_changes_nothing_and_other_bytes_are_refused(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    _install(tmp_path, tiny_artifact(model_a, 1), frame)
    pointer = tmp_path / NAME / POINTER_FILE
    before = pointer.read_bytes()

    again = _install(tmp_path, tiny_artifact(model_a, 1), frame)

    assert again.version == 1 and pointer.read_bytes() == before
    with pytest.raises(ModelError, match="already installed with sha256"):
        _install(tmp_path, tiny_artifact(model_b, 1), frame)
    assert pointer.read_bytes() == before
    assert (tmp_path / NAME / "v000001" / "person-detector-v000001.tflite").read_bytes() == model_a


def _truncated(artifact: ModelArtifact) -> ModelArtifact:
    return dataclasses.replace(artifact, model=artifact.model[:-64])


def _flipped_byte(artifact: ModelArtifact) -> ModelArtifact:
    data = bytearray(artifact.model)
    data[len(data) // 2] ^= 0xFF
    return dataclasses.replace(artifact, model=bytes(data))


def _wrong_sha(artifact: ModelArtifact) -> ModelArtifact:
    manifest = dataclasses.replace(artifact.manifest, sha256=sha256_hex(b"another model"))
    return dataclasses.replace(artifact, manifest=manifest)


def _corrupt_but_consistent(artifact: ModelArtifact) -> ModelArtifact:
    # What a broken export would send: garbage whose manifest matches it.
    garbage = bytes(np.random.default_rng(1).integers(0, 256, len(artifact.model), np.uint8))
    manifest = dataclasses.replace(artifact.manifest, sha256=sha256_hex(garbage))
    return ModelArtifact(model=garbage, manifest=manifest)


def _wrong_input_spec(artifact: ModelArtifact) -> ModelArtifact:
    spec = dataclasses.replace(artifact.manifest.input, shape=(1, 288, 384, 3), dtype="int8")
    return dataclasses.replace(
        artifact, manifest=dataclasses.replace(artifact.manifest, input=spec)
    )


@pytest.mark.parametrize(
    ("damage", "options", "message"),
    [
        (_truncated, {}, "truncated or corrupt"),
        (_flipped_byte, {}, "does not match the manifest's"),
        (_wrong_sha, {}, "does not match the manifest's"),
        (_corrupt_but_consistent, {}, "LiteRT cannot load the model"),
        (_wrong_input_spec, {}, r"model input \[1, 32, 32, 3\] float32 does not match"),
        (
            lambda a: a,
            {"expected_input": InputSpec(shape=(1, 288, 384, 3), dtype="int8")},
            "this node expects",
        ),
        (
            lambda a: a,
            {"min_map": 0.5, "evaluate_map": lambda model, manifest: 0.25},
            "local mAP@0.5 0.250 of version 2 is under the floor 0.500",
        ),
    ],
    ids=[
        "truncated",
        "corrupted-in-transit",
        "wrong-sha256",
        "corrupt-model",
        "wrong-input-spec",
        "not-the-nodes-input",
        "map-drop",
    ],
)
def test_a_bad_model_is_rejected_and_the_current_one_stays(
    tmp_path: Path,
    model_a: bytes,
    model_b: bytes,
    frame: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    damage,  # type: ignore[no-untyped-def]
    options: dict[str, object],
    message: str,
) -> None:
    # Prepare: v1 serves; v2 arrives damaged
    _install(tmp_path, tiny_artifact(model_a, 1), frame)
    pointer = tmp_path / NAME / POINTER_FILE
    before = pointer.read_bytes()
    bad = damage(tiny_artifact(model_b, 2))

    # Execute
    with caplog.at_level(logging.WARNING), pytest.raises(ModelError, match=message):
        _install(tmp_path, bad, frame, **options)

    # Assert: nothing on disk moved, the rejection is logged
    assert pointer.read_bytes() == before
    assert [(v.version, v.current) for v in list_versions(tmp_path)] == [(1, True)]
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == [".lock", POINTER_FILE, "v000001"]
    assert any("rejected person-detector version 2" in r.getMessage() for r in caplog.records)


# --- the install query: node side and server side -------------------------------------


def test_the_artifact_travels_as_flower_records(model_a: bytes) -> None:
    artifact = tiny_artifact(model_a, 7)

    record = artifact_record(artifact)
    model, manifest = artifact_from_record(ConfigRecord(dict(record)))

    assert model == model_a and manifest == artifact.manifest
    assert (
        isinstance(record["tflite"], bytes) and json.loads(str(record["manifest"]))["version"] == 7
    )
    with pytest.raises(ModelError, match="lacks the model bytes"):
        artifact_from_record(ConfigRecord({"manifest": "{}"}))


def _node_dirs(tmp_path: Path, count: int) -> list[dict[str, object]]:
    return [{"detector-dir": str(tmp_path / f"node-{i}")} for i in range(count)]


def test_broadcast_installs_on_every_node_and_records_each_verdict(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    # Prepare: node 2 already holds another model under version 1, so it must refuse
    nodes = _node_dirs(tmp_path, 3)
    _install(Path(str(nodes[2]["detector-dir"])), tiny_artifact(model_b, 1), frame)
    grid = LoopbackGrid(client_app, 3, {}, node_configs=nodes)
    artifact = tiny_artifact(model_a, 1)

    # Execute
    outcome = broadcast_model(grid, artifact)

    # Assert
    assert outcome.nodes == [1000, 1001, 1002]
    assert outcome.installed == {1000: 1, 1001: 1}
    assert list(outcome.rejected) == [1002]
    assert "already installed with sha256" in outcome.rejected[1002]
    assert outcome.failed == [] and outcome.bytes_sent >= 3 * len(model_a)
    for node in nodes[:2]:
        current = [v for v in list_versions(Path(str(node["detector-dir"]))) if v.current]
        assert [(v.version, v.sha256) for v in current] == [(1, sha256_hex(model_a))]
    # only the verdict comes back: no arrays, no bytes
    for reply in grid.replies:
        assert not reply.content.array_records
        values = dict(reply.content.config_records[INSTALL_RESULT_KEY])
        assert not any(isinstance(v, bytes) for v in values.values())
    assert {m for m in (r.metadata.message_type for r in grid.replies)} == {INSTALL_MODEL_TYPE}


def test_broadcast_exported_sends_the_rounds_artifact_or_nothing(
    tmp_path: Path, model_a: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: nodes that name only their frame store (one frame each, for the smoke test)
    monkeypatch.delenv(DETECTOR_DIR_ENV, raising=False)
    export_dir = tmp_path / "models"
    write_artifact(export_dir, tiny_artifact(model_a, 4))
    stores = [tmp_path / f"store-{i}" for i in range(2)]
    for store_dir, image in zip(stores, clip_frames([0, 10]), strict=True):
        with FrameStore(store_dir, 10**8, fsync=False) as store:
            store.add(image, FrameResult(frame=0, time=1.8e9, source="t"))
    nodes: list[dict[str, object]] = [{"store-dir": str(d)} for d in stores]
    grid = LoopbackGrid(client_app, 2, {}, node_configs=nodes)

    # Execute
    sent = broadcast_exported(grid, export_dir, 4)
    not_exported = broadcast_exported(grid, export_dir, 5)

    # Assert
    assert not_exported == {}
    line = json.loads(json.dumps(sent))  # what metrics.jsonl holds
    assert line["model"]["version"] == 4
    assert line["model"]["installed"] == {"1000": 4, "1001": 4}
    assert line["model"]["rejected"] == {} and line["model"]["failed"] == []
    for store_dir in stores:  # the detector lives beside the frames it runs on
        assert [v.version for v in list_versions(store_dir / "detector")] == [4]


def test_the_detector_dir_is_the_one_named_else_the_env_else_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DETECTOR_DIR_ENV, raising=False)
    store = tmp_path / "store"

    assert resolve_detector_dir(tmp_path / "d", store) == tmp_path / "d"
    assert resolve_detector_dir(None, store) == store / "detector"
    assert resolve_detector_dir(None, None) == Path.home() / ".cache" / "fedge" / "detector"
    monkeypatch.setenv(DETECTOR_DIR_ENV, str(tmp_path / "env"))
    assert resolve_detector_dir(None, store) == tmp_path / "env"


def test_every_connected_node_gets_the_model_not_only_the_sampled_ones(
    tmp_path: Path, model_a: bytes
) -> None:
    # Prepare: a real round of the real ClientApp on 4 nodes, half of them sampled
    cfg = RunConfig(fraction_train=0.5, fraction_evaluate=0.0, max_train_samples=64)
    nodes = _node_dirs(tmp_path, 4)
    grid = LoopbackGrid(client_app, 4, cfg.to_mapping(), node_configs=nodes)
    export_dir = tmp_path / "models"
    reports: list[RoundReport] = []
    delivered: list[dict[str, object]] = []

    def on_round_end(report: RoundReport) -> None:  # what the ServerApp does after a round
        write_artifact(export_dir, tiny_artifact(model_a, report.round))
        delivered.append(broadcast_exported(grid, export_dir, report.round))
        reports.append(report)

    # Execute
    run_rounds(
        configured_strategy(cfg, grid),
        grid,
        CentralEvaluator(cfg).initial_arrays(),
        first_round=1,
        last_round=1,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=None,
        on_round_end=on_round_end,
    )

    # Assert
    trained = {c.node_id for c in reports[0].train_clients}
    assert len(trained) == 2
    outcome = delivered[0]["model"]
    assert isinstance(outcome, dict)
    assert outcome["installed"] == {str(n): 1 for n in (1000, 1001, 1002, 1003)}
    for node in nodes:
        assert [v.version for v in list_versions(Path(str(node["detector-dir"])))] == [1]


def test_a_node_explains_why_it_rejects_a_model(tmp_path: Path, model_a: bytes) -> None:
    # Prepare: a model damaged on the way, sent to one node
    grid = LoopbackGrid(client_app, 1, {}, node_configs=_node_dirs(tmp_path, 1))
    bad = _flipped_byte(tiny_artifact(model_a, 2))

    # Execute
    outcome = broadcast_model(grid, bad)

    # Assert
    assert outcome.installed == {} and outcome.failed == []
    assert "does not match the manifest's" in outcome.rejected[1000]
    verdict = dict(grid.replies[0].content.config_records[INSTALL_RESULT_KEY])
    assert verdict["status"] == "rejected" and verdict["version"] == 2
    assert list_versions(tmp_path / "node-0") == []


def test_the_int8_export_of_the_person_detector_installs_and_loads(tmp_path: Path) -> None:
    # Prepare: the federated detector (untrained weights) exported as the ServerApp does
    from clients.hot_swap import DetectorFollower, person_detector_loader
    from export.artifact import DetectionSpec, make_artifact
    from export.tflite_export import PostProcessOptions, export_tflite
    from models.box_coding import DEFAULT_ANCHORS
    from models.person_detector import build_person_detector

    frames = clip_frames(list(range(0, 80, 10)))
    options = PostProcessOptions()
    model = export_tflite(
        build_person_detector(), quantization="int8", calibration_frames=frames, postprocess=options
    )
    artifact = make_artifact(
        model,
        version=1,
        quantization="int8",
        detector=DetectionSpec(
            num_anchors=DEFAULT_ANCHORS.num_anchors, max_detections=options.max_detections
        ),
    )

    # Execute
    installed = install_model(tmp_path, artifact.model, artifact.manifest, smoke_frame=frames[-1])
    follower = DetectorFollower(tmp_path, load=person_detector_loader(0.3))
    loaded = follower.load_current()
    found = loaded.detectors[0].detect(frames[0])

    # Assert
    assert installed.current and installed.quantization == "int8"
    assert artifact.manifest.input.dtype == "int8"
    assert loaded.label == "person-detector-v1"
    assert len(found) <= options.max_detections
    assert all(d.label == "person" and 0.3 <= d.score <= 1.0 for d in found)


def test_a_damaged_copy_of_a_version_is_replaced_when_it_is_sent_again(
    tmp_path: Path, model_a: bytes, model_b: bytes, frame: np.ndarray
) -> None:
    # Prepare: v1, v2 installed, then v1's files damaged on disk and v1 made current again
    _install(tmp_path, tiny_artifact(model_a, 1), frame)
    _install(tmp_path, tiny_artifact(model_b, 2), frame)
    folder = tmp_path / NAME / "v000001"
    (folder / "person-detector-v000001.tflite").write_bytes(b"damaged")
    (folder / "person-detector-v000001.json").write_text("{")

    # Execute: the server sends v1 again (e.g. a resumed run)
    installed = _install(tmp_path, tiny_artifact(model_a, 1), frame)

    # Assert
    assert installed.current and installed.version == 1
    assert installed.model_path.read_bytes() == model_a
    assert [v.version for v in list_versions(tmp_path)] == [1, 2]
