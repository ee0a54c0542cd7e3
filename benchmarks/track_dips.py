"""Track dips: whose boxes a detector version is unsure of, on a finished demo's frames.

A calibrated person-detector version has an uncertainty band (``export.score_calibration``):
a box scoring in it makes a frame a hard case. This benchmark asks, for one version of a
finished ``fedge demo`` run (its ``--out`` folder, kept by ``benchmarks/demo_loop.py
--work``): are its in-band boxes new objects, or dips of people it was sure of a moment
before? For each site it runs the version's int8 model (LiteRT, as the site ran it) over
the stretch before the version's own and then its own stretch, tracks the person boxes
as the edge does (``clients.tracking.IouTracker``, IoU 0.3, 3 frames), and counts, in the
version's own stretch, the in-band boxes, those whose track had a box at or above the
band on an earlier frame of that stretch (*dips*: the edge's ``track_confirm`` rule, which
a version swap resets), and those that started a track.

Results go to ``benchmarks/results/track_dips.{md,csv}`` and a rich table.

Usage::

    python benchmarks/track_dips.py WORK [--version N]   # default: the last version
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo_work import MODELS, read_plan  # noqa: E402  (benchmarks/demo_work.py)
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from tables import write_table  # noqa: E402  (benchmarks/tables.py)

from clients.tracking import IouTracker  # noqa: E402

__all__ = ["SiteDips", "main", "site_dips"]

TRACK_IOU = 0.3
TRACK_MAX_AGE = 3
COLUMNS = ("site", "frames", "in-band boxes", "dips of confirmed tracks", "dip share", "new tracks")


@dataclass
class SiteDips:
    """One site's counts over the version's stretch."""

    site: str
    frames: int = 0
    in_band: int = 0
    dips: int = 0
    new_tracks: int = 0

    def row(self) -> dict[str, object]:
        """The table row."""
        share = f"{self.dips / self.in_band:.0%}" if self.in_band else "—"
        return {
            "site": self.site,
            "frames": self.frames,
            "in-band boxes": self.in_band,
            "dips of confirmed tracks": self.dips,
            "dip share": share,
            "new tracks": self.new_tracks,
        }


def site_dips(
    name: str,
    scored: list[list[tuple[tuple[float, float, float, float], float]]],
    own_from: int,
    low: float,
    high: float,
) -> SiteDips:
    """Count in-band boxes of frames ``own_from`` on (each frame: its person boxes and
    scores), dips of confirmed tracks among them, and new tracks."""
    from fedge.core.records import Detection

    tracker = IouTracker(TRACK_IOU, TRACK_MAX_AGE)
    confirmed: set[int] = set()
    seen: set[int] = set()
    out = SiteDips(name, frames=len(scored) - own_from)
    for index, boxes in enumerate(scored):
        detections = [Detection(box=b, label="person", score=s) for b, s in boxes]
        for (_, score), track in zip(boxes, tracker.update(detections), strict=True):
            if index >= own_from and low <= score < high:
                out.in_band += 1
                out.dips += track.id in confirmed
                out.new_tracks += track.id not in seen
            if score >= high and index >= own_from:  # live, a swap resets confirmations
                confirmed.add(track.id)
            seen.add(track.id)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on a demo's work folder and write its reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a finished fedge demo's --out folder")
    parser.add_argument("--version", type=int, default=0, help="0: the last version")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    plan = read_plan(parser, args.work)
    import cv2

    from clients.hot_swap import person_detector_loader
    from export.artifact import artifact_paths, read_manifest

    models = args.work / MODELS
    version = args.version or plan["rounds"]
    if not 1 <= version <= plan["rounds"]:
        parser.error(f"--version must be 1..{plan['rounds']}, got {version}")
    model_path, manifest_path = artifact_paths(models, "person-detector", version)
    manifest = read_manifest(manifest_path)
    if manifest.calibration is None:
        parser.error(f"version {version} has no calibration: no uncertainty band")
    low, high = manifest.calibration.uncertain_low, manifest.calibration.uncertain_high
    detector = person_detector_loader(0.5, num_threads=1)(model_path, manifest)
    started = time.perf_counter()
    results = []
    for site in plan["sites"]:
        before, own = site["stretches"][version - 1], site["stretches"][version]
        scored = []
        for index in [*before, *own]:
            image = cv2.imread(str(args.work / "frames" / f"{index:06d}.jpg"))
            found = [d for d in detector.detect(image) if d.label == "person"]
            scored.append([(tuple(d.box), float(d.score)) for d in found])
        results.append(site_dips(f"site-{site['site']}", scored, len(before), low, high))
    header = (
        f"{cpu_model()}, Python {platform.python_version()}; person-detector v{version} of "
        f"the demo in `{args.work.name}` ({plan['frames']} frames, {len(plan['sites'])} sites), "
        f"band [{low:g}, {high:g}); tracks: IoU {TRACK_IOU}, {TRACK_MAX_AGE} frames, run over "
        f"stretch {version - 1} then stretch {version} (counted); a dip is an in-band box "
        "whose track had a box at or above the band on an earlier frame of stretch "
        f"{version}; "
        f"{time.perf_counter() - started:.0f} s. Regenerate: run the demo with "
        "`python benchmarks/demo_loop.py ... --work WORK`, then "
        f"`python benchmarks/track_dips.py WORK --version {version}`"
    )
    _, md_path = write_table(
        [r.row() for r in results], COLUMNS, args.out_dir, "track_dips", "Track dips", header
    )
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
