"""Per-round checkpoints of the global model and the strategy's server-side state.

Layout inside a run directory::

    checkpoints/round-0003.npz   weights (w/0..w/N) + strategy state (s/<attr>/<key>)
    checkpoints/latest.json      {"round": 3, "file": "round-0003.npz", "config_hash": ...}

With differential privacy the strategy is a Flower DP wrapper around the registry's
strategy. Its state is then ``s/dp/<key>`` (clipping norm and noise generator, see
``strategies.privacy.dp_state``) and the wrapped strategy's attributes go under
``s/strategy.<attr>/<key>``.

Files are written to a temporary name, fsynced and renamed, so a crash never leaves a
half-written checkpoint behind ``latest.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy.fedopt import FedOpt

from fedge.core.errors import ConfigError
from fedge.core.files import atomic_write
from strategies.privacy import dp_state, restore_dp_state, wrapped_strategy

__all__ = [
    "DP_STATE",
    "STATEFUL_ATTRIBUTES",
    "WRAPPED_PREFIX",
    "Checkpoint",
    "load_latest_checkpoint",
    "restore_strategy_state",
    "save_checkpoint",
    "strategy_state",
]

# Server-side state of the strategies that must survive a restart:
# FedOpt family (m_t, v_t), FedAvgM (momentum_vector), all of them (current_arrays),
# SCAFFOLD (control_variate c; client_variates, each partition's c_i, keys "<p>/<key>").
STATEFUL_ATTRIBUTES = (
    "current_arrays", "m_t", "v_t", "momentum_vector", "control_variate", "client_variates",
)  # fmt: skip
# State names of a DP wrapper (its own state) and of the strategy it wraps (a prefix).
DP_STATE = "dp"
WRAPPED_PREFIX = "strategy."


@dataclass
class Checkpoint:
    """The global weights after ``round`` plus strategy state and the config hash."""

    round: int
    weights: list[np.ndarray]
    config_hash: str
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def strategy_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """Read the restart-relevant state of a Flower strategy (or DP wrapper) as named arrays."""
    inner = wrapped_strategy(strategy)
    if inner is None:
        return _attribute_state(strategy)
    state = {DP_STATE: dp_state(strategy)}
    for name, arrays in strategy_state(inner).items():
        state[WRAPPED_PREFIX + name] = arrays
    return state


def restore_strategy_state(strategy: Any, state: dict[str, dict[str, np.ndarray]]) -> None:
    """Put state read by ``strategy_state`` back into a freshly built strategy.

    Raises
    ------
    ConfigError
        If ``strategy`` is a DP wrapper and the checkpoint holds no DP state (it was
        written before fedge saved it), so the run cannot continue exactly.
    """
    inner = wrapped_strategy(strategy)
    if inner is None:
        _restore_attributes(strategy, state)
        return
    if DP_STATE not in state:
        raise ConfigError(
            "the checkpoint holds no differential-privacy state (an older fedge wrote it), "
            "so resuming would not continue this run exactly; start a new run-name"
        )
    restore_dp_state(strategy, state[DP_STATE])
    restore_strategy_state(
        inner,
        {k[len(WRAPPED_PREFIX) :]: v for k, v in state.items() if k.startswith(WRAPPED_PREFIX)},
    )


def _attribute_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    state: dict[str, dict[str, np.ndarray]] = {}
    for attr in STATEFUL_ATTRIBUTES:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            state[attr] = {k: v.numpy() for k, v in value.items()}
        elif isinstance(value, dict):
            state[attr] = {str(k): np.asarray(v) for k, v in value.items()}
        elif isinstance(value, list):
            state[attr] = {f"{i:04d}": np.asarray(v) for i, v in enumerate(value)}
    return state


def _restore_attributes(strategy: Any, state: dict[str, dict[str, np.ndarray]]) -> None:
    for attr, arrays in state.items():
        if attr == "current_arrays" and not isinstance(strategy, FedOpt):
            # FedOpt keeps a dict of arrays, the others an ArrayRecord
            setattr(strategy, attr, ArrayRecord({k: Array(v) for k, v in arrays.items()}))
        elif attr == "momentum_vector":
            setattr(strategy, attr, [arrays[k] for k in sorted(arrays)])
        else:
            setattr(strategy, attr, dict(arrays))


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically and point ``latest.json`` at it."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"round-{checkpoint.round:04d}.npz"
    payload = {f"w/{i:04d}": w for i, w in enumerate(checkpoint.weights)}
    for attr, arrays in checkpoint.state.items():
        payload.update({f"s/{attr}/{k}": v for k, v in arrays.items()})
    atomic_write(directory / name, lambda f: np.savez(f, **payload))
    meta = {"round": checkpoint.round, "file": name, "config_hash": checkpoint.config_hash}
    atomic_write(directory / "latest.json", lambda f: f.write(json.dumps(meta).encode()))
    return directory / name


def load_latest_checkpoint(run_dir: Path, config_hash: str) -> Checkpoint | None:
    """Return the newest checkpoint of ``run_dir``, or None if it has none.

    Raises
    ------
    ConfigError
        If the checkpoint was made with a different training configuration.
    """
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.exists():
        return None
    meta = json.loads(latest.read_text())
    if meta["config_hash"] != config_hash:
        raise ConfigError(
            f"checkpoint in {run_dir} was made with config hash {meta['config_hash']}, "
            f"this run has {config_hash}; resume with the same settings or use a new run-name"
        )
    with np.load(latest.parent / meta["file"]) as data:
        weights = [data[k] for k in sorted(k for k in data.files if k.startswith("w/"))]
        state: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            if key.startswith("s/"):
                _, attr, name = key.split("/", 2)
                state.setdefault(attr, {})[name] = data[key]
    return Checkpoint(int(meta["round"]), weights, meta["config_hash"], state)
