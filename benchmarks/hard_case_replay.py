"""Hard-case replay: which frames each ``--track-doubt``, ``--ask-labels``, ``--place-iou`` and
``--place-change`` would have sent, on a finished demo, with every object on a sent frame
taken as asked about or only those its crops show.

The edge's hard-case selector decides from what the node's models found on each frame.
A finished ``fedge demo`` run keeps that in every site's frame store (its ``--out``
folder, kept by ``benchmarks/demo_loop.py --work``): each frame's person, face and
motion boxes, its poses and its time, and the source frames beside them. This
benchmark runs ``clients.hard_cases.HardCaseSelector`` again over those records, site by
site and stretch by stretch, as the demo's site agents ran it (cold start on stretch 0,
then each version's calibrated band from its manifest), once per ``track_min_doubt``
value, ``ask_labels`` choice, ``place_iou``, ``place_max_change`` and ``--shown`` (``all``:
every object on a sent frame counts as asked about, as runs before the selector's
``shows`` did; ``crops``: only the objects a ``crops`` case shows,
``clients.privacy_filter.shown_regions``), and counts per round the
frames that qualify and the
frames that would have gone to the cloud (after the look-alike check and the rate limit).

What it does not show: the models are those of the run, so a value that sends other
frames than the run did would also have trained other models. It measures selection
alone. As a check, the replay with the run's own value must reproduce the run's
decisions frame for frame (column *same as the run*).

Results go to ``benchmarks/results/NAME.{md,csv}`` (``--name``, default
``hard_case_replay``) and a rich table.

Usage::

    python benchmarks/hard_case_replay.py WORK [--doubt 1 2 3 4] [--ask person]
        [--place 0 0.5] [--change 0 8] [--run-doubt 3] [--run-ask person] [--run-place 0.5]
        [--run-change 8] [--shown all crops] [--run-shown crops] [--run TEXT] [--name NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo_work import (  # noqa: E402  (benchmarks/demo_work.py)
    read_plan,
    stored_detections,
    stored_persons,
    version_bands,
)
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from tables import write_table  # noqa: E402  (benchmarks/tables.py)

from clients.hard_cases import HardCasePolicy, HardCaseSelector, ScoreBand, Shows  # noqa: E402
from clients.privacy_filter import shown_regions  # noqa: E402
from fedge.core.records import Detection, Person  # noqa: E402

__all__ = ["SHOWN", "FrameRecord", "StretchCount", "main", "replay_site"]

SHOWN = ("all", "crops")
"""``--shown``: what of a sent frame counts as asked about (module docstring)."""

COLUMNS = (
    "doubt frames",
    "ask labels",
    "place IoU",
    "place change",
    "shown",
    "round",
    "frames",
    "qualify",
    "would upload",
    "per site",
    "same as run",
)


@dataclass(frozen=True)
class FrameRecord:
    """What a site's store kept of one frame: the selector's inputs and its verdict."""

    time: float
    detections: tuple[Detection, ...]  # person and face boxes: what the selector saw
    motion: tuple[Detection, ...]  # the motion proposer's boxes
    persons: tuple[Person, ...]
    reasons: tuple[str, ...]  # the run's FrameResult.hard_reasons
    image: np.ndarray | None = None  # for the look-alike hash; None: a blank frame


@dataclass
class StretchCount:
    """One site's replayed counts over one stretch."""

    frames: int = 0
    qualify: int = 0
    upload: int = 0
    same: int = 0


def replay_site(
    policy: HardCasePolicy,
    stretches: Sequence[Sequence[FrameRecord]],
    bands: Sequence[ScoreBand | None],
    face_labels: tuple[str, ...] = ("face",),
    shows: Shows | None = None,
) -> list[StretchCount]:
    """Replay one site: stretch 0 in cold start, stretch ``r`` >= 1 under ``bands[r - 1]``
    (version ``r``'s person band; ``None``: the policy's), as ``swap_into`` sets them;
    ``shows`` as the selector's (``None``: every object on a sent frame is shown)."""
    selector = HardCaseSelector(policy, detector_labels=face_labels, cold_start=True, shows=shows)
    counts = []
    for index, stretch in enumerate(stretches):
        if index >= 1:
            selector.set_band("person", bands[index - 1])
            if selector.cold_start:
                selector.detector_labels = (*face_labels, "person")
                selector.cold_start = False
        count = StretchCount()
        for record in stretch:
            image = record.image if record.image is not None else np.zeros((8, 9), np.uint8)
            decision = selector.decide(
                image, record.persons, record.detections, now=record.time, proposals=record.motion
            )
            count.frames += 1
            count.qualify += bool(decision.reasons)
            count.upload += decision.hard
            count.same += tuple(decision.record_reasons()) == record.reasons
        counts.append(count)
    return counts


def _records(work: Path, site: dict[str, Any]) -> list[list[FrameRecord]]:
    import cv2

    index = work / "sites" / f"site-{site['site']}" / "store" / "index.sqlite"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        rows = {
            int(frame): (float(t), json.loads(d), json.loads(p), json.loads(r))
            for frame, t, d, p, r in db.execute(
                "SELECT frame_index, time, detections, persons, hard_reasons FROM frames"
            )
        }
    stretches = []
    for stretch in site["stretches"]:
        records = []
        for frame in stretch:
            if frame not in rows:
                continue  # corrupt in the source: never processed
            t, boxes, poses, reasons = rows[frame]
            found = stored_detections(boxes)
            records.append(
                FrameRecord(
                    time=t,
                    detections=tuple(d for d in found if d.label != "motion"),
                    motion=tuple(d for d in found if d.label == "motion"),
                    persons=tuple(stored_persons(poses)),
                    reasons=tuple(reasons),
                    image=cv2.imread(str(work / "frames" / f"{frame:06d}.jpg")),
                )
            )
        stretches.append(records)
    return stretches


def main(argv: list[str] | None = None) -> int:
    """Replay a demo's work folder for each ``--doubt`` and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a finished fedge demo's --out folder")
    parser.add_argument("--doubt", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--ask", nargs="+", default=["person"], help="--ask-labels values")
    parser.add_argument("--place", type=float, nargs="+", default=[0.0, 0.5], help="--place-iou")
    parser.add_argument("--run-doubt", type=int, default=3, help="the run's --track-doubt")
    parser.add_argument("--run-ask", default="person", help="the run's --ask-labels")
    parser.add_argument("--run-place", type=float, default=0.5, help="the run's --place-iou")
    parser.add_argument(
        "--change", type=float, nargs="+", default=[0.0, 8.0], help="--place-change values"
    )
    parser.add_argument(
        "--run-change", type=float, default=8.0, help="the run's --place-change (0: off)"
    )
    parser.add_argument(
        "--shown",
        nargs="+",
        choices=SHOWN,
        default=list(SHOWN),
        help="all: every object on a sent frame counts as asked about; crops: only those "
        "its crops show",
    )
    parser.add_argument("--run-shown", choices=SHOWN, default="crops", help="the run's")
    parser.add_argument("--run", default="", help="what the run is (default: WORK's name)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="hard_case_replay", help="the result files' name")
    args = parser.parse_args(argv)
    plan = read_plan(parser, args.work)
    if min(args.doubt) < 1:
        parser.error("--doubt values must be 1 or more")
    from fedge.commands.selection_flags import parse_ask_labels
    from fedge.demo.runner import DemoOptions, hard_case_policy

    bands = version_bands(args.work, plan["rounds"])
    started = time.perf_counter()
    sites = [_records(args.work, site) for site in plan["sites"]]
    base = hard_case_policy(DemoOptions(source=Path("-"), out=Path("-")))  # the defaults
    rows = []
    variants = [
        (d, a, p, c, w)
        for w in args.shown
        for c in args.change
        for p in args.place
        for a in args.ask
        for d in args.doubt
    ]
    for doubt, ask, place, change, shown in variants:
        policy = dataclasses.replace(
            base,
            track_min_doubt=doubt,
            ask_labels=parse_ask_labels(ask),
            place_iou=place,
            place_max_change=change,
        )
        shows = shown_regions("crops") if shown == "crops" else None
        counts = [replay_site(policy, stretches, bands, shows=shows) for stretches in sites]
        for r in range(plan["rounds"] + 1):
            per = [c[r] for c in counts]
            rows.append(
                {
                    "doubt frames": doubt,
                    "ask labels": ask,
                    "place IoU": f"{place:g}",
                    "place change": f"{change:g}",
                    "shown": shown,
                    "round": r,
                    "frames": sum(c.frames for c in per),
                    "qualify": sum(c.qualify for c in per),
                    "would upload": sum(c.upload for c in per),
                    "per site": " · ".join(f"{c.upload}/{c.frames}" for c in per),
                    "same as run": f"{sum(c.same for c in per)}/{sum(c.frames for c in per)}",
                }
            )
    header = (
        f"{cpu_model()}, Python {platform.python_version()}; the demo {args.run or args.work.name} "
        f"({plan['frames']} frames, {len(plan['sites'])} sites, {plan['rounds']} rounds, run "
        f"with --track-doubt {args.run_doubt} --ask-labels {args.run_ask} --place-iou "
        f"{args.run_place:g} --place-change {args.run_change:g}, objects asked about: "
        f"{args.run_shown}); the selector "
        "replayed over the frame records its sites stored, with the demo's other hard-case "
        "defaults and each version's band; selection only (the models are the run's); "
        "*same as run*: frames whose replayed verdict equals the stored one (all, for the "
        "run's own values); "
        f"{time.perf_counter() - started:.0f} s. Regenerate: run the demo with "
        "`python benchmarks/demo_loop.py ... --work WORK`, then "
        f"`python benchmarks/hard_case_replay.py WORK --run-doubt {args.run_doubt} "
        f"--run-ask {args.run_ask} --run-place {args.run_place:g} "
        f"--run-change {args.run_change:g} --run-shown {args.run_shown} --doubt "
        + " ".join(str(d) for d in args.doubt)
        + " --ask "
        + " ".join(args.ask)
        + " --place "
        + " ".join(f"{p:g}" for p in args.place)
        + " --change "
        + " ".join(f"{c:g}" for c in args.change)
        + " --shown "
        + " ".join(args.shown)
        + ("" if args.name == "hard_case_replay" else f" --name {args.name}")
        + "`"
    )
    _, md_path = write_table(rows, COLUMNS, args.out_dir, args.name, "Hard-case replay", header)
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
