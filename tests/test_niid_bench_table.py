"""The NIID-Bench table: the committed Markdown follows from the committed CSV, the
reference is the Flower baseline's published table, and the band verdict is right."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.niid_bench_table import (
    FLOWER_REFERENCE,
    band_verdict,
    load_protocol,
    main,
    read_table_csv,
    render_markdown,
    write_table_csv,
)
from fedge.compare.report import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_CSV = RESULTS / "niid_bench_fmnist.csv"
TABLE_MD = RESULTS / "niid_bench_fmnist.md"

# adap/flower baselines/niid_bench/README.md (commit 5252f675), FMNIST, best over 50 rounds
PUBLISHED = {
    "fedavg": [(89.23, 0.45), (88.09, 0.29), (28.39, 17.09), (78.10, 2.51), (82.43, 1.52)],
    "fedprox": [(89.42, 0.09), (88.15, 0.42), (32.65, 6.68), (78.05, 0.99), (82.99, 0.48)],
    "scaffold": [(89.33, 0.27), (88.44, 0.25), (10.00, 0.00), (33.80, 41.22), (80.32, 5.03)],
    "fednova": [(89.36, 0.09), (88.22, 0.12), (16.86, 9.30), (71.67, 2.34), (81.97, 1.34)],
}
PARTITIONS = ["iid", "dirichlet:0.5", "classes:1", "classes:2", "classes:3"]


def test_the_table_script_reproduces_its_markdown_from_the_committed_csv(tmp_path: Path) -> None:
    # Prepare
    shutil.copy(TABLE_CSV, tmp_path / TABLE_CSV.name)

    # Execute
    code = main(["--from-csv", "--results", str(tmp_path)])

    # Assert
    assert code == 0
    assert (tmp_path / TABLE_MD.name).read_text() == TABLE_MD.read_text()
    assert render_markdown(read_table_csv(TABLE_CSV), load_protocol()) == TABLE_MD.read_text()


def test_committed_csv_round_trips_and_its_verdicts_follow_its_numbers(tmp_path: Path) -> None:
    # Prepare
    rows = read_table_csv(TABLE_CSV)

    # Execute
    write_table_csv(rows, tmp_path / "again.csv")

    # Assert
    assert (tmp_path / "again.csv").read_text() == TABLE_CSV.read_text()
    for row in rows:
        verdict = band_verdict(
            row.best_accuracy, row.reference_best_accuracy, row.reference_best_std
        )
        expected = "" if verdict is None else ("yes" if verdict.within else "no")
        assert row.within_reference_band == expected, (row.partition, row.strategy)


def test_reference_holds_the_twenty_published_cells() -> None:
    # Prepare
    expected = {
        (partition, strategy): figures
        for strategy, column in PUBLISHED.items()
        for partition, figures in zip(PARTITIONS, column, strict=True)
    }

    # Execute
    found = {key: (ref.mean, ref.std) for key, ref in FLOWER_REFERENCE.items()}

    # Assert
    assert len(found) == 20
    assert found == expected


def test_committed_csv_carries_the_published_reference() -> None:
    rows = read_table_csv(TABLE_CSV)

    assert len(rows) == 20
    assert {(r.partition, r.strategy) for r in rows} == set(FLOWER_REFERENCE)
    for row in rows:
        ref = FLOWER_REFERENCE[(row.partition, row.strategy)]
        assert round(100 * row.reference_best_accuracy, 2) == ref.mean
        assert round(100 * row.reference_best_std, 2) == ref.std


@pytest.mark.parametrize(
    ("best", "reference", "std", "within"),
    [
        (0.8867, 0.8809, 0.0029, True),  # +0.58 = 2 x 0.29: on the edge, inside
        (0.8868, 0.8809, 0.0029, False),  # +0.59: outside
        (0.1, 0.1, 0.0, True),  # 10.00 ± 0.00 admits exactly 10.00
        (0.1001, 0.1, 0.0, False),
    ],
)
def test_band_is_two_reference_stds_in_hundredths_of_a_point(
    best: float, reference: float, std: float, within: bool
) -> None:
    verdict = band_verdict(best, reference, std)

    assert verdict is not None and verdict.within is within


def _curve(best: float, rounds: int = 50) -> list[float]:
    """Rises to ``best`` at round 40, then settles 0.3 points lower."""
    return [round(best * r / 40, 4) if r < 40 else (best if r == 40 else best - 0.003)
            for r in range(1, rounds + 1)]  # fmt: skip


def _write_grid_csv(
    path: Path,
    cells: dict[tuple[str, str, int], list[float]],
    failed: dict[tuple[str, str, int], dict[int, int]] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for (strategy, partition, seed), accuracy in cells.items():
            for index, value in enumerate(accuracy):
                writer.writerow(
                    {
                        "strategy": strategy,
                        "partition": partition,
                        "seed": seed,
                        "cell": f"{strategy}_{partition.replace(':', '-')}_s{seed}",
                        "round": index + 1,
                        "accuracy": value,
                        "uplink_bytes_wire": 1_000_000,
                        "cum_uplink_bytes_wire": 1_000_000 * (index + 1),
                        "cum_uplink_bytes_raw": 900_000 * (index + 1),
                        "seconds": 30.0 + index % 3,
                        "failed_nodes": (failed or {})
                        .get((strategy, partition, seed), {})
                        .get(index + 1, 0),
                    }
                )


def test_a_cell_within_and_a_cell_outside_the_band_are_labelled(tmp_path: Path) -> None:
    # Prepare: FedAvg Dir(0.5) reference 88.09 ± 0.29, ours 88.39 and 88.79 (mean 88.59:
    # +0.50 within ±0.58); FedProx #C=2 reference 78.05 ± 0.99, ours 75.55 (−2.50 outside
    # ±1.98); a SCAFFOLD seed that stopped at round 30 has not finished
    grid = tmp_path / "grid"
    _write_grid_csv(
        grid / "results.csv",
        {
            ("fedavg", "dirichlet:0.5", 0): _curve(0.8839),
            ("fedavg", "dirichlet:0.5", 1): _curve(0.8879),
            ("fedprox", "classes:2", 0): _curve(0.7555),
            ("scaffold", "iid", 0): _curve(0.89)[:30],
        },
    )

    # Execute
    code = main(["--no-refresh", "--grid-out", str(grid), "--results", str(tmp_path)])

    # Assert
    assert code == 0
    rows = {(r.partition, r.strategy): r for r in read_table_csv(tmp_path / TABLE_CSV.name)}
    within, outside = rows[("dirichlet:0.5", "fedavg")], rows[("classes:2", "fedprox")]
    assert within.within_reference_band == "yes" and within.seeds == (0, 1)
    assert within.best_accuracy == pytest.approx(0.8859)
    assert within.final_accuracy == pytest.approx(0.8829)
    assert within.best_accuracy_std == pytest.approx(0.00282843, abs=1e-6)
    assert within.rounds_to_target == 37  # first round at >= 0.8 on both curves
    assert outside.within_reference_band == "no" and outside.rounds_to_target is None
    assert outside.uplink_bytes_wire == 50_000_000
    others = [r for r in rows.values() if r not in (within, outside)]
    assert len(others) == 18
    assert all(not r.seeds and r.best_accuracy is None for r in others)
    assert all(r.within_reference_band == "" for r in others)
    markdown = (tmp_path / TABLE_MD.name).read_text()
    assert "| Dirichlet(0.5) | FedAvg | 0,1 | 88.59 ± 0.28 | 88.29 ± 0.28 |" in markdown
    assert "yes (+0.50; ±0.58)" in markdown
    assert "| #C=2 | FedProx | 0 | 75.55 | 75.25 | 78.05 ± 0.99 | no (-2.50; ±1.98) |" in markdown
    assert "| IID | SCAFFOLD | not run |" in markdown
    assert markdown.count("not run |") == 18


def test_a_seed_whose_nodes_failed_is_named_and_not_counted(tmp_path: Path) -> None:
    # Prepare: FedAvg Dir(0.5), two finished seeds; seed 1 lost all 10 nodes in round 7
    grid = tmp_path / "grid"
    _write_grid_csv(
        grid / "results.csv",
        {
            ("fedavg", "dirichlet:0.5", 0): _curve(0.8839),
            ("fedavg", "dirichlet:0.5", 1): _curve(0.20),
        },
        failed={("fedavg", "dirichlet:0.5", 1): {7: 10}},
    )

    # Execute
    code = main(["--no-refresh", "--grid-out", str(grid), "--results", str(tmp_path)])

    # Assert: only seed 0 makes the figures; seed 1 is named with its failures
    assert code == 0
    row = next(r for r in read_table_csv(tmp_path / TABLE_CSV.name)
               if (r.partition, r.strategy) == ("dirichlet:0.5", "fedavg"))  # fmt: skip
    assert row.seeds == (0,) and row.best_accuracy == pytest.approx(0.8839)
    assert row.in_progress == "seed 1 not counted: 10 failed node-rounds"
    markdown = (tmp_path / TABLE_MD.name).read_text()
    assert "| Dirichlet(0.5) | FedAvg | 0 (seed 1 not counted: 10 failed node-rounds) |" in markdown


def test_a_started_seed_is_shown_as_running_and_never_as_a_result(tmp_path: Path) -> None:
    # Prepare: SCAFFOLD #C=1 seed 1 has logged 3 rounds under runs/, no done marker
    grid = tmp_path / "grid"
    run_dir = grid / "runs" / "scaffold_classes-1_s1"
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"round": r, "central": {"accuracy": 0.9}}) for r in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    # Execute
    code = main(["--no-refresh", "--grid-out", str(grid), "--results", str(tmp_path)])

    # Assert
    assert code == 0
    row = next(r for r in read_table_csv(tmp_path / TABLE_CSV.name) if r.strategy == "scaffold"
               and r.partition == "classes:1")  # fmt: skip
    assert row.seeds == () and row.best_accuracy is None
    assert row.in_progress == "seed 1 at round 3/50"
    markdown = (tmp_path / TABLE_MD.name).read_text()
    assert "| #C=1 | SCAFFOLD | not run (seed 1 at round 3/50) | — |" in markdown


def test_refreshing_reports_from_runs_that_lack_committed_cells_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a grid whose results.csv holds a finished cell that runs/ does not
    grid = tmp_path / "grid"
    _write_grid_csv(grid / "results.csv", {("fedavg", "iid", 0): _curve(0.89)})
    (grid / "runs").mkdir()
    before = (grid / "results.csv").read_text()

    # Execute
    code = main(["--grid-out", str(grid), "--results", str(tmp_path)])

    # Assert
    assert code == 1
    assert "fedavg_iid_s0" in capsys.readouterr().err
    assert (grid / "results.csv").read_text() == before
    assert not (tmp_path / TABLE_MD.name).exists()
