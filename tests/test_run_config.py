"""Run-config parsing and validation: defaults from pyproject.toml, types, every name and
range checked up front with clear errors, name lists equal to the registries, and every
entry point (``fedge simulate``, ``fedge compare``, the ServerApp) rejecting a typo before
any process or round starts."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from conftest import APP_DIR

from fedge.core import run_config
from fedge.core.errors import ConfigError
from fedge.core.partition_scheme import PARTITIONERS
from fedge.core.run_config import RunConfig, UnknownStrategyError

PYPROJECT = APP_DIR / "pyproject.toml"


def test_pyproject_defaults_cover_every_knob_and_parse() -> None:
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    cfg = RunConfig.from_mapping(app_config)
    assert set(app_config) == set(cfg.to_mapping())
    assert cfg.strategy == "fedavg"


def test_unknown_key_is_rejected_with_the_known_keys() -> None:
    with pytest.raises(ConfigError, match="unknown run-config keys.*num-rounds"):
        RunConfig.from_mapping({"num-rounds": 3})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds must be >= 1"),
        ({"fraction-train": 1.5}, "fraction-train must lie in"),
        ({"batch-size": 2.5}, "batch-size must be a whole number"),
        ({"resume": "maybe"}, "resume must be true or false"),
        ({"task": "cifar"}, "unknown task"),
        ({"cpu-threads": -1}, "cpu-threads must be >= 0"),
        ({"attack": "sign-flp"}, "unknown attack 'sign-flp'"),
        ({"dp": "server"}, "unknown dp mode 'server'"),
        ({"partitioner": "shards"}, "unknown partitioner 'shards'"),
        ({"partitioner": "dirichlet", "partitioner-param": 0}, "alpha must be > 0"),
        ({"partitioner": "classes", "partitioner-param": 1.5}, "whole number"),
        ({"malicious-fraction": 1.5}, r"malicious-fraction must lie in \[0, 1\]"),
        ({"attack-scale": -1}, "attack-scale must be >= 0"),
        ({"dp-noise-multiplier": -0.1}, "dp-noise-multiplier must be >= 0"),
        ({"dp-clipping-norm": 0}, "dp-clipping-norm must be > 0"),
        ({"dp-target-quantile": 0}, r"dp-target-quantile must lie in \(0, 1\)"),
        ({"dp-target-quantile": 1}, r"dp-target-quantile must lie in \(0, 1\)"),
        ({"trimmed-beta": 0.5}, r"trimmed-beta must lie in \[0, 0.5\)"),
        ({"krum-keep": -1}, "krum-keep must be >= 0"),
        ({"num-malicious-nodes": -1}, "num-malicious-nodes must be >= 0"),
        ({"proximal-mu": -0.01}, "proximal-mu must be >= 0"),
        ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
        ({"server-momentum": -0.1}, "server-momentum must lie in"),
        ({"beta-2": 1.0}, "beta-2 must lie in"),
        ({"tau": 0}, "tau must be > 0"),
        ({"eta": 0}, "eta must be > 0"),
        ({"q-param": -1}, "q-param must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"max-train-samples": -5}, "max-train-samples must be >= 0"),
        ({"validation-share": 1.0}, "validation-share must lie in"),
        ({"compression-bits": 16}, "compression-bits must be 8 or 32"),
        ({"learning-rate": "inf"}, "learning-rate must be a finite number"),
    ],
)
def test_bad_values_give_specific_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_training_hash_ignores_paths_but_not_hyperparameters() -> None:
    base = RunConfig()
    assert base.training_hash() == RunConfig(output_dir="/elsewhere", resume=True).training_hash()
    assert base.training_hash() != RunConfig(learning_rate=0.1).training_hash()


def test_cpu_threads_is_an_execution_setting_not_a_training_one() -> None:
    # A grid or checkpoint made with another thread count must still resume
    assert RunConfig(cpu_threads=1).training_hash() == RunConfig().training_hash()


# --- every name list agrees with what implements it -----------------------------------


def test_strategy_names_equal_the_registry() -> None:
    from strategies.registry import STRATEGIES

    assert run_config.STRATEGIES == tuple(STRATEGIES)


def test_attack_names_are_none_and_the_implemented_attacks() -> None:
    from clients.attacks import ATTACKS

    assert run_config.ATTACKS == ("none", *ATTACKS)


def test_dp_modes_equal_the_privacy_module() -> None:
    from strategies.privacy import DP_MODES

    assert run_config.DP_MODES == tuple(DP_MODES)


@pytest.mark.parametrize(
    ("key", "choices"),
    [
        ("task", run_config.TASKS),
        ("strategy", run_config.STRATEGIES),
        ("partitioner", PARTITIONERS),
        ("attack", run_config.ATTACKS),
        ("dp", run_config.DP_MODES),
    ],
)
def test_unknown_name_error_lists_every_valid_choice(key: str, choices: tuple[str, ...]) -> None:
    # Execute
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({key: "tpyo"})
    # Assert
    message = str(err.value)
    assert "'tpyo'" in message and "\n" not in message
    assert all(choice in message for choice in choices)


def test_every_valid_name_is_accepted() -> None:
    for strategy in run_config.STRATEGIES:
        assert RunConfig(strategy=strategy).strategy == strategy
    for attack in run_config.ATTACKS:
        assert RunConfig(attack=attack).attack == attack
    for dp in run_config.DP_MODES:
        assert RunConfig(dp=dp).dp == dp


@pytest.mark.parametrize(
    "name", [f.name for f in fields(RunConfig) if isinstance(getattr(RunConfig(), f.name), float)]
)
def test_every_float_knob_rejects_nan_and_infinity(name: str) -> None:
    key = name.replace("_", "-")
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match=key):
            RunConfig.from_mapping({key: value})


def test_typo_in_attack_is_rejected_even_when_no_client_is_malicious() -> None:
    # the case: malicious-fraction=0 made the attack unused, so the typo went unseen
    with pytest.raises(ConfigError, match="unknown attack 'sign-flp'"):
        RunConfig.from_mapping({"attack": "sign-flp", "malicious-fraction": 0.0})


def test_unknown_strategy_is_the_registry_error_type() -> None:
    from strategies import registry

    assert registry.UnknownStrategyError is UnknownStrategyError
    with pytest.raises(UnknownStrategyError, match="valid names: fedavg, fedprox"):
        RunConfig(strategy="fedfoo")


# --- every entry point rejects a typo before anything starts ------------------------------


def test_fedge_simulate_rejects_a_typo_in_attack_without_starting_a_superlink(
    tmp_path: Path,
) -> None:
    # Prepare
    home = tmp_path / "flwr-home"
    started = time.perf_counter()
    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "fedge", "simulate", "--app-dir", str(APP_DIR),
         "--flwr-home", str(home), "--set", "attack=sign-flp",
         "--set", "malicious-fraction=0", "--set", f"output-dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Assert: exit 2, one line naming the typo and the choices, no Flower home, no output
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown attack 'sign-flp'" in lines[0]
    assert "sign-flip" in lines[0]
    assert not home.exists() and not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 60


def test_fedge_simulate_rejects_a_missing_fedge_data_dir_before_starting(
    tmp_path: Path,
) -> None:
    home = tmp_path / "flwr-home"
    result = subprocess.run(
        [sys.executable, "-m", "fedge", "simulate", "--app-dir", str(APP_DIR),
         "--flwr-home", str(home)],
        capture_output=True, text=True, timeout=120,
        env={**_env(), "FEDGE_DATA_DIR": str(tmp_path / "nowhere")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "FEDGE_DATA_DIR" in result.stderr and "nowhere" in result.stderr
    assert not home.exists()


def test_fedge_compare_rejects_a_typo_in_attack_before_any_cell_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedge.cli import main

    code = main(
        ["compare", "--strategies", "fedavg", "--out", str(tmp_path / "g"),
         "--set", "attack=sign-flp"]
    )  # fmt: skip
    assert code == 2
    assert "unknown attack 'sign-flp'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_server_app_rejects_a_typo_in_attack_before_the_first_round(tmp_path: Path) -> None:
    # Prepare: the real ServerApp over a grid that records whether any message was sent
    from flwr.app import Context, RecordDict
    from loopback_grid import LoopbackGrid

    from clients.client_app import app as client_app
    from server.server_app import app as server_app

    values: dict[str, Any] = {"attack": "sign-flp", "output-dir": str(tmp_path / "out")}
    grid = LoopbackGrid(client_app, 2, values)
    sent: list[object] = []
    grid.send_and_receive = lambda messages, **_: sent.extend(messages) or []  # type: ignore[method-assign]
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=values)
    # Execute
    with pytest.raises(ConfigError, match="unknown attack 'sign-flp'"):
        server_app(grid, context)
    # Assert
    assert sent == []
    assert not (tmp_path / "out").exists()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "FEDGE_DATA_DIR"}
