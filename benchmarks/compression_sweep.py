"""Compressed updates: final accuracy vs total uplink bytes for 32/8-bit and top-k.

    python benchmarks/compression_sweep.py                  # slice, 10 rounds, 10 clients
    python benchmarks/compression_sweep.py --full --rounds 20

Every variant is a real ``flwr run`` of the app on one local simulation federation;
bytes are those measured from the messages by the ServerApp. Writes
``benchmarks/results/compression_sweep[_full].{md,csv}``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from fedge.local_federation import LocalFederation
from server.metrics_log import read_metrics

APP_DIR = Path(__file__).resolve().parents[1]
RESULTS = APP_DIR / "benchmarks" / "results"
VARIANTS = {
    "float32 weights": {},
    "8-bit delta": {"compression-bits": 8},
    "top-k 10%": {"compression-topk": 0.1},
    "top-k 1%": {"compression-topk": 0.01},
    "8-bit + top-k 10%": {"compression-bits": 8, "compression-topk": 0.1},
}


def main() -> None:
    """Run every variant and print/write accuracy against bytes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    suffix = "_full" if args.full else ""
    runs_dir = RESULTS / "runs" / f"compression_sweep{suffix}"
    base = {
        "partitioner": "dirichlet",
        "partitioner-param": 0.5,
        "num-server-rounds": args.rounds,
        "seed": args.seed,
        "data-dir": "" if args.full else "sample",
        "output-dir": str(runs_dir),
        "fraction-evaluate": 0.0,
    }
    rows = []
    with tempfile.TemporaryDirectory() as home, LocalFederation(Path(home), args.clients) as fed:
        for name, overrides in track(VARIANTS.items(), description="variants"):
            run_name = name.replace(" ", "_").replace("%", "pct").replace("+", "and")
            fed.run(APP_DIR, {**base, **overrides, "run-name": run_name},
                    log_path=runs_dir / f"{run_name}.log")  # fmt: skip
            metrics = read_metrics(runs_dir / run_name / "metrics.jsonl")
            uplink = sum(m["bytes_received"] for m in metrics)
            raw = sum(m["raw_bytes_received"] for m in metrics)
            rows.append({
                "variant": name,
                "final_accuracy": metrics[-1]["central"]["accuracy"],
                "uplink_mb": uplink / 1e6,
                "uplink_vs_float32": 0.0,
                "raw_mb": raw / 1e6,
            })  # fmt: skip
    for row in rows:
        row["uplink_vs_float32"] = row["uplink_mb"] / rows[0]["uplink_mb"]
    table = Table(title=f"Compression sweep, {args.clients} clients, {args.rounds} rounds")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else v for v in row.values()))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"compression_sweep{suffix}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Compression sweep ({'full' if args.full else 'slice'}, {args.clients} clients, "
        f"Dirichlet(0.5), {args.rounds} rounds, seed {args.seed})",
        "",
        "| variant | final accuracy | uplink MB | uplink / float32 |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['variant']} | {r['final_accuracy']:.4f} | {r['uplink_mb']:.2f} "
            f"| {r['uplink_vs_float32']:.3f} |"
            for r in rows
        ),
        "",
    ]
    (RESULTS / f"compression_sweep{suffix}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
