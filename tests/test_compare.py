"""``fedge compare``: grid validation, reports from synthetic metrics, and a real 2×2×1 grid."""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import APP_DIR
from ports import processes_mentioning, start_as_background_job

from fedge.cli import main
from fedge.compare import GridSpec, load_grid_values, parse_set_pairs, write_reports
from fedge.compare.grid import failed_node_rounds
from fedge.compare.report import client_fairness, rounds_to_target
from fedge.core.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIGS = APP_DIR / "benchmarks" / "configs"


def _grid(tmp_path: Path, **values: object) -> GridSpec:
    base: dict[str, object] = {"strategies": "fedavg", "out": str(tmp_path / "grid")}
    return GridSpec.from_values({**base, **values})


# --- grid parsing and validation ---------------------------------------------------------


def test_grid_spans_strategies_partitions_and_seeds_with_file_safe_cell_ids(
    tmp_path: Path,
) -> None:
    # Execute
    spec = _grid(
        tmp_path,
        strategies="fedavg, fedprox",
        partitions=["iid", "dirichlet:0.5", "classes:2"],
        seeds="0,1",
        rounds=5,
        clients=3,
        **{"run-config": {"local-epochs": 2}},
    )
    # Assert
    cells = spec.cells()
    assert len(cells) == 2 * 3 * 2
    assert cells[0].id == "fedavg_iid_s0"
    assert "fedprox_dirichlet-0.5_s1" in {c.id for c in cells}
    config = spec.run_config(cells[-1])
    assert config["strategy"] == "fedprox"
    assert (config["partitioner"], config["partitioner-param"]) == ("classes", 2.0)
    assert config["seed"] == 1 and config["num-server-rounds"] == 5
    assert config["output-dir"] == str(tmp_path / "grid" / "runs")
    assert config["run-name"] == "fedprox_classes-2_s1"
    assert config["local-epochs"] == 2


def test_unknown_strategy_is_an_error_that_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown strategies \\['fedfoo'\\].*fedavg.*krum"):
        _grid(tmp_path, strategies="fedavg,fedfoo")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"partitions": "dirichlet"}, "dirichlet needs a parameter"),
        ({"partitions": "dirichlet:x"}, "must be a number"),
        ({"partitions": "shards:2"}, "unknown partitioner 'shards'"),
        ({"partitions": "classes:1.5"}, "whole number"),
        ({"seeds": "0,one"}, "seeds must be whole numbers"),
        ({"rounds": 0}, "rounds must be a whole number >= 1"),
        ({"clients": "many"}, "clients must be a whole number"),
        ({"target-accuracy": 70}, "target-accuracy must be a number in \\(0, 1\\]"),
        ({"run-config": {"learning-rat": 0.1}}, "unknown run-config keys \\['learning-rat'\\]"),
        ({"run-config": {"batch-size": 0}}, "batch-size must be >= 1"),
        ({"run-config": {"seed": 3}}, "set by the grid itself"),
        ({"run-config": {"min-available-nodes": 5}, "clients": 3}, "exceeds clients"),
        ({"run-config": {"task": "person-detector"}}, "not task 'person-detector'.*fedge simulate"),
        ({"strategy": "fedavg"}, "unknown grid fields \\['strategy'\\]"),
        ({"strategies": ""}, "no strategies"),
    ],
)
def test_bad_grid_values_are_config_errors(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _grid(tmp_path, **values)


def test_command_line_values_override_the_grid_file_and_merge_run_config(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "grid.toml"
    config.write_text(
        'strategies = ["fedavg", "fedprox"]\nseeds = [0, 1]\nrounds = 10\nout = "x"\n'
        "[run-config]\nlocal-epochs = 5\nbatch-size = 64\n"
    )
    flags = {"rounds": 2, "seeds": None, "run-config": parse_set_pairs(["batch-size=16"])}
    # Execute
    values = load_grid_values(config, flags)
    # Assert
    assert values["rounds"] == 2
    assert values["seeds"] == [0, 1]
    assert values["run-config"] == {"local-epochs": 5, "batch-size": 16}


def test_parse_set_pairs_reads_toml_values_and_bare_words() -> None:
    assert parse_set_pairs(["a=1", "b=0.5", "c=true", "d=sample", 'e=""']) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "sample",
        "e": "",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_pairs(["novalue"])


@pytest.mark.parametrize("name", ["small_slice.toml", "niid_bench_fmnist.toml"])
def test_committed_grid_files_are_valid(name: str) -> None:
    spec = GridSpec.from_values(load_grid_values(CONFIGS / name, {}))
    assert spec.cells()


def test_niid_bench_grid_follows_the_protocol() -> None:
    spec = GridSpec.from_values(load_grid_values(CONFIGS / "niid_bench_fmnist.toml", {}))
    assert spec.strategies == ("fedavg", "fedprox", "scaffold", "fednova")
    labels = [p.label for p in spec.partitions]
    assert labels == ["dirichlet:0.5", "classes:1", "classes:2", "classes:3", "iid"]
    assert (spec.rounds, spec.clients, spec.seeds) == (50, 10, (0,))
    config = spec.run_config(spec.cells()[0])
    assert config["local-epochs"] == 10 and config["batch-size"] == 64
    assert config["learning-rate"] == 0.01 and config["momentum"] == 0.9
    assert config["proximal-mu"] == 0.01 and config["data-dir"] == ""


def test_a_bad_grid_fails_before_any_process_starts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Execute
    started = time.perf_counter()
    code = main(["compare", "--strategies", "fedavg,nope", "--out", str(tmp_path / "g")])
    # Assert
    assert code == 2
    assert "unknown strategies ['nope']" in capsys.readouterr().err
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "g").exists()


# --- reports from synthetic metrics ----------------------------------------------------


def test_client_fairness_takes_percentiles_and_the_worst_tenth() -> None:
    # Prepare: 20 clients with accuracies 0.00, 0.05, ..., 0.95
    accuracies = [i / 20 for i in range(20)]
    # Execute
    fairness = client_fairness(accuracies)
    # Assert
    assert fairness is not None
    assert fairness.mean == pytest.approx(0.475)
    assert fairness.p10 == pytest.approx(np.percentile(accuracies, 10))
    assert fairness.p90 == pytest.approx(np.percentile(accuracies, 90))
    assert fairness.worst10 == pytest.approx((0.0 + 0.05) / 2)  # the 2 lowest of 20
    assert client_fairness([0.3, 0.9, 0.6]).worst10 == pytest.approx(0.3)  # at least one
    assert client_fairness([]) is None


def test_rounds_to_target_is_the_first_round_at_or_above_it() -> None:
    rows = [
        {"round": 1, "accuracy": 0.5},
        {"round": 2, "accuracy": 0.7},
        {"round": 3, "accuracy": 0.6},
    ]
    assert rounds_to_target(rows, 0.7) == 2
    assert rounds_to_target(rows, 0.55) == 2
    assert rounds_to_target(rows, 0.71) is None


def _markdown_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def _write_cell(
    out: Path,
    strategy: str,
    partition: str,
    seed: int,
    accuracies: list[float],
    config: dict[str, object] | None = None,
) -> None:
    cell = f"{strategy}_{partition.replace(':', '-')}_s{seed}"
    run_dir = out / "runs" / cell
    run_dir.mkdir(parents=True)
    lines = []
    for round_, accuracy in enumerate(accuracies, start=1):
        clients = [
            {
                "node_id": pid,
                "partition_id": pid,
                "train": {"train_loss": 1.0},
                "eval": {"eval_accuracy": accuracy - 0.1 + 0.05 * pid},
            }
            for pid in range(5)
        ]
        lines.append(
            {
                "round": round_,
                "seconds": 2.0,
                "central": {"accuracy": accuracy, "loss": 1.0 - accuracy},
                "clients": clients,
                "rejected_nodes": [],
                "failed_nodes": [],
                "bytes_sent": 1000,
                "bytes_received": 600,
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    np.savez(run_dir / "final_weights.npz", np.zeros((10, 10)), np.zeros(5))  # 105 params
    full = {"strategy": strategy, "attack": "none", **(config or {})}
    (run_dir / "config.json").write_text(json.dumps({"config": full, "config_hash": "x"}))
    marker = {"cell": cell, "strategy": strategy, "partition": partition, "seed": seed}
    (run_dir / "done").write_text(json.dumps({**marker, "rounds": len(accuracies)}))


def test_reports_from_finished_cells_hold_rows_fairness_bytes_and_summary(
    tmp_path: Path,
) -> None:
    # Prepare: 2 strategies × 1 partition × 2 seeds, 3 rounds; one unfinished cell
    out = tmp_path / "grid"
    _write_cell(out, "fedavg", "iid", 0, [0.5, 0.7, 0.8])
    _write_cell(out, "fedavg", "iid", 1, [0.4, 0.6, 0.9])
    _write_cell(out, "fedprox", "iid", 0, [0.3, 0.4, 0.5], {"dp-noise-multiplier": 1.0})
    _write_cell(out, "fedprox", "iid", 1, [0.2, 0.3, 0.6], {"dp-noise-multiplier": 1.0})
    _write_cell(out, "fedmedian", "iid", 0, [0.9, 0.9, 0.9])
    (out / "runs" / "fedmedian_iid_s0" / "done").unlink()
    # Execute
    files = write_reports(out, target=0.7, expected_cells=["fedmedian_iid_s0"])
    # Assert: CSV
    with files.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 3
    assert "dp-noise-multiplier" in rows[0] and "attack" not in rows[0]
    first = next(r for r in rows if r["cell"] == "fedavg_iid_s0" and r["round"] == "1")
    assert float(first["accuracy"]) == pytest.approx(0.5)
    assert float(first["client_accuracy_mean"]) == pytest.approx(0.5)  # 0.4..0.6 → 0.5
    assert float(first["client_accuracy_p10"]) == pytest.approx(0.42)
    assert float(first["client_accuracy_p90"]) == pytest.approx(0.58)
    assert float(first["client_accuracy_worst10"]) == pytest.approx(0.4)
    assert int(first["uplink_bytes_raw"]) == 105 * 4 * 5  # 5 clients returned weights
    assert int(first["downlink_bytes_raw"]) == 105 * 4 * 10  # sent to 5 train + 5 eval
    assert int(first["uplink_bytes_wire"]) == 600 and int(first["downlink_bytes_wire"]) == 1000
    last = next(r for r in rows if r["cell"] == "fedavg_iid_s0" and r["round"] == "3")
    assert int(last["cum_uplink_bytes_wire"]) == 1800
    assert int(last["cum_downlink_bytes_raw"]) == 3 * 105 * 4 * 10
    assert all(math.isfinite(float(r["accuracy"])) for r in rows)
    # Assert: summary
    summary = files.summary.read_text()
    assert "| fedavg | iid | — | 0,1 | 0.8500 ± 0.0707 |" in summary
    assert "| fedprox | iid | 1.0 | 0,1 | 0.5500 ± 0.0707 |" in summary
    table = _markdown_table(summary)
    assert table[0]["rounds to 0.7"] == "2.5"  # seed 0 → round 2, seed 1 → round 3
    assert table[1]["rounds to 0.7"] == "—"  # fedprox never reaches 0.7
    assert table[0]["worst-10% clients"] == "0.7500 ± 0.0707"  # the worst of 5 clients
    assert float(table[0]["uplink MB"]) == pytest.approx(1800 / 1e6, abs=0.01)
    assert "Not finished (no results yet): fedmedian_iid_s0" in summary
    # Assert: plots
    names = sorted(p.name for p in files.plots)
    assert names == ["accuracy_iid.png", "accuracy_vs_uplink.png"]
    for path in files.plots:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_raw_bytes_fields_in_the_metrics_win_over_the_float32_estimate(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "grid"
    _write_cell(out, "fedavg", "iid", 0, [0.5])
    path = out / "runs" / "fedavg_iid_s0" / "metrics.jsonl"
    line = json.loads(path.read_text())
    path.write_text(json.dumps({**line, "raw_bytes_received": 7, "raw_bytes_sent": 9}) + "\n")
    # Execute
    files = write_reports(out)
    # Assert
    with files.csv.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["uplink_bytes_raw"], row["downlink_bytes_raw"]) == ("7", "9")


def test_failed_nodes_are_counted_per_round_and_their_cells_named_in_the_summary(
    tmp_path: Path,
) -> None:
    # Prepare: two seeds of one group; seed 1 lost two nodes in round 2 and one in round 3
    out = tmp_path / "grid"
    _write_cell(out, "fedavg", "iid", 0, [0.5, 0.6, 0.7])
    _write_cell(out, "fedavg", "iid", 1, [0.5, 0.6, 0.7])
    path = out / "runs" / "fedavg_iid_s1" / "metrics.jsonl"
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    lines[1]["failed_nodes"] = [3, 4]
    lines[2]["failed_nodes"] = [4]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    # Execute
    files = write_reports(out)

    # Assert: the CSV counts them per round, the summary sums them and names the cell
    with files.csv.open() as handle:
        rows = {(r["cell"], r["round"]): r["failed_nodes"] for r in csv.DictReader(handle)}
    assert rows[("fedavg_iid_s1", "2")] == "2" and rows[("fedavg_iid_s1", "3")] == "1"
    assert rows[("fedavg_iid_s0", "2")] == "0"
    summary = files.summary.read_text()
    assert _markdown_table(summary)[0]["failed node-rounds"] == "3"
    assert "**Cells with failed nodes** (node-rounds without a reply): fedavg_iid_s1 (3)" in summary
    assert failed_node_rounds(lines) == 3


def test_a_clean_grid_names_no_failed_cell(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "grid"
    _write_cell(out, "fedavg", "iid", 0, [0.5, 0.6])

    # Execute
    summary = write_reports(out).summary.read_text()

    # Assert
    assert _markdown_table(summary)[0]["failed node-rounds"] == "0"
    assert "Cells with failed nodes" not in summary


def test_report_only_regenerates_reports_without_running(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "grid"
    _write_cell(out, "fedavg", "iid", 0, [0.5, 0.75])
    # Execute
    code = main(["compare", "--report-only", "--out", str(out), "--target-accuracy", "0.7"])
    # Assert
    assert code == 0
    assert "rounds to 0.7" in (out / "summary.md").read_text()
    assert (out / "results.csv").stat().st_size > 0


# --- the real thing ----------------------------------------------------------------------


@pytest.mark.slow
def test_compare_runs_a_2x2_grid_writes_reports_and_skips_finished_cells_on_rerun(
    tmp_path: Path,
) -> None:
    # Prepare
    out = tmp_path / "grid"
    argv = [
        "compare",
        "--app-dir", str(APP_DIR),
        "--strategies", "fedavg,fedmedian",
        "--partitions", "iid,dirichlet:0.5",
        "--seeds", "0",
        "--rounds", "2",
        "--clients", "3",
        "--client-cpus", "2",
        "--set", "max-train-samples=100",
        "--target-accuracy", "0.2",
        "--out", str(out),
    ]  # fmt: skip
    cells = ["fedavg_iid_s0", "fedavg_dirichlet-0.5_s0", "fedmedian_iid_s0"]
    cells.append("fedmedian_dirichlet-0.5_s0")
    # Execute
    assert main(argv) == 0
    # Assert: one CSV row per cell and round, all figures finite
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2
    assert {r["cell"] for r in rows} == set(cells)
    numeric = ["accuracy", "loss", "client_accuracy_mean", "client_accuracy_worst10"]
    numeric += ["uplink_bytes_raw", "uplink_bytes_wire", "cum_downlink_bytes_wire", "seconds"]
    for row in rows:
        for key in numeric:
            assert math.isfinite(float(row[key])), (key, row)
        assert float(row["uplink_bytes_wire"]) > 0
    summary = (out / "summary.md").read_text()
    assert "| fedavg | iid |" in summary and "| fedmedian | dirichlet:0.5 |" in summary
    plots = ["accuracy_iid.png", "accuracy_dirichlet-0.5.png", "accuracy_vs_uplink.png"]
    for name in plots:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    for cell in cells:
        assert (out / "logs" / f"{cell}.log").stat().st_size > 0
    markers = {cell: (out / "runs" / cell / "done").stat().st_mtime_ns for cell in cells}

    # Execute: the same command again
    started = time.perf_counter()
    assert main(argv) == 0
    # Assert: nothing ran again
    assert time.perf_counter() - started < 20
    assert {cell: (out / "runs" / cell / "done").stat().st_mtime_ns for cell in cells} == markers
    with (out / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4 * 2


@pytest.mark.slow
def test_ctrl_c_stops_the_grid_and_every_process_it_started(tmp_path: Path) -> None:
    """Started with SIGINT ignored (a background job of a non-interactive shell), ``fedge
    compare`` still stops on SIGINT: exit 130, no process left, the cell not marked done."""
    out = tmp_path / "grid"
    argv = [
        sys.executable, "-m", "fedge", "compare",
        "--app-dir", str(APP_DIR),
        "--strategies", "fedavg",
        "--partitions", "iid",
        "--seeds", "0",
        "--rounds", "50",
        "--clients", "3",
        "--client-cpus", "2",
        "--set", "max-train-samples=100",
        "--out", str(out),
    ]  # fmt: skip
    grid = start_as_background_job(argv, APP_DIR)
    try:
        deadline = time.monotonic() + 600  # only keeps a hung grid from hanging the suite
        while not any("flwr-simulation" in p for p in processes_mentioning(out)):
            assert grid.poll() is None, grid.stderr.read() if grid.stderr else ""
            assert time.monotonic() < deadline, "the grid never started its simulation"
            time.sleep(0.5)
        grid.send_signal(signal.SIGINT)
        _, stderr = grid.communicate(timeout=300)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 130, stderr
    assert "fedge compare: interrupted" in stderr
    assert not (out / "runs" / "fedavg_iid_s0" / "done").exists()
    assert processes_mentioning(out) == []
