"""What a task is: the contract between the Flower glue and one kind of model.

The ClientApp and the ServerApp know nothing of Fashion-MNIST or person detection; they
ask the task registry (``clients.tasks``) for the run's :class:`Task` and call it. A task
supplies the initial model, the node's data, local training and evaluation, the central
evaluation and the export after each round. Weights travel as a list of NumPy arrays in
the model's ``get_weights()`` order; whatever the task returns is what the ClientApp
sends (plain or compressed), never data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedge.core.run_config import RunConfig

__all__ = [
    "CentralEvaluation",
    "EvaluateOutcome",
    "NodeSetup",
    "Task",
    "TrainOutcome",
]


@dataclass(frozen=True)
class NodeSetup:
    """What a node knows about itself from its node config (``--node-config``).

    ``partition_id`` / ``num_partitions`` are ``None`` where the task does not need them;
    ``config`` is the whole node config (e.g. ``store-dir``).
    """

    partition_id: int | None
    num_partitions: int | None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainOutcome:
    """One local training: the new weights, its metrics, sample and step counts.

    ``metrics`` holds only numbers (they go into a ``MetricRecord``); ``steps`` counts
    optimizer updates (SCAFFOLD and FedNova need it).
    """

    weights: list[np.ndarray]
    metrics: dict[str, float]
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvaluateOutcome:
    """One local evaluation: numbers only, and how many examples they cover."""

    metrics: dict[str, Any]  # numbers, or lists of numbers (MetricRecord values)
    num_examples: int


CentralEvaluation = Callable[[int, Sequence[np.ndarray]], dict[str, float] | None]
"""``(server round, global weights) -> metrics`` on the server's own data, or ``None``."""


class Task(Protocol):
    """One model family and its data, as the ClientApp and ServerApp use it."""

    name: str

    def node_setup(self, cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeSetup:
        """Read and check what the task needs from the node config (``ConfigError``)."""
        ...

    def initial_weights(self, cfg: RunConfig) -> list[np.ndarray]:
        """The untrained global model, deterministic in ``cfg.seed``."""
        ...

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
        """Train ``weights`` on the node's data (FedProx ``proximal_mu``, SCAFFOLD
        ``correction``) and return the result."""
        ...

    def evaluate(
        self, cfg: RunConfig, node: NodeSetup, weights: Sequence[np.ndarray], *, server_round: int
    ) -> EvaluateOutcome:
        """Evaluate ``weights`` on the node's held-out data."""
        ...

    def central_evaluation(self, cfg: RunConfig) -> CentralEvaluation | None:
        """The server-side evaluation, or ``None`` when the server holds no data."""
        ...

    def warm_start(self, cfg: RunConfig) -> bool:
        """Whether a run from untrained weights keeps one node's model in round 1
        (``server.rounds``, warm start) instead of aggregating every node's."""
        ...

    def export(
        self,
        cfg: RunConfig,
        server_round: int,
        weights: Sequence[np.ndarray],
        out_dir: str | os.PathLike[str],
        *,
        node_evaluations: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, float]:
        """Export the global model after ``server_round`` into ``out_dir``; return figures
        for the metrics log (empty when the task exports nothing). ``node_evaluations``:
        the nodes' evaluation metrics of these weights (this round's replies)."""
        ...
