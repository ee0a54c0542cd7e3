"""Compressed client updates in real rounds: accuracy kept, bytes on the wire cut."""

from __future__ import annotations

import pytest
from loopback_grid import run_loopback_rounds

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig
from server.rounds import RoundReport

NUM_NODES = 4


def _run(cfg: RunConfig, rounds: int = 3) -> list[RoundReport]:
    return run_loopback_rounds(cfg, NUM_NODES, rounds)[2]


def test_8bit_deltas_keep_accuracy_and_send_at_most_30_percent_of_the_bytes() -> None:
    # Prepare
    common = dict(max_train_samples=400, fraction_evaluate=0.0, learning_rate=0.05)
    # Execute
    plain = _run(RunConfig(**common))
    compressed = _run(RunConfig(**common, compression_bits=8))
    # Assert
    uplink_plain = sum(r.bytes_received for r in plain)
    uplink_8bit = sum(r.bytes_received for r in compressed)
    assert uplink_8bit <= 0.30 * uplink_plain, (uplink_8bit, uplink_plain)
    assert compressed[-1].raw_bytes_received == plain[-1].raw_bytes_received
    assert abs(compressed[-1].central["accuracy"] - plain[-1].central["accuracy"]) <= 0.03
    assert compressed[-1].central["accuracy"] > 0.3
    assert all(not r.rejected_nodes for r in compressed)


def test_top_k_with_error_feedback_still_learns_and_sends_a_fraction() -> None:
    reports = _run(RunConfig(max_train_samples=400, fraction_evaluate=0.0, compression_topk=0.1))
    assert sum(r.bytes_received for r in reports) <= 0.25 * sum(
        r.raw_bytes_received for r in reports
    )
    assert reports[-1].central["accuracy"] > reports[0].central["accuracy"]


def test_client_side_dp_with_compression_is_refused() -> None:
    with pytest.raises(ConfigError, match="client-side DP clipping needs full weights"):
        RunConfig(dp="client-fixed", compression_bits=8)
