"""Names → Flower's own aggregation strategies, built from the run config.

A new strategy is one more entry in ``STRATEGIES``: a function that takes the
``RunConfig`` and the keyword arguments every strategy shares, and returns a
``flwr.serverapp.strategy.Strategy``; its name goes into
``fedge.core.run_config.STRATEGIES`` too, which validates run configs (a test keeps the two
equal). A strategy that needs work on the node besides plain local training (SCAFFOLD's
control variates, FedNova's step counts) also registers its client side in
``CLIENT_SIDES``; the ClientApp asks ``client_side`` for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig, UnknownStrategyError
from strategies.fednova import FedNova, FedNovaClient
from strategies.scaffold import Scaffold, ScaffoldClient

__all__ = [
    "CLIENT_SIDES",
    "STRATEGIES",
    "ClientSide",
    "UnknownStrategyError",
    "build_strategy",
    "client_side",
    "strategy_names",
]

StrategyBuilder = Callable[[RunConfig, dict[str, Any]], Strategy]


def _fedopt_args(cfg: RunConfig) -> dict[str, float]:
    return {"eta": cfg.eta, "eta_l": cfg.eta_l, "tau": cfg.tau}


STRATEGIES: dict[str, StrategyBuilder] = {
    "fedavg": lambda cfg, common: FedAvg(**common),
    "fedprox": lambda cfg, common: FedProx(**common, proximal_mu=cfg.proximal_mu),
    "fedavgm": lambda cfg, common: FedAvgM(
        **common,
        server_learning_rate=cfg.server_learning_rate,
        server_momentum=cfg.server_momentum,
    ),
    "fedadam": lambda cfg, common: FedAdam(
        **common, **_fedopt_args(cfg), beta_1=cfg.beta_1, beta_2=cfg.beta_2
    ),
    "fedyogi": lambda cfg, common: FedYogi(
        **common, **_fedopt_args(cfg), beta_1=cfg.beta_1, beta_2=cfg.beta_2
    ),
    "fedadagrad": lambda cfg, common: FedAdagrad(**common, **_fedopt_args(cfg)),
    "fedmedian": lambda cfg, common: FedMedian(**common),
    "fedtrimmedavg": lambda cfg, common: FedTrimmedAvg(**common, beta=cfg.trimmed_beta),
    "krum": lambda cfg, common: Krum(**common, num_malicious_nodes=cfg.num_malicious_nodes),
    "multikrum": lambda cfg, common: MultiKrum(
        **common,
        num_malicious_nodes=cfg.num_malicious_nodes,
        num_nodes_to_select=cfg.krum_keep or 1,
    ),
    "bulyan": lambda cfg, common: Bulyan(**common, num_malicious_nodes=cfg.num_malicious_nodes),
    "qfedavg": lambda cfg, common: QFedAvg(
        client_learning_rate=cfg.learning_rate, q=cfg.q_param, **common
    ),
    "scaffold": lambda cfg, common: Scaffold(
        **common, server_learning_rate=cfg.server_learning_rate, num_clients=cfg.num_partitions
    ),
    "fednova": lambda cfg, common: FedNova(**common),
}


class ClientSide(Protocol):
    """A strategy's work on the node around one local training (one train message)."""

    def correction(self) -> list[np.ndarray] | None:
        """Per-weight drift correction for ``LocalTrainer.fit`` (None: plain training)."""
        ...

    def finish(
        self, local_weights: Sequence[np.ndarray], steps: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        """Extra reply records and metrics, from the honestly trained weights."""
        ...


ClientSideBuilder = Callable[[RunConfig, Message, Context, list[np.ndarray]], ClientSide]

CLIENT_SIDES: dict[str, ClientSideBuilder] = {
    "scaffold": ScaffoldClient.start,
    "fednova": FedNovaClient.start,
}


class _PlainTraining:
    """The client side of every strategy without one: nothing to add."""

    def correction(self) -> None:
        return None

    def finish(
        self, local_weights: Sequence[np.ndarray], steps: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        return {}, {}


def client_side(
    cfg: RunConfig, msg: Message, context: Context, global_weights: list[np.ndarray]
) -> ClientSide:
    """The node's part of ``cfg.strategy`` for the train message ``msg``."""
    builder = CLIENT_SIDES.get(cfg.strategy)
    return builder(cfg, msg, context, global_weights) if builder else _PlainTraining()


def strategy_names() -> list[str]:
    """Registered strategy names, in registry order."""
    return list(STRATEGIES)


def build_strategy(cfg: RunConfig) -> Strategy:
    """Return the Flower strategy named by ``cfg.strategy``, configured from ``cfg``.

    ``RunConfig`` has already checked the name and the hyperparameters' ranges.

    Raises
    ------
    ConfigError
        If the strategy rejects its hyperparameters.
    """
    builder = STRATEGIES[cfg.strategy]
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_available_nodes,
        "min_evaluate_nodes": cfg.min_available_nodes if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_available_nodes,
    }
    try:
        return builder(cfg, common)
    except ValueError as err:
        raise ConfigError(f"strategy {cfg.strategy!r}: {err}") from err
