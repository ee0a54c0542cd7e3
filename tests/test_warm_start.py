"""Warm start (``server.rounds``): in its round the strategy aggregates only the reply of
the node that trained on the most examples; real ClientApps over a LoopbackGrid."""

from __future__ import annotations

import numpy as np
from loopback_grid import LoopbackGrid, run_loopback_rounds

from clients.client_app import app as client_app
from clients.tasks import get_task
from fedge.core.run_config import RunConfig
from server.rounds import RoundReport

NODES = 3


def _one_round(warm_start_round: int | None) -> tuple[list[np.ndarray], list, RoundReport]:
    # Dirichlet(0.3) over 3 nodes: parts of different sizes, so one node has the most
    cfg = RunConfig(
        partitioner="dirichlet", partitioner_param=0.3, max_train_samples=0,
        fraction_evaluate=0.0, min_available_nodes=NODES, local_epochs=1,
        data_dir="sample", seed=3,
    )  # fmt: skip
    grid = LoopbackGrid(client_app, NODES, cfg.to_mapping())
    _, final, reports, _ = run_loopback_rounds(
        cfg, NODES, 1, grid, central=False, warm_start_round=warm_start_round
    )
    return final, grid.replies, reports[0]


def _examples(reply) -> float:  # type: ignore[no-untyped-def]
    return next(
        float(r["num-examples"])
        for r in reply.content.metric_records.values()
        if "num-examples" in r
    )


def test_the_warm_start_round_keeps_exactly_the_model_of_the_node_with_most_examples() -> None:
    # Execute
    final, replies, report = _one_round(warm_start_round=1)
    # Assert
    sizes = [_examples(r) for r in replies]
    assert len(set(sizes)) == NODES, sizes  # the partition gives a clear largest node
    largest = replies[int(np.argmax(sizes))]
    kept = largest.content.array_records["arrays"].to_numpy_ndarrays()
    assert report.warm_start_node == largest.metadata.src_node_id
    assert report.aggregated
    assert len(report.train_clients) == NODES  # every node's metrics are still logged
    for got, want in zip(final, kept, strict=True):
        np.testing.assert_array_equal(got, want)


def test_without_warm_start_every_node_is_averaged() -> None:
    final, replies, report = _one_round(warm_start_round=None)
    sizes = [_examples(r) for r in replies]
    largest = replies[int(np.argmax(sizes))].content.array_records["arrays"]
    assert report.warm_start_node is None
    assert any(
        not np.array_equal(got, want)
        for got, want in zip(final, largest.to_numpy_ndarrays(), strict=True)
    )


def test_warm_start_is_the_detectors_opt_in_and_never_fashion_mnists() -> None:
    detector = get_task("person-detector")
    assert not detector.warm_start(RunConfig(task="person-detector"))
    assert detector.warm_start(RunConfig(task="person-detector", detector_warm_start=True))
    assert not get_task("fashion-mnist").warm_start(RunConfig(detector_warm_start=True))
