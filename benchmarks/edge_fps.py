"""Edge FPS benchmark: the fedge pipeline against the seed design's naive loop.

On the sample clip at 640x480, in one run:

- **naive**: the seed design's loop: read a frame, run pose, load the SSD detector
  again, detect, store the frame; one thread, one stage after the other;
- **pipeline**: ``clients.pipeline.Pipeline`` (capture, pose, SSD and store threads);
- **each stage alone** (capture, pose, SSD, store), to see how close the pipeline comes
  to its slowest stage.

FPS is steady-state throughput: frames after the first divided by the time from the
first frame's completion to the last one's (model loading and thread start-up are not
counted). Results go to ``benchmarks/results/edge_fps.{md,csv}`` and a rich table.

Usage::

    python benchmarks/edge_fps.py [--frames 240] [--threads 1] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from clients.capture import Capture, CaptureConfig  # noqa: E402
from clients.detector import Detector  # noqa: E402
from clients.hard_cases import HardCasePolicy, HardCaseSelector  # noqa: E402
from clients.pipeline import Pipeline, PoseModel  # noqa: E402
from clients.pose import create_pose_estimator  # noqa: E402
from data.frame_store import FrameStore  # noqa: E402
from fedge.commands.edge import default_pose_workers, usable_cores  # noqa: E402
from fedge.core.records import FrameResult  # noqa: E402

__all__ = ["Measurement", "main", "median_runs", "run_benchmark", "write_reports"]

CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
SIZE = (640, 480)
STAGES = ("capture", "pose", "ssd", "store")
STORE_BUDGET = 1 << 30
CONTENDED = 0.10  # share of the CPU used by other processes above which FPS is unreliable


@dataclass
class Measurement:
    """One configuration's throughput and mean per-stage latency (ms)."""

    name: str
    frames: int
    fps: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: float = 0.0  # process CPU time per frame, all threads together


def _cpu_ms(started: float, frames: int) -> float:
    return (time.process_time() - started) * 1000.0 / max(1, frames)


def _steady_fps(done: list[float]) -> float:
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0


def _mean_ms(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in samples.items() if v}


def _read_frames(count: int) -> list[np.ndarray]:
    with Capture(CLIP, CaptureConfig(size=SIZE)) as capture:
        frames = [f.image for _, f in zip(range(count), capture, strict=False)]
    return frames


def _detector(model_dir: str | None, threads: int, policy: HardCasePolicy) -> Detector:
    """BlazeFace keeping boxes down to the bottom of the uncertainty band, as fedge edge does."""
    return Detector.blazeface(model_dir, score_threshold=policy.uncertain_low, num_threads=threads)


def _time_each(
    name: str, stage: str, items: Iterable[object], step: Callable[..., object]
) -> Measurement:
    done: list[float] = []
    latency: list[float] = []
    cpu = time.process_time()
    for item in items:
        started = time.perf_counter()
        step(item)
        done.append(time.perf_counter())
        latency.append((done[-1] - started) * 1000.0)
    stage_ms = {stage: float(np.mean(latency))}
    return Measurement(name, len(done), _steady_fps(done), stage_ms, _cpu_ms(cpu, len(done)))


def measure_capture(count: int) -> Measurement:
    """Decode and resize ``count`` frames of the clip, nothing else."""
    done: list[float] = []
    latency: list[float] = []
    cpu = time.process_time()
    with Capture(CLIP, CaptureConfig(size=SIZE, max_frames=count)) as capture:
        for frame in capture:
            done.append(time.perf_counter())
            latency.append(frame.capture_ms)
    stage_ms = {"capture": float(np.mean(latency))}
    return Measurement("capture alone", len(done), _steady_fps(done), stage_ms, _cpu_ms(cpu, count))


def measure_pose_workers(frames: list[np.ndarray], poses: list[PoseModel]) -> Measurement:
    """Run the pose stage alone as the pipeline does: one thread per estimator."""
    done: list[float] = []
    latency: list[float] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for image in frames[worker :: len(poses)]:
            started = time.perf_counter()
            poses[worker].estimate(image)
            finished = time.perf_counter()
            with lock:
                done.append(finished)
                latency.append((finished - started) * 1000.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(poses))]
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    name = f"pose stage alone ({len(poses)} workers)"
    stage_ms = {"pose": float(np.mean(latency))}
    return Measurement(
        name, len(done), _steady_fps(sorted(done)), stage_ms, _cpu_ms(cpu, len(done))
    )


def _pose(model_dir: str | None, threads: int) -> PoseModel:
    return create_pose_estimator("litert", model_dir, num_threads=threads, track=True)


def run_benchmark(
    count: int, threads: int, pose_workers: int, model_dir: str | None
) -> list[Measurement]:
    """Measure every configuration on the first ``count`` frames of the clip."""
    policy = HardCasePolicy()
    frames = _read_frames(count)
    results = [measure_capture(count)]

    results.append(_time_each("pose alone", "pose", frames, _pose(model_dir, threads).estimate))
    if pose_workers > 1:
        poses = [_pose(model_dir, threads) for _ in range(pose_workers)]
        results.append(measure_pose_workers(frames, poses))

    detector = _detector(model_dir, threads, policy)
    results.append(_time_each("ssd alone", "ssd", frames, detector.detect))

    with tempfile.TemporaryDirectory() as tmp, FrameStore(tmp, STORE_BUDGET) as store:
        selector = HardCaseSelector(policy, ("face",))

        def store_one(indexed: tuple[int, np.ndarray]) -> None:
            index, image = indexed
            result = FrameResult(frame=index, time=time.time(), source=str(CLIP))
            decision = selector.decide(image, [], [], result.time)
            result.hard, result.hard_reasons = decision.hard, decision.record_reasons()
            store.add(image, result)

        results.append(_time_each("store alone", "store", enumerate(frames), store_one))

    results.append(_run_naive(count, threads, model_dir, policy))
    if pose_workers > 1:
        results.append(_run_pipeline(count, threads, 1, model_dir, policy))
    results.append(_run_pipeline(count, threads, pose_workers, model_dir, policy))
    return results


def _run_naive(
    count: int, threads: int, model_dir: str | None, policy: HardCasePolicy
) -> Measurement:
    """The seed design: one loop, one stage after the other, detector reloaded per frame."""
    import cv2

    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    done: list[float] = []
    pose = _pose(model_dir, threads)
    cap = cv2.VideoCapture(str(CLIP))
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp, FrameStore(tmp, STORE_BUDGET) as store:
        for index in range(count):
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            frame = cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA)
            t1 = time.perf_counter()
            persons = pose.estimate(frame)
            t2 = time.perf_counter()
            detector = _detector(model_dir, threads, policy)  # reloaded every frame
            detections = detector.detect(frame)
            t3 = time.perf_counter()
            result = FrameResult(index, time.time(), str(CLIP), persons, detections)
            store.add(frame, result)
            t4 = time.perf_counter()
            done.append(t4)
            for stage, a, b in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                samples[stage].append((b - a) * 1000.0)
    cap.release()
    fps = _steady_fps(done)
    return Measurement(
        "naive loop (seed)", len(done), fps, _mean_ms(samples), _cpu_ms(cpu, len(done))
    )


def _run_pipeline(
    count: int,
    threads: int,
    pose_workers: int,
    model_dir: str | None,
    policy: HardCasePolicy,
) -> Measurement:
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    done: list[float] = []
    pose = [_pose(model_dir, threads) for _ in range(pose_workers)]
    detector = _detector(model_dir, threads, policy)
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp, FrameStore(tmp, STORE_BUDGET) as store:
        pipeline = Pipeline(
            Capture(CLIP, CaptureConfig(size=SIZE, max_frames=count)),
            pose=pose,
            detector=detector,
            store=store,
            selector=HardCaseSelector(policy, ("face",)),
        )
        with pipeline:
            for output in pipeline:
                done.append(time.perf_counter())
                for stage in STAGES:
                    samples[stage].append(output.result.timings_ms[stage])
    name = f"fedge pipeline ({pose_workers} pose worker{'s' if pose_workers > 1 else ''})"
    cpu_ms = _cpu_ms(cpu, len(done))
    return Measurement(name, len(done), _steady_fps(done), _mean_ms(samples), cpu_ms)


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat (Linux only)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def other_load(start: tuple[int, int] | None, own_cpu_s: float) -> float | None:
    """Share of the machine's CPU time that other processes used since ``start``."""
    end = _busy_jiffies()
    if start is None or end is None or end[1] <= start[1]:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy_s = (end[0] - start[0]) / ticks
    total_s = (end[1] - start[1]) / ticks
    return max(0.0, busy_s - own_cpu_s) / total_s


def median_runs(runs: list[list[Measurement]]) -> list[Measurement]:
    """Per configuration, the measurement with the median FPS over the runs."""
    merged = []
    for same in zip(*runs, strict=True):
        ranked = sorted(same, key=lambda m: m.fps)
        merged.append(ranked[(len(ranked) - 1) // 2])
    return merged


def _machine() -> str:
    return f"{cpu_model()}, {usable_cores()} usable cores, Python {platform.python_version()}"


def _rows(results: list[Measurement]) -> tuple[list[list[str]], dict[str, float]]:
    by_name = {m.name: m for m in results}
    pipelines = [m for m in results if m.name.startswith("fedge pipeline")]
    pipeline = pipelines[-1]
    naive = by_name["naive loop (seed)"]
    pose_alone = by_name["pose alone"]
    stages = ["capture alone", "ssd alone", "store alone"]
    pose_stage = next((m for m in results if m.name.startswith("pose stage")), pose_alone)
    slowest = min([pose_stage, *(by_name[n] for n in stages)], key=lambda m: m.fps)
    # the most any schedule can reach: every core busy with the stages' own CPU work
    stage_cpu = pose_alone.cpu_ms + sum(by_name[n].cpu_ms for n in stages)
    ceiling = usable_cores() * 1000.0 / stage_cpu if stage_cpu > 0 else 0.0
    ratios = {
        f"{pipeline.name} / naive loop": pipeline.fps / naive.fps,
        f"{pipeline.name} / slowest stage alone ({slowest.name})": pipeline.fps / slowest.fps,
    }
    if ceiling:
        ratios[f"{pipeline.name} / CPU ceiling ({ceiling:.1f} FPS on {usable_cores()} cores)"] = (
            pipeline.fps / ceiling
        )
    if len(pipelines) > 1:
        single = pipelines[0]
        ratios[f"{single.name} / naive loop"] = single.fps / naive.fps
        ratios[f"{single.name} / pose alone"] = single.fps / pose_alone.fps
    rows = [
        [
            m.name,
            str(m.frames),
            f"{m.fps:.1f}",
            *(f"{m.stage_ms[s]:.1f}" if s in m.stage_ms else "" for s in STAGES),
            f"{m.cpu_ms:.1f}",
        ]
        for m in results
    ]
    return rows, ratios


def write_reports(
    results: list[Measurement], out_dir: Path, header: str, warning: str = ""
) -> tuple[Path, Path]:
    """Write ``edge_fps.md`` and ``edge_fps.csv``; return their paths."""
    rows, ratios = _rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["configuration", "frames", "FPS", *(f"{s} ms" for s in STAGES), "CPU ms/frame"]
    csv_path = out_dir / "edge_fps.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
        for name, value in ratios.items():
            writer.writerow([name, "", f"{value:.2f}"])
    md_path = out_dir / "edge_fps.md"
    lines = [
        "# Edge FPS: fedge pipeline vs the naive loop",
        "",
        header,
        "",
        *([f"> **Warning**: {warning}", ""] if warning else []),
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *(f"- **{name}**: {value:.2f}x" for name, value in ratios.items()),
        "",
        "Stage latencies are means per frame; in the pipeline they overlap, so FPS is set "
        "by the slowest stage (or, once pose runs on several workers, by the CPU: all "
        "cores busy) rather than by their sum. The naive loop's `ssd` column includes "
        "reloading the detector for every frame, as the seed design did. `CPU ms/frame` "
        "is the process's CPU time (all threads) per frame; the CPU ceiling is the usable "
        "cores divided by the stages' summed CPU time per frame, measured alone.",
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return md_path, csv_path


def print_table(results: list[Measurement], header: str) -> None:
    """Print the results as a rich table."""
    from rich.console import Console
    from rich.table import Table

    rows, ratios = _rows(results)
    table = Table(title="Edge FPS (sample clip, 640x480)", caption=header)
    for column in ["configuration", "frames", "FPS", *(f"{s} ms" for s in STAGES), "CPU ms/frame"]:
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name}: [bold]{value:.2f}x[/bold]")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240, help="frames per configuration")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads per model")
    parser.add_argument(
        "--pose-workers",
        type=int,
        default=0,
        help="pose estimators in the pipeline (default 0: one per core, at most 3)",
    )
    parser.add_argument("--model-dir", help="pretrained model cache")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything N times, report the median"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    workers = args.pose_workers or default_pose_workers()
    jiffies, own_cpu = _busy_jiffies(), time.process_time()
    runs = [
        run_benchmark(args.frames, args.threads, workers, args.model_dir)
        for _ in range(args.repeat)
    ]
    others = other_load(jiffies, time.process_time() - own_cpu)
    results = median_runs(runs)
    header = (
        f"{_machine()}; LiteRT threads per model: {args.threads}; pose workers: {workers}; "
        f"{args.frames} frames of data/samples/vtest_clip.mp4 at {SIZE[0]}x{SIZE[1]}; "
        f"median of {args.repeat} run(s); other processes used "
        f"{'unknown' if others is None else f'{others:.0%}'} of the CPU meanwhile; "
        f"run {time.strftime('%Y-%m-%d %H:%M')}"
    )
    warning = ""
    if others is not None and others > CONTENDED:
        warning = (
            f"other processes used {others:.0%} of the CPU during this run, so the FPS "
            "figures understate what an idle machine does; rerun on an idle machine. "
            "CPU ms/frame is not affected."
        )
    print_table(results, header)
    if warning:
        print(f"WARNING: {warning}")
    md_path, csv_path = write_reports(results, args.out_dir, header, warning)
    print(f"wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
