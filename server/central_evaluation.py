"""Evaluate the global model on the held-out test set on the server.

The server resolves the run config's ``data-dir`` in its own process (its own
``FEDGE_DATA_DIR``; see ``data.fashion_mnist``) and logs which data set it evaluates on.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, MetricRecord

from data.fashion_mnist import load_fashion_mnist
from fedge.core.run_config import RunConfig
from models.cnn import build_cnn
from models.training import LocalTrainer, to_model_input

__all__ = ["CentralEvaluator"]

log = logging.getLogger(__name__)


class CentralEvaluator:
    """Callable ``(round, arrays) -> MetricRecord`` with test loss and accuracy."""

    def __init__(self, cfg: RunConfig) -> None:
        dataset = load_fashion_mnist(cfg.data_dir)
        log.warning("central evaluation data: %s", dataset.describe())
        self.x_test = to_model_input(dataset.x_test)
        self.y_test = dataset.y_test
        self._trainer = LocalTrainer(lambda: build_cnn(seed=cfg.seed))

    def initial_arrays(self) -> ArrayRecord:
        """The untrained global model (deterministic in the run seed)."""
        return ArrayRecord(self._trainer.get_weights())

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        self._trainer.set_weights(arrays.to_numpy_ndarrays())
        loss, accuracy = self._trainer.evaluate(self.x_test, self.y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})
