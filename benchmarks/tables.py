"""A benchmark's results as a CSV file and a Markdown table beside it."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["write_table"]


def write_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    out_dir: Path,
    stem: str,
    title: str,
    header: str,
) -> tuple[Path, Path]:
    """Write ``out_dir/stem.csv`` and ``out_dir/stem.md`` (``# title``, ``header``, then a
    table whose first column is left-aligned and the rest right-aligned); return both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{stem}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# {title}",
        "",
        header,
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
    ]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path
