"""How much a place changes between a sent frame and a later one, against the teacher:
the evidence behind ``--place-change``'s default.

``--place-change GREY`` (``HardCasePolicy.place_max_change``) takes a doubtful box as
asked about when it lies inside what a frame sent before showed (that frame's person and
pose boxes that its crops showed, grown by ``place_margin``) and its pixels there
changed by at most GREY grey levels on average since
(``clients.hard_cases.region_change``). This benchmark measures that change on a
finished ``fedge demo`` (its ``--out`` folder, kept by ``benchmarks/demo_loop.py
--work``): for every person box in its version's uncertainty band on each site's frames
from round 1 on, inside what a frame the site sent earlier showed, the smallest change
over those frames, and whether the cloud's teacher finds a person there (IoU >= 0.5 with
one of its boxes) now and on that sent frame. Background boxes (no person either time)
should change little; a box where someone stepped in (person now, none then) must change
more than the limit, or the rule would keep that person from being asked about.

Results go to ``benchmarks/results/NAME.{md,csv}`` (``--name``, default ``place_change``).

Usage::

    python benchmarks/place_change.py WORK [--limit 8] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import sys
import time
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

from clients.hard_cases import (  # noqa: E402
    PLACE_INSIDE,
    HardCasePolicy,
    grey_view,
    grown_box,
    region_change,
)
from clients.privacy_filter import shown_regions  # noqa: E402
from fedge.core.geometry import covered_share, iou_matrix  # noqa: E402

__all__ = ["BINS", "main", "sent_objects"]

BINS = (2.0, 4.0, 8.0, 16.0, 32.0)
"""Upper edges of the change bins (grey levels); the last bin is open."""
COLUMNS = ("teacher now / then", "boxes", "median change", "at most limit", *(
    f"<= {b:g}" for b in BINS), f"> {BINS[-1]:g}")  # fmt: skip


def _person_at(box: Any, people: list[Any]) -> bool:
    if not people:
        return False
    return bool(
        iou_matrix(np.asarray([box], np.float64), np.asarray(people, np.float64)).max() >= 0.5
    )


def sent_objects(
    boxes: list[dict[str, Any]], poses: list[dict[str, Any]], width: int, height: int
) -> list[Any]:
    """The person and pose boxes (stored records' dicts) that a ``crops`` case of a
    ``width`` x ``height`` frame showed, as the selector remembers them (all of them when
    the case has no crop)."""
    objects = [b["box"] for b in boxes if b["label"] == "person"] + [p["box"] for p in poses]
    crops = shown_regions("crops")(stored_persons(poses), stored_detections(boxes), width, height)
    if crops is None or not objects:
        return objects
    inside = covered_share(np.asarray(objects, np.float64), crops)
    return [b for b, share in zip(objects, inside, strict=True) if share >= PLACE_INSIDE]


def _site_rows(work: Path, site: dict[str, Any], bands: list[tuple[float, float]], teacher: Any,
               margin: float) -> list[tuple[str, str, float]]:  # fmt: skip
    import cv2

    index = work / "sites" / f"site-{site['site']}" / "store" / "index.sqlite"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        rows = {
            int(frame): (float(t), json.loads(d), json.loads(p), bool(h), json.loads(r))
            for frame, t, d, p, h, r in db.execute(
                "SELECT frame_index, time, detections, persons, hard, hard_reasons FROM frames"
            )
        }
    images: dict[int, np.ndarray] = {}
    greys: dict[int, tuple[np.ndarray, float]] = {}
    people: dict[int, list[Any]] = {}

    def load(frame: int) -> np.ndarray:
        if frame not in images:
            images[frame] = cv2.imread(str(work / "frames" / f"{frame:06d}.jpg"))
        return images[frame]

    def grey(frame: int) -> tuple[np.ndarray, float]:
        if frame not in greys:
            greys[frame] = grey_view(load(frame))
        return greys[frame]

    def teacher_people(frame: int) -> list[Any]:
        if frame not in people:
            found = teacher.detect_image(load(frame))
            people[frame] = [d.box for d in found if d.label == "person"]
        return people[frame]

    sent: list[tuple[int, list[Any]]] = []  # (frame, grown boxes of what it showed)
    out = []
    for number, stretch in enumerate(site["stretches"]):
        low, high = bands[number - 1] if number >= 1 else (1.0, 1.0)
        for frame in stretch:
            if frame not in rows:
                continue
            _, boxes, poses, hard, reasons = rows[frame]
            doubtful = [
                b["box"] for b in boxes if b["label"] == "person" and low <= b["score"] < high
            ]
            for box in doubtful:
                shown = [f for f, grown in sent if covered_share(box, grown)[0] >= PLACE_INSIDE]
                if not shown:
                    continue
                now, scale = grey(frame)
                changes = [(region_change(now, grey(f)[0], box, scale), f) for f in shown]
                change, then = min(changes)
                now_p = "person" if _person_at(box, teacher_people(frame)) else "none"
                then_p = "person" if _person_at(box, teacher_people(then)) else "none"
                out.append((now_p, then_p, change))
            if hard and not any(str(r).startswith("suppressed") for r in reasons):
                shown_boxes = sent_objects(boxes, poses, *load(frame).shape[1::-1])
                sent.append((frame, [grown_box(tuple(b), margin) for b in shown_boxes]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure the place changes of a demo's work folder and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a finished fedge demo's --out folder")
    parser.add_argument("--limit", type=float, default=8.0, help="the --place-change to judge")
    parser.add_argument("--run", default="", help="what the run is (default: WORK's name)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="place_change", help="the result files' name")
    args = parser.parse_args(argv)
    plan = read_plan(parser, args.work)
    from server.cloud.teacher import build_teacher

    policy = HardCasePolicy()
    bands = [
        (policy.uncertain_low, policy.uncertain_high) if band is None else (band.low, band.high)
        for band in version_bands(args.work, plan["rounds"])
    ]
    started = time.perf_counter()
    teacher = build_teacher()
    margin = HardCasePolicy().place_margin
    found = [
        r for site in plan["sites"] for r in _site_rows(args.work, site, bands, teacher, margin)
    ]
    rows = []
    for now_p, then_p in (
        ("none", "none"),
        ("person", "none"),
        ("none", "person"),
        ("person", "person"),
    ):
        values = np.asarray([c for n, t, c in found if (n, t) == (now_p, then_p)], np.float64)
        counts = (
            np.histogram(values, bins=[0.0, *BINS, np.inf])[0]
            if len(values)
            else [0] * (len(BINS) + 1)
        )
        rows.append({
            "teacher now / then": f"{now_p} / {then_p}",
            "boxes": len(values),
            "median change": f"{np.median(values):.1f}" if len(values) else "—",
            "at most limit": f"{int((values <= args.limit).sum())}",
            **{col: int(n) for col, n in zip(COLUMNS[4:], counts, strict=True)},
        })  # fmt: skip
    header = (
        f"{cpu_model()}, Python {platform.python_version()}; the demo "
        f"{args.run or args.work.name} ({plan['frames']} frames, {len(plan['sites'])} sites, "
        f"{plan['rounds']} rounds). Every person box in its version's uncertainty band on a "
        "site's frames from round 1 on that lies inside what a frame the site sent earlier "
        f"showed (its person and pose boxes its crops showed, grown by {margin:g}; "
        f"{PLACE_INSIDE:g} of the box "
        "inside): the smallest change since such a frame (mean absolute grey difference, "
        "each region's mean taken out, at 320 pixels on the long side), by whether the "
        "cloud's teacher finds a person at the box (IoU >= 0.5) on this frame and on that "
        f"sent one. *At most limit*: boxes the rule at --place-change {args.limit:g} takes "
        "as asked about (before tracking and doubt, which the replay adds). Each box of "
        f"each frame counts; {time.perf_counter() - started:.0f} s. Regenerate: run the "
        "demo with `python benchmarks/demo_loop.py ... --work WORK`, then "
        f"`python benchmarks/place_change.py WORK --limit {args.limit:g}"
        + ("" if args.name == "place_change" else f" --name {args.name}")
        + "`"
    )
    _, md_path = write_table(rows, COLUMNS, args.out_dir, args.name, "Place change", header)
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
