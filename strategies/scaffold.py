"""SCAFFOLD (Karimireddy et al., ICML 2020), option II, on Flower's ``FedAvg``.

What is implemented
-------------------
The server keeps the global model x and a control variate c (zeros at first); node i
keeps its own control variate c_i (zeros at first) in its ``context.state``. In a round
with the sampled nodes S:

1. ``configure_train`` sends x (``"arrays"``) and c (``"scaffold-c"``, an ArrayRecord).
2. Node i runs K local SGD steps (learning rate η_l = ``learning-rate``, momentum ρ) from
   y_i = x and moves its weights by -η_l (c - c_i) after every step::

       v ← ρ v - η_l g(y_i);    y_i ← y_i + v - η_l (c - c_i)

   For ρ = 0 this is the paper's y_i ← y_i - η_l (g(y_i) - c_i + c); with momentum the
   correction stays outside the velocity, as in NIID-Bench (``experiments.py``,
   ``train_net_scaffold``) and Flower's ``baselines/niid_bench``
   (``ScaffoldOptimizer.step_custom``).
3. Option II: c_i⁺ = c_i - c + (x - y_i) / (K η_l). The node replies with y_i
   (``"arrays"``) and Δc_i = c_i⁺ - c_i (``"scaffold-delta-c"``, float32) and keeps
   c_i + Δc_i.
4. The server, over the replies it accepts, with p_i = n_i / Σ_S n_j (``num-examples``)::

       x ← x + η_g Σ_S p_i (y_i - x)               η_g = ``server-learning-rate``
       c ← c + (1/N) Σ_S Δc_i  =  c + (|S|/N) mean_S(Δc_i)

   x is weighted by examples, as in NIID-Bench and the Flower baseline (the paper's
   1/|S| is the same for equal partitions); η_g = 1 gives the FedAvg of the y_i. c takes
   the paper's unweighted form, which keeps c equal to the mean of all N nodes' c_i
   (NIID-Bench divides by |S| instead of N, the same at full participation; the Flower
   baseline weights Δc_i by examples).

**N** (all clients) is ``num-partitions`` from the run config when it is set (> 0), else
the number of nodes connected when the round is configured (in a simulation: the number
of virtual nodes, one per partition). It is reported per round as
``scaffold-clients-total`` in the train metrics.

State, checkpoints and resume
-----------------------------
The server's state is c (``control_variate``) and, per partition, the sum of the Δc_i
it accepted from that partition (``client_variates``, keys ``<partition-id>/<array>``):
the node's c_i, which the server can compute from what it receives anyway. Both are in
every checkpoint. A node's own c_i lives in its ``context.state``, which Flower keeps for
one run only: a resumed run (a new ``flwr run``) or a restarted SuperNode starts with
empty node state. So the first train message this ServerApp process sends to a node
(and the next one after a node's reply was lost or rejected) carries that node's c_i
from the table (``"scaffold-c-local"``; empty when the partition has none, i.e. c_i = 0),
and the node adopts it. To learn which node holds which partition the server sends a
``query.node_info`` message to nodes it has not heard from, but only once the table has
entries (so never in a fresh run with full participation). The node keeps c_i + Δc_i
with the same float32 addition the server applies to its table, so a restored c_i is
bit-identical to the one the node held: a resumed run continues exactly.

Other paths
-----------
- Compressed updates: y_i is encoded like any reply and decoded before aggregation;
  Δc_i is always sent dense float32 (SCAFFOLD's uplink is the compressed weights plus
  one dense model's worth of control variate).
- NaN/Inf: the round loop rejects a reply whose weights or Δc_i hold one; the node's c_i
  is then reset from the table the next time it is sampled.
- Differential privacy is refused (``RunConfig``): Δc_i carries each node's unclipped,
  un-noised update, which Flower's DP wrappers do not clip or noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig

__all__ = [
    "DELTA_VARIATE_KEY",
    "NODE_INFO_ACTION",
    "RESTORED_VARIATE_KEY",
    "SERVER_VARIATE_KEY",
    "STATE_KEY",
    "Scaffold",
    "ScaffoldClient",
    "ask_partitions",
    "node_info_reply",
]

log = logging.getLogger(__name__)

SERVER_VARIATE_KEY = "scaffold-c"
"""Train message: the server's control variate c (ArrayRecord, the model's keys)."""
RESTORED_VARIATE_KEY = "scaffold-c-local"
"""Train message, first contact only: this node's c_i from the server's table."""
DELTA_VARIATE_KEY = "scaffold-delta-c"
"""Train reply: Δc_i = c_i⁺ - c_i (ArrayRecord, the model's keys)."""
STATE_KEY = "scaffold-c-local"
"""``context.state`` key of the node's control variate c_i."""
NODE_INFO_ACTION = "node_info"
"""Query action (message type ``query.node_info``): the node answers its partition-id."""
NODE_INFO_TYPE = f"{MessageType.QUERY}.{NODE_INFO_ACTION}"
PARTITION_KEY = "partition-id"


# --- the node's half --------------------------------------------------------------------


class ScaffoldClient:
    """The node's half of SCAFFOLD for one train message.

    ``correction()`` is c - c_i for the local trainer; ``finish()`` turns the trained
    weights into Δc_i (the reply's extra record) and stores c_i + Δc_i in the node state.
    """

    def __init__(
        self,
        global_weights: Sequence[np.ndarray],
        server_variate: Sequence[np.ndarray],
        client_variate: Sequence[np.ndarray],
        learning_rate: float,
        state: RecordDict,
    ) -> None:
        self._x = [np.asarray(w) for w in global_weights]
        self._c = [np.asarray(c, np.float32) for c in server_variate]
        self._c_i = [np.asarray(c, np.float32) for c in client_variate]
        self._lr = float(learning_rate)
        self._state = state

    @classmethod
    def start(
        cls, cfg: RunConfig, msg: Message, context: Context, global_weights: list[np.ndarray]
    ) -> ScaffoldClient:
        """Read c from the message and c_i from it (a restore) or from the node state.

        Raises
        ------
        ConfigError
            If the message carries no control variate (the server does not run
            SCAFFOLD) or a variate does not match the model's shapes.
        """
        records = msg.content.array_records
        if SERVER_VARIATE_KEY not in records:
            raise ConfigError(
                f"train message carries no {SERVER_VARIATE_KEY!r} record; the server is not "
                "running strategy=scaffold: start server and nodes with the same run config"
            )
        server_variate = records[SERVER_VARIATE_KEY].to_numpy_ndarrays()
        stored = records.get(RESTORED_VARIATE_KEY, context.state.array_records.get(STATE_KEY))
        if stored is None or len(stored) == 0:
            client_variate = [np.zeros(np.shape(w), np.float32) for w in global_weights]
        else:
            client_variate = stored.to_numpy_ndarrays()
        shapes = [np.shape(w) for w in global_weights]
        for name, variate in (("c", server_variate), ("c_i", client_variate)):
            if [np.shape(v) for v in variate] != shapes:
                raise ConfigError(
                    f"SCAFFOLD control variate {name} has shapes {[np.shape(v) for v in variate]}"
                    f", the model {shapes}; start a new run-name after changing the model"
                )
        return cls(global_weights, server_variate, client_variate, cfg.learning_rate, context.state)

    def correction(self) -> list[np.ndarray]:
        """c - c_i per weight tensor (the trainer subtracts η_l times it after each step)."""
        return [c - c_i for c, c_i in zip(self._c, self._c_i, strict=True)]

    def finish(
        self, local_weights: Sequence[np.ndarray], steps: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        """Option II: store c_i + Δc_i in the node state and return ``{Δc key: Δc_i}``.

        Raises
        ------
        ValueError
            If ``steps`` < 1 (no local step, no control variate).
        """
        if steps < 1:
            raise ValueError(f"SCAFFOLD needs at least one local step, got {steps}")
        scale = 1.0 / (steps * self._lr)
        deltas, updated = [], []
        for x, y, c, c_i in zip(self._x, local_weights, self._c, self._c_i, strict=True):
            target = c_i.astype(np.float64) - c + (x.astype(np.float64) - y) * scale
            delta = (target - c_i).astype(np.float32)
            deltas.append(delta)
            updated.append(c_i + delta)  # the server adds the same float32 delta to its table
        self._state[STATE_KEY] = ArrayRecord(updated)
        return {DELTA_VARIATE_KEY: ArrayRecord(deltas)}, {}


def node_info_reply(msg: Message, context: Context) -> Message:
    """Answer a ``query.node_info`` message with this node's ``partition-id``.

    Raises
    ------
    ConfigError
        If the node config has no ``partition-id``.
    """
    if PARTITION_KEY not in context.node_config:
        raise ConfigError(
            "node config lacks 'partition-id'; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=2"'
        )
    info = MetricRecord({PARTITION_KEY: int(context.node_config[PARTITION_KEY])})
    return Message(RecordDict({"node-info": info}), reply_to=msg)


def ask_partitions(
    grid: Grid,
    nodes: Iterable[int],
    timeout: float,
    exchange: Callable[..., Iterable[Message]] | None = None,
) -> dict[int, int]:
    """The ``partition-id`` of each of ``nodes`` that answers a ``query.node_info``
    (nodes that fail or have none are left out); ``exchange(messages, timeout=...)``
    sends them (default: ``grid.send_and_receive``)."""
    queries = [
        Message(content=RecordDict(), message_type=NODE_INFO_TYPE, dst_node_id=n) for n in nodes
    ]
    send = exchange or grid.send_and_receive
    told: dict[int, int] = {}
    for reply in send(queries, timeout=timeout):
        if reply.has_error() or not reply.has_content():
            continue
        info = next(iter(reply.content.metric_records.values()), {})
        if PARTITION_KEY in info:
            told[reply.metadata.src_node_id] = int(info[PARTITION_KEY])  # type: ignore[arg-type]
    return told


# --- the server's half ------------------------------------------------------------------


class Scaffold(FedAvg):
    """SCAFFOLD's server: FedAvg's sampling and messages plus the control variates.

    Parameters
    ----------
    server_learning_rate
        η_g, the step on the weighted mean model update (1: FedAvg of the y_i).
    num_clients
        N; 0 takes the number of nodes connected when each round is configured.
    query_timeout
        Seconds to wait for ``query.node_info`` answers.
    **kwargs
        ``FedAvg``'s sampling arguments.
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        num_clients: int = 0,
        query_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not server_learning_rate > 0:
            raise ValueError(f"server learning rate must be > 0, got {server_learning_rate}")
        if num_clients < 0:
            raise ValueError(f"number of clients must be >= 0, got {num_clients}")
        self.server_learning_rate = float(server_learning_rate)
        self.num_clients = int(num_clients)
        self.query_timeout = float(query_timeout)
        self.current_arrays: ArrayRecord | None = None
        self.control_variate: dict[str, np.ndarray] | None = None
        self.client_variates: dict[str, np.ndarray] = {}
        # per ServerApp process, never checkpointed: which node holds which partition,
        # which nodes hold the c_i of the table, whom this round sampled, and N
        self._partition_of: dict[int, int] = {}
        self._synced: set[int] = set()
        self._sampled: list[int] = []
        self._clients_total = 0

    def summary(self) -> None:
        """Log the SCAFFOLD settings, then FedAvg's."""
        log.info(
            "SCAFFOLD: server learning rate %s, N = %s",
            self.server_learning_rate,
            self.num_clients or "connected nodes",
        )
        super().summary()

    # -- configure ---------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages plus c, and c_i for nodes not known to hold it."""
        self.current_arrays = arrays
        if self.control_variate is None:
            self.control_variate = {k: np.zeros_like(v.numpy()) for k, v in arrays.items()}
        self._clients_total = self.num_clients or len(list(grid.get_node_ids()))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled = [m.metadata.dst_node_id for m in messages]
        if not messages:
            return messages
        shared = messages[0].content
        shared[SERVER_VARIATE_KEY] = self._record(self.control_variate)
        restores = self._restores([n for n in self._sampled if n not in self._synced], grid)
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in restores:
                out.append(message)
                continue
            content = RecordDict({**shared, RESTORED_VARIATE_KEY: restores[node]})
            out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return out

    def _record(self, values: dict[str, np.ndarray]) -> ArrayRecord:
        assert self.current_arrays is not None
        return ArrayRecord({k: Array(values[k]) for k in self.current_arrays.keys()})

    def _restores(self, nodes: list[int], grid: Grid) -> dict[int, ArrayRecord]:
        """c_i from the table for each of ``nodes`` whose partition is known."""
        if not self.client_variates:  # every c_i is zero: no need to know who is who
            return {node: ArrayRecord() for node in nodes}
        unknown = [n for n in nodes if n not in self._partition_of]
        if unknown:
            self._ask_partitions(unknown, grid)
        restores = {}
        for node in nodes:
            if node in self._partition_of:
                restores[node] = self._table_record(self._partition_of[node])
        return restores

    def _ask_partitions(self, nodes: list[int], grid: Grid) -> None:
        told = ask_partitions(grid, nodes, self.query_timeout, grid.send_and_receive)
        for node in sorted(set(nodes) - set(told)):
            log.warning(
                "node %s did not tell its partition; its SCAFFOLD c_i is not restored this round",
                node,
            )
        self._partition_of.update(told)

    def _table_record(self, partition: int) -> ArrayRecord:
        assert self.current_arrays is not None
        prefix = f"{partition}/"
        if not any(k.startswith(prefix) for k in self.client_variates):
            return ArrayRecord()
        return ArrayRecord(
            {k: Array(self.client_variates[prefix + k]) for k in self.current_arrays.keys()}
        )

    # -- aggregate ---------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """x ← x + η_g Σ p_i (y_i - x); c ← c + Σ Δc_i / N; the table gains each Δc_i."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if self.current_arrays is None or self.control_variate is None:
            raise AggregationError("SCAFFOLD aggregates only after configure_train")
        accepted = [r for r in valid if self._well_formed(r)]
        answered = {r.metadata.src_node_id for r in accepted}
        self._synced -= set(self._sampled) - answered  # lost or rejected: restore next time
        if not accepted:
            return None, None
        keys = list(self.current_arrays.keys())
        examples = np.array([_metrics(r)[self.weighted_by_key] for r in accepted], np.float64)
        shares = examples / examples.sum()
        new_arrays = ArrayRecord()
        for key in keys:
            x = self.current_arrays[key].numpy()
            step = sum(
                p * (r.content.array_records["arrays"][key].numpy().astype(np.float64) - x)
                for p, r in zip(shares, accepted, strict=True)
            )
            new_arrays[key] = Array((x + self.server_learning_rate * step).astype(x.dtype))
        total = self._clients_total or len(accepted)
        for key in keys:
            deltas = [r.content.array_records[DELTA_VARIATE_KEY][key].numpy() for r in accepted]
            c = self.control_variate[key]
            self.control_variate[key] = (
                c + np.sum(deltas, axis=0, dtype=np.float64) / total
            ).astype(np.float32)
            for reply, delta in zip(accepted, deltas, strict=True):
                slot = f"{int(_metrics(reply)[PARTITION_KEY])}/{key}"
                old = self.client_variates.get(slot)
                self.client_variates[slot] = delta.copy() if old is None else old + delta
        for reply in accepted:
            self._partition_of[reply.metadata.src_node_id] = int(_metrics(reply)[PARTITION_KEY])
        self._synced |= answered
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        metrics["scaffold-clients-total"] = total
        return new_arrays, metrics

    def _well_formed(self, reply: Message) -> bool:
        """Weights and Δc_i under the model's keys and shapes, and one MetricRecord with
        ``num-examples`` (> 0) and ``partition-id``; anything else is logged and skipped."""
        assert self.current_arrays is not None
        records = reply.content.array_records
        metrics = list(reply.content.metric_records.values())
        shapes = {k: v.shape for k, v in self.current_arrays.items()}
        problem = ""
        for name in ("arrays", DELTA_VARIATE_KEY):
            if name not in records:
                problem = f"no {name!r} record"
            elif {k: v.shape for k, v in records[name].items()} != shapes:
                problem = f"{name!r} does not match the model's keys and shapes"
        if len(metrics) != 1:
            problem = problem or "not exactly one MetricRecord"
        else:
            for key in (self.weighted_by_key, PARTITION_KEY):
                if not isinstance(metrics[0].get(key), int | float):
                    problem = problem or f"no number {key!r} in its metrics"
            if not problem and not float(metrics[0][self.weighted_by_key]) > 0:
                problem = f"{self.weighted_by_key!r} is not > 0"
        if problem:
            log.warning(
                "SCAFFOLD skipped the reply of node %s: %s", reply.metadata.src_node_id, problem
            )
        return not problem


def _metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()))
