"""The node's warm worker (``clients.warm_worker``): a real worker process per node that
answers train and evaluate requests with the same numbers a fresh ClientApp process
computes, keeps its process between requests, hands back the task's errors, leaves
with its owner, and is replaced by in-process work when it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clients.tasks import get_task
from clients.tasks.base import NodeSetup
from clients.tasks.person_detector import NoExamplesError
from clients.warm_worker import (
    REQUESTS_METRIC,
    WORKER_KEY,
    WorkerUnavailableError,
    evaluate_on_node,
    train_on_node,
    wants_worker,
    worker_files,
    worker_hello,
)
from data.frame_store import FrameStore
from fedge.core.errors import ConfigError, DatasetNotFoundError
from fedge.core.labels import FrameLabel, LabelBox
from fedge.core.records import FrameResult
from fedge.core.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"train-seconds", "samples-per-second", REQUESTS_METRIC}
"""Metrics that say how long or where, not what was computed."""
DETECTOR = RunConfig(
    task="person-detector", local_epochs=1, detector_batch_size=4, validation_share=0.25, seed=3
)
_FRESH_PROCESS = """
import sys
import numpy as np
from clients.tasks import get_task
from clients.tasks.base import NodeSetup
from fedge.core.run_config import RunConfig
cfg = RunConfig(task="person-detector", local_epochs=1, detector_batch_size=4,
                validation_share=0.25, seed=3)
task = get_task(cfg.task)
node = task.node_setup(cfg, {"store-dir": sys.argv[1]})
weights = list(np.load(sys.argv[2]).values())
out = task.train(cfg, node, weights, server_round=2, proximal_mu=0.0, correction=None)
np.savez(sys.argv[3], *out.weights)
"""


_CLIENTAPP_PROCESS = """
import json
import sys
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from clients.client_app import app
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp
weights = list(np.load(sys.argv[2]).values())
content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 2})})
message = Message(content, dst_node_id=7, message_type="evaluate")
node_config = {"store-dir": sys.argv[1], "warm-worker": "true"}
context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                  run_config=json.loads(sys.argv[3]))
reply = app(message, context)
metrics = dict(reply.content.metric_records["metrics"])
heavy = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
print(json.dumps({"heavy": heavy, "metrics": metrics}))
"""


def _label(boxes: list[tuple[int, int, int, int]]) -> FrameLabel:
    return FrameLabel(
        boxes=tuple(LabelBox(box=b, label="person", score=0.9, cloud_score=0.9) for b in boxes),
        source="cloud",
        fusion_method="test",
        teacher_version="test/1",
        frame_width=640,
        frame_height=480,
    )


def _store(folder: Path, frames: int) -> Path:
    """``frames`` cloud-labelled frames, each a bright person-shaped block on dark."""
    rng = np.random.default_rng(0)
    with FrameStore(folder, fsync=False) as store:
        for i in range(frames):
            x, y = int(rng.integers(20, 560)), int(rng.integers(20, 300))
            image = np.full((480, 640, 3), 30, np.uint8)
            image[y : y + 150, x : x + 60] = 220
            result = FrameResult(frame=i, time=1000.0 + i, source="test", persons=[])
            store.set_label(store.add(image, result), _label([(x, y, x + 60, y + 150)]), "cloud")
    return folder


def _processes_with(text: str) -> list[int]:
    """Live pids whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stop_worker(cfg: RunConfig, node_config: dict) -> None:
    task = get_task(cfg.task)
    files = worker_files(cfg, task.node_setup(cfg, node_config))
    for pid in _processes_with(str(files.socket)):
        os.kill(pid, 15)


@pytest.fixture(scope="module")
def detector_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _store(tmp_path_factory.mktemp("warm-store"), 12)


def test_the_worker_trains_as_a_fresh_process_does_and_stays_warm(
    detector_store: Path, tmp_path: Path
) -> None:
    # Arrange: the round's global model, from another seed than the node's
    cfg, task = DETECTOR, get_task("person-detector")
    node_config = {"store-dir": str(detector_store), WORKER_KEY: "true"}
    node = task.node_setup(cfg, node_config)
    weights = task.initial_weights(RunConfig(task="person-detector", seed=11))
    np.savez(tmp_path / "in.npz", *weights)
    try:
        # Execute: twice through the worker, once in a fresh process as Flower runs it
        first = train_on_node(
            task, cfg, node, weights, server_round=2, proximal_mu=0.0, correction=None
        )
        second = train_on_node(
            task, cfg, node, weights, server_round=2, proximal_mu=0.0, correction=None
        )
        evaluated = evaluate_on_node(task, cfg, node, first.weights, server_round=2)
        hello = worker_hello(cfg, node)
        subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS, str(detector_store),
             str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
            check=True, cwd=ROOT, capture_output=True,
        )  # fmt: skip
    finally:
        _stop_worker(cfg, node_config)
    fresh = list(np.load(tmp_path / "out.npz").values())
    # Assert: one process served all four requests, warm from the second on
    assert first.metrics[REQUESTS_METRIC] == 1.0 and second.metrics[REQUESTS_METRIC] == 2.0
    assert evaluated.metrics[REQUESTS_METRIC] == 3.0 and hello["requests"] == 4
    assert hello["pid"] != os.getpid()
    # Assert: the same weights as a fresh process, and a warm call as a cold one
    assert len(first.weights) == len(fresh) == len(second.weights)
    for a, b, c in zip(first.weights, second.weights, fresh, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert {k: v for k, v in first.metrics.items() if k not in TIMING_KEYS} == {
        k: v for k, v in second.metrics.items() if k not in TIMING_KEYS
    }
    assert first.num_examples == second.num_examples > 0
    assert 0.0 <= evaluated.metrics["eval_map50"] <= 1.0 and evaluated.num_examples > 0


def test_a_clientapp_that_hands_evaluation_to_the_worker_never_imports_tensorflow(
    detector_store: Path, tmp_path: Path
) -> None:
    # Arrange: a global model, and the run config as Flower hands it to the ClientApp
    cfg, task = DETECTOR, get_task("person-detector")
    weights = task.initial_weights(RunConfig(task="person-detector", seed=11))
    np.savez(tmp_path / "in.npz", *weights)
    run_config = json.dumps(cfg.to_mapping())
    expected = task.evaluate(
        cfg, task.node_setup(cfg, {"store-dir": str(detector_store)}), weights, server_round=2
    )
    # Execute: a fresh process runs the ClientApp on an evaluate message, as Flower does
    # (its worker leaves with it: the process is the worker's owner)
    done = subprocess.run(
        [sys.executable, "-c", _CLIENTAPP_PROCESS, str(detector_store),
         str(tmp_path / "in.npz"), run_config],
        check=True, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Assert: the worker evaluated (the same mAP as this process), and the ClientApp
    # process never loaded TensorFlow or Keras (seconds of CPU per message otherwise)
    assert out["metrics"][REQUESTS_METRIC] == 1.0
    assert out["metrics"]["eval_map50"] == expected.metrics["eval_map50"]
    assert out["metrics"]["eval-frames"] == expected.metrics["eval-frames"] > 0
    assert out["heavy"] == []


def test_a_task_error_in_the_worker_comes_back_as_the_same_error(tmp_path: Path) -> None:
    # Arrange: a store with a frame but nothing to train on
    cfg, task = DETECTOR, get_task("person-detector")
    with FrameStore(tmp_path, fsync=False) as store:
        store.add(np.zeros((48, 64, 3), np.uint8), FrameResult(frame=0, time=1.0, source="t"))
    node_config = {"store-dir": str(tmp_path), WORKER_KEY: True}
    node = task.node_setup(cfg, node_config)
    try:
        # Execute / Assert
        with pytest.raises(NoExamplesError, match="no training frame yet"):
            train_on_node(task, cfg, node, [], server_round=1, proximal_mu=0.0, correction=None)
        assert worker_hello(cfg, node)["requests"] == 2  # the worker lived on
    finally:
        _stop_worker(cfg, node_config)


def test_a_fashion_mnist_data_error_comes_back_as_the_same_error(tmp_path: Path) -> None:
    cfg = RunConfig(data_dir=str(tmp_path / "nowhere"), local_epochs=1)
    task = get_task("fashion-mnist")
    node_config = {"partition-id": 0, "num-partitions": 2, WORKER_KEY: "yes"}
    node = task.node_setup(cfg, node_config)
    weights = task.initial_weights(cfg)
    try:
        with pytest.raises(DatasetNotFoundError):
            train_on_node(
                task, cfg, node, weights, server_round=1, proximal_mu=0.0, correction=None
            )
    finally:
        _stop_worker(cfg, node_config)


def test_the_worker_leaves_when_its_owner_exits(tmp_path: Path) -> None:
    # Arrange: an owner process, and its worker
    cfg = RunConfig()
    node = get_task("fashion-mnist").node_setup(
        cfg, {"partition-id": 0, "num-partitions": 2, WORKER_KEY: True}
    )
    owner = subprocess.Popen(["sleep", "300"])
    files = worker_files(cfg, node, owner.pid)
    from clients.warm_worker import _start

    with files.lock.open("a"):
        _start(files, owner.pid, idle_s=600.0).close()
    (worker,) = _processes_with(str(files.socket))
    # Execute
    owner.kill()
    owner.wait()
    # Assert: gone within the watch's period (generous deadline), its socket removed
    deadline = time.monotonic() + 60.0
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(str(files.socket)), "the worker outlived its owner"
    assert not files.socket.exists()


def test_a_worker_that_cannot_start_leaves_the_work_to_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the worker's interpreter exits at once
    import clients.warm_worker as warm

    monkeypatch.setattr(warm.sys, "executable", "/bin/false")
    cfg = RunConfig(data_dir="sample", local_epochs=1, max_train_samples=32)
    task = get_task("fashion-mnist")
    node = task.node_setup(cfg, {"partition-id": 0, "num-partitions": 2, WORKER_KEY: True})
    weights = task.initial_weights(cfg)
    # Execute: the request fails, and the same call falls back
    with pytest.raises(WorkerUnavailableError, match="exited with 1 on start"):
        worker_hello(cfg, node)
    outcome = train_on_node(
        task, cfg, node, weights, server_round=1, proximal_mu=0.0, correction=None
    )
    # Assert: trained here (no worker metric), with the task's own result
    assert REQUESTS_METRIC not in outcome.metrics
    assert outcome.num_examples == 32
    assert any(not np.array_equal(a, b) for a, b in zip(outcome.weights, weights, strict=True))


@pytest.mark.parametrize(
    ("value", "wanted"),
    [(True, True), ("true", True), ("1", True), (False, False), ("no", False), ("", False)],
)
def test_the_node_config_switch(value: object, wanted: bool) -> None:
    assert wants_worker({WORKER_KEY: value}) is wanted
    assert wants_worker({}) is False


def test_a_bad_switch_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="warm-worker='maybe'"):
        wants_worker({WORKER_KEY: "maybe"})


def test_a_socket_folder_others_can_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the workers' folder exists, but open to everyone
    import clients.warm_worker as warm

    (tmp_path / f"fedge-workers-{os.getuid()}").mkdir(mode=0o755)
    os.chmod(tmp_path / f"fedge-workers-{os.getuid()}", 0o755)
    monkeypatch.setattr(warm.tempfile, "gettempdir", lambda: str(tmp_path))
    cfg = RunConfig()
    node = get_task("fashion-mnist").node_setup(
        cfg, {"partition-id": 0, "num-partitions": 2, WORKER_KEY: True}
    )
    # Execute / Assert: no worker is started there
    with pytest.raises(WorkerUnavailableError, match="not private to this user"):
        worker_hello(cfg, node)
    assert list((tmp_path / f"fedge-workers-{os.getuid()}").iterdir()) == []


def test_the_files_of_workers_gone_a_week_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a worker that left 8 days ago, one that left an hour ago, one still serving
    import clients.warm_worker as warm

    folder = tmp_path / f"fedge-workers-{os.getuid()}"
    folder.mkdir(mode=0o700)
    week = time.time() - warm.STALE_AFTER_S
    files = {}
    for name, age, serving in (("gone", week - 86400, False), ("recent", time.time() - 3600,
                               False), ("serving", week - 86400, True)):  # fmt: skip
        for ext in ("log", "lock") + (("sock",) if serving else ()):
            path = folder / f"{name}.{ext}"
            path.write_text("")
            os.utime(path, (age, age))
        files[name] = {p.name for p in folder.glob(f"{name}.*")}
    monkeypatch.setattr(warm.tempfile, "gettempdir", lambda: str(tmp_path))

    # Execute: any worker lookup opens the folder
    warm.worker_files(RunConfig(), NodeSetup(0, 2, {"partition-id": 0}))

    # Assert: only the long-gone worker's files went
    left = {p.name for p in folder.iterdir()}
    assert left == files["recent"] | files["serving"]
