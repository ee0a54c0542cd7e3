"""Resuming a run with differential privacy: the strategy's whole state survives a restart.

The resume test drives the real ServerApp (``server.server_app.app``: registry, DP
wrapper, checkpoints, metrics) over a ``LoopbackGrid`` that hands each message to the
real ClientApp in this process, so a stop-and-resume takes seconds, not Flower processes.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from loopback_grid import LoopbackGrid

from clients.client_app import app as client_app
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from server.central_evaluation import CentralEvaluator
from server.checkpoint import (
    Checkpoint,
    load_latest_checkpoint,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
)
from server.metrics_log import read_metrics
from server.server_app import app as server_app
from server.server_app import configured_strategy

NUM_NODES = 3

# Small, fast and stateful: FedYogi's moments, the adaptive clipping norm (a clip well
# below the update norms, so it moves every round) and noise large enough to matter.
DP_RUN = {
    "data-dir": "sample",
    "strategy": "fedyogi",
    "dp": "server-adaptive",
    "dp-clipping-norm": 0.05,
    "dp-noise-multiplier": 0.2,
    "num-server-rounds": 4,
    "max-train-samples": 120,
    "fraction-evaluate": 0.0,
    "min-available-nodes": NUM_NODES,
}


def _run_server_app(run_config: dict[str, Any]) -> None:
    """One ServerApp run, as ``flwr run`` would start it, over an in-process grid."""
    grid = LoopbackGrid(client_app, NUM_NODES, run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    server_app(grid, context)


def _final_weights(run_dir: Path) -> list[np.ndarray]:
    with np.load(run_dir / "final_weights.npz") as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_resumed_dp_fedyogi_run_ends_with_the_same_weights_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    # Prepare: the uninterrupted 4-round run
    common = {**DP_RUN, "output-dir": str(tmp_path)}
    _run_server_app({**common, "run-name": "straight"})
    # Execute: stop after round 2, then resume the same run
    _run_server_app({**common, "run-name": "resumed", "stop-after-round": 2})
    assert [r["round"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == [1, 2]
    _run_server_app({**common, "run-name": "resumed", "resume": True})
    # Assert: same rounds, same clipping norms, same final weights
    straight_rows = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed_rows = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["round"] for r in resumed_rows] == [1, 2, 3, 4]
    clips = [r["dp_clipping_norm"] for r in straight_rows]
    assert len(set(clips)) == 4, f"the adaptive clipping norm should move every round: {clips}"
    assert [r["dp_clipping_norm"] for r in resumed_rows] == pytest.approx(clips, rel=1e-9)
    straight = _final_weights(tmp_path / "straight")
    resumed = _final_weights(tmp_path / "resumed")
    worst = max(float(np.abs(a - b).max()) for a, b in zip(straight, resumed, strict=True))
    assert worst <= 1e-5, f"resumed weights differ by {worst}"


@pytest.mark.parametrize(
    ("strategy", "dp"),
    [("fedavgm", "client-adaptive"), ("fedadam", "server-fixed"), ("fedavgm", "none")],
)
def test_resumed_run_matches_the_uninterrupted_one_for_other_modes_and_strategies(
    tmp_path: Path, strategy: str, dp: str
) -> None:
    # Prepare
    common = {**DP_RUN, "strategy": strategy, "dp": dp, "output-dir": str(tmp_path)}
    _run_server_app({**common, "run-name": "straight"})
    # Execute
    _run_server_app({**common, "run-name": "resumed", "stop-after-round": 2})
    _run_server_app({**common, "run-name": "resumed", "resume": True})
    # Assert
    straight = _final_weights(tmp_path / "straight")
    resumed = _final_weights(tmp_path / "resumed")
    worst = max(float(np.abs(a - b).max()) for a, b in zip(straight, resumed, strict=True))
    assert worst <= 1e-5, f"resumed weights differ by {worst}"


def _stateful_wrapped_strategy(cfg: RunConfig) -> Any:
    """A DP-wrapped FedYogi with moments, a moved clipping norm and a used noise source."""
    strategy = configured_strategy(cfg, LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping()))
    rng = np.random.default_rng(7)
    inner = strategy.strategy
    inner.m_t = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
    inner.v_t = {"a": rng.random((3, 2)), "b": rng.random(4)}
    strategy.clipping_norm = 0.123456789
    strategy.noise_rng.normal(size=17)  # the noise source has been drawn from
    return strategy


def test_checkpoint_round_trips_the_inner_strategy_clipping_norm_and_noise_source(
    tmp_path: Path,
) -> None:
    # Prepare
    cfg = RunConfig(**{k.replace("-", "_"): v for k, v in DP_RUN.items()})
    saved = _stateful_wrapped_strategy(cfg)
    weights = [np.ones((2, 2), np.float32)]
    save_checkpoint(tmp_path, Checkpoint(2, weights, "hash", strategy_state(saved)))
    fresh = configured_strategy(cfg, LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping()))
    # Execute
    checkpoint = load_latest_checkpoint(tmp_path, "hash")
    assert checkpoint is not None
    restore_strategy_state(fresh, checkpoint.state)
    # Assert
    for moment in ("m_t", "v_t"):
        restored = getattr(fresh.strategy, moment)
        original = getattr(saved.strategy, moment)
        assert list(restored) == list(original)
        for key in original:
            np.testing.assert_array_equal(restored[key], original[key])
    assert fresh.clipping_norm == saved.clipping_norm
    assert fresh.noise_rng.normal(size=5) == pytest.approx(saved.noise_rng.normal(size=5))


def test_fedavgm_momentum_and_reference_weights_survive_a_wrapped_checkpoint(
    tmp_path: Path,
) -> None:
    # Prepare: FedAvgM keeps its own reference weights (before noise) and momentum
    cfg = RunConfig(strategy="fedavgm", server_momentum=0.9, dp="server-fixed")
    saved = configured_strategy(cfg, LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping()))
    saved.strategy.momentum_vector = [np.full((2, 3), 0.5), np.arange(4.0)]
    saved.strategy.current_arrays = ArrayRecord([np.full((2, 3), 2.0), np.arange(4.0) * 3])
    save_checkpoint(tmp_path, Checkpoint(1, [np.zeros(1)], "hash", strategy_state(saved)))
    fresh = configured_strategy(cfg, LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping()))
    # Execute
    checkpoint = load_latest_checkpoint(tmp_path, "hash")
    assert checkpoint is not None
    restore_strategy_state(fresh, checkpoint.state)
    # Assert
    for got, want in zip(
        fresh.strategy.momentum_vector, saved.strategy.momentum_vector, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    restored = fresh.strategy.current_arrays.to_numpy_ndarrays()
    for got, want in zip(restored, saved.strategy.current_arrays.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(got, want)


def _one_aggregation(cfg: RunConfig, global_seed: int) -> tuple[list[np.ndarray], bool]:
    """Aggregate one real round after seeding NumPy's global generator with ``global_seed``.

    Returns the aggregate and whether the global generator was left as it was.
    """
    grid = LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping())
    strategy = configured_strategy(cfg, grid)
    initial = CentralEvaluator(cfg).initial_arrays()
    replies = list(
        grid.send_and_receive(strategy.configure_train(1, initial, ConfigRecord(), grid))
    )
    np.random.seed(global_seed)
    before = np.random.get_state(legacy=True)[1].copy()
    arrays, _ = strategy.aggregate_train(1, replies)
    untouched = bool(np.array_equal(np.random.get_state(legacy=True)[1], before))
    assert arrays is not None
    return arrays.to_numpy_ndarrays(), untouched


def test_dp_noise_comes_from_the_run_seed_not_numpys_global_generator() -> None:
    # Prepare: clipping so loose that nothing is clipped; noise std-dev 0.03 * 100 / 3 = 1
    cfg = RunConfig(
        data_dir="sample", max_train_samples=60, fraction_evaluate=0.0, seed=3,
        dp="server-fixed", dp_clipping_norm=100.0, dp_noise_multiplier=0.03,
    )  # fmt: skip
    # Execute: the same run under two different global generator states, and another seed
    first, first_untouched = _one_aggregation(cfg, global_seed=1)
    second, second_untouched = _one_aggregation(cfg, global_seed=2)
    other_seed, _ = _one_aggregation(replace(cfg, seed=4), global_seed=1)
    # Assert: the global generator is neither used nor moved
    assert first_untouched and second_untouched
    # same noise: equal up to TensorFlow's run-to-run float jitter in client training
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # another seed, independent noise: the difference has std-dev sqrt(2) (training on
    # other shuffles adds about 1e-2 to it)
    diff = np.concatenate([(a - b).ravel() for a, b in zip(first, other_seed, strict=True)])
    assert float(np.std(diff)) == pytest.approx(np.sqrt(2), rel=0.05)


def test_resuming_a_dp_run_from_a_checkpoint_without_dp_state_is_refused(tmp_path: Path) -> None:
    # Prepare: a checkpoint as fedge wrote it before DP state was saved (wrapper attrs only)
    cfg = RunConfig(strategy="fedyogi", dp="server-adaptive")
    strategy = configured_strategy(cfg, LoopbackGrid(client_app, NUM_NODES, cfg.to_mapping()))
    old_state = {"current_arrays": {"0": np.zeros(3)}}
    # Execute / Assert
    with pytest.raises(ConfigError, match="new run-name"):
        restore_strategy_state(strategy, old_state)


def test_resumed_run_with_node_sampling_trains_the_same_nodes_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    # Prepare: 2 of 3 nodes per round, no DP; Flower samples with the global ``random``
    run = {
        "data-dir": "sample",
        "num-server-rounds": 4,
        "max-train-samples": 60,
        "fraction-train": 0.6,
        "fraction-evaluate": 0.0,
        "min-available-nodes": 2,
        "output-dir": str(tmp_path),
    }
    _run_server_app({**run, "run-name": "straight"})
    # Execute: stop after round 2, disturb the global random state, resume
    _run_server_app({**run, "run-name": "resumed", "stop-after-round": 2})
    random.seed(12345)
    _run_server_app({**run, "run-name": "resumed", "resume": True})

    # Assert: the same partitions trained in every round, and the same weights
    def trained(name: str) -> list[list[int]]:
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        return [sorted(c["partition_id"] for c in r["clients"] if c.get("train")) for r in rows]

    straight, resumed = trained("straight"), trained("resumed")
    assert all(len(nodes) == 2 for nodes in straight), straight
    assert len({tuple(n) for n in straight}) > 1, "sampling should vary between rounds"
    assert resumed == straight
    finals = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
