"""The fedge ServerApp: strategy from the registry, central evaluation, checkpoints.

Run knobs come from ``[tool.flwr.app.config]`` (see ``fedge.core.run_config.RunConfig``).
The task (``clients.tasks``) gives the initial model, the central evaluation and the
export after each round (person-detector: a versioned artifact in
``<output-dir>/<run-name>/models/``). Each round appends a line to
``<output-dir>/<run-name>/metrics.jsonl`` and writes a checkpoint; ``resume=true``
continues from the newest checkpoint of the same run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from clients.tasks import get_task
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
from server.metrics_log import MetricsLog
from server.model_broadcast import broadcast_exported
from server.rounds import RoundReport, run_rounds
from server.run_directory import prepare_run_directory
from strategies.privacy import dp_noise_stddev, wrap_with_dp
from strategies.registry import build_strategy

__all__ = ["app", "configured_strategy"]

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated training described by the run config."""
    cfg = RunConfig.from_mapping(dict(context.run_config))
    strategy = configured_strategy(cfg, grid)
    run_dir = prepare_run_directory(cfg)
    evaluator = CentralEvaluator(cfg)
    config_hash = cfg.training_hash()

    first_round = 1
    checkpoint = load_latest_checkpoint(run_dir, config_hash) if cfg.resume else None
    if checkpoint is not None:
        arrays = ArrayRecord([np.asarray(w) for w in checkpoint.weights])
        restore_strategy_state(strategy, checkpoint.state)
        first_round = checkpoint.round + 1
        log.warning("resuming %s after round %d", run_dir, checkpoint.round)
    else:
        arrays = evaluator.initial_arrays()
    metrics = MetricsLog(run_dir, keep_through_round=first_round - 1)
    last_round = cfg.num_server_rounds
    if cfg.stop_after_round:
        last_round = min(last_round, cfg.stop_after_round)

    task = get_task(cfg.task)

    def on_round_end(report: RoundReport) -> None:
        weights = report.arrays.to_numpy_ndarrays()
        exported: dict[str, Any] = {}
        delivered: dict[str, Any] = {}
        if report.aggregated:
            # the nodes evaluated these weights this round: their score-bin counts calibrate it
            evaluations = [client.metrics for client in report.evaluate_clients]
            began = time.perf_counter()
            exported = task.export(
                cfg, report.round, weights, run_dir / "models", node_evaluations=evaluations
            )
            if exported:
                report.stage_seconds["export"] = time.perf_counter() - began
            began = time.perf_counter()
            delivered = broadcast_exported(grid, run_dir / "models", report.round)  # every node
            if delivered:
                report.stage_seconds["broadcast"] = time.perf_counter() - began
        else:  # nothing new to send: an export now would be the last version (or, in round
            # 1, the untrained model) under a new number, swapped in on every device
            log.warning(
                "round %d: no node trained (%d failed, %d rejected): nothing aggregated, "
                "exported or sent; the nodes keep the model they run",
                report.round,
                len(set(report.failed_nodes)),
                len(report.rejected_nodes),
            )
        line = metrics.append(report, extra={**dp_noise_stddev(strategy), **exported, **delivered})
        save_checkpoint(
            run_dir,
            Checkpoint(
                report.round,
                weights,
                config_hash,
                strategy_state(strategy),
            ),
        )
        central = line["central"]
        if "accuracy" in central:
            log.warning(
                "round %d: central accuracy %.4f, loss %.4f, %.1fs",
                report.round,
                central["accuracy"],
                central.get("loss", float("nan")),
                report.seconds,
            )
        else:  # the person detector: the nodes evaluate, the server holds no frames
            node_map = line.get("evaluate", {}).get("eval_map50", float("nan"))
            log.warning(
                "round %d: nodes' mAP@0.5 %.4f, %.1fs", report.round, node_map, report.seconds
            )

    final = run_rounds(
        strategy,
        grid,
        arrays,
        first_round=first_round,
        last_round=last_round,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluator,
        on_round_end=on_round_end,
        sampling_seed=cfg.seed,
        warm_start_round=1 if task.warm_start(cfg) else None,
        cyclic=cfg.cyclic,
    )
    np.savez(run_dir / "final_weights.npz", *final.to_numpy_ndarrays())


def configured_strategy(cfg: RunConfig, grid: Grid) -> Strategy:
    """The registry's strategy for ``cfg``, wrapped for differential privacy if asked."""
    strategy = build_strategy(cfg)
    if cfg.dp != "none":
        strategy = wrap_with_dp(strategy, cfg, _sampled_clients_per_round(grid, cfg))
    return strategy


def _sampled_clients_per_round(grid: Grid, cfg: RunConfig, timeout: float = 600.0) -> int:
    """Nodes the strategy will sample per round (the DP noise scale depends on it)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < cfg.min_available_nodes:
        if time.monotonic() > deadline:
            raise ConfigError(f"fewer than {cfg.min_available_nodes} nodes connected")
        time.sleep(1.0)
    connected = len(list(grid.get_node_ids()))
    return max(int(connected * cfg.fraction_train), cfg.min_available_nodes)
