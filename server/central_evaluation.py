"""Evaluate the global model on the server's own data, as the run's task defines it.

The task (``clients.tasks``) supplies both the initial model and the evaluation:
fashion-mnist evaluates on the held-out test set (the server resolves the run config's
``data-dir`` in its own process, its own ``FEDGE_DATA_DIR``; see ``data.fashion_mnist``);
person-detector has no central data (the nodes report mAP), so every round's central
metrics are empty.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord

from clients.tasks import get_task
from fedge.core.run_config import RunConfig

__all__ = ["CentralEvaluator"]


class CentralEvaluator:
    """Callable ``(round, arrays) -> MetricRecord | None`` for the run's task."""

    def __init__(self, cfg: RunConfig) -> None:
        self._cfg = cfg
        self._task = get_task(cfg.task)
        self._evaluate = self._task.central_evaluation(cfg)

    def initial_arrays(self) -> ArrayRecord:
        """The untrained global model (deterministic in the run seed)."""
        return ArrayRecord(self._task.initial_weights(self._cfg))

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if self._evaluate is None:
            return None
        metrics = self._evaluate(server_round, arrays.to_numpy_ndarrays())
        return None if metrics is None else MetricRecord(metrics)
