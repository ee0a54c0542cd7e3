"""The typed view of a Flower run config (``[tool.flwr.app.config]`` + ``--run-config``).

Every knob has its default in ``pyproject.toml``; this module validates values and
exposes them under Python names. Server and clients read the same class.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from fedge.core.errors import ConfigError

if TYPE_CHECKING:
    from fedge.core.compression_config import CompressionConfig

__all__ = ["NON_TRAINING_KEYS", "RunConfig", "parse_set_pairs"]

# Run-config keys that do not change what a run trains: paths, resuming, how long it
# runs, and how many CPU threads it uses (threads change only the floating-point
# summation order, so a bit-identical resume needs the same count; the protocol is the same).
NON_TRAINING_KEYS = frozenset(
    {"output-dir", "run-name", "resume", "stop-after-round", "num-server-rounds", "cpu-threads"}
)


@dataclass(frozen=True)
class RunConfig:
    """All run knobs; field ``foo_bar`` is run-config key ``foo-bar``."""

    task: str = "fashion-mnist"
    strategy: str = "fedavg"
    num_server_rounds: int = 3
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_available_nodes: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.0
    partitioner: str = "iid"
    partitioner_param: float = 0.5
    num_partitions: int = 0
    seed: int = 0
    data_dir: str = "sample"
    max_train_samples: int = 0
    validation_share: float = 0.2
    output_dir: str = "outputs"
    run_name: str = ""
    resume: bool = False
    stop_after_round: int = 0
    proximal_mu: float = 0.01
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9
    eta: float = 0.01
    eta_l: float = 0.0316
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001
    trimmed_beta: float = 0.2
    num_malicious_nodes: int = 0
    krum_keep: int = 0
    q_param: float = 0.2
    attack: str = "none"
    malicious_fraction: float = 0.0
    attack_scale: float = 1.0
    dp: str = "none"
    dp_noise_multiplier: float = 0.1
    dp_clipping_norm: float = 1.0
    dp_target_quantile: float = 0.5
    compression_bits: int = 32
    compression_topk: float = 1.0
    compression_min_elements: int = 256
    compression_error_feedback: bool = True
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        positive = ("num_server_rounds", "local_epochs", "batch_size", "min_available_nodes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{_key(name)} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.validation_share < 1.0:
            raise ConfigError(f"validation-share must lie in [0, 1), got {self.validation_share}")
        if self.cpu_threads < 0:
            raise ConfigError(
                f"cpu-threads must be >= 0 (0 = TensorFlow's choice), got {self.cpu_threads}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.compression.enabled and self.dp.startswith("client-"):
            raise ConfigError(
                "client-side DP clipping needs full weights; turn compression off "
                "(compression-bits=32, compression-topk=1.0) or use a server-side dp mode"
            )
        if self.task != "fashion-mnist":
            raise ConfigError(f"unknown task {self.task!r}; available: fashion-mnist")

    @property
    def compression(self) -> CompressionConfig:
        """How clients encode their updates (the ``compression-*`` keys)."""
        from fedge.core.compression_config import CompressionConfig

        return CompressionConfig(
            bits=self.compression_bits,
            topk_ratio=self.compression_topk,
            min_elements=self.compression_min_elements,
            error_feedback=self.compression_error_feedback,
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from run-config keys (``num-server-rounds``); unknown keys are errors."""
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown run-config keys {unknown}; known keys: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            field = known[key]
            kwargs[field.name] = _coerce(key, value, type(getattr(cls, field.name)))
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Return the run-config form (dashed keys)."""
        return {_key(k): v for k, v in asdict(self).items()}

    def training_hash(self) -> str:
        """Hash of every knob that changes the trained weights (see ``NON_TRAINING_KEYS``)."""
        relevant = {k: v for k, v in asdict(self).items() if _key(k) not in NON_TRAINING_KEYS}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        try:
            whole = not isinstance(value, bool) and float(value).is_integer()
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return int(float(value))
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key} must be a number, got {value!r}") from err
    return str(value)


def parse_set_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.1", "data-dir=sample"]`` → ``{"lr": 0.1, "data-dir": "sample"}`` (TOML values,
    bare words as strings)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values
