"""The fedge ClientApp: trains and evaluates the global model on this node's partition.

Node config (``--node-config`` or the simulation): ``partition-id``, ``num-partitions``
and optionally ``data-dir`` (overrides the run config's, for data provisioned on the
node). The work itself lives in ``clients.fashion_mnist_node``; this module only
translates Flower messages.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.attacks import apply_attack, is_malicious
from clients.fashion_mnist_node import get_trainer, node_data_for, round_seed
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
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


def _node_setup(context: Context) -> tuple[RunConfig, int, int]:
    values = dict(context.run_config)
    if "data-dir" in context.node_config:
        values["data-dir"] = str(context.node_config["data-dir"])
    cfg = RunConfig.from_mapping(values)
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ConfigError(
            f"node config lacks {err.args[0]!r}; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=2"'
        ) from err
    if cfg.num_partitions:
        num_partitions = cfg.num_partitions
    return cfg, partition_id, num_partitions


def _received_weights(msg: Message) -> list[np.ndarray]:
    if "arrays" not in msg.content.array_records:
        raise ConfigError("message carries no ArrayRecord 'arrays' with the global model")
    return msg.content.array_records["arrays"].to_numpy_ndarrays()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition and reply with new weights."""
    cfg, partition_id, num_partitions = _node_setup(context)
    data = node_data_for(cfg, partition_id, num_partitions)
    trainer = get_trainer(cfg.task, cfg.momentum, cfg.cpu_threads)
    global_weights = _received_weights(msg)
    trainer.set_weights(global_weights)
    config = msg.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 0))
    local = client_side(cfg, msg, context, global_weights)  # SCAFFOLD, FedNova: extra work
    result = trainer.fit(
        data.x_train,
        data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=round_seed(cfg.seed, server_round, partition_id),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        correction=local.correction(),
    )
    weights = trainer.get_weights()
    extra_arrays, extra_metrics = local.finish(weights, result.steps)
    if cfg.attack != "none" and is_malicious(partition_id, num_partitions, cfg.malicious_fraction):
        rng = np.random.default_rng(round_seed(cfg.seed, server_round, partition_id))
        weights = apply_attack(cfg.attack, weights, global_weights, cfg.attack_scale, rng)
    arrays = _encode(weights, global_weights, cfg, context)
    metrics = MetricRecord(
        {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "samples-per-second": result.samples_per_second,
            "train-seconds": result.seconds,
            "partition-id": partition_id,
            "num-examples": len(data.x_train),
            **extra_metrics,
        }
    )
    content = RecordDict({"arrays": arrays, **extra_arrays, "metrics": metrics})
    return Message(content, reply_to=msg)


@app.query(NODE_INFO_ACTION)
def node_info(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition-id (SCAFFOLD restores its c_i by it)."""
    return node_info_reply(msg, context)


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
    """Evaluate the received model on the local validation split."""
    cfg, partition_id, num_partitions = _node_setup(context)
    data = node_data_for(cfg, partition_id, num_partitions)
    trainer = get_trainer(cfg.task, cfg.momentum, cfg.cpu_threads)
    trainer.set_weights(_received_weights(msg))
    loss, accuracy = trainer.evaluate(data.x_val, data.y_val)
    metrics = MetricRecord(
        {
            "eval_loss": loss,
            "eval_accuracy": accuracy,
            "partition-id": partition_id,
            "num-examples": len(data.x_val),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
