"""Crop padding benchmark: how many people the teacher finds again in a ``crops`` case.

In ``crops`` mode a hard case carries one JPEG per person box, padded by
``PrivacyPolicy.crop_padding`` of the box's width and height on every side, faces
blurred; the cloud's teacher runs on each crop. A person the teacher misses in its crop
comes back unlabelled (the node trains that region as background where the cloud looked)
and one it finds with a low score comes back as a weak label, so the padding decides the
labels' quality.

On evenly spaced frames of the sample clip (640x480), the teacher's boxes on the whole
frame (at or above the label floor, ``detector-label-min-score``) are the reference. For
each padding the node's ``clients.privacy_filter.PrivacyFilter`` builds the ``crops``
case a node would send if its boxes were exactly those people (the best case: a real
node's boxes are looser); the cloud decodes it (``server.cloud.cases.decode_case``) and
the same teacher runs on it. Reported per padding: the reference people found again
(one-to-one at IoU 0.5, at or above the floor), the mean teacher score of the found
ones, the case's serialized bytes and the share of the frame its crops show. A
``frames`` row (the whole frame, faces blurred) shows what blurring alone costs.

Results go to ``benchmarks/results/crop_padding.{md,csv}`` and a rich table.

Usage::

    python benchmarks/crop_padding.py [--paddings 0.2,0.35,0.5,0.75] [--every 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from tables import write_table  # noqa: E402  (benchmarks/tables.py)

from clients.capture import Capture, CaptureConfig  # noqa: E402
from clients.privacy_filter import PrivacyFilter, PrivacyPolicy  # noqa: E402
from fedge.core.records import Detection, FrameResult  # noqa: E402
from fedge.core.run_config import RunConfig  # noqa: E402
from server.cloud.cases import CaseLimits, decode_case  # noqa: E402
from server.cloud.fusion import match_boxes  # noqa: E402

__all__ = ["PaddingResult", "main", "matched", "run_benchmark", "write_reports"]

CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
SIZE = (640, 480)
MATCH_IOU = 0.5
COLUMNS = (
    "case",
    "padding",
    "frames",
    "people",
    "found",
    "recall",
    "mean score found",
    "bytes/case",
    "frame share shown",
)


@dataclass
class PaddingResult:
    """One padding's (or the ``frames`` mode's) totals over the frames."""

    case: str
    padding: float | None
    frames: int = 0
    people: int = 0
    found: int = 0
    scores: list[float] | None = None
    case_bytes: int = 0
    shown: float = 0.0

    def row(self) -> dict[str, object]:
        """The CSV row."""
        scores = self.scores or []
        return {
            "case": self.case,
            "padding": "" if self.padding is None else self.padding,
            "frames": self.frames,
            "people": self.people,
            "found": self.found,
            "recall": round(self.found / max(1, self.people), 4),
            "mean score found": round(float(np.mean(scores)), 4) if scores else "",
            "bytes/case": round(self.case_bytes / max(1, self.frames)),
            "frame share shown": round(self.shown / max(1, self.frames), 4),
        }


def matched(reference: np.ndarray, found: list[Detection]) -> list[float]:
    """Scores of the ``found`` boxes paired one-to-one with ``reference`` boxes ``(N, 4)``
    at IoU ``MATCH_IOU`` or more (``server.cloud.fusion.match_boxes``, as fusion pairs)."""
    if not len(reference) or not found:
        return []
    boxes = np.asarray([d.box for d in found], np.float64)
    return [float(found[j].score) for _, j in match_boxes(reference, boxes, MATCH_IOU)]


def _shown_share(case: object, width: int, height: int) -> float:
    crops = case.crops.crops  # type: ignore[attr-defined]
    if case.frame_jpeg:  # type: ignore[attr-defined]
        return 1.0
    shown = np.zeros((height, width), bool)
    for c in crops:
        shown[c.y : c.y + c.height, c.x : c.x + c.width] = True
    return float(shown.mean())


def _padding(padding: float) -> PrivacyPolicy:
    return PrivacyPolicy(crop_padding=padding)


def run_benchmark(
    paddings: list[float], every: int, model_dir: str | None, progress: bool = True
) -> list[PaddingResult]:
    """Measure every padding (and the ``frames`` mode) on every ``every``-th clip frame."""
    from rich.progress import Progress

    from server.cloud.teacher import build_teacher

    floor = RunConfig.from_mapping({"task": "person-detector"}).detector_label_min_score
    teacher = build_teacher(model_dir=Path(model_dir) if model_dir else None)
    with Capture(CLIP, CaptureConfig(size=SIZE)) as capture:
        frames = [f.image for f in capture if f.index % every == 0]
    setups = [
        (f"crops {p:g}", p, PrivacyFilter.create("crops", model_dir, policy=_padding(p)))
        for p in paddings
    ]
    setups.append(("frames", None, PrivacyFilter.create("frames", model_dir)))
    results = [PaddingResult(name, padding, scores=[]) for name, padding, _ in setups]
    limits = CaseLimits()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("frames", total=len(frames))
        for image in frames:
            height, width = image.shape[:2]
            people = [d for d in teacher.detect_image(image) if d.score >= floor]
            reference = np.asarray([d.box for d in people], np.float64).reshape(-1, 4)
            result = FrameResult(
                frame=0,
                time=0.0,
                source=CLIP.name,
                detections=[Detection(box=d.box, label="person", score=0.45) for d in people],
            )
            for (_, _, privacy), total in zip(setups, results, strict=True):
                case = privacy.case_for(
                    result, image, frame_id=1, frame_width=width, frame_height=height,
                    node_id="bench",
                )  # fmt: skip
                found = [d for d in teacher.detect(decode_case(case, limits)) if d.score >= floor]
                scores = matched(reference, found)
                total.frames += 1
                total.people += len(people)
                total.found += len(scores)
                total.scores = (total.scores or []) + scores
                total.case_bytes += case.ByteSize()
                total.shown += _shown_share(case, width, height)
            bar.advance(task)
    return results


def write_reports(results: list[PaddingResult], out_dir: Path, header: str) -> tuple[Path, Path]:
    """Write ``crop_padding.csv`` and ``crop_padding.md``; return their paths."""
    return write_table(
        [r.row() for r in results],
        COLUMNS,
        out_dir,
        "crop_padding",
        "Crop padding: the people the teacher finds again in a crops case",
        header,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paddings", default="0.2,0.35,0.5,0.75")
    parser.add_argument("--every", type=int, default=10, help="every N-th clip frame")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        paddings = [float(p) for p in args.paddings.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--paddings must be comma-separated numbers, got {args.paddings!r}")
    if not paddings or any(not 0.0 <= p <= 10.0 for p in paddings):
        parser.error(f"--paddings must be numbers from 0 to 10, got {args.paddings!r}")
    if args.every < 1:
        parser.error(f"--every must be 1 or more, got {args.every}")
    started = time.perf_counter()
    results = run_benchmark(paddings, args.every, args.model_dir)
    header = (
        f"{cpu_model()}, Python {platform.python_version()}; `{CLIP.name}` every "
        f"{args.every}th frame at {SIZE[0]}x{SIZE[1]}; reference: the teacher on the whole "
        "frame, boxes at or above the label floor; a case is built around exactly those "
        f"boxes; {time.perf_counter() - started:.0f} s. Regenerate: "
        f"`python benchmarks/crop_padding.py --paddings {args.paddings} --every {args.every}`"
    )
    _, md_path = write_reports(results, args.out_dir, header)
    from rich.console import Console

    Console().print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
