"""`fedge demo` as a benchmark: the loop, round by round, with its figures kept.

Runs :func:`fedge.demo.run_demo` (3 sites, 10 rounds, ``crops``, ``mean`` fusion unless
told otherwise) on the whole of OpenCV's ``vtest.avi`` (Debian ``opencv-doc``: 768x576,
795 frames, read at 640x480) or on ``--source``, then writes to ``--out-dir``
(default ``benchmarks/results/demo_vtest/``):

- ``rounds.jsonl`` (the demo's own lines), ``rounds.csv`` / ``rounds.md`` (the per-round
  table), ``report.md`` and ``plots/`` (the demo's report);
- ``fusion.csv`` / ``fusion.md``: **fused labels against cloud-only and edge-only**. For
  every hard case the sites got a label for, the node's evidence (its person boxes and
  pose boxes, as stored) and the teacher's boxes (as the label keeps them) are fused again
  with each method (``server.cloud.fusion.fuse_detections``: ``mean``, ``logit``,
  ``cloud`` = teacher only, ``edge`` = node only), and each is scored (mAP@0.5,
  pycocotools) against the same teacher run on the **whole** frame, for evaluation only,
  inside the regions the cloud saw (the crops);
- ``labels.md``: **what the sites' labels hold, and what the calibration sees**. The
  label boxes at or above the label floor by source (matched by both, the teacher only,
  the node only; the node-only ones split by whether the cloud looked where they lie, and
  judged against the teacher run on the whole frame), and the last version's boxes by
  score range judged two ways: against the sites' held-out fused labels (what each
  version's score calibration counts,
  ``clients.tasks.detector_eval.score_bin_counts``) and against the teacher-labelled
  held-out frames of the evaluation (whole frames, evaluation only);
- the share of frames uploaded and the bytes per site against sending every frame.

Usage::

    python benchmarks/demo_loop.py --lr-decay 0.85 --local-epochs 10   # vtest.avi, as run
    python benchmarks/demo_loop.py --source data/samples/vtest_clip.mp4 --rounds 3 \
        --cold-start-share 0.4 \
        --out-dir benchmarks/results/demo_clip           # the README's default demo
    python benchmarks/demo_loop.py --labels-only --work WORK --out-dir DIR  # labels.md again
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from edge_fps import _busy_jiffies, other_load  # noqa: E402
from machine import cpu_model  # noqa: E402

from fedge.commands.selection_flags import (  # noqa: E402
    add_ask_labels_flag,
    add_tracking_flags,
    parse_ask_labels,
)

__all__ = ["fusion_scores", "label_audit", "main", "round_rows"]

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
OUT_DIR = REPO / "benchmarks" / "results" / "demo_vtest"
METHODS = ("mean", "logit", "cloud", "edge")
COLUMNS = (
    "round",
    "model",
    "map50_mean",
    "edge_persons",
    "teacher_persons",
    "hard_case_rate",
    "upload_share",
    "already_asked",
    "already_confirmed",
    "doubt_pending",
    "held_back_look_alike",
    "held_back_rate_limit",
    "in_band_boxes",
    "expected_wrong_boxes",
    "bytes_up",
    "bytes_every_frame",
    "model_bytes",
    "edge_fps",
    "edge_latency_ms",
    "round_seconds",
)


def _own_cpu() -> float:
    """CPU seconds of this process and of its finished children (the demo's processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def round_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-round table's rows from the demo's ``rounds.jsonl`` lines."""
    return [
        {
            "round": r["round"],
            "model": r["model_version"],
            "map50_mean": r["map50_mean"],
            "edge_persons": r["persons_per_frame"]["edge"],
            "teacher_persons": r["persons_per_frame"]["teacher"],
            "hard_case_rate": r["hard_case_rate"],
            "upload_share": r["upload_share"],
            "already_asked": r.get("already_asked", ""),
            "already_confirmed": r.get("already_confirmed", ""),
            "doubt_pending": r.get("doubt_pending", ""),
            "held_back_look_alike": (r.get("held_back") or {}).get("duplicate", ""),
            "held_back_rate_limit": (r.get("held_back") or {}).get("rate_limited", ""),
            "in_band_boxes": _blank(r.get("uncertain_boxes_per_frame")),
            "expected_wrong_boxes": _blank(r.get("expected_box_errors_per_frame")),
            "bytes_up": sum(r["bytes_up"].values()),
            "bytes_every_frame": sum(r["bytes_all_frames"].values()),
            "model_bytes": r["model_bytes"],
            "edge_fps": r["edge_fps"],
            "edge_latency_ms": r["edge_latency_ms"],
            "round_seconds": r["seconds"] + (r.get("flower") or {}).get("seconds", 0.0),
        }
        for r in lines
    ]


def _evidence(stored: Any) -> list[Any]:
    from fedge.core.records import Detection

    result = stored.result()
    found = [d for d in result.detections if d.label == "person"]
    found += [Detection(box=p.box, label="person", score=p.score) for p in result.persons]
    return found


def fusion_scores(site_stores: list[Path], teacher: Any) -> dict[str, dict[str, float]]:
    """mAP@0.5 of each fusion method on the labelled hard cases (module docstring)."""
    from clients.tasks.detector_data import DetectorExample
    from clients.tasks.detector_eval import FrameDetections, map50
    from data.frame_store import FrameStore
    from server.cloud.fusion import fuse_detections

    examples, found = [], {m: [] for m in METHODS}
    for root in site_stores:
        store = FrameStore.open_reader(root)
        try:
            for stored in store.iter_frames(labelled_only=True):
                label = stored.frame_label
                if label is None or not label.teacher_detections and label.coverage == ():
                    continue
                coverage = None if label.coverage is None else np.asarray(label.coverage)
                if coverage is not None and not len(coverage):
                    continue  # landmarks: the cloud saw no pixel
                image = stored.load_image()
                reference = [d for d in teacher.detect_image(image) if d.label == "person"]
                boxes = np.asarray([d.box for d in reference if d.score >= 0.3], np.float32)
                unsure = np.asarray([d.box for d in reference if d.score < 0.3], np.float32)
                examples.append(
                    DetectorExample(
                        frame_id=stored.id,
                        path=stored.path,
                        width=image.shape[1],
                        height=image.shape[0],
                        boxes=boxes.reshape(-1, 4),
                        weights=np.ones(len(boxes), np.float32),
                        ignore=unsure.reshape(-1, 4),
                        background=True,
                        source="evaluation",
                        coverage=coverage,
                    )
                )
                edge = _evidence(stored)
                cloud = [d for d in label.teacher_detections if d.label == "person"]
                for method in METHODS:
                    fused = fuse_detections(edge, cloud, method, looked=label.coverage)
                    found[method].append(
                        FrameDetections(
                            np.asarray([b.box for b in fused], np.float32).reshape(-1, 4),
                            np.asarray([b.score for b in fused], np.float32),
                        )
                    )
        finally:
            store.close()
    return {
        m: {"map50": float(map50(examples, found[m])), "cases": float(len(examples))}
        for m in METHODS
    }


SCORE_RANGES = ((0.05, 0.25), (0.25, 0.5), (0.5, 1.01))


def label_audit(work: Path, sites: list[str], teacher: Any | None = None) -> str:
    """``labels.md`` (module docstring) from a finished demo's folder ``work``; with
    ``teacher``, the node-only boxes are judged against it on the whole frame."""
    from clients.tasks.detector_data import ExampleRules, list_examples
    from clients.tasks.detector_eval import SCORE_FLOOR, predict_with, score_bin_counts
    from data.frame_store import FrameStore
    from export.artifact import read_manifest
    from fedge.core.geometry import LOOKED_SHARE, covered_share, iou_matrix
    from fedge.demo.evaluation import installed_detector

    rules = ExampleRules()
    sources = {"both": 0, "teacher only": 0, "node only": 0}
    # node-only boxes by where they lie: [boxes, people by the whole-frame teacher]
    # ... and below the floor ("rejected": looked at, the teacher found nobody)
    node_only = {"looked": [0, 0], "unseen": [0, 0], "rejected": [0, 0]}
    for site in sites:
        store = FrameStore.open_reader(work / "sites" / site / "store")
        try:
            for stored in store.iter_frames(labelled_only=True):
                label = stored.frame_label
                mine, below = [], []
                for box in label.boxes if label is not None else ():
                    if box.label != "person":
                        continue
                    if box.score < rules.label_min_score:
                        lone = box.edge_score is not None and box.cloud_score is None
                        below += [box.box] if lone else []
                        continue
                    key = ("both" if box.cloud_score is not None else "node only") if (
                        box.edge_score is not None) else "teacher only"  # fmt: skip
                    sources[key] += 1
                    mine += [box.box] if key == "node only" else []
                if not (mine or below) or teacher is None or label is None:
                    continue
                boxes = np.asarray([*mine, *below], np.float64).reshape(-1, 4)
                looked = np.ones(len(boxes), bool)
                if label.coverage is not None:
                    coverage = np.asarray(label.coverage, np.float64).reshape(-1, 4)
                    looked = covered_share(boxes, coverage) >= LOOKED_SHARE
                found = [d.box for d in teacher.detect_image(stored.load_image())
                         if d.label == "person" and d.score >= rules.label_min_score]  # fmt: skip
                people = (
                    iou_matrix(boxes, np.asarray(found)).max(axis=1) >= 0.5
                    if found
                    else np.zeros(len(boxes), bool)
                )
                above = np.arange(len(boxes)) < len(mine)
                for where, mask in (
                    ("looked", above & looked),
                    ("unseen", above & ~looked),
                    ("rejected", ~above & looked),
                ):
                    node_only[where][0] += int(mask.sum())
                    node_only[where][1] += int((mask & people).sum())
        finally:
            store.close()
    models = sorted((work / "server" / "demo" / "models").glob("*.tflite"))
    lines = ["# What the sites' labels hold, and what the calibration sees", ""]
    total = sum(sources.values())
    lines += [
        f"Label boxes at or above the label floor ({rules.label_min_score:g}) in the sites' "
        f"stores: {total}; matched by both sources {sources['both']}, the teacher only "
        f"{sources['teacher only']}, the node only {sources['node only']}.",
        "",
    ]
    if teacher is not None:
        (seen, seen_people), (unseen, unseen_people) = node_only["looked"], node_only["unseen"]
        lines += [
            f"Of the node-only boxes, {seen} lie where the cloud looked (at least "
            f"{LOOKED_SHARE:.0%} of the box inside one region it was shown), {seen_people} of "
            f"them people by the teacher run on the whole frame (IoU 0.5, evaluation only); "
            f"{unseen} lie where it did not look, {unseen_people} of them people. A node "
            f"trains on the latter only as on its own boxes (edge score from "
            f"{rules.self_min_score:g}, weight {rules.own_weight:g}), else ignores them "
            "(`clients.tasks.detector_data`).",
            "",
            f"Below the floor, {node_only['rejected'][0]} node-only boxes lie where the cloud "
            f"looked (the teacher found nobody there), {node_only['rejected'][1]} of them "
            "people by the teacher run on the whole frame: a node trains on their pixels as "
            "background.",
            "",
        ]
    if not models:
        return "\n".join([*lines, "No model version was exported.", ""])
    detector = installed_detector(models[-1], read_manifest(models[-1].with_suffix(".json")))
    judged = {}
    for name, folder, held in (
        ("sites' held-out fused labels (calibration)", "sites", True),
        ("teacher-labelled held-out frames (evaluation)", "evaluation", False),
    ):
        examples = []
        for site in sites:
            root = work / folder / site / ("store" if held else "")
            found = list_examples(root, rules if held else ExampleRules(held_out_share=0.0))
            examples += found.held_out if held else found.train
        counts = score_bin_counts(examples, predict_with(detector.detect, examples))
        judged[name] = (len(examples), counts)
    lines += [
        f"`{models[-1].name}`'s boxes (score floor {SCORE_FLOOR:g}) per score range: true "
        "positives / boxes judged (precision), one-to-one at IoU 0.5; a box on an ignored "
        "region or where the cloud did not look is not judged.",
        "",
        "| judged against | frames | "
        + " | ".join(
            f"[{lo:g}, {min(hi, 1.0):g}{']' if hi > 1 else ')'}" for lo, hi in SCORE_RANGES
        )
        + " |",  # fmt: skip
        "|---|---:|" + "---:|" * len(SCORE_RANGES),
    ]
    for name, (frames, counts) in judged.items():
        cells = []
        bins = len(counts.true_positives)
        for lo, hi in SCORE_RANGES:
            ks = [k for k in range(bins) if lo <= k / bins < hi]
            tp = sum(counts.true_positives[k] for k in ks)
            boxes = tp + sum(counts.false_positives[k] for k in ks)
            cells.append(f"{tp} / {boxes} ({tp / boxes:.2f})" if boxes else "0 / 0")
        lines.append(f"| {name} | {frames} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def _write_table(path_md: Path, path_csv: Path, rows: list[dict[str, Any]], header: str) -> None:
    with open(path_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    lines = [
        "# fedge demo: the loop, round by round",
        "",
        header,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = []
        for key in COLUMNS:
            value = row[key]
            if key in ("hard_case_rate", "upload_share"):
                cells.append(f"{100 * value:.1f}%")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}")
            elif isinstance(value, int):
                cells.append(f"{value:,}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    path_md.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the demo on vtest.avi and write the results (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=VTEST)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=15)  # fedge demo's
    parser.add_argument("--lr-decay", type=float, default=0.5)
    parser.add_argument("--privacy", default="crops")
    parser.add_argument("--fusion", default="mean")
    parser.add_argument("--cold-start-share", type=float, default=0.2)
    parser.add_argument("--final-frames", type=int, default=20)
    parser.add_argument("--warm-start", action="store_true", help="detector-warm-start")
    parser.add_argument("--schedule", default="auto", help="train-schedule (auto: cyclic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Flower run (0)")
    add_tracking_flags(parser)  # fedge demo's
    add_ask_labels_flag(parser)
    parser.add_argument("--no-warm-worker", dest="warm_worker", action="store_false")
    parser.add_argument("--work", type=Path, help="the demo's --out (default: a temp folder)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--labels-only",
        action="store_true",
        help="only rewrite --out-dir's labels.md from the finished demo in --work",
    )
    args = parser.parse_args(argv)
    if args.labels_only:
        return _labels_only(parser, args.work, args.out_dir)
    if not args.source.exists():
        raise SystemExit(f"{args.source} not found: apt-get install opencv-doc, or --source")
    from fedge.core.signals import stop_signals_interrupt
    from fedge.demo.runner import DemoOptions, run_demo
    from server.cloud.teacher import build_teacher

    work = args.work or Path(tempfile.mkdtemp(prefix="fedge-demo-vtest-"))
    options = DemoOptions(
        source=args.source,
        out=work,
        sites=args.sites,
        rounds=args.rounds,
        privacy=args.privacy,
        fusion=args.fusion,
        local_epochs=args.local_epochs,
        lr_decay=args.lr_decay,
        warm_start=args.warm_start,
        schedule=args.schedule,
        seed=args.seed,
        cold_start_share=args.cold_start_share,
        final_frames=args.final_frames,
        track_iou=args.track_iou,
        track_confirm=args.track_confirm,
        track_doubt=args.track_doubt,
        ask_labels=parse_ask_labels(args.ask_labels),
        place_iou=args.place_iou,
        place_change=args.place_change,
        warm_worker=args.warm_worker,
        app_dir=REPO,
    )
    jiffies, cpu0, began = _busy_jiffies(), _own_cpu(), time.perf_counter()

    def progress(text: str, done: float) -> None:
        print(f"[{100 * done:3.0f}%] {text}", flush=True)

    with stop_signals_interrupt():  # run_demo's cleanup stops every process it started
        result = run_demo(options, progress)
    teacher = build_teacher()
    fusion = fusion_scores([work / "sites" / s.name / "store" for s in result.plan.sites],
                           teacher)  # fmt: skip
    seconds = time.perf_counter() - began
    others = other_load(jiffies, _own_cpu() - cpu0)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "rounds.jsonl", out / "rounds.jsonl")
    shutil.copy(work / "report.md", out / "report.md")
    shutil.copytree(work / "plots", out / "plots", dirs_exist_ok=True)
    # each version's manifest: its score calibration (the uncertainty band the sites used)
    (out / "manifests").mkdir(exist_ok=True)
    for manifest in sorted((work / "server" / "demo" / "models").glob("*.json")):
        shutil.copy(manifest, out / "manifests" / manifest.name)
    # the server's per-round metrics: where each Flower round's time went (stage_seconds,
    # and each ClientApp's startup-seconds and handler-seconds)
    shutil.copy(work / "server" / "demo" / "metrics.jsonl", out / "flower_metrics.jsonl")
    header = (
        f"{cpu_model()}, Python {sys.version.split()[0]}; `{args.source.name}`: "
        f"{result.plan.describe()}; privacy `{args.privacy}`, fusion `{args.fusion}`, "
        f"{args.local_epochs} local epochs, lr decay {args.lr_decay:g}"
        f"{', warm start' if args.warm_start else ''}, "
        f"train-schedule {args.schedule}, seed {args.seed}, "
        + (f"tracking IoU {args.track_iou:g}" if args.track_iou else "no tracking")
        + (
            ", confirmed objects' dips no hard case"
            if args.track_iou and args.track_confirm
            else ""
        )
        + (
            f", objects asked about after {args.track_doubt} frames of doubt"
            if args.track_iou and args.track_doubt > 1
            else ""
        )
        + (
            f", places of sent objects remembered (IoU {args.place_iou:g})"
            if args.track_iou and args.place_iou
            else ""
        )
        + (
            f", places sent unchanged (at most {args.place_change:g} grey levels) asked"
            if args.track_iou and args.place_change
            else ""
        )
        + f", hard cases about {args.ask_labels} boxes once a person detector runs"
        + (", a warm worker per site" if args.warm_worker else ", ClientApps from cold")
        + "; run "
        f"{time.strftime('%Y-%m-%d %H:%M')}: the demo itself (what `fedge demo` runs) "
        f"took {result.seconds / 60:.1f} min, {seconds / 60:.1f} min with this "
        "benchmark's fusion and label scoring"
        + (
            ""
            if others is None
            else f"; processes outside this one and its direct children (the SuperNodes' "
            f"ClientApp processes among them) used {others:.0%} of the CPU"
        )
    )
    _write_table(out / "rounds.md", out / "rounds.csv", round_rows(result.rounds), header)
    with open(out / "fusion.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "map50", "cases"])
        for method, row in fusion.items():
            writer.writerow([method, f"{row['map50']:.6g}", int(row["cases"])])
    cases = int(next(iter(fusion.values()))["cases"])
    (out / "fusion.md").write_text(
        "# Fused labels against cloud-only and edge-only\n\n"
        f"{cases} labelled hard cases of the run above; each method's boxes scored "
        "(mAP@0.5) against the teacher run on the whole frame, inside the regions the cloud "
        "saw.\n\n| method | mAP@0.5 |\n|---|---:|\n"
        + "".join(f"| {m} | {r['map50']:.3f} |\n" for m, r in fusion.items()),
        encoding="utf-8",
    )
    (out / "labels.md").write_text(
        label_audit(work, [s.name for s in result.plan.sites], teacher), encoding="utf-8"
    )
    print((out / "rounds.md").read_text())
    print((out / "fusion.md").read_text())
    print((out / "labels.md").read_text())
    print(json.dumps({"work": str(work)}))
    return 0


def _labels_only(parser: argparse.ArgumentParser, work: Path | None, out: Path) -> int:
    """``--labels-only``: ``labels.md`` of the finished demo in ``work``, into ``out``."""
    from demo_work import read_plan

    from server.cloud.teacher import build_teacher

    if work is None:
        parser.error("--labels-only needs --work: the finished demo's folder")
    plan = read_plan(parser, work)
    sites = [f"site-{site['site']}" for site in plan["sites"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.md").write_text(label_audit(work, sites, build_teacher()), encoding="utf-8")
    print((out / "labels.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
