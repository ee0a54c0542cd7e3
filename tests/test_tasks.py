"""The task registry: names agree with the run config, unknown names are refused, and the
ClientApp and ServerApp reach each task's work through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from loopback_grid import LoopbackGrid

from clients.client_app import app as client_app
from clients.tasks import TASKS, get_task, task_names
from clients.tasks.fashion_mnist import FashionMnistTask
from clients.tasks.person_detector import PersonDetectorTask
from fedge.core import run_config
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from server.central_evaluation import CentralEvaluator


def test_run_config_task_names_equal_the_registry() -> None:
    assert run_config.TASKS == tuple(TASKS) == tuple(task_names())


@pytest.mark.parametrize("name", list(TASKS))
def test_each_registered_task_is_built_under_its_own_name(name: str) -> None:
    # Execute
    task = get_task(name)
    # Assert
    assert task.name == name
    assert get_task(name) is task  # one instance per process


def test_the_registry_dispatches_each_task_to_its_module() -> None:
    assert isinstance(get_task("fashion-mnist"), FashionMnistTask)
    assert isinstance(get_task("person-detector"), PersonDetectorTask)


def test_an_unknown_task_is_a_config_error_listing_every_task() -> None:
    # Execute
    with pytest.raises(ConfigError) as err:
        get_task("cifar-10")
    # Assert
    message = str(err.value)
    assert "'cifar-10'" in message and "\n" not in message
    assert all(name in message for name in TASKS)


def test_an_unknown_task_in_the_run_config_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="unknown task 'cifar-10'.*person-detector"):
        RunConfig.from_mapping({"task": "cifar-10"})


@pytest.mark.parametrize("strategy", ["scaffold", "fednova"])
def test_the_person_detector_refuses_strategies_that_assume_plain_sgd(strategy: str) -> None:
    with pytest.raises(ConfigError, match=f"person-detector cannot run strategy {strategy}"):
        RunConfig.from_mapping({"task": "person-detector", "strategy": strategy})
    assert RunConfig.from_mapping({"strategy": strategy}).strategy == strategy  # fashion-mnist


def test_detector_knobs_are_validated_for_every_task() -> None:
    with pytest.raises(ConfigError, match="detector-export 'int4'.*int8, float16"):
        RunConfig.from_mapping({"detector-export": "int4"})
    with pytest.raises(ConfigError, match="detector-own-weight must lie in"):
        RunConfig.from_mapping({"detector-own-weight": 1.5})
    with pytest.raises(ConfigError, match="detector-batch-size must be >= 1"):
        RunConfig.from_mapping({"task": "person-detector", "detector-batch-size": 0})


def test_person_detector_node_without_store_dir_is_told_how_to_start() -> None:
    cfg = RunConfig(task="person-detector")
    with pytest.raises(ConfigError, match="""--node-config 'store-dir="/var/lib/fedge/store"'"""):
        get_task("person-detector").node_setup(cfg, {"partition-id": 0})


def test_person_detector_node_needs_no_partition() -> None:
    cfg = RunConfig(task="person-detector")
    node = get_task("person-detector").node_setup(cfg, {"store-dir": "/srv/store"})
    assert node.partition_id is None and node.config["store-dir"] == "/srv/store"


def test_fashion_mnist_node_without_partition_is_told_how_to_start() -> None:
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="lacks 'partition-id'"):
        get_task("fashion-mnist").node_setup(cfg, {"num-partitions": 2})


def _train_message(arrays: ArrayRecord, node_id: int) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def test_the_client_app_trains_fashion_mnist_through_the_registry(tmp_path: Path) -> None:
    # Prepare: the server's initial model, one node of a 20-way split of the sample slice
    cfg = RunConfig.from_mapping(
        {"data-dir": "sample", "max-train-samples": 64, "output-dir": str(tmp_path)}
    )
    initial = CentralEvaluator(cfg).initial_arrays()
    grid = LoopbackGrid(client_app, 20, cfg.to_mapping())  # node 1003: partition-id 3
    # Execute
    (reply,) = grid.send_and_receive([_train_message(initial, 1003)])
    # Assert: new weights of the same shapes, and the metrics the ClientApp always sent
    weights = reply.content.array_records["arrays"].to_numpy_ndarrays()
    before = initial.to_numpy_ndarrays()
    assert [w.shape for w in weights] == [w.shape for w in before]
    assert any(not np.array_equal(a, b) for a, b in zip(weights, before, strict=True))
    metrics = dict(reply.content.metric_records["metrics"])
    assert list(metrics) == [
        "train_loss",
        "train_accuracy",
        "samples-per-second",
        "train-seconds",
        "partition-id",
        "num-examples",
        "handler-seconds",
        "startup-seconds",
    ]
    assert metrics["partition-id"] == 3 and metrics["num-examples"] == 64


def test_central_evaluation_of_fashion_mnist_reports_test_accuracy() -> None:
    cfg = RunConfig.from_mapping({"data-dir": "sample"})
    evaluator = CentralEvaluator(cfg)
    metrics = evaluator(0, evaluator.initial_arrays())
    assert metrics is not None and set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 0.3  # an untrained 10-class CNN


def test_the_person_detector_has_no_central_evaluation_and_fashion_mnist_no_export(
    tmp_path: Path,
) -> None:
    detector = get_task("person-detector")
    assert detector.central_evaluation(RunConfig(task="person-detector")) is None
    exported = get_task("fashion-mnist").export(RunConfig(), 1, [], tmp_path)
    assert exported == {} and list(tmp_path.iterdir()) == []


def test_detector_measurement_and_export_keys_do_not_change_what_a_run_trains() -> None:
    base = RunConfig(task="person-detector")
    same = RunConfig(
        task="person-detector",
        detector_export="none",
        detector_int8_eval_every=0,
        detector_calibration_dir="/srv/kept",
    )
    assert same.training_hash() == base.training_hash()  # a run may resume with them changed
    other = RunConfig(task="person-detector", detector_learning_rate=0.01)
    assert other.training_hash() != base.training_hash()
