"""A strategy comparison grid: strategies × partition settings × seeds, one run per cell.

A ``GridSpec`` is built from flags and/or a TOML file and validated before any process
starts. Every ``Cell`` runs the Flower App once, all cells on one local simulation
federation, with run config ``{strategy, partitioner, partitioner-param, seed,
num-server-rounds, output-dir=<out>/runs, run-name=<cell id>}`` plus the grid's
overrides. On disk, under ``<out>``:

    grid.json                 the last grid run here (rounds, target accuracy, order)
    runs/<cell>/metrics.jsonl the app's per-round metrics, checkpoints, final weights
    runs/<cell>/done          written once the cell has all its rounds
    logs/<cell>.log           the ``flwr run`` log of the cell

Rerunning the same grid skips finished cells and continues unfinished ones from their
newest checkpoint (the app's ``resume=true``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.partition_scheme import PartitionScheme, parse_partition_scheme
from fedge.core.run_config import NON_TRAINING_KEYS, RunConfig, parse_set_pairs
from fedge.core.run_names import default_run_name
from server.metrics_log import METRICS_FILE, read_metrics

__all__ = [
    "DONE_MARKER",
    "GRID_FILE",
    "GRID_KEYS",
    "RESERVED_KEYS",
    "Cell",
    "GridOutcome",
    "GridSpec",
    "cell_is_finished",
    "failed_node_rounds",
    "load_grid_record",
    "load_grid_values",
    "parse_set_pairs",
    "run_grid",
]

GRID_FILE = "grid.json"
DONE_MARKER = "done"
GRID_KEYS = (
    "strategies",
    "partitions",
    "seeds",
    "rounds",
    "clients",
    "out",
    "target-accuracy",
    "run-config",
)
# Run-config keys the grid sets per cell; an override may not touch them.
RESERVED_KEYS = (
    "strategy",
    "partitioner",
    "partitioner-param",
    "seed",
    "num-server-rounds",
    "output-dir",
    "run-name",
    "resume",
    "stop-after-round",
)
DEFAULT_PARTITIONS = "iid"
DEFAULT_SEEDS = "0"
DEFAULT_CLIENTS = 4


@dataclass(frozen=True)
class Cell:
    """One (strategy, partition setting, seed) combination of a grid."""

    strategy: str
    partition: PartitionScheme
    seed: int

    @property
    def id(self) -> str:
        """File-safe name, also the run name: ``fedavg_dirichlet-0.5_s0``."""
        return default_run_name(self.strategy, self.partition, self.seed)


@dataclass(frozen=True)
class GridSpec:
    """A validated comparison grid; build it with ``GridSpec.from_values``."""

    strategies: tuple[str, ...]
    partitions: tuple[PartitionScheme, ...]
    seeds: tuple[int, ...]
    rounds: int
    clients: int
    out: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    target_accuracy: float | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> GridSpec:
        """Validate grid fields (the TOML/flag names of ``GRID_KEYS``) and build the spec.

        Raises
        ------
        ConfigError
            On unknown fields or strategy names, bad partition strings or seeds, a
            reserved or unknown run-config override, or a run config the app rejects.
        """
        unknown = sorted(set(values) - set(GRID_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown grid fields {unknown}; known fields: {', '.join(GRID_KEYS)}"
            )
        if not values.get("strategies"):
            raise ConfigError("no strategies: pass --strategies fedavg,fedprox or set `strategies`")
        if not values.get("out"):
            raise ConfigError("no output directory: pass --out DIR or set `out`")
        overrides = dict(values.get("run-config") or {})
        reserved = sorted(set(overrides) & set(RESERVED_KEYS))
        if reserved:
            raise ConfigError(
                f"run-config overrides {reserved} are set by the grid itself; use the grid "
                "fields (strategies, partitions, seeds, rounds) instead"
            )
        spec = cls(
            strategies=_parse_strategies(values["strategies"]),
            partitions=_parse_partitions(values.get("partitions", DEFAULT_PARTITIONS)),
            seeds=_parse_seeds(values.get("seeds", DEFAULT_SEEDS)),
            rounds=_positive_int("rounds", values.get("rounds", RunConfig.num_server_rounds)),
            clients=_positive_int("clients", values.get("clients", DEFAULT_CLIENTS)),
            out=Path(str(values["out"])).expanduser().resolve(),
            overrides=overrides,
            target_accuracy=_target(values.get("target-accuracy")),
        )
        spec._validate_run_configs()
        return spec

    @property
    def runs_dir(self) -> Path:
        """Where the app writes each cell's run directory."""
        return self.out / "runs"

    @property
    def logs_dir(self) -> Path:
        """Where each cell's ``flwr run`` log goes."""
        return self.out / "logs"

    def cells(self) -> list[Cell]:
        """Every cell, strategies outermost, then partition settings, then seeds."""
        return [
            Cell(strategy, partition, seed)
            for strategy, partition, seed in itertools.product(
                self.strategies, self.partitions, self.seeds
            )
        ]

    def run_config(self, cell: Cell) -> dict[str, Any]:
        """The run config of ``cell``: the overrides plus the grid's own keys."""
        return {
            **self.overrides,
            "strategy": cell.strategy,
            "partitioner": cell.partition.name,
            "partitioner-param": float(cell.partition.param),
            "seed": cell.seed,
            "num-server-rounds": self.rounds,
            "output-dir": str(self.runs_dir),
            "run-name": cell.id,
        }

    def record(self) -> dict[str, Any]:
        """The JSON form saved as ``grid.json`` (read back by ``--report-only``)."""
        return {
            "strategies": list(self.strategies),
            "partitions": [p.label for p in self.partitions],
            "seeds": list(self.seeds),
            "rounds": self.rounds,
            "clients": self.clients,
            "target-accuracy": self.target_accuracy,
            "run-config": dict(self.overrides),
            "cells": [c.id for c in self.cells()],
        }

    def _validate_run_configs(self) -> None:
        from strategies.registry import build_strategy

        for cell in self.cells():
            cfg = RunConfig.from_mapping(self.run_config(cell))
            build_strategy(cfg)
            if cfg.task != "fashion-mnist":
                raise ConfigError(
                    f"fedge compare compares strategies on Fashion-MNIST partitions, not task "
                    f"{cfg.task!r} (no partitions, no central accuracy); for the person detector "
                    "run `fedge simulate --set task=person-detector --set "
                    "detector-store-root=DIR --set strategy=NAME` once per strategy"
                )
            if cfg.min_available_nodes > self.clients:
                raise ConfigError(
                    f"min-available-nodes ({cfg.min_available_nodes}) exceeds clients "
                    f"({self.clients}); the runs would wait forever — raise --clients or "
                    "lower min-available-nodes"
                )

    def check_existing_runs(self) -> None:
        """Refuse to mix: a cell directory run with other training settings is an error.

        Settings are compared key by key on the keys both configs have, so a knob added
        to the app since (with its default) does not count as a change.
        """
        changed = {}
        for cell in self.cells():
            old = _saved_run_config(self.runs_dir / cell.id)
            new = RunConfig.from_mapping(self.run_config(cell)).to_mapping()
            keys = sorted(k for k in set(old) & set(new) - NON_TRAINING_KEYS if old[k] != new[k])
            if keys:
                changed[cell.id] = keys
        if changed:
            details = "; ".join(f"{cell}: {', '.join(keys)}" for cell, keys in changed.items())
            raise ConfigError(
                f"{self.runs_dir} already holds runs made with other settings ({details}); "
                "use a new --out, or delete those run directories to rerun them"
            )


def _saved_run_config(run_dir: Path) -> dict[str, Any]:
    """The run config the app saved in ``run_dir/config.json`` (empty if none)."""
    try:
        return dict(json.loads((run_dir / "config.json").read_text())["config"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return {}


def _checkpoint_hash(run_dir: Path) -> str | None:
    """Config hash of the newest checkpoint in ``run_dir`` (``None`` if none)."""
    try:
        return str(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["config_hash"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def load_grid_values(config: Path | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a TOML grid file with command-line values; flags win, ``run-config`` merges.

    ``flags`` holds only the values given on the command line (``None`` = not given).
    """
    values: dict[str, Any] = {}
    if config is not None:
        try:
            values = tomllib.loads(Path(config).read_text())
        except OSError as err:
            raise ConfigError(f"cannot read grid file {config}: {err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"grid file {config} is not valid TOML: {err}") from err
        if "run-config" in values and not isinstance(values["run-config"], dict):
            raise ConfigError(f"`run-config` in {config} must be a table: [run-config]")
    for key, value in flags.items():
        if value is None:
            continue
        if key == "run-config":
            values["run-config"] = {**values.get("run-config", {}), **value}
        else:
            values[key] = value
    return values


def load_grid_record(out: Path) -> dict[str, Any]:
    """The ``grid.json`` of the last grid run in ``out`` (empty if there is none)."""
    path = Path(out) / GRID_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def cell_is_finished(spec: GridSpec, cell: Cell) -> bool:
    """A ``done`` marker and a metrics line for every round 1..rounds."""
    run_dir = spec.runs_dir / cell.id
    return (run_dir / DONE_MARKER).exists() and _has_all_rounds(run_dir, spec.rounds)


def _has_all_rounds(run_dir: Path, rounds: int) -> bool:
    present = {row.get("round") for row in read_metrics(run_dir / METRICS_FILE)}
    return present >= set(range(1, rounds + 1))


@dataclass
class GridOutcome:
    """What ``run_grid`` did: cell ids run, skipped (already finished) and failed, and
    the cells run that finished with node failures (node-rounds without a reply)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    failed_nodes: dict[str, int] = field(default_factory=dict)


def run_grid(
    spec: GridSpec,
    app_dir: Path,
    *,
    client_cpus: int = 1,
    cell_timeout: float = 6 * 3600.0,
    fail_fast: bool = False,
) -> GridOutcome:
    """Run every unfinished cell of ``spec`` on one local federation, with a progress bar.

    A failed cell is reported (its log is in ``<out>/logs``) and the grid goes on, unless
    ``fail_fast``. The federation's SuperLink is stopped at the end, on error and on
    Ctrl-C.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from fedge.local_federation import LocalFederation

    spec.check_existing_runs()
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / GRID_FILE).write_text(json.dumps(spec.record(), indent=2) + "\n")
    outcome = GridOutcome()
    pending = []
    for cell in spec.cells():
        if cell_is_finished(spec, cell):
            outcome.skipped.append(cell.id)
        else:
            pending.append(cell)
    if not pending:
        return outcome

    federation = LocalFederation(spec.out / ".flwr-home", spec.clients, client_cpus)
    columns = (
        TextColumn("[bold]cells"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    try:
        with Progress(*columns) as progress:
            task = progress.add_task("", total=len(spec.cells()), completed=len(outcome.skipped))
            if outcome.skipped:
                progress.console.print(f"skipping {len(outcome.skipped)} finished cells")

            def show(text: str) -> None:
                progress.update(task, description=text)

            for cell in pending:
                try:
                    lost = _run_cell(federation, spec, cell, Path(app_dir), cell_timeout, show)
                    outcome.ran.append(cell.id)
                    if lost:
                        outcome.failed_nodes[cell.id] = lost
                        progress.console.print(
                            f"[yellow]cell {cell.id} finished, but {lost} node-rounds had no "
                            "reply (a node failed): its rounds did not all train every "
                            "sampled node"
                        )
                except FedgeError as err:
                    log = spec.logs_dir / f"{cell.id}.log"
                    outcome.failed[cell.id] = str(err).splitlines()[0]
                    progress.console.print(f"[red]cell {cell.id} failed[/]: {err}\nlog: {log}")
                    if fail_fast:
                        raise
                progress.advance(task)
            show("")
    finally:
        federation.close()
    return outcome


def _run_cell(
    federation: Any,
    spec: GridSpec,
    cell: Cell,
    app_dir: Path,
    timeout: float,
    show: Callable[[str], None],
) -> int:
    """Run (or continue) one cell, then write its ``done`` marker; return its failed
    node-rounds (:func:`failed_node_rounds`)."""
    run_dir = spec.runs_dir / cell.id
    (run_dir / DONE_MARKER).unlink(missing_ok=True)
    run_config = spec.run_config(cell)
    # continue after the newest checkpoint if the app will accept it; else from scratch
    same_settings = RunConfig.from_mapping(run_config).training_hash()
    run_config["resume"] = _checkpoint_hash(run_dir) == same_settings
    log_path = spec.logs_dir / f"{cell.id}.log"
    started = time.monotonic()

    def progress_text() -> str:
        rows = read_metrics(run_dir / METRICS_FILE)
        done = max((r.get("round", 0) for r in rows), default=0)
        return f"{cell.id}  round {done}/{spec.rounds}  {time.monotonic() - started:.0f}s"

    _call_in_thread(
        lambda: federation.run(app_dir, run_config, timeout=timeout, log_path=log_path),
        poll=lambda: show(progress_text()),
    )
    if not _has_all_rounds(run_dir, spec.rounds):
        raise FedgeError(
            f"cell {cell.id} ended without metrics for all {spec.rounds} rounds; see {log_path}"
        )
    marker = {
        "cell": cell.id,
        "strategy": cell.strategy,
        "partition": cell.partition.label,
        "seed": cell.seed,
        "rounds": spec.rounds,
        "run_config": spec.run_config(cell),
        "finished": time.time(),
        "failed_node_rounds": failed_node_rounds(read_metrics(run_dir / METRICS_FILE)),
    }
    (run_dir / DONE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return int(marker["failed_node_rounds"])


def failed_node_rounds(lines: Sequence[Mapping[str, Any]]) -> int:
    """Node-rounds without a reply in a run's metrics lines (each line's ``failed_nodes``)."""
    return sum(len(line.get("failed_nodes") or []) for line in lines)


def _call_in_thread(work: Callable[[], Any], poll: Callable[[], None]) -> None:
    """Run ``work`` in a worker thread, calling ``poll`` every second until it returns.

    The main thread stays free for Ctrl-C; ``work``'s exception is re-raised here.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    worker = threading.Thread(target=target, name="fedge-compare-cell", daemon=True)
    worker.start()
    while worker.is_alive():
        poll()
        worker.join(timeout=1.0)
    if errors:
        raise errors[0]


def _split(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        raise ConfigError(f"{what} must be a comma-separated string or a list, got {value!r}")
    items = [item.strip() for item in items if str(item).strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return list(dict.fromkeys(items))  # drop repeats, keep order


def _parse_strategies(value: Any) -> tuple[str, ...]:
    from strategies.registry import strategy_names

    names = _split(value, "strategies")
    valid = strategy_names()
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; valid names: {', '.join(valid)}")
    return tuple(names)


def _parse_partitions(value: Any) -> tuple[PartitionScheme, ...]:
    schemes = [parse_partition_scheme(text) for text in _split(value, "partitions")]
    return tuple(dict.fromkeys(schemes))


def _parse_seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    seeds = []
    for text in _split(value, "seeds"):
        try:
            seeds.append(int(text))
        except ValueError as err:
            raise ConfigError(f"seeds must be whole numbers, e.g. 0,1,2; got {text!r}") from err
    return tuple(dict.fromkeys(seeds))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}") from err
    if number < 1 or number != float(value):
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def _target(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        target = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"target-accuracy must be a number in (0, 1], got {value!r}") from err
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target-accuracy must be a number in (0, 1], got {value!r}")
    return target
