"""``fedge compare``: compare strategies over partition settings and seeds.

Runs one Flower simulation of the app per cell of strategies × partitions × seeds, all
on one local federation of --clients nodes, and writes into --out:

    results.csv                 one row per cell and round (accuracy, fairness, bytes)
    summary.md                  final accuracy mean ± std over seeds, rounds to target
    accuracy_<partition>.png    accuracy vs round per partition setting
    accuracy_vs_uplink.png      accuracy vs cumulative uplink bytes
    runs/<cell>/, logs/<cell>.log

Rerun the same command to skip finished cells and continue unfinished ones from their
last checkpoint. The grid may also come from a TOML file (--config) with the fields
strategies, partitions, seeds, rounds, clients, out, target-accuracy and a [run-config]
table; flags override the file, --set adds to [run-config].

example:
  fedge compare --strategies fedavg,fedprox --partitions iid,dirichlet:0.5,classes:2 \\
                --seeds 0,1,2 --rounds 50 --clients 10 --out outputs/compare \\
                --set local-epochs=2 --target-accuracy 0.7
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedge.core.signals import stop_signals_interrupt

__all__ = ["register"]

EXIT_CELLS_FAILED = 1


def run(args: argparse.Namespace) -> int:
    """Handler of ``fedge compare``."""
    from fedge.compare import (
        GridSpec,
        load_grid_record,
        load_grid_values,
        parse_set_pairs,
        run_grid,
        write_reports,
    )
    from fedge.core.errors import ConfigError

    flags = {
        "strategies": args.strategies,
        "partitions": args.partitions,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "clients": args.clients,
        "out": args.out,
        "target-accuracy": args.target_accuracy,
        "run-config": parse_set_pairs(args.set) if args.set else None,
    }
    values = load_grid_values(Path(args.config) if args.config else None, flags)

    if args.report_only:
        if not values.get("out"):
            raise ConfigError("--report-only needs --out DIR (or `out` in --config)")
        out = Path(str(values["out"])).expanduser().resolve()
        if not out.is_dir():
            raise ConfigError(f"{out} does not exist; run the grid first")
        record = load_grid_record(out)
        target = values.get("target-accuracy", record.get("target-accuracy"))
        files = write_reports(
            out,
            max_rounds=values.get("rounds", record.get("rounds")),
            target=float(target) if target is not None else None,
            expected_cells=record.get("cells", []),
            order=record,
        )
        _print_files(files)
        return 0

    spec = GridSpec.from_values(values)  # every check happens before any process starts
    cells = spec.cells()
    print(
        f"fedge compare: {len(spec.strategies)} strategies × {len(spec.partitions)} partitions "
        f"× {len(spec.seeds)} seeds = {len(cells)} cells, {spec.rounds} rounds, "
        f"{spec.clients} clients → {spec.out}"
    )
    with stop_signals_interrupt():
        outcome = run_grid(
            spec,
            Path(args.app_dir),
            client_cpus=args.client_cpus,
            cell_timeout=args.cell_timeout,
            fail_fast=args.fail_fast,
        )
    record = spec.record()
    files = write_reports(
        spec.out,
        max_rounds=spec.rounds,
        target=spec.target_accuracy,
        expected_cells=record["cells"],
        order=record,
    )
    print(
        f"fedge compare: {len(outcome.ran)} cells run, {len(outcome.skipped)} skipped "
        f"(finished before), {len(outcome.failed)} failed"
    )
    _print_files(files)
    if outcome.failed:
        for cell, error in outcome.failed.items():
            print(f"  failed: {cell}: {error} (log: {spec.logs_dir / (cell + '.log')})")
        return EXIT_CELLS_FAILED
    return 0


def _print_files(files: Any) -> None:
    print(f"fedge compare: {files.cells} finished cells reported")
    for path in (files.csv, files.summary, *files.plots):
        print(f"  {path}")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fedge compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="compare strategies × partition settings × seeds (CSV, Markdown, plots)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="TOML", help="grid file, e.g. benchmarks/configs/small_slice.toml"
    )
    grid = parser.add_argument_group("grid (each overrides the --config file)")
    grid.add_argument("--strategies", metavar="LIST", help="e.g. fedavg,fedprox,fedyogi")
    grid.add_argument("--partitions", metavar="LIST", help="e.g. iid,dirichlet:0.5,classes:2")
    grid.add_argument("--seeds", metavar="LIST", help="e.g. 0,1,2 (default 0)")
    grid.add_argument("--rounds", type=int, help="rounds per run (default 3)")
    grid.add_argument("--clients", type=int, help="simulated clients (default 4)")
    grid.add_argument("--out", metavar="DIR", help="results directory")
    grid.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="run-config override for every cell, e.g. --set local-epochs=2",
    )
    grid.add_argument(
        "--target-accuracy", type=float, help="report rounds to reach this global accuracy"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate the reports in --out"
    )
    parser.add_argument("--app-dir", default=".", help="the Flower App (default: .)")
    parser.add_argument("--client-cpus", type=int, default=1, help="CPUs per client actor")
    parser.add_argument(
        "--cell-timeout", type=float, default=6 * 3600.0, help="seconds per cell (default 6 h)"
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    parser.set_defaults(handler=run)
