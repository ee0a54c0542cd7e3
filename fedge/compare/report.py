"""Grid results as tables: ``results.csv`` (one row per cell and round) and ``summary.md``.

Reads every finished cell under ``<out>/runs`` (a ``done`` marker and a metrics line
per round) and turns the app's ``metrics.jsonl`` into flat rows:

- global model: ``accuracy``, ``loss`` (the metrics' ``central``);
- clients: mean ``eval_accuracy`` of the round's federated evaluation, its 10th/90th
  percentiles and the mean of the worst 10% of clients (at least one client);
- traffic, server view: uplink = ``bytes_received``, downlink = ``bytes_sent``; "wire"
  is the measured serialized size, "raw" what float32 weights would take (parameters ×
  4 × clients that received or returned weights in that stage) unless the metrics carry
  ``raw_bytes_received`` / ``raw_bytes_sent``; plus running totals;
- ``failed_nodes``: nodes sampled in the round that sent no reply (the line's
  ``failed_nodes``; empty where the line does not say): such a round trained fewer nodes
  than the protocol asks, and ``summary.md`` names every cell that has one;
- ``seconds`` (round wall time), the run-config keys that describe privacy,
  compression or attacks (``dp``, ``dp-*``, ``compression-*``, ``attack*``,
  ``malicious-fraction``; a family only where some cell sets it away from the app's
  defaults) and the per-round ``dp_*`` figures the app logs (noise std-dev, clipping
  norm).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.compare.grid import DONE_MARKER
from fedge.core.run_config import RunConfig
from server.metrics_log import METRICS_FILE, read_metrics

__all__ = [
    "CSV_FILE",
    "SUMMARY_FILE",
    "ClientFairness",
    "FinishedCell",
    "GroupSummary",
    "ReportFiles",
    "cell_rows",
    "client_fairness",
    "extra_columns",
    "find_finished_cells",
    "metric_columns",
    "render_summary",
    "rounds_to_target",
    "summarize",
    "write_reports",
]

CSV_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
BYTES_PER_PARAMETER = 4  # float32

CSV_COLUMNS = (
    "strategy",
    "partition",
    "seed",
    "cell",
    "round",
    "accuracy",
    "loss",
    "client_accuracy_mean",
    "client_accuracy_p10",
    "client_accuracy_p90",
    "client_accuracy_worst10",
    "uplink_bytes_raw",
    "uplink_bytes_wire",
    "downlink_bytes_raw",
    "downlink_bytes_wire",
    "cum_uplink_bytes_raw",
    "cum_uplink_bytes_wire",
    "cum_downlink_bytes_raw",
    "cum_downlink_bytes_wire",
    "seconds",
    "failed_nodes",
)


@dataclass(frozen=True)
class FinishedCell:
    """One finished cell as read from disk: its metrics lines and run config."""

    cell: str
    strategy: str
    partition: str
    seed: int
    metrics: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    num_parameters: int | None = None


@dataclass(frozen=True)
class ClientFairness:
    """Spread of per-client accuracy in one round."""

    mean: float
    p10: float
    p90: float
    worst10: float


@dataclass
class GroupSummary:
    """Final figures of one (strategy, partition, extras) group over its seeds."""

    strategy: str
    partition: str
    extras: tuple[tuple[str, Any], ...]
    seeds: list[int] = field(default_factory=list)
    final_accuracy: list[float] = field(default_factory=list)
    final_client_accuracy: list[float] = field(default_factory=list)
    final_worst10: list[float] = field(default_factory=list)
    rounds_to_target: list[int | None] = field(default_factory=list)
    uplink_wire: list[float] = field(default_factory=list)
    uplink_raw: list[float] = field(default_factory=list)
    downlink_wire: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failed_node_rounds: dict[str, int] = field(default_factory=dict)
    """Per cell with any, its node-rounds without a reply."""


@dataclass(frozen=True)
class ReportFiles:
    """The files ``write_reports`` wrote."""

    csv: Path
    summary: Path
    plots: list[Path]
    cells: int


def client_fairness(accuracies: Iterable[float]) -> ClientFairness | None:
    """Mean, 10th/90th percentile (linear) and worst-10% mean; ``None`` without clients."""
    values = np.sort(np.asarray([a for a in accuracies if _finite(a)], dtype=np.float64))
    if values.size == 0:
        return None
    worst = max(1, math.ceil(0.1 * values.size))
    p10, p90 = np.percentile(values, [10, 90])
    return ClientFairness(
        mean=float(values.mean()),
        p10=float(p10),
        p90=float(p90),
        worst10=float(values[:worst].mean()),
    )


def rounds_to_target(rows: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """First round whose global ``accuracy`` is >= ``target``; ``None`` if none is."""
    for row in sorted(rows, key=lambda r: r["round"]):
        accuracy = row.get("accuracy")
        if _finite(accuracy) and accuracy >= target:
            return int(row["round"])
    return None


def find_finished_cells(out: Path, max_rounds: int | None = None) -> list[FinishedCell]:
    """Every finished cell under ``<out>/runs``, its metrics cut to ``max_rounds``."""
    runs = Path(out) / "runs"
    cells = []
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        marker_path = run_dir / DONE_MARKER
        if not marker_path.is_file():
            continue
        try:
            marker = json.loads(marker_path.read_text())
        except json.JSONDecodeError:
            continue
        rounds = int(marker["rounds"])
        if max_rounds is not None:
            rounds = min(rounds, max_rounds)
        by_round = {row["round"]: row for row in read_metrics(run_dir / METRICS_FILE)}
        if not set(range(1, rounds + 1)) <= set(by_round):
            continue
        cells.append(
            FinishedCell(
                cell=str(marker.get("cell", run_dir.name)),
                strategy=str(marker["strategy"]),
                partition=str(marker["partition"]),
                seed=int(marker["seed"]),
                metrics=[by_round[r] for r in range(1, rounds + 1)],
                config=_run_config(run_dir, marker),
                num_parameters=_count_parameters(run_dir / "final_weights.npz"),
            )
        )
    return cells


def extra_columns(cells: Iterable[FinishedCell]) -> list[str]:
    """Run-config keys of the privacy, compression and attack settings, where used.

    A family (``dp``/``dp-*``; ``compression-*``; ``attack*``/``malicious-fraction``) is
    listed whole when some cell sets one of its keys away from the app's default.
    """
    cells = list(cells)
    defaults = RunConfig().to_mapping()
    present: dict[str, set[str]] = {}
    used: set[str] = set()
    for cell in cells:
        for key, value in cell.config.items():
            family = _family(key)
            if family is None:
                continue
            present.setdefault(family, set()).add(key)
            if key not in defaults or value != defaults[key]:
                used.add(family)
    return sorted(key for family in used for key in present[family])


def metric_columns(cells: Iterable[FinishedCell]) -> list[str]:
    """Per-round privacy figures the app logs (``dp_noise_stddev``, ``dp_clipping_norm``…)."""
    keys = {k for cell in cells for line in cell.metrics for k in line if k.startswith("dp_")}
    return sorted(keys)


def _family(key: str) -> str | None:
    if key == "dp" or key.startswith("dp-"):
        return "dp"
    if key.startswith("compression-"):
        return "compression"
    if key.startswith("attack") or key == "malicious-fraction":
        return "attack"
    return None


def cell_rows(
    cell: FinishedCell, extras: Sequence[str] = (), metric_keys: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The CSV rows of one cell, one per round (``None`` where a figure is unknown).

    ``extras`` are copied from the cell's run config, ``metric_keys`` from each line.
    """
    rows = []
    totals = {"uplink_bytes_raw": 0, "uplink_bytes_wire": 0}
    totals.update(downlink_bytes_raw=0, downlink_bytes_wire=0)
    for line in cell.metrics:
        central = line.get("central") or {}
        clients = line.get("clients") or []
        fairness = client_fairness(
            c["eval"]["eval_accuracy"] for c in clients if "eval_accuracy" in (c.get("eval") or {})
        )
        row: dict[str, Any] = {
            "strategy": cell.strategy,
            "partition": cell.partition,
            "seed": cell.seed,
            "cell": cell.cell,
            "round": line["round"],
            "accuracy": central.get("accuracy"),
            "loss": central.get("loss"),
            "client_accuracy_mean": fairness.mean if fairness else None,
            "client_accuracy_p10": fairness.p10 if fairness else None,
            "client_accuracy_p90": fairness.p90 if fairness else None,
            "client_accuracy_worst10": fairness.worst10 if fairness else None,
            **_traffic(line, cell.num_parameters),
            "seconds": line.get("seconds"),
            "failed_nodes": (
                len(line.get("failed_nodes") or []) if "failed_nodes" in line else None
            ),
        }
        for key in totals:
            value = row[key]
            totals[key] = None if value is None or totals[key] is None else totals[key] + value
            row[f"cum_{key}"] = totals[key]
        for key in extras:
            row[key] = cell.config.get(key)
        for key in metric_keys:
            row[key] = line.get(key)
        rows.append(row)
    return rows


def summarize(
    rows: Iterable[Mapping[str, Any]], extras: Sequence[str] = (), target: float | None = None
) -> list[GroupSummary]:
    """Group CSV rows by (strategy, partition, extras) and take each seed's last round."""
    by_cell: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    groups: dict[tuple[Any, ...], GroupSummary] = {}
    for cell_rows_ in by_cell.values():
        cell_rows_ = sorted(cell_rows_, key=lambda r: r["round"])
        last = cell_rows_[-1]
        extra_values = tuple((key, last.get(key)) for key in extras)
        key = (last["strategy"], last["partition"], extra_values)
        group = groups.setdefault(
            key, GroupSummary(last["strategy"], last["partition"], extra_values)
        )
        group.seeds.append(int(last["seed"]))
        _append(group.final_accuracy, last["accuracy"])
        _append(group.final_client_accuracy, last["client_accuracy_mean"])
        _append(group.final_worst10, last["client_accuracy_worst10"])
        _append(group.uplink_wire, last["cum_uplink_bytes_wire"])
        _append(group.uplink_raw, last["cum_uplink_bytes_raw"])
        _append(group.downlink_wire, last["cum_downlink_bytes_wire"])
        _append(group.seconds, sum(r["seconds"] or 0.0 for r in cell_rows_))
        lost = sum(int(r.get("failed_nodes") or 0) for r in cell_rows_)
        if lost:
            group.failed_node_rounds[str(last["cell"])] = lost
        if target is not None:
            group.rounds_to_target.append(rounds_to_target(cell_rows_, target))
    return list(groups.values())


def render_summary(
    groups: Sequence[GroupSummary],
    *,
    target: float | None,
    title_lines: Sequence[str] = (),
    missing: Sequence[str] = (),
) -> str:
    """The Markdown of ``summary.md``: one table row per group."""
    extras = [key for key, _ in groups[0].extras] if groups else []
    header = ["strategy", "partition", *extras, "seeds", "final accuracy", "client accuracy"]
    header += ["worst-10% clients"]
    if target is not None:
        header.append(f"rounds to {target:g}")
    header += ["uplink MB", "uplink raw MB", "downlink MB", "seconds", "failed node-rounds"]
    lines = ["# Strategy comparison", "", *title_lines]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        cells = [group.strategy, group.partition, *(_text(v) for _, v in group.extras)]
        cells += [
            ",".join(str(s) for s in sorted(group.seeds)),
            _mean_std(group.final_accuracy),
            _mean_std(group.final_client_accuracy),
            _mean_std(group.final_worst10),
        ]
        if target is not None:
            cells.append(_rounds_text(group.rounds_to_target))
        cells += [
            _megabytes(group.uplink_wire),
            _megabytes(group.uplink_raw),
            _megabytes(group.downlink_wire),
            f"{statistics.mean(group.seconds):.1f}" if group.seconds else "—",
            str(sum(group.failed_node_rounds.values())),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy figures are the last round's, mean ± sample std over seeds. "
        "Client accuracy: mean of the clients' own evaluation; worst-10%: mean of the "
        "lowest tenth of clients. "
        + (
            "Rounds to target: first round whose global accuracy reaches it, mean over "
            "the seeds that reach it ((k/n) when not all do, — when none does). "
            if target is not None
            else ""
        )
        + "Traffic is the server's view summed over all rounds (uplink: client → server); "
        "raw = float32 weights, MB = 10⁶ bytes. Seconds: summed round wall time. "
        "Failed node-rounds: sampled nodes that sent no reply, summed over rounds and seeds.",
    ]
    lost = {cell: n for group in groups for cell, n in group.failed_node_rounds.items()}
    if lost:
        named = ", ".join(f"{cell} ({n})" for cell, n in sorted(lost.items()))
        lines += [
            "",
            f"**Cells with failed nodes** (node-rounds without a reply): {named}. Their "
            "rounds did not all train every sampled node; compare them with care or run "
            "them again.",
        ]
    if missing:
        lines += ["", f"Not finished (no results yet): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_reports(
    out: Path,
    *,
    max_rounds: int | None = None,
    target: float | None = None,
    expected_cells: Sequence[str] = (),
    order: Mapping[str, Sequence[Any]] | None = None,
) -> ReportFiles:
    """Write ``results.csv``, ``summary.md`` and the plots from the finished cells in ``out``.

    ``order`` (``strategies``, ``partitions`` lists, e.g. from ``grid.json``) sets the
    row and line order; ``expected_cells`` that are not finished are named in the summary.
    """
    from fedge.compare.plots import write_plots

    out = Path(out)
    cells = _ordered(find_finished_cells(out, max_rounds), order or {})
    extras = extra_columns(cells)
    per_round = metric_columns(cells)
    rows = [row for cell in cells for row in cell_rows(cell, extras, per_round)]
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / CSV_FILE
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*CSV_COLUMNS, *extras, *per_round])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    groups = summarize(rows, extras, target)
    finished = {cell.cell for cell in cells}
    rounds = sorted({len(cell.metrics) for cell in cells})
    title = [
        f"{len(cells)} finished cells, {len(groups)} (strategy, partition) groups, "
        f"rounds: {', '.join(map(str, rounds)) or '—'}."
    ]
    summary_path = out / SUMMARY_FILE
    summary_path.write_text(
        render_summary(
            groups,
            target=target,
            title_lines=title,
            missing=[c for c in expected_cells if c not in finished],
        )
    )
    plots = write_plots(rows, extras, out) if rows else []
    return ReportFiles(csv_path, summary_path, plots, len(cells))


def _traffic(line: Mapping[str, Any], num_parameters: int | None) -> dict[str, Any]:
    clients = line.get("clients") or []
    trained = sum(1 for c in clients if "train" in c) + len(line.get("rejected_nodes") or [])
    evaluated = sum(1 for c in clients if "eval" in c)
    failed = len(line.get("failed_nodes") or [])
    weights = None if num_parameters is None else num_parameters * BYTES_PER_PARAMETER
    uplink_raw = line.get("raw_bytes_received")
    if uplink_raw is None and weights is not None:
        uplink_raw = weights * trained
    downlink_raw = line.get("raw_bytes_sent")
    if downlink_raw is None and weights is not None:
        downlink_raw = weights * (trained + evaluated + failed)
    return {
        "uplink_bytes_raw": uplink_raw,
        "uplink_bytes_wire": line.get("bytes_received"),
        "downlink_bytes_raw": downlink_raw,
        "downlink_bytes_wire": line.get("bytes_sent"),
    }


def _run_config(run_dir: Path, marker: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "config.json").read_text())["config"])
    except (OSError, KeyError, json.JSONDecodeError):
        return dict(marker.get("run_config") or {})


def _count_parameters(path: Path) -> int | None:
    try:
        with np.load(path) as weights:
            return int(sum(weights[name].size for name in weights.files))
    except (OSError, ValueError):
        return None


def _ordered(cells: list[FinishedCell], order: Mapping[str, Sequence[Any]]) -> list[FinishedCell]:
    def rank(values: Sequence[Any], value: Any) -> tuple[int, Any]:
        values = list(values)
        return (values.index(value), "") if value in values else (len(values), value)

    return sorted(
        cells,
        key=lambda c: (
            rank(order.get("partitions", ()), c.partition),
            rank(order.get("strategies", ()), c.strategy),
            c.seed,
            c.cell,
        ),
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _append(values: list[float], value: Any) -> None:
    if _finite(value):
        values.append(float(value))


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _megabytes(values: Sequence[float]) -> str:
    return f"{statistics.mean(values) / 1e6:.2f}" if values else "—"


def _rounds_text(rounds: Sequence[int | None]) -> str:
    reached = [r for r in rounds if r is not None]
    if not reached:
        return "—"
    mean = statistics.mean(reached)
    text = f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
    return text if len(reached) == len(rounds) else f"{text} ({len(reached)}/{len(rounds)})"


def _text(value: Any) -> str:
    return "—" if value is None else str(value)
