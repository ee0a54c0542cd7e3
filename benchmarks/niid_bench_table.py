"""NIID-Bench Fashion-MNIST: our cells beside the published reproduction.

    fedge compare --config benchmarks/configs/niid_bench_fmnist.toml   # the runs (long)
    python benchmarks/niid_bench_table.py                             # this table

Reads every cell under the grid's ``runs/`` (finished or still running: a cell that has
not reached round 50 is shown with the round it reached) and writes
``benchmarks/results/niid_bench_fmnist.{md,csv}``.

Reference figures: the Flower baseline ``niid_bench`` (a reproduction of the paper's
protocol: same CNN, 10 parties, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01
momentum 0.9, seed 42), final test accuracy, from ``baselines/niid_bench/README.md`` in
adap/flower at commit 1599d01c2f76a4139abe231b7e294f828ba62048. The paper's own Table III
could not be read from this environment, so no column claims its figures.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedge.compare.grid import GRID_FILE, Cell
from fedge.core.partition_scheme import parse_partition_scheme
from server.metrics_log import METRICS_FILE, read_metrics

APP_DIR = Path(__file__).resolve().parents[1]
RESULTS = APP_DIR / "benchmarks" / "results"
GRID_OUT = RESULTS / "niid_bench_fmnist"
ROUNDS = 50

# (partition as fedge names it, strategy) -> Flower baseline's final accuracy (%)
FLOWER_BASELINE = {
    ("iid", "fedavg"): 89.0,
    ("dirichlet:0.5", "fedavg"): 88.4,
    ("classes:1", "fedavg"): 10.0,
    ("classes:2", "fedavg"): 81.0,
    ("classes:3", "fedavg"): 83.2,
    ("iid", "fedprox"): 89.5,
    ("dirichlet:0.5", "fedprox"): 88.6,
    ("classes:1", "fedprox"): 38.0,
    ("classes:2", "fedprox"): 78.8,
    ("classes:3", "fedprox"): 82.5,
}
PARTITION_LABELS = {
    "dirichlet:0.5": "Dirichlet(0.5)",
    "classes:1": "#C=1",
    "classes:2": "#C=2",
    "classes:3": "#C=3",
    "iid": "IID",
}


@dataclass(frozen=True)
class CellResult:
    """What one cell has reached so far."""

    partition: str
    strategy: str
    rounds_done: int
    final_accuracy: float | None
    best_accuracy: float | None
    median_round_seconds: float | None  # over the last 10 rounds


def read_cell(runs: Path, strategy: str, partition: str, seed: int = 0) -> CellResult:
    """The progress of one cell (zero rounds if it has not started)."""
    cell = Cell(strategy, parse_partition_scheme(partition), seed)
    rows = read_metrics(runs / cell.id / METRICS_FILE)
    accuracy = [r["central"]["accuracy"] for r in rows if "central" in r]
    seconds = sorted(r["seconds"] for r in rows[-10:] if "seconds" in r)
    return CellResult(
        partition=partition,
        strategy=strategy,
        rounds_done=max((r["round"] for r in rows), default=0),
        final_accuracy=accuracy[-1] if accuracy else None,
        best_accuracy=max(accuracy) if accuracy else None,
        median_round_seconds=seconds[len(seconds) // 2] if seconds else None,
    )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def main() -> None:
    """Print and write the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=GRID_OUT, help="the grid's --out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = (
        json.loads((args.out / GRID_FILE).read_text()) if (args.out / GRID_FILE).is_file() else {}
    )
    rounds = int(grid.get("rounds", ROUNDS))
    results = [
        read_cell(args.out / "runs", strategy, partition, args.seed)
        for partition in PARTITION_LABELS
        for strategy in ("fedavg", "fedprox")
    ]
    header = (
        "partition", "strategy", "rounds done", f"fedge acc. (round {rounds}, %)",
        "fedge best (%)", "Flower baseline (%)", "fedge − baseline", "s / round (last 10)",
    )  # fmt: skip
    rows = []
    for cell in results:
        reference = FLOWER_BASELINE[(cell.partition, cell.strategy)]
        finished = cell.rounds_done >= rounds
        ours = cell.final_accuracy if finished else None
        rows.append(
            (
                PARTITION_LABELS[cell.partition],
                cell.strategy,
                f"{cell.rounds_done}/{rounds}",
                _percent(ours)
                if finished
                else (f"({_percent(cell.final_accuracy)} at round {cell.rounds_done})"
                      if cell.rounds_done else "not run"),
                _percent(cell.best_accuracy),
                f"{reference:.1f}",
                f"{100 * ours - reference:+.1f}" if ours is not None else "—",
                "—" if cell.median_round_seconds is None else f"{cell.median_round_seconds:.0f}",
            )
        )  # fmt: skip

    table = Table(title="NIID-Bench Fashion-MNIST: fedge vs the Flower baseline")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)

    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "niid_bench_fmnist.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "partition",
                "strategy",
                "rounds_done",
                "final_accuracy",
                "best_accuracy",
                "flower_baseline_accuracy",
                "median_round_seconds",
            ]
        )
        for cell in results:
            writer.writerow([cell.partition, cell.strategy, cell.rounds_done,
                             cell.final_accuracy, cell.best_accuracy,
                             FLOWER_BASELINE[(cell.partition, cell.strategy)] / 100,
                             cell.median_round_seconds])  # fmt: skip
    lines = [
        "# NIID-Bench Fashion-MNIST: fedge beside the published reproduction",
        "",
        "`fedge compare --config benchmarks/configs/niid_bench_fmnist.toml` (full 60k/10k",
        "data, 10 parties all sampled, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01",
        "momentum 0.9, FedProx μ 0.01, seed 0), then `python benchmarks/niid_bench_table.py`.",
        "Accuracy = global model on the 10k test set after the last round. Flower baseline =",
        "`baselines/niid_bench` in adap/flower (commit 1599d01c), one seed (42), final round.",
        "A cell still running shows its last round in brackets: not comparable yet.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 2 + "---:|" * (len(header) - 2),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    (RESULTS / "niid_bench_fmnist.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'niid_bench_fmnist.md'} and {RESULTS / 'niid_bench_fmnist.csv'}")


if __name__ == "__main__":
    main()
