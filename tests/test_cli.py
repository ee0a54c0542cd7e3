"""The ``fedge`` command: subcommands listed, bad input → one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _fedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_subcommands() -> None:
    result = _fedge("--help")
    assert result.returncode == 0
    for command in ("simulate", "models", "edge"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy=fedfoo", "unknown strategy 'fedfoo'; valid names: fedavg, fedprox"),
        ("partitioner=shards", "unknown partitioner 'shards'"),
        ("partitioner-param=0", "alpha must be > 0"),
        ("num-rounds=3", "unknown run-config keys ['num-rounds']"),
    ],
)
def test_simulate_rejects_bad_run_config_before_starting_flower(
    override: str, message: str
) -> None:
    extra = ["--set", "partitioner=dirichlet"] if override.startswith("partitioner-") else []
    result = _fedge("simulate", *extra, "--set", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
