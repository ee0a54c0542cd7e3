"""Names → Flower's own aggregation strategies, built from the run config.

A new strategy is one more entry in ``STRATEGIES``: a function that takes the
``RunConfig`` and the keyword arguments every strategy shares, and returns a
``flwr.serverapp.strategy.Strategy``; its name goes into
``fedge.core.run_config.STRATEGIES`` too, which validates run configs (a test keeps the two
equal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

__all__ = ["STRATEGIES", "UnknownStrategyError", "build_strategy", "strategy_names"]

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
}


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
