"""The Fashion-MNIST research task: the NIID-Bench CNN on a partition of Fashion-MNIST.

Node config: ``partition-id`` and ``num-partitions`` (the run config's ``num-partitions``
wins when set), optionally ``data-dir``. The data, the partitioning and the cached
trainer live in ``clients.fashion_mnist_node``; the server evaluates on the test set.
Nothing is exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clients.fashion_mnist_node import get_trainer, node_data_for
from clients.tasks.base import CentralEvaluation, EvaluateOutcome, NodeSetup, TrainOutcome
from data.fashion_mnist import load_fashion_mnist
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from fedge.core.seeds import round_seed
from models.cnn import build_cnn
from models.training import LocalTrainer, to_model_input

__all__ = ["FashionMnistTask"]

log = logging.getLogger(__name__)


class _TestSetEvaluation:
    """Test loss and accuracy of the global model on the server's test set."""

    def __init__(self, cfg: RunConfig) -> None:
        dataset = load_fashion_mnist(cfg.data_dir)
        log.warning("central evaluation data: %s", dataset.describe())
        self.x_test = to_model_input(dataset.x_test)
        self.y_test = dataset.y_test
        self._trainer = LocalTrainer(lambda: build_cnn(seed=cfg.seed))

    def __call__(self, server_round: int, weights: Sequence[np.ndarray]) -> dict[str, float]:
        self._trainer.set_weights(weights)
        loss, accuracy = self._trainer.evaluate(self.x_test, self.y_test)
        return {"loss": loss, "accuracy": accuracy}


class FashionMnistTask:
    """The ``fashion-mnist`` task (see the module docstring)."""

    name = "fashion-mnist"

    def node_setup(self, cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeSetup:
        """Read ``partition-id`` and ``num-partitions`` (both required)."""
        try:
            partition_id = int(node_config["partition-id"])
            num_partitions = int(node_config["num-partitions"])
        except KeyError as err:
            raise ConfigError(
                f"node config lacks {err.args[0]!r}; start the SuperNode with "
                '--node-config "partition-id=0 num-partitions=2"'
            ) from err
        if cfg.num_partitions:
            num_partitions = cfg.num_partitions
        return NodeSetup(partition_id, num_partitions, dict(node_config))

    def initial_weights(self, cfg: RunConfig) -> list[np.ndarray]:
        """The untrained CNN, initialised from ``cfg.seed``."""
        return [np.asarray(w) for w in build_cnn(seed=cfg.seed).get_weights()]

    def train(
        self,
        cfg: RunConfig,
        node: NodeSetup,
        weights: Sequence[np.ndarray],
        *,
        server_round: int,
        proximal_mu: float,
        correction: Sequence[np.ndarray] | None,
    ) -> TrainOutcome:
        """SGD (``LocalTrainer``) on the partition's training part."""
        partition_id, num_partitions = _partition(node)
        data = node_data_for(cfg, partition_id, num_partitions)
        trainer = get_trainer(cfg.task, cfg.momentum, cfg.cpu_threads)
        trainer.set_weights(weights)
        result = trainer.fit(
            data.x_train,
            data.y_train,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=round_seed(cfg.seed, server_round, partition_id),
            proximal_mu=proximal_mu,
            correction=correction,
        )
        metrics = {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "samples-per-second": result.samples_per_second,
            "train-seconds": result.seconds,
        }
        return TrainOutcome(trainer.get_weights(), metrics, len(data.x_train), result.steps)

    def evaluate(
        self, cfg: RunConfig, node: NodeSetup, weights: Sequence[np.ndarray], *, server_round: int
    ) -> EvaluateOutcome:
        """Loss and accuracy on the partition's validation part."""
        partition_id, num_partitions = _partition(node)
        data = node_data_for(cfg, partition_id, num_partitions)
        trainer = get_trainer(cfg.task, cfg.momentum, cfg.cpu_threads)
        trainer.set_weights(weights)
        loss, accuracy = trainer.evaluate(data.x_val, data.y_val)
        return EvaluateOutcome({"eval_loss": loss, "eval_accuracy": accuracy}, len(data.x_val))

    def central_evaluation(self, cfg: RunConfig) -> CentralEvaluation:
        """Test loss and accuracy on the server's copy of the test set."""
        return _TestSetEvaluation(cfg)

    def warm_start(self, cfg: RunConfig) -> bool:
        """Never: the NIID-Bench protocol aggregates every party from round 1."""
        return False

    def export(
        self,
        cfg: RunConfig,
        server_round: int,
        weights: Sequence[np.ndarray],
        out_dir: str | os.PathLike[str],
        *,
        node_evaluations: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, float]:
        """Nothing to export: the research task has no deployed model."""
        return {}


def _partition(node: NodeSetup) -> tuple[int, int]:
    if node.partition_id is None or node.num_partitions is None:
        raise ConfigError('fashion-mnist needs --node-config "partition-id=0 num-partitions=2"')
    return node.partition_id, node.num_partitions
