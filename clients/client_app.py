"""The fedge ClientApp: trains and evaluates the global model on this node's data.

The run config's ``task`` picks the work from the task registry (``clients.tasks``); this
module only translates Flower messages. Node config (``--node-config`` or the
simulation): what the task needs (fashion-mnist: ``partition-id``, ``num-partitions``;
person-detector: ``store-dir``) and optionally ``data-dir`` (overrides the run config's,
for data provisioned on the node) and ``warm-worker`` (``clients.warm_worker``: train and
evaluate in one long-lived process per node instead of this one). A reply carries the
task's weights (plain or compressed) and numbers only.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.attacks import apply_attack, is_malicious
from clients.model_updates import INSTALL_MODEL_ACTION, install_model_reply
from clients.tasks import NodeSetup, Task, get_task
from clients.warm_worker import evaluate_on_node, train_on_node
from fedge.core.errors import ConfigError
from fedge.core.process_age import process_age_s
from fedge.core.run_config import RunConfig
from fedge.core.seeds import round_seed
from strategies.compression import (
    RESIDUAL_STATE_KEY,
    encode_update,
    residual_from_record,
    residual_to_record,
)
from strategies.privacy import dp_client_mod
from strategies.registry import client_side
from strategies.scaffold import NODE_INFO_ACTION, node_info_reply

__all__ = ["app"]

app = ClientApp(mods=[dp_client_mod])


def _node_setup(context: Context) -> tuple[RunConfig, Task, NodeSetup]:
    values = dict(context.run_config)
    if "data-dir" in context.node_config:
        values["data-dir"] = str(context.node_config["data-dir"])
    cfg = RunConfig.from_mapping(values)
    task = get_task(cfg.task)
    return cfg, task, task.node_setup(cfg, context.node_config)


def _identity(node: NodeSetup) -> dict[str, int]:
    """The ``partition-id`` metric when the node has one (replies are ordered by it)."""
    return {} if node.partition_id is None else {"partition-id": node.partition_id}


def _timings(startup: float | None, began: float) -> dict[str, float]:
    """``startup-seconds`` (this ClientApp process's age when the message reached the
    handler: Flower starts one process per message) and ``handler-seconds``."""
    out = {"handler-seconds": time.perf_counter() - began}
    if startup is not None:
        out["startup-seconds"] = startup
    return out


def _received_weights(msg: Message) -> list[np.ndarray]:
    if "arrays" not in msg.content.array_records:
        raise ConfigError("message carries no ArrayRecord 'arrays' with the global model")
    return msg.content.array_records["arrays"].to_numpy_ndarrays()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on the node's data and reply with new weights."""
    startup, began = process_age_s(), time.perf_counter()
    cfg, task, node = _node_setup(context)
    global_weights = _received_weights(msg)
    config = msg.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 0))
    local = client_side(cfg, msg, context, global_weights)  # SCAFFOLD, FedNova: extra work
    result = train_on_node(
        task,
        cfg,
        node,
        global_weights,
        server_round=server_round,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        correction=local.correction(),
    )
    weights = result.weights
    extra_arrays, extra_metrics = local.finish(weights, result.steps)
    if cfg.attack != "none":
        if node.partition_id is None or node.num_partitions is None:
            raise ConfigError(
                f"attack={cfg.attack} picks malicious nodes by partition: start the "
                'SuperNode with --node-config "partition-id=0 num-partitions=2"'
            )
        if is_malicious(node.partition_id, node.num_partitions, cfg.malicious_fraction):
            rng = np.random.default_rng(round_seed(cfg.seed, server_round, node.partition_id))
            weights = apply_attack(cfg.attack, weights, global_weights, cfg.attack_scale, rng)
    arrays = _encode(weights, global_weights, cfg, context)
    metrics = MetricRecord(
        {
            **result.metrics,
            **_identity(node),
            "num-examples": result.num_examples,
            **extra_metrics,
            **_timings(startup, began),
        }
    )
    content = RecordDict({"arrays": arrays, **extra_arrays, "metrics": metrics})
    return Message(content, reply_to=msg)


@app.query(NODE_INFO_ACTION)
def node_info(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition-id (SCAFFOLD restores its c_i by it)."""
    return node_info_reply(msg, context)


@app.query(INSTALL_MODEL_ACTION)
def install_model(msg: Message, context: Context) -> Message:
    """Verify and install the model the server exported; reply with the verdict."""
    return install_model_reply(msg, context)


def _encode(
    weights: list[np.ndarray], global_weights: list[np.ndarray], cfg: RunConfig, context: Context
) -> ArrayRecord:
    """Plain weights, or the compressed delta with its residual kept in the node state."""
    if not cfg.compression.enabled:
        return ArrayRecord(weights)
    stored = context.state.array_records.get(RESIDUAL_STATE_KEY)
    record, residual = encode_update(
        weights, global_weights, cfg.compression, residual_from_record(stored)
    )
    context.state[RESIDUAL_STATE_KEY] = residual_to_record(residual)
    return record


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the node's held-out data."""
    startup, began = process_age_s(), time.perf_counter()
    cfg, task, node = _node_setup(context)
    config = msg.content.config_records.get("config", {})
    result = evaluate_on_node(
        task, cfg, node, _received_weights(msg), server_round=int(config.get("server-round", 0))
    )
    metrics = MetricRecord(
        {
            **result.metrics,
            **_identity(node),
            "num-examples": result.num_examples,
            **_timings(startup, began),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
