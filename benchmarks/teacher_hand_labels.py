"""The node's BlazePose and every teacher variant against people labelled by hand.

``data/samples/vtest_clip_people.json`` holds every visible person of four frames of the
sample clip (24, 120, 192, 216: 29 people), drawn by hand (``data/samples/LICENSE.md``).
On those frames each finder runs on the whole 640x480 frame:

- the node's BlazePose (LiteRT, one thread, no tracking: each frame alone, as the node's
  person finder in cold start sees it);
- each teacher member alone (``hog``, ``blazepose-tiles``: their boxes merged as the
  teacher merges a member's windows), boxes scoring ``--min-score`` or more;
- the teacher ensemble (weighted boxes fusion, ``conf_type`` ``avg``, the default of
  ``fedge cloud``) from ``--min-score`` and from 0.5, and with ``conf_type`` ``max``
  from 0.5.

A box finds a person when the one-to-one matching that fusion uses
(``server.cloud.fusion.match_boxes``: maximal summed IoU) pairs them at IoU 0.3 or more
(hand labels hold the visible extent, detectors box their own way) and, stricter, at IoU
0.5 (mAP@0.5's rule); a box paired with no person at IoU 0.3 is a false box.

Results go to ``benchmarks/results/teacher_hand_labels.{md,csv}`` and a rich table.

Usage::

    python benchmarks/teacher_hand_labels.py [--min-score 0.3] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from tables import write_table  # noqa: E402  (benchmarks/tables.py)

from fedge.core.records import Detection  # noqa: E402
from server.cloud.fusion import match_boxes  # noqa: E402

__all__ = [
    "LABELS",
    "FinderResult",
    "load_labels",
    "main",
    "read_frames",
    "run_benchmark",
    "score_boxes",
    "write_reports",
]

LABELS = REPO / "data" / "samples" / "vtest_clip_people.json"
FOUND_IOU = 0.3
STRICT_IOU = 0.5
COLUMNS = ("finder", "min score", "people", "found", "found at IoU 0.5", "false boxes")

Finder = Callable[[np.ndarray], Sequence[Detection]]


@dataclass
class FinderResult:
    """One finder's totals over the labelled frames."""

    finder: str
    min_score: float | None
    people: int = 0
    found: int = 0
    found_strict: int = 0
    false_boxes: int = 0

    def row(self) -> dict[str, object]:
        """The CSV row."""
        return {
            "finder": self.finder,
            "min score": "" if self.min_score is None else self.min_score,
            "people": self.people,
            "found": self.found,
            "found at IoU 0.5": self.found_strict,
            "false boxes": self.false_boxes,
        }


def load_labels(path: Path = LABELS) -> tuple[Path, dict[int, np.ndarray]]:
    """The labelled clip and its people by frame index (``(N, 4)`` boxes each)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("kind") != "fedge-hand-labels":
        raise ValueError(f"{path} is not a fedge hand-label file (no kind 'fedge-hand-labels')")
    people = {int(k): np.asarray(v, np.float64).reshape(-1, 4) for k, v in data["frames"].items()}
    return REPO / data["source"], people


def read_frames(clip: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """Decode the frames ``indices`` of ``clip``; ``ValueError`` when it ends before them."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    found: dict[int, np.ndarray] = {}
    index = 0
    try:
        while len(found) < len(indices):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{clip} ended at frame {index}, before {max(indices)}")
            if index in indices:
                found[index] = frame
            index += 1
    finally:
        capture.release()
    return found


def score_boxes(people: np.ndarray, boxes: np.ndarray) -> tuple[int, int, int]:
    """People found at IoU 0.3, people found at IoU 0.5, and false boxes (module docstring)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(people) or not len(boxes):
        return 0, 0, len(boxes)
    loose = match_boxes(boxes, people, FOUND_IOU)
    strict = match_boxes(boxes, people, STRICT_IOU)
    return len(loose), len(strict), len(boxes) - len(loose)


def _finders(min_score: float, model_dir: Path | None) -> list[tuple[str, float | None, Finder]]:
    from clients.pose import create_pose_estimator
    from server.cloud.teacher import build_teacher

    pose = create_pose_estimator("litert", model_dir, num_threads=1, track=False)
    avg = build_teacher(model_dir=model_dir, num_threads=1)
    best = build_teacher(model_dir=model_dir, num_threads=1, conf_type="max")

    def blazepose(image: np.ndarray) -> list[Detection]:
        return [Detection(box=p.box, label="person", score=p.score) for p in pose.estimate(image)]

    def member(name: str) -> Finder:
        return lambda image: avg.member_detections(image)[name][0]

    found: list[tuple[str, float | None, Finder]] = [("node BlazePose", None, blazepose)]
    found += [(f"teacher `{m.name}`", min_score, member(m.name)) for m in avg.members]
    found += [
        ("teacher ensemble `avg`", min_score, avg.detect_image),
        ("teacher ensemble `avg`", 0.5, avg.detect_image),
        ("teacher ensemble `max`", 0.5, best.detect_image),
    ]
    return found


def run_benchmark(
    min_score: float = 0.3, model_dir: Path | None = None, labels: Path = LABELS
) -> list[FinderResult]:
    """Score every finder on every labelled frame (module docstring)."""
    clip, people = load_labels(labels)
    frames = read_frames(clip, set(people))
    results = []
    for name, floor, finder in _finders(min_score, model_dir):
        total = FinderResult(name, floor)
        for index, image in sorted(frames.items()):
            kept = [d for d in finder(image) if floor is None or d.score >= floor]
            boxes = np.asarray([d.box for d in kept], np.float64).reshape(-1, 4)
            found, strict, false = score_boxes(people[index], boxes)
            total.people += len(people[index])
            total.found += found
            total.found_strict += strict
            total.false_boxes += false
        results.append(total)
    return results


def write_reports(results: list[FinderResult], out_dir: Path, header: str) -> tuple[Path, Path]:
    """Write ``teacher_hand_labels.csv`` and ``.md``; return their paths."""
    return write_table(
        [r.row() for r in results],
        COLUMNS,
        out_dir,
        "teacher_hand_labels",
        "The node and the teacher against hand labels",
        header,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        parser.error(f"--min-score must lie in [0, 1], got {args.min_score}")
    started = time.perf_counter()
    results = run_benchmark(args.min_score, args.model_dir)
    header = (
        f"{cpu_model()}, Python {platform.python_version()}; `{LABELS.name}`: frames "
        f"{', '.join(str(k) for k in sorted(load_labels()[1]))} of `vtest_clip.mp4`, "
        f"{results[0].people} people labelled by hand; a box finds a person one-to-one at "
        f"IoU {FOUND_IOU} (and at {STRICT_IOU}); {time.perf_counter() - started:.0f} s. "
        f"Regenerate: `python benchmarks/teacher_hand_labels.py --min-score {args.min_score:g}`"
    )
    _, md_path = write_reports(results, args.out_dir, header)
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
