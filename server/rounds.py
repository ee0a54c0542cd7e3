"""The federated round loop: Flower's ``Strategy.start`` with resume, guards and metering.

``Strategy.start`` always counts rounds from 1 and offers no hook per round. This loop
calls the same public strategy methods (configure/aggregate train and evaluate) but can
start at any round, drops non-finite replies before aggregation, puts replies in a
stable order (so aggregation is reproducible), and hands a ``RoundReport`` to a callback
after every round (metrics log, checkpoint).

**Warm start** (``warm_start_round``): in that round (the first of a run that starts from
untrained weights) the strategy aggregates only the reply of the node that trained on the
most examples (``num-examples``; ties: the lowest node id) instead of all of them. Models
trained from one random initialisation on different data for many local steps do not
average well: they leave the initialisation in different directions, and their average
lies between basins. Measured on the demo's 3 sites of the sample clip (15 epochs of Adam
at 0.01 per round, offline, mAP@0.5 of the global model on every site's held-out frames):
after round 2 the average of three round-1 models scores 0.016 where a site's own model
scores up to 0.51, and 0.244 when round 1 kept one site's model; 0.330 against 0.411 after
round 3. From round 2 on every node starts from the one warm model and the strategy
aggregates as usual.

**Cyclic rounds** (``cyclic``; ``train-schedule``, cyclic weight transfer: Chang et al.,
JAMIA 2018; Sheller et al., 2020): the sampled nodes train one after another, each from
the model the previous one returned, and the round's model is the last node's. The order
is by partition-id (asked once per run with ``query.node_info``; node ids are random, so
ordering by them would change from run to run), rotated by one node every round so no
node is always last. The strategy (FedAvg or FedProx: their aggregate of one model is
that model) still aggregates the replies' metrics; its averaged weights are not used. A
node that fails, or returns an undecodable or non-finite model, is skipped: the next one
starts from the model before it. The same offline comparison: after round 1 the chained
model of the three sites scores 0.780 where FedAvg's average scores 0.001 (pooled
training: 0.536 after 15 epochs, 0.801 after 30). The price is time: a round lasts as
long as every node's training in a row (on one machine, as in the demo, the nodes share
the cores anyway).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.grid_exchange import send_and_receive
from server.wire import messages_bytes
from strategies.compression import UpdateDecodeError, decode_update_record, is_encoded_update
from strategies.non_finite import split_non_finite
from strategies.scaffold import ask_partitions

__all__ = ["ClientReport", "RoundReport", "decode_replies", "run_rounds", "seeded_node_sampling"]

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class ClientReport:
    """One client's reply in one stage of a round."""

    node_id: int
    metrics: dict[str, Any]


@dataclass
class RoundReport:
    """Everything that happened in one round."""

    round: int
    arrays: ArrayRecord
    seconds: float = 0.0
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    central: dict[str, Any] = field(default_factory=dict)
    train_clients: list[ClientReport] = field(default_factory=list)
    evaluate_clients: list[ClientReport] = field(default_factory=list)
    rejected_nodes: list[int] = field(default_factory=list)
    failed_nodes: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    raw_bytes_received: int = 0
    warm_start_node: int | None = None
    """The node whose model alone was kept in a warm-start round (``None``: no warm start)."""
    cyclic_order: list[int] = field(default_factory=list)
    """The nodes of a cyclic round in training order (empty: a parallel round)."""
    aggregated: bool = False
    """Whether the strategy aggregated new weights this round (no successful train reply:
    ``False``, and ``arrays`` are the previous round's)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each stage of the round: ``train`` (send, train, receive,
    aggregate), ``evaluate``, ``central``; the ServerApp adds what it does after."""


def _sort_key(message: Message) -> tuple[float, int]:
    if message.has_content():
        for record in message.content.metric_records.values():
            if "partition-id" in record:
                return float(record["partition-id"]), message.metadata.src_node_id
    return float("inf"), message.metadata.src_node_id


def _client_reports(replies: list[Message]) -> list[ClientReport]:
    reports = []
    for reply in replies:
        if reply.has_content():
            metrics: dict[str, Any] = {}
            for record in reply.content.metric_records.values():
                metrics.update(record)
            reports.append(ClientReport(reply.metadata.src_node_id, metrics))
    return reports


def decode_replies(
    replies: list[Message], global_arrays: ArrayRecord
) -> tuple[list[Message], list[Message]]:
    """Turn compressed-delta replies into plain weights; split off undecodable ones."""
    kept: list[Message] = []
    rejected: list[Message] = []
    for reply in replies:
        record = reply.content.array_records.get("arrays") if reply.has_content() else None
        if record is not None and is_encoded_update(record):
            try:
                reply.content.array_records["arrays"] = decode_update_record(record, global_arrays)
            except UpdateDecodeError as err:
                log.warning("rejected update from node %s: %s", reply.metadata.src_node_id, err)
                rejected.append(reply)
                continue
        kept.append(reply)
    return kept, rejected


def _most_examples(replies: list[Message]) -> Message:
    """The reply that trained on the most examples (ties: the lowest node id)."""

    def examples(reply: Message) -> float:
        for record in reply.content.metric_records.values():
            if "num-examples" in record:
                return float(record["num-examples"])  # type: ignore[arg-type]
        return 0.0

    return min(replies, key=lambda r: (-examples(r), r.metadata.src_node_id))


def _dense_bytes(replies: list[Message]) -> int:
    """What the replies' weights would take as dense float32 (the uncompressed size)."""
    total = 0
    for reply in replies:
        if reply.has_content():
            for record in reply.content.array_records.values():
                total += sum(int(np.prod(a.shape)) * 4 for a in record.values())
    return total


def _train_in_turn(
    grid: Grid,
    messages: list[Message],
    arrays: ArrayRecord,
    server_round: int,
    timeout: float,
    report: RoundReport,
) -> tuple[list[Message], ArrayRecord | None]:
    """Send the train messages one at a time, in their order rotated by the round, each
    carrying the model the previous node returned (module docstring: cyclic rounds); the
    kept replies in training order and the last kept model (``None`` when no node
    trained)."""
    order = list(messages)
    if order:
        shift = (server_round - 1) % len(order)
        order = order[shift:] + order[:shift]
    current, kept = arrays, []
    for message in order:
        key = _arrays_key(message)
        if key is not None:  # the strategy's messages share one RecordDict: give each its own
            message.content = RecordDict({**message.content, key: current})
        report.cyclic_order.append(message.metadata.dst_node_id)
        for reply in _train_exchange(grid, [message], current, timeout, report):
            record = reply.content.array_records.get("arrays") if reply.has_content() else None
            if record is not None:
                current = record
            kept.append(reply)
    chained = current if any(r.has_content() for r in kept) else None
    return kept, chained


def _learn_partitions(
    grid: Grid, messages: list[Message], partitions: dict[int, int | None], timeout: float
) -> None:
    """Ask the nodes of ``messages`` not in ``partitions`` for their ``partition-id``
    (``query.node_info``, as SCAFFOLD does) and record it (``None``: the node has none)."""
    unknown = sorted({m.metadata.dst_node_id for m in messages} - set(partitions))
    if unknown:
        exchange = functools.partial(send_and_receive, grid)
        partitions.update(dict.fromkeys(unknown))
        partitions.update(ask_partitions(grid, unknown, timeout, exchange))


def _in_partition_order(
    messages: list[Message], partitions: dict[int, int | None]
) -> list[Message]:
    """``messages`` by their node's partition-id (the same order in every run; node ids
    are drawn at random when a SuperNode registers), nodes without one last, by node id."""

    def key(message: Message) -> tuple[float, int]:
        partition = partitions.get(message.metadata.dst_node_id)
        node = message.metadata.dst_node_id
        return (float("inf") if partition is None else float(partition), node)

    return sorted(messages, key=key)


def _train_exchange(
    grid: Grid, messages: list[Message], base: ArrayRecord, timeout: float, report: RoundReport
) -> list[Message]:
    """Send ``messages``; return the replies decoded against ``base`` and finite (error
    replies kept for the strategy to log), after counting bytes, failed nodes and rejected
    nodes (undecodable or non-finite) in ``report``."""
    replies, sent, received = _exchange(grid, messages, timeout)
    report.bytes_sent += sent
    report.bytes_received += received
    report.failed_nodes += [r.metadata.src_node_id for r in replies if r.has_error()]
    replies, undecodable = decode_replies(replies, base)
    report.raw_bytes_received += _dense_bytes(replies)
    kept, rejected = split_non_finite(replies)
    report.rejected_nodes += [r.metadata.src_node_id for r in undecodable + rejected]
    return kept


def _arrays_key(message: Message) -> str | None:
    """The key of the message's one ArrayRecord (the model it carries), if it has one."""
    keys = list(message.content.array_records) if message.has_content() else []
    return keys[0] if len(keys) == 1 else None


def _exchange(
    grid: Grid, messages: list[Message], timeout: float
) -> tuple[list[Message], int, int]:
    sent = messages_bytes(messages)
    replies = sorted(send_and_receive(grid, messages, timeout=timeout), key=_sort_key)
    return replies, sent, messages_bytes(replies)


@contextlib.contextmanager
def seeded_node_sampling(seed: int, server_round: int) -> Iterator[None]:
    """Make Flower's node sampling (``random.sample`` on the global ``random`` module)
    depend only on ``(seed, server_round)`` inside the block, then restore the global state.

    With ``fraction-train`` < 1 the nodes a round samples are then the same in a resumed
    run as in an uninterrupted one (given the same connected nodes).
    """
    state = random.getstate()
    random.seed(f"fedge-sampling/{seed}/{server_round}")
    try:
        yield
    finally:
        random.setstate(state)


def _stage_done(report: RoundReport, stage: str, since: float) -> float:
    """Record ``stage`` as lasting from ``since`` until now; return now."""
    now = time.perf_counter()
    report.stage_seconds[stage] = now - since
    return now


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    last_round: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn: EvaluateFn | None,
    on_round_end: Callable[[RoundReport], None],
    timeout: float = 3600.0,
    sampling_seed: int = 0,
    warm_start_round: int | None = None,
    cyclic: bool = False,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round`` and return the final global arrays;
    ``warm_start_round`` keeps one node's model in that round, ``cyclic`` trains the nodes
    of every round one after another (module docstring)."""
    partitions: dict[int, int | None] = {}  # node id -> partition-id, for cyclic order
    for server_round in range(first_round, last_round + 1):
        log.info("round %d/%d", server_round, last_round)
        start = time.perf_counter()
        report = RoundReport(round=server_round, arrays=arrays)
        stage_start = start

        with seeded_node_sampling(sampling_seed, server_round):
            messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
        if cyclic:
            _learn_partitions(grid, messages, partitions, timeout)
            messages = _in_partition_order(messages, partitions)
            kept, chained = _train_in_turn(grid, messages, arrays, server_round, timeout, report)
        else:
            kept, chained = _train_exchange(grid, messages, arrays, timeout, report), None
        report.train_clients = _client_reports(kept)
        trained = [r for r in kept if r.has_content()]  # error replies carry no model
        if server_round == warm_start_round and len(trained) > 1:
            kept = [_most_examples(trained)]
            report.warm_start_node = kept[0].metadata.src_node_id
        new_arrays, train_metrics = strategy.aggregate_train(server_round, kept)
        if new_arrays is not None:
            arrays = chained if chained is not None else new_arrays
            report.aggregated = True
        report.train = dict(train_metrics or {})
        stage_start = _stage_done(report, "train", stage_start)

        with seeded_node_sampling(sampling_seed, -server_round):
            messages = list(
                strategy.configure_evaluate(server_round, arrays, evaluate_config, grid)
            )
        if messages:
            replies, sent, received = _exchange(grid, messages, timeout)
            report.bytes_sent += sent
            report.bytes_received += received
            report.failed_nodes += [r.metadata.src_node_id for r in replies if r.has_error()]
            report.evaluate_clients = _client_reports(replies)
            report.evaluate = dict(strategy.aggregate_evaluate(server_round, replies) or {})
            stage_start = _stage_done(report, "evaluate", stage_start)

        if evaluate_fn is not None:
            report.central = dict(evaluate_fn(server_round, arrays) or {})
            _stage_done(report, "central", stage_start)
        report.arrays = arrays
        report.seconds = time.perf_counter() - start
        on_round_end(report)
    return arrays
