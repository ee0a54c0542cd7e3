"""Aggregation strategies: a registry of Flower's strategies and reply guards."""

from strategies.non_finite import has_non_finite_arrays, split_non_finite
from strategies.registry import STRATEGIES, UnknownStrategyError, build_strategy, strategy_names

__all__ = [
    "STRATEGIES",
    "UnknownStrategyError",
    "build_strategy",
    "has_non_finite_arrays",
    "split_non_finite",
    "strategy_names",
]
