"""Every registered strategy trains for real; bad names and NaN updates are refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from loopback_grid import run_loopback_rounds

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from server.rounds import RoundReport
from strategies.registry import STRATEGIES, UnknownStrategyError, build_strategy

NUM_NODES = 5  # Bulyan needs n >= 4f + 3 with f = 0 → 3; Krum needs n > 2f + 2


def _run(
    cfg: RunConfig, rounds: int = 2
) -> tuple[list[np.ndarray], list[np.ndarray], list[RoundReport]]:
    initial, final, reports, _ = run_loopback_rounds(cfg, NUM_NODES, rounds)
    return initial, final, reports


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_registered_strategy_runs_two_rounds_and_changes_the_weights(name: str) -> None:
    # Prepare
    cfg = RunConfig(strategy=name, max_train_samples=160, fraction_evaluate=0.0, krum_keep=3)
    # Execute
    initial, final, reports = _run(cfg)
    # Assert
    assert [r.round for r in reports] == [1, 2]
    assert all(len(r.train_clients) == NUM_NODES for r in reports)
    change = max(float(np.abs(a - b).max()) for a, b in zip(initial, final, strict=True))
    assert change > 1e-4, f"{name} left the global model unchanged"
    assert all(np.isfinite(w).all() for w in final)
    assert np.isfinite(reports[-1].central["loss"])


def test_unknown_strategy_fails_listing_valid_names() -> None:
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(RunConfig(strategy="fedfoo"))
    assert "fedfoo" in str(err.value)
    for name in STRATEGIES:
        assert name in str(err.value)


def test_invalid_strategy_hyperparameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fedtrimmedavg"):
        build_strategy(RunConfig(strategy="fedtrimmedavg", trimmed_beta=0.7))


def test_nan_client_update_is_rejected_and_logged_not_aggregated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: partition 0 of 5 sends NaN weights every round
    cfg = RunConfig(
        strategy="fedavg",
        max_train_samples=160,
        fraction_evaluate=0.0,
        attack="nan",
        malicious_fraction=0.2,
    )
    # Execute
    with caplog.at_level(logging.WARNING, logger="strategies.non_finite"):
        _, final, reports = _run(cfg)
    # Assert
    assert all(len(r.rejected_nodes) == 1 for r in reports)
    assert all(len(r.train_clients) == NUM_NODES - 1 for r in reports)
    assert all(np.isfinite(w).all() for w in final)
    assert "non-finite" in caplog.text
    assert reports[-1].central["accuracy"] > 0.1
