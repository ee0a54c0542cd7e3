"""Grid results as PNG figures (matplotlib, Agg canvas: no display needed).

- ``accuracy_<partition>.png``: global accuracy vs round, one figure per partition
  setting, one line per strategy (mean over seeds, ±std band);
- ``accuracy_vs_uplink.png``: global accuracy vs cumulative uplink bytes (wire), one
  panel per partition setting (log axis when the bytes span more than a decade).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["mean_curves", "write_plots"]

Curve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rounds, mean, std, mean x


def mean_curves(
    rows: Iterable[Mapping[str, Any]], extras: Sequence[str] = (), x_key: str = "round"
) -> dict[str, dict[str, Curve]]:
    """``{partition: {line label: (rounds, mean acc, std acc, mean x_key)}}`` over seeds.

    The std is the sample std (0 with one seed); rounds missing a value are skipped.
    """
    values: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = {}
    for row in rows:
        accuracy, x = row.get("accuracy"), row.get(x_key)
        if not _finite(accuracy) or not _finite(x):
            continue
        label = _line_label(row, extras)
        per_round = values.setdefault(row["partition"], {}).setdefault(label, {})
        per_round.setdefault(int(row["round"]), []).append((float(accuracy), float(x)))
    curves: dict[str, dict[str, Curve]] = {}
    for partition, lines in values.items():
        for label, per_round in lines.items():
            rounds = np.array(sorted(per_round))
            acc = [np.array([a for a, _ in per_round[r]]) for r in rounds]
            xs = [np.mean([x for _, x in per_round[r]]) for r in rounds]
            curves.setdefault(partition, {})[label] = (
                rounds,
                np.array([a.mean() for a in acc]),
                np.array([a.std(ddof=1) if a.size > 1 else 0.0 for a in acc]),
                np.array(xs),
            )
    return curves


def write_plots(rows: Sequence[Mapping[str, Any]], extras: Sequence[str], out: Path) -> list[Path]:
    """Write the accuracy figures into ``out`` and return their paths.

    A line is a strategy, plus the ``extras`` values that differ between rows.
    """
    paths = []
    varying = [k for k in extras if len({str(row.get(k)) for row in rows}) > 1]
    by_round = mean_curves(rows, varying, "round")
    for partition, lines in by_round.items():
        figure, axes = _figure(1)
        ax = axes[0]
        for label, (rounds, mean, std, _) in lines.items():
            (line,) = ax.plot(rounds, mean, marker="o", markersize=3, label=label)
            ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=f"Global accuracy, partition {partition}", xlabel="round", ylabel="accuracy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        _finish(ax)
        path = Path(out) / f"accuracy_{_slug(partition)}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)

    by_bytes = mean_curves(rows, varying, "cum_uplink_bytes_wire")
    if by_bytes:
        figure, axes = _figure(len(by_bytes))
        for ax, (partition, lines) in zip(axes, by_bytes.items(), strict=False):
            for label, (_, mean, std, uplink) in lines.items():
                megabytes = uplink / 1e6
                (line,) = ax.plot(megabytes, mean, marker="o", markersize=3, label=label)
                ax.fill_between(
                    megabytes, mean - std, mean + std, color=line.get_color(), alpha=0.2
                )
            ax.set(title=partition, xlabel="cumulative uplink MB (wire)", ylabel="accuracy")
            _log_scale_if_wide(ax, [curve[3] for curve in lines.values()])
            _finish(ax)
        for ax in axes[len(by_bytes) :]:
            ax.set_visible(False)
        figure.suptitle("Global accuracy vs client → server traffic")
        path = Path(out) / "accuracy_vs_uplink.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure  # the Agg canvas: no pyplot, no display

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    figure = Figure(figsize=(5.5 * cols, 4.0 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    return figure, axes


def _log_scale_if_wide(ax: Any, xs: Sequence[np.ndarray]) -> None:
    """Log x-axis when the values span more than a decade (e.g. compressed vs dense)."""
    values = np.concatenate(xs) if xs else np.array([])
    if values.size and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_xscale("log")


def _finish(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _line_label(row: Mapping[str, Any], extras: Sequence[str]) -> str:
    details = [f"{key}={row.get(key)}" for key in extras]
    return f"{row['strategy']} ({', '.join(details)})" if details else str(row["strategy"])


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in text.replace(":", "-"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
