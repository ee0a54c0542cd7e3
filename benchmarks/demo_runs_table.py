"""Several ``fedge demo`` runs side by side, and their mean per setting.

One demo run is one sample: which frames a site sends decides what the next version
learns, so a change of selection moves every later round, and the last round's per-site
upload share (in twelfths, on the sample clip) jumps with it. This table lines up runs of
two or more settings over several seeds (each run's ``rounds.jsonl`` and ``report.md``, as
``benchmarks/demo_loop.py --out-dir`` writes them) and gives each setting's mean ± std.

Results go to ``benchmarks/results/NAME.{md,csv}``.

Usage::

    python benchmarks/demo_runs_table.py --run SETTING:SEED=DIR [--run ...] --name NAME
        [--title TEXT] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from tables import write_table  # noqa: E402  (benchmarks/tables.py)

__all__ = ["RunSummary", "main", "summarize"]

COLUMNS = (
    "setting",
    "seed",
    "mAP@0.5 per round",
    "hard-case rate per round",
    "frames sent per round",
    "last round per site",
    "bytes sent",
    "minutes",
)


class RunSummary(dict):  # type: ignore[type-arg]
    """One run's figures (a row of the table, plus numbers for the means)."""


def summarize(setting: str, seed: str, folder: Path) -> RunSummary:
    """Read one run's ``rounds.jsonl`` and ``report.md``; ``ValueError`` when missing."""
    rounds_path = folder / "rounds.jsonl"
    if not rounds_path.is_file():
        raise ValueError(f"{folder} holds no rounds.jsonl: not a finished demo's --out-dir")
    rounds = [json.loads(line) for line in rounds_path.read_text().splitlines() if line]
    report = folder / "report.md"
    minutes = None
    if report.is_file():
        found = re.search(r"; ([0-9.]+) min\.", report.read_text())
        minutes = float(found.group(1)) if found else None
    last = rounds[-1]
    sent = [round(r["upload_share"] * r["frames"]) for r in rounds]
    per_site = [
        round(share * (last["frames"] / len(last["upload_share_per_site"])))
        for share in last["upload_share_per_site"].values()
    ]
    every = sum(sum(r["bytes_all_frames"].values()) for r in rounds)
    up = sum(sum(r["bytes_up"].values()) for r in rounds)
    row = RunSummary(
        {
            "setting": setting,
            "seed": seed,
            "mAP@0.5 per round": " / ".join(f"{r['map50_mean']:.2f}" for r in rounds[1:]),
            "hard-case rate per round": " / ".join(
                f"{100 * r['hard_case_rate']:.0f}%" for r in rounds[1:]
            ),
            "frames sent per round": " / ".join(str(n) for n in sent),
            "last round per site": " · ".join(
                f"{n}/{last['frames'] // len(per_site)}" for n in per_site
            ),
            "bytes sent": f"{100 * up / every:.1f}%" if every else "—",
            "minutes": "—" if minutes is None else f"{minutes:.1f}",
        }
    )
    row.numbers = {  # type: ignore[attr-defined]
        "final_map": last["map50_mean"],
        "sent_after_cold_start": sum(sent[1:]),
        "last_round_sent": sent[-1],
        "last_round_worst_site": max(last["upload_share_per_site"].values()),
        "bytes_share": up / every if every else float("nan"),
    }
    return row


def _mean(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def main(argv: list[str] | None = None) -> int:
    """Write the side-by-side table of the ``--run`` folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", action="append", required=True, metavar="SETTING:SEED=DIR",
        help="a finished run's --out-dir, under a setting's name and its seed",
    )  # fmt: skip
    parser.add_argument("--name", required=True, help="the result files' name")
    parser.add_argument("--title", default="fedge demo runs side by side")
    parser.add_argument("--note", default="", help="what the runs are (the table's header)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    rows: list[RunSummary] = []
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        setting, colon, seed = label.rpartition(":")
        if not sep or not colon or not setting:
            parser.error(f"--run {spec!r}: write SETTING:SEED=DIR")
        try:
            rows.append(summarize(setting, seed, Path(folder)))
        except ValueError as err:
            parser.error(str(err))
    groups: dict[str, list[RunSummary]] = defaultdict(list)
    for row in rows:
        groups[row["setting"]].append(row)
    lines: list[dict[str, Any]] = list(rows)
    for setting, runs in groups.items():
        numbers = [r.numbers for r in runs]  # type: ignore[attr-defined]
        lines.append(
            {
                "setting": f"**{setting}: mean of {len(runs)}**",
                "seed": ",".join(r["seed"] for r in runs),
                "mAP@0.5 per round": f"last {_mean([n['final_map'] for n in numbers], '.3f')}",
                "hard-case rate per round": "",
                "frames sent per round": "rounds 1+: "
                + _mean([n["sent_after_cold_start"] for n in numbers], ".1f"),
                "last round per site": f"{_mean([n['last_round_sent'] for n in numbers], '.1f')}"
                " sent; worst site "
                + _mean([100 * n["last_round_worst_site"] for n in numbers], ".1f")
                + "%",
                "bytes sent": _mean([100 * n["bytes_share"] for n in numbers], ".1f") + "%",
                "minutes": "",
            }
        )
    header = (
        f"{cpu_model()}, Python {platform.python_version()}. {args.note} Per run: student "
        "mAP@0.5 after each Flower round (rounds 1..R), the hard-case rate of each round "
        "from 1, the frames sent in each round from 0 (cold start), each site's frames "
        "sent in the last round out of its stretch, all rounds' bytes sent against sending "
        "every frame, and the demo's minutes. Regenerate: `python "
        "benchmarks/demo_runs_table.py "
        + " ".join(f"--run {shlex.quote(_relative_spec(spec))}" for spec in args.run)
        + f" --name {args.name}` (the title and this note as --title and --note) over the "
        "runs' --out-dir folders."
    )
    _, md_path = write_table(lines, COLUMNS, args.out_dir, args.name, args.title, header)
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


def _relative_spec(spec: str) -> str:
    """``SETTING:SEED=DIR`` with DIR relative to the repository where it lies inside it."""
    label, _, folder = spec.partition("=")
    path = Path(folder).resolve()
    if path.is_relative_to(REPO):
        folder = str(path.relative_to(REPO))
    return f"{label}={folder}"


if __name__ == "__main__":
    raise SystemExit(main())
