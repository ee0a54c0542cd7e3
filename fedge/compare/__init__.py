"""Strategy comparison: a grid of strategies × partition settings × seeds, one Flower
run per cell, reported as CSV, Markdown and PNG figures (``fedge compare``)."""

from __future__ import annotations

from fedge.compare.grid import (
    Cell,
    GridOutcome,
    GridSpec,
    cell_is_finished,
    load_grid_record,
    load_grid_values,
    parse_set_pairs,
    run_grid,
)
from fedge.compare.report import ReportFiles, write_reports

__all__ = [
    "Cell",
    "GridOutcome",
    "GridSpec",
    "ReportFiles",
    "cell_is_finished",
    "load_grid_record",
    "load_grid_values",
    "parse_set_pairs",
    "run_grid",
    "write_reports",
]
