"""Run-config parsing: defaults from pyproject.toml, types, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


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
