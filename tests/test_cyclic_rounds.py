"""Cyclic rounds (``server.rounds``, ``train-schedule``): the sampled nodes train one after
another, each from the model the previous one returned; real ClientApps over a
LoopbackGrid."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message
from loopback_grid import LoopbackGrid, run_loopback_rounds

from clients.client_app import app as client_app
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from server.rounds import RoundReport

NODES = 3


def _run(
    cfg: RunConfig, rounds: int
) -> tuple[list[np.ndarray], LoopbackGrid, list[RoundReport], list[np.ndarray]]:
    grid = LoopbackGrid(client_app, NODES, cfg.to_mapping())
    start, final, reports, _ = run_loopback_rounds(cfg, NODES, rounds, grid=grid)
    return final, grid, reports, start


def _config(**overrides: object) -> RunConfig:
    base = dict(
        fraction_evaluate=0.0, min_available_nodes=NODES, local_epochs=1, max_train_samples=64,
        data_dir="sample", seed=1, train_schedule="cyclic",
    )  # fmt: skip
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _arrays(message: Message) -> list[np.ndarray]:
    return message.content.array_records["arrays"].to_numpy_ndarrays()


def _train_messages(grid: LoopbackGrid) -> list[Message]:
    return [m for m in grid.sent if m.metadata.message_type.startswith("train")]


def _train_replies(grid: LoopbackGrid) -> list[Message]:
    return [m for m in grid.replies if m.metadata.message_type.startswith("train")]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_each_node_starts_from_the_previous_nodes_model_and_the_round_keeps_the_last() -> None:
    final, grid, reports, start = _run(_config(), rounds=2)
    sent, replies = _train_messages(grid), _train_replies(grid)
    assert len(sent) == len(replies) == 2 * NODES
    # round 1: node ids in order; round 2: rotated by one node
    assert reports[0].cyclic_order == [1000, 1001, 1002]
    assert reports[1].cyclic_order == [1001, 1002, 1000]
    assert [m.metadata.dst_node_id for m in sent] == reports[0].cyclic_order + reports[
        1
    ].cyclic_order
    _assert_same(_arrays(sent[0]), start)
    for k in range(1, len(sent)):  # every node got exactly what the one before returned
        _assert_same(_arrays(sent[k]), _arrays(replies[k - 1]))
    _assert_same(final, _arrays(replies[-1]))
    assert all(r.aggregated for r in reports)
    assert len(reports[0].train_clients) == NODES  # every node's metrics are logged
    # the chain is not an average: the middle node's model differs from the round's model
    assert any(not np.array_equal(a, b) for a, b in zip(_arrays(replies[1]), final, strict=True))


def test_the_order_follows_partition_ids_not_node_ids() -> None:
    # node 1000 holds partition 2 and node 1002 partition 0: node ids are random on a real
    # SuperLink, partition ids are what the operator set
    cfg = _config()
    grid = LoopbackGrid(
        client_app, NODES, cfg.to_mapping(), [{"partition-id": NODES - 1 - i} for i in range(NODES)]
    )
    _, _, reports, _ = run_loopback_rounds(cfg, NODES, 2, grid=grid)
    assert reports[0].cyclic_order == [1002, 1001, 1000]
    assert reports[1].cyclic_order == [1001, 1000, 1002]
    queries = [m for m in grid.sent if m.metadata.message_type.startswith("query")]
    assert len(queries) == NODES  # asked once per run, not every round


def test_a_node_with_a_non_finite_model_is_skipped_and_the_next_starts_before_it() -> None:
    # attack "nan" on the first third of the partitions: node 1000, first in round 1
    final, grid, reports, start = _run(_config(attack="nan", malicious_fraction=0.34), rounds=1)
    sent, replies = _train_messages(grid), _train_replies(grid)
    assert reports[0].rejected_nodes == [1000]
    _assert_same(_arrays(sent[1]), start)  # node 1001 starts from the round's model
    _assert_same(_arrays(sent[2]), _arrays(replies[1]))
    _assert_same(final, _arrays(replies[2]))
    assert all(np.isfinite(w).all() for w in final)


def test_compressed_replies_are_decoded_against_the_model_each_node_received() -> None:
    final, grid, reports, _ = _run(_config(compression_bits=8), rounds=1)
    sent = _train_messages(grid)
    # the decoded reply of node k is what node k + 1 received
    for k in range(1, NODES):
        received = _arrays(sent[k])
        base = _arrays(sent[k - 1])
        assert any(not np.array_equal(a, b) for a, b in zip(received, base, strict=True))
    assert reports[0].rejected_nodes == []
    assert all(np.isfinite(w).all() for w in final)
    assert reports[0].bytes_received < reports[0].raw_bytes_received  # replies were compressed


def test_a_parallel_round_averages_and_records_no_order() -> None:
    final, grid, reports, _ = _run(_config(train_schedule="parallel"), rounds=1)
    assert reports[0].cyclic_order == []
    last = _arrays(_train_replies(grid)[-1])
    assert any(not np.array_equal(a, b) for a, b in zip(final, last, strict=True))


def test_auto_is_cyclic_for_the_detector_with_fedavg_or_fedprox_only() -> None:
    assert RunConfig(task="person-detector").cyclic
    assert RunConfig(task="person-detector", strategy="fedprox").cyclic
    assert not RunConfig(task="person-detector", strategy="fedmedian").cyclic
    assert not RunConfig(task="person-detector", dp="server-fixed").cyclic
    assert not RunConfig(task="person-detector", detector_warm_start=True).cyclic
    assert not RunConfig(task="person-detector", train_schedule="parallel").cyclic
    assert not RunConfig().cyclic  # fashion-mnist
    assert RunConfig(train_schedule="cyclic").cyclic


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"strategy": "fedmedian"}, "strategy fedmedian"),
        ({"dp": "server-fixed"}, "dp=none"),
        ({"task": "person-detector", "detector_warm_start": True}, "detector-warm-start"),
    ],
)
def test_cyclic_refuses_what_it_cannot_honour(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RunConfig(train_schedule="cyclic", **overrides)  # type: ignore[arg-type]
