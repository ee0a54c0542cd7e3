"""FedAvg on Fashion-MNIST, 10 clients, Dirichlet(0.5): accuracy and seconds per round.

Also measures local-training throughput inside the simulation (the clients' own
``samples-per-second`` metric) beside the same ``LocalTrainer`` run outside Flower in
this process, on the same partition size, so the two figures are comparable.

    python benchmarks/fedavg_fmnist.py                 # committed 4k/1k slice, 5 rounds
    python benchmarks/fedavg_fmnist.py --full --rounds 20   # full 60k/10k data

Writes ``benchmarks/results/fedavg_fmnist[_full].{md,csv}`` and the run's metrics.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data.fashion_mnist import load_fashion_mnist
from fedge.local_federation import LocalFederation
from server.metrics_log import read_metrics

APP_DIR = Path(__file__).resolve().parents[1]
RESULTS = APP_DIR / "benchmarks" / "results"


def outside_flower_samples_per_second(data_dir: str, num_samples: int, batch_size: int) -> float:
    """Samples/s of LocalTrainer on ``num_samples`` training images, warm, in this process."""
    from models.cnn import build_cnn
    from models.training import LocalTrainer, to_model_input

    data = load_fashion_mnist(data_dir)
    x, y = to_model_input(data.x_train[:num_samples]), data.y_train[:num_samples]
    trainer = LocalTrainer(lambda: build_cnn(0), momentum=0.0)
    trainer.fit(x, y, epochs=1, batch_size=batch_size, learning_rate=0.05, seed=0)  # warm-up
    runs = [
        trainer.fit(x, y, epochs=1, batch_size=batch_size, learning_rate=0.05, seed=i)
        for i in range(3)
    ]
    return statistics.median(r.samples_per_second for r in runs)


def main() -> None:
    """Run the benchmark and print/write its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="full 60k/10k Fashion-MNIST")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    data_dir = "" if args.full else "sample"
    suffix = "_full" if args.full else ""
    out_dir = RESULTS / "runs" / f"fedavg_fmnist{suffix}"
    run_config = {
        "strategy": "fedavg",
        "partitioner": "dirichlet",
        "partitioner-param": args.alpha,
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "learning-rate": 0.05,
        "seed": args.seed,
        "data-dir": data_dir,
        "output-dir": str(out_dir),
        "run-name": "run",
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home, LocalFederation(Path(home), args.clients) as fed:
        with console.status(f"FedAvg, {args.clients} clients, {args.rounds} rounds…"):
            fed.run(APP_DIR, run_config, log_path=out_dir / "flwr.log")
    wall = time.perf_counter() - started
    rows = read_metrics(out_dir / "run" / "metrics.jsonl")

    table = Table(title=f"FedAvg Fashion-MNIST{' (full)' if args.full else ' (slice)'}")
    for col in ("round", "accuracy", "loss", "seconds", "client samples/s"):
        table.add_column(col, justify="right")
    records = []
    for row in rows:
        client_speed = [c["train"]["samples-per-second"] for c in row["clients"] if "train" in c]
        record = {
            "round": row["round"],
            "accuracy": row["central"]["accuracy"],
            "loss": row["central"]["loss"],
            "seconds": row["seconds"],
            "client_samples_per_s": statistics.median(client_speed),
        }
        records.append(record)
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in record.values()))
    console.print(table)

    warm = [r["client_samples_per_s"] for r in records[1:]] or [records[0]["client_samples_per_s"]]
    inside = statistics.median(warm)
    mean_partition = len(load_fashion_mnist(data_dir).y_train) * 0.8 / args.clients
    outside = outside_flower_samples_per_second(data_dir, int(mean_partition), args.batch_size)
    steady = statistics.median(r["seconds"] for r in records[1:]) if len(records) > 1 else wall
    summary = [
        f"- final accuracy after {len(records)} rounds: {records[-1]['accuracy']:.4f}",
        f"- seconds per round (median, after round 1): {steady:.2f}; whole run {wall:.1f} s",
        f"- local training inside the simulation: {inside:,.0f} samples/s per client (median)",
        f"- same trainer outside Flower, this process: {outside:,.0f} samples/s "
        f"(inside/outside = {inside / outside:.2f})",
    ]
    console.print("\n".join(summary))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"fedavg_fmnist{suffix}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    lines = [
        f"# FedAvg, Fashion-MNIST{' full' if args.full else ' slice'}, {args.clients} clients, "
        f"Dirichlet({args.alpha}), seed {args.seed}",
        "",
        "| round | accuracy | loss | seconds | client samples/s |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['round']} | {r['accuracy']:.4f} | {r['loss']:.4f} | {r['seconds']:.2f} "
            f"| {r['client_samples_per_s']:,.0f} |"
            for r in records
        ),
        "",
        *summary,
        "",
    ]
    (RESULTS / f"fedavg_fmnist{suffix}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
