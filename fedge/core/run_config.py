"""The typed view of a Flower run config (``[tool.flwr.app.config]`` + ``--run-config``).

Every knob has its default in ``pyproject.toml``; this module checks every value when a
``RunConfig`` is built (names against the lists below, numbers against their ranges), so
``fedge simulate``, ``fedge compare``, the ServerApp and the ClientApp all reject a bad
run config before any process or round starts. Server and clients read the same class.

The name lists live here, in the core, because the packages that implement them
(``strategies.registry``, ``clients.attacks``, ``strategies.privacy``) sit above it; tests
assert that each list equals its registry.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fedge.core.compression_config import CompressionConfig
from fedge.core.errors import ConfigError
from fedge.core.partition_scheme import PARTITIONERS, PartitionScheme

__all__ = [
    "ATTACKS",
    "DETECTOR_EXPORTS",
    "DP_MODES",
    "NON_TRAINING_KEYS",
    "NO_DP_STRATEGIES",
    "STRATEGIES",
    "TASKS",
    "TASK_UNSUPPORTED_STRATEGIES",
    "TRAIN_SCHEDULES",
    "CYCLIC_STRATEGIES",
    "RunConfig",
    "UnknownStrategyError",
    "parse_set_pairs",
]

# Must equal the keys of ``clients.tasks.TASKS``, in order.
TASKS = ("fashion-mnist", "person-detector")
# Strategies a task cannot run, and why (one line each).
TASK_UNSUPPORTED_STRATEGIES = {
    "person-detector": {
        "scaffold": "its control variates assume plain SGD at learning-rate on every weight, "
        "the detector trains with Adam and carries batch-norm statistics",
        "fednova": "its normalization assumes plain SGD with momentum, the detector trains "
        "with Adam",
    },
}
# How the ServerApp exports the person detector after each round: ``export``'s
# quantizations, or "none".
DETECTOR_EXPORTS = ("int8", "float16", "float32", "none")
# Must equal the keys of ``strategies.registry.STRATEGIES``, in order.
STRATEGIES = (
    "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
    "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg", "scaffold", "fednova",
)  # fmt: skip
# Strategies that refuse differential privacy, and why (one line each).
NO_DP_STRATEGIES = {
    "scaffold": "its control-variate updates carry each client's update unclipped and un-noised",
    "fednova": "it rescales each client's update by tau_eff * p_i / a_i, so the DP noise "
    "would not bound one client's influence",
}
# How a round trains (``server.rounds``): "parallel" (every sampled node from the global
# model, then the strategy aggregates), "cyclic" (the nodes one after another, each from the
# previous node's model), or "auto" (cyclic for the tasks in CYCLIC_BY_DEFAULT when the
# strategy and DP mode allow it, else parallel).
TRAIN_SCHEDULES = ("auto", "parallel", "cyclic")
# Strategies whose aggregate of one reply is that reply's model: the only ones a cyclic
# round can hand its chained model to.
CYCLIC_STRATEGIES = ("fedavg", "fedprox")
# Tasks that train cyclically under "auto": the person detector learns from a few dozen
# labelled frames per site, from random weights, where averaged models fail (server.rounds).
CYCLIC_BY_DEFAULT = ("person-detector",)
# "none" and the keys of ``clients.attacks.ATTACKS``.
ATTACKS = ("none", "sign-flip", "scale", "noise", "nan", "inf")
# Must equal ``strategies.privacy.DP_MODES``.
DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")

# Run-config keys that do not change what a run trains: paths, resuming, how long it
# runs, and how many CPU threads it uses (threads change only the floating-point
# summation order, so a bit-identical resume needs the same count; the protocol is the same),
# and what the person detector's nodes measure and its server exports.
NON_TRAINING_KEYS = frozenset(
    {"output-dir", "run-name", "resume", "stop-after-round", "num-server-rounds", "cpu-threads"}
    | {"detector-int8-eval-every", "detector-export", "detector-calibration-dir"}
)


class UnknownStrategyError(ConfigError):
    """The run config names a strategy that is not registered."""


@dataclass(frozen=True)
class _Range:
    """An interval a number must lie in; ``None`` leaves that side open-ended."""

    low: float | None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = False

    def __contains__(self, value: float) -> bool:
        # written so that NaN lies in no range
        above = self.low is None or (value >= self.low if self.low_closed else value > self.low)
        below = self.high is None or (value <= self.high if self.high_closed else value < self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"be {'>=' if self.low_closed else '>'} {self.low:g}"
        left = "[" if self.low_closed else "("
        right = "]" if self.high_closed else ")"
        return f"lie in {left}{self.low:g}, {self.high:g}{right}"


_AT_LEAST_1 = _Range(1)
_AT_LEAST_0 = _Range(0)
_POSITIVE = _Range(0, low_closed=False)
_SHARE = _Range(0, 1, high_closed=True)
_BELOW_1 = _Range(0, 1)
# The range of every numeric knob, with a note for the message where the range needs one
# (``partitioner-param`` is checked by ``PartitionScheme``, the compression-* keys by
# ``CompressionConfig``).
_RANGES: dict[str, tuple[_Range, str]] = {
    "num_server_rounds": (_AT_LEAST_1, ""),
    "fraction_train": (_SHARE, ""),
    "fraction_evaluate": (_SHARE, "0 skips federated evaluation"),
    "min_available_nodes": (_AT_LEAST_1, ""),
    "local_epochs": (_AT_LEAST_1, ""),
    "batch_size": (_AT_LEAST_1, ""),
    "learning_rate": (_POSITIVE, ""),
    "momentum": (_BELOW_1, "SGD momentum"),
    "num_partitions": (_AT_LEAST_0, "0 = the node config's"),
    "seed": (_AT_LEAST_0, ""),
    "max_train_samples": (_AT_LEAST_0, "0 = no cap"),
    "validation_share": (_BELOW_1, ""),
    "stop_after_round": (_AT_LEAST_0, "0 = run every round"),
    "proximal_mu": (_AT_LEAST_0, "fedprox"),
    "server_learning_rate": (_POSITIVE, "fedavgm, scaffold"),
    "server_momentum": (_BELOW_1, "fedavgm"),
    "eta": (_POSITIVE, "fedadam, fedyogi, fedadagrad"),
    "eta_l": (_POSITIVE, "fedadam, fedyogi, fedadagrad"),
    "beta_1": (_BELOW_1, "fedadam, fedyogi"),
    "beta_2": (_BELOW_1, "fedadam, fedyogi"),
    "tau": (_POSITIVE, "fedadam, fedyogi, fedadagrad"),
    "trimmed_beta": (_Range(0, 0.5), "the share fedtrimmedavg cuts from each end"),
    "num_malicious_nodes": (_AT_LEAST_0, "krum, multikrum, bulyan"),
    "krum_keep": (_AT_LEAST_0, "multikrum; 0 = 1"),
    "q_param": (_AT_LEAST_0, "qfedavg"),
    "malicious_fraction": (_SHARE, ""),
    "attack_scale": (_AT_LEAST_0, ""),
    "dp_noise_multiplier": (_AT_LEAST_0, ""),
    "dp_clipping_norm": (_POSITIVE, ""),
    "dp_target_quantile": (_Range(0, 1, low_closed=False), "dp=*-adaptive"),
    "cpu_threads": (_AT_LEAST_0, "0 = TensorFlow's choice"),
    "detector_learning_rate": (_POSITIVE, "person-detector: Adam"),
    "detector_lr_decay": (
        _Range(0, 1, low_closed=False, high_closed=True),
        "person-detector: round r trains at the rate times decay^(r-1)",
    ),
    "detector_batch_size": (_AT_LEAST_1, "person-detector"),
    "detector_max_frames": (_AT_LEAST_0, "person-detector; 0 = every training frame"),
    "detector_own_weight": (_SHARE, "person-detector"),
    "detector_pose_min_score": (_SHARE, "person-detector"),
    "detector_self_min_score": (_SHARE, "person-detector"),
    "detector_label_min_score": (_SHARE, "person-detector"),
    "detector_int8_eval_every": (_AT_LEAST_0, "person-detector; 0 = never"),
}
# The name lists each enumerated knob must be one of.
_CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "strategy": STRATEGIES,
    "partitioner": PARTITIONERS,
    "attack": ATTACKS,
    "dp": DP_MODES,
    "detector_export": DETECTOR_EXPORTS,
    "train_schedule": TRAIN_SCHEDULES,
}


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
    data_dir: str = "auto"
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
    # person-detector only (validated for every task; see clients.tasks.person_detector)
    detector_learning_rate: float = 0.005
    detector_lr_decay: float = 1.0
    detector_batch_size: int = 8
    detector_max_frames: int = 0
    detector_own_weight: float = 0.5
    detector_pose_min_score: float = 0.8
    detector_self_min_score: float = 0.9
    detector_label_min_score: float = 0.3
    detector_augment: bool = True
    detector_int8_eval_every: int = 1
    detector_export: str = "int8"
    detector_calibration_dir: str = ""
    detector_store_root: str = ""
    detector_warm_start: bool = False
    train_schedule: str = "auto"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                error = UnknownStrategyError if name == "strategy" else ConfigError
                noun = {"dp": "dp mode"}.get(name, _key(name))
                raise error(f"unknown {noun} {value!r}; valid names: {', '.join(choices)}")
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_key(name)} must be a finite number, got {value}")
        for name, (allowed, note) in _RANGES.items():
            if getattr(self, name) not in allowed:
                hint = f" ({note})" if note else ""
                raise ConfigError(f"{_key(name)} must {allowed}{hint}, got {getattr(self, name)}")
        try:
            PartitionScheme(self.partitioner, self.partitioner_param)
        except ConfigError as err:
            raise ConfigError(f"partitioner-param {self.partitioner_param:g}: {err}") from err
        refused = TASK_UNSUPPORTED_STRATEGIES.get(self.task, {})
        if self.strategy in refused:
            raise ConfigError(
                f"task {self.task} cannot run strategy {self.strategy}: "
                f"{refused[self.strategy]}; use another strategy (fedavg, fedprox, ...)"
            )
        if self.dp != "none" and self.strategy in NO_DP_STRATEGIES:
            raise ConfigError(
                f"strategy {self.strategy} cannot run with dp={self.dp}: "
                f"{NO_DP_STRATEGIES[self.strategy]}; use dp=none or another strategy"
            )
        if self.train_schedule == "cyclic":
            if self.strategy not in CYCLIC_STRATEGIES:
                raise ConfigError(
                    f"train-schedule=cyclic hands each round the last node's model, which "
                    f"strategy {self.strategy} would not keep; use "
                    f"{' or '.join(CYCLIC_STRATEGIES)}, or train-schedule=parallel"
                )
            if self.dp != "none":
                raise ConfigError(
                    "train-schedule=cyclic passes one node's model to the next unclipped and "
                    "un-noised; use dp=none or train-schedule=parallel"
                )
            if self.detector_warm_start:
                raise ConfigError(
                    "detector-warm-start picks one model among parallel replies; a cyclic "
                    "round has one chained model: use one or the other"
                )
        if self.compression.enabled and self.dp.startswith("client-"):
            raise ConfigError(
                "client-side DP clipping needs full weights; turn compression off "
                "(compression-bits=32, compression-topk=1.0) or use a server-side dp mode"
            )

    @property
    def cyclic(self) -> bool:
        """Whether rounds train the nodes one after another (``train-schedule``; "auto":
        for the tasks in ``CYCLIC_BY_DEFAULT`` with a cyclic strategy, no DP and no warm
        start)."""
        if self.train_schedule != "auto":
            return self.train_schedule == "cyclic"
        return (
            self.task in CYCLIC_BY_DEFAULT
            and self.strategy in CYCLIC_STRATEGIES
            and self.dp == "none"
            and not self.detector_warm_start
        )

    @property
    def compression(self) -> CompressionConfig:
        """How clients encode their updates (the ``compression-*`` keys)."""
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
