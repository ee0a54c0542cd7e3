"""Where a round's time goes: the server's stage timings (``server.rounds``) and each
ClientApp reply's ``startup-seconds`` / ``handler-seconds`` (``clients.client_app``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from loopback_grid import run_loopback_rounds

from fedge.core.process_age import process_age_s
from fedge.core.run_config import RunConfig

NODES = 2


def test_a_child_process_is_younger_than_its_parent() -> None:
    # Execute: the child starts after this process, so it must report a smaller age
    child = subprocess.run(
        [sys.executable, "-c", "from fedge.core.process_age import process_age_s as a; print(a())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    parent = process_age_s()
    # Assert
    assert parent is not None
    age = float(child.stdout)
    assert 0.0 <= age < parent


def test_a_round_reports_each_stage_and_each_reply_its_timings() -> None:
    # Arrange
    cfg = RunConfig(
        max_train_samples=64, fraction_evaluate=1.0, min_available_nodes=NODES,
        local_epochs=1, data_dir="sample", seed=1,
    )  # fmt: skip
    # Execute
    _, _, reports, _ = run_loopback_rounds(cfg, NODES, 1)
    # Assert
    (report,) = reports
    assert set(report.stage_seconds) == {"train", "evaluate", "central"}
    assert all(s >= 0.0 for s in report.stage_seconds.values())
    assert sum(report.stage_seconds.values()) == pytest.approx(report.seconds, abs=0.05)
    now = process_age_s()
    assert now is not None
    for stage, clients in (("train", report.train_clients), ("evaluate", report.evaluate_clients)):
        assert len(clients) == NODES
        for client in clients:
            # the loopback grid runs each ClientApp inside this process, within the stage
            assert 0.0 <= client.metrics["handler-seconds"] <= report.stage_seconds[stage]
            assert 0.0 <= client.metrics["startup-seconds"] <= now
