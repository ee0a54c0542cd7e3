"""Uplink benchmark: hard cases from the node to ``fedge cloud`` and labels back.

On the sample clip (``--source`` for another video), side by side in one run:

- **node pass**: ``fedge edge``'s models and defaults (BlazePose on LiteRT with tracking,
  one estimator per pose worker on alternate frames; BlazeFace keeping boxes down to the
  uncertainty band; ``HardCasePolicy()``: 6 hard cases a minute, burst 3, duplicates
  held back), each frame decided at its camera time (frame index / fps, as a real-time
  camera would) and kept in a real ``FrameStore``;
- **bytes up** per privacy mode: every hard-case candidate (frames that qualify, before
  the duplicate check and rate limit) built by ``clients.privacy_filter.PrivacyFilter``
  from the store (faces blurred), its serialized ``HardCase`` bytes against the same
  frame's JPEG in the store (the store's quality); the clip's bytes up (the accepted hard
  cases) against sending every frame as JPEG;
- **round trip** on loopback: a real ``fedge cloud`` process (plaintext, the full default
  teacher ensemble) and a real ``clients.uploader.Uploader`` per mode; each hard case is
  added to a fresh store and the time to its label in the store is measured, on two
  schedules at the node's default rate: the clip's accepted hard cases at their camera
  times, and the fastest the default policy allows (its burst at once, then one per
  60 / ``max_per_minute`` s);
- **cloud throughput**: cases per second through 4 concurrent ``InferStream`` calls, with
  the service's CPU time per case;
- **persons per frame** found by the node's BlazePose, by each teacher member and by the
  fused (weighted boxes fusion) ensemble, on evenly spaced frames;
- **burst**: ``--bursts`` unary ``frames`` cases at once from 8 threads; cases admitted and
  refused (``RESOURCE_EXHAUSTED``), the most cases in flight (from the audit log), and the
  service's resident memory (RSS, polled every 10 ms) against its idle RSS.

The machine's load is measured per section (``/proc/stat``; other processes' share of
the CPU) and flagged above 10%. Results go to ``benchmarks/results/uplink.{md,csv}``, a
CSV per section (``uplink_*.csv``) and rich tables.

Usage::

    python benchmarks/uplink.py [--frames 240] [--source VIDEO] [--latency-cases 6]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_fps import _busy_jiffies, other_load  # noqa: E402  (benchmarks/edge_fps.py)
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from clients.capture import Capture, CaptureConfig  # noqa: E402
from clients.detector import Detector  # noqa: E402
from clients.hard_cases import HardCasePolicy, HardCaseSelector  # noqa: E402
from clients.pose import create_pose_estimator  # noqa: E402
from clients.privacy_filter import PrivacyFilter, PrivacyPolicy  # noqa: E402
from clients.uploader import Uploader, UploaderConfig  # noqa: E402
from data.frame_store import FrameStore, StoredFrame  # noqa: E402
from fedge.commands.edge import default_pose_workers, usable_cores  # noqa: E402
from fedge.core.labels import FrameLabel  # noqa: E402
from fedge.core.proto import cloud_pb2  # noqa: E402
from fedge.core.records import FrameResult  # noqa: E402
from server.cloud.case_service import pixel_bytes  # noqa: E402
from server.cloud.teacher import BUILTIN_MEMBERS, build_teacher, merge_boxes  # noqa: E402

__all__ = [
    "CloudProcess",
    "NodePass",
    "main",
    "measure_bursts",
    "measure_bytes",
    "measure_latency",
    "measure_persons",
    "measure_throughput",
    "run_node",
    "write_reports",
]

CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
SIZE = (640, 480)
MODES = ("landmarks", "crops", "frames")
STORE_BUDGET = 1 << 30
CONTENDED = 0.10  # share of the CPU used by other processes above which timings are unreliable
COUNTED_SCORE = 0.3  # a teacher box counts as a person from this score (tests/test_teacher.py)
GOAL_RTT_P95_S = 1.0
GOAL_CROPS_SHARE = 0.10
THROUGHPUT_STREAMS = 4  # fedge cloud's default --max-concurrency
BURST_THREADS = 8
RSS_POLL_S = 0.01
NODE_ID = "bench-node"


# -- load and the service process ----------------------------------------------------------


class CloudProcess:
    """The real ``fedge cloud`` (plaintext, full default teacher) on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.audit_log = workdir / "audit.jsonl"
        self._stderr = (workdir / "cloud.stderr").open("w")
        command = [sys.executable, "-m", "fedge", "cloud", "--insecure", "--port", "0"]
        self.process = subprocess.Popen(
            [*command, "--audit-log", str(self.audit_log)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"fedge cloud did not start: {line!r} (see {workdir}/cloud.stderr)")
        self.target = line.removeprefix("listening on ")
        self.pid = self.process.pid

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no {key}")

    def rss_mib(self) -> float:
        """Resident memory now (MiB)."""
        return self._status_kib("VmRSS") / 1024.0

    def hwm_mib(self) -> float:
        """Peak resident memory since the process started (MiB)."""
        return self._status_kib("VmHWM") / 1024.0

    def cpu_s(self) -> float:
        """User + system CPU seconds of the service so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's lines so far."""
        import json

        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line]

    def stop(self) -> None:
        """SIGTERM (the service drains), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._stderr.close()


class LoadMeter:
    """Other processes' share of the machine's CPU over a section (``edge_fps.other_load``).

    Our own CPU is this process's and the service's.
    """

    def __init__(self, service: CloudProcess | None = None) -> None:
        self.service = service
        self._jiffies = _busy_jiffies()
        self._own = time.process_time()
        self._service = service.cpu_s() if service else 0.0

    def others(self, extra_own_s: float = 0.0) -> float:
        """Share of the CPU other processes used since the meter was made (NaN if unknown);
        ``extra_own_s``: CPU seconds of our processes the meter does not watch."""
        own = time.process_time() - self._own + extra_own_s
        if self.service is not None:
            own += self.service.cpu_s() - self._service
        share = other_load(self._jiffies, own)
        return math.nan if share is None else share


# -- node pass -------------------------------------------------------------------------------


@dataclass
class NodePass:
    """What the node made of the frames: results, store ids, hard-case verdicts."""

    source: str
    fps: float
    images: list[np.ndarray]
    results: list[FrameResult]
    stored: list[StoredFrame]
    qualifying: list[int]  # frame indices that qualify as hard (before suppression)
    accepted: list[int]  # frame indices accepted as hard cases
    node_ms: float  # pose + SSD per frame (ms, mean)
    pose_workers: int
    policy: HardCasePolicy
    others: float = math.nan


def run_node(
    source: Path,
    count: int,
    store: FrameStore,
    model_dir: str | None,
    threads: int,
    pose_workers: int,
) -> NodePass:
    """Run the node's models and hard-case policy over ``count`` frames, storing each."""
    meter = LoadMeter()
    policy = HardCasePolicy()
    with Capture(source, CaptureConfig(size=SIZE, max_frames=count)) as capture:
        fps = capture.fps or 10.0
        images = [frame.image for frame in capture]
    if not images:
        raise SystemExit(f"no frame could be read from {source}")
    poses = [
        create_pose_estimator("litert", model_dir, num_threads=threads, track=True)
        for _ in range(pose_workers)
    ]
    detector = Detector.blazeface(
        model_dir, score_threshold=policy.uncertain_low, num_threads=threads
    )
    selector = HardCaseSelector(policy, detector_labels=tuple(detector.spec.labels) or None)
    results, stored, qualifying, accepted, spent = [], [], [], [], 0.0
    start = time.time()
    for index, image in enumerate(images):
        began = time.perf_counter()
        persons = poses[index % pose_workers].estimate(image)  # the pipeline alternates
        detections = detector.detect(image)
        spent += time.perf_counter() - began
        camera_time = index / fps
        decision = selector.decide(image, persons, detections, now=camera_time)
        result = FrameResult(
            frame=index,
            time=start + camera_time,
            source=str(source),
            persons=persons,
            detections=detections,
            hard=decision.hard,
            hard_reasons=decision.record_reasons(),
        )
        results.append(result)
        stored.append(store.get(store.add(image, result)))
        if decision.reasons:
            qualifying.append(index)
        if decision.hard:
            accepted.append(index)
    return NodePass(
        str(source),
        fps,
        images,
        results,
        stored,
        qualifying,
        accepted,
        spent * 1000.0 / len(images),
        pose_workers,
        policy,
        meter.others(),
    )


# -- bytes per mode ------------------------------------------------------------------------


@dataclass
class CaseBytes:
    """One hard-case candidate built in one mode."""

    mode: str
    frame: int
    accepted: bool
    case_bytes: int
    pixel_bytes: int
    frame_jpeg_bytes: int
    crops: int
    sends_pixels: bool  # False for a crops case with nothing to crop (sent as landmarks)
    build_ms: float
    person_crop_bytes: int = 0  # JPEG bytes of the crops around the node's poses

    @property
    def share(self) -> float:
        """Case bytes / the frame's JPEG bytes in the store."""
        return self.case_bytes / self.frame_jpeg_bytes


def measure_bytes(
    node: NodePass, model_dir: str | None, threads: int, max_cases: int
) -> tuple[list[CaseBytes], dict[str, list[cloud_pb2.HardCase]], float]:
    """Build every candidate in every mode from the store; return sizes, cases and load."""
    meter = LoadMeter()
    chosen = _spread(node.qualifying, max_cases, keep=node.accepted)
    rows: list[CaseBytes] = []
    cases: dict[str, list[cloud_pb2.HardCase]] = {}
    for mode in MODES:
        privacy = PrivacyFilter.create(mode, model_dir, num_threads=threads)
        cases[mode] = []
        for index in chosen:
            stored = node.stored[index]
            began = time.perf_counter()
            case = privacy.build_case(stored, node_id=NODE_ID)
            build_ms = (time.perf_counter() - began) * 1000.0
            assert case is not None
            cases[mode].append(case)
            person_regions = set(
                privacy.crop_regions(
                    replace(stored.result(), detections=[]), stored.width, stored.height
                )
            )
            rows.append(
                CaseBytes(
                    mode,
                    index,
                    index in node.accepted,
                    case.ByteSize(),
                    pixel_bytes(case),
                    stored.bytes,
                    len(case.crops.crops),
                    case.privacy_mode
                    in (cloud_pb2.PRIVACY_MODE_CROPS, cloud_pb2.PRIVACY_MODE_FRAMES),
                    build_ms,
                    sum(
                        len(c.jpeg)
                        for c in case.crops.crops
                        if (c.x, c.y, c.x + c.width, c.y + c.height) in person_regions
                    ),
                )
            )
    return rows, cases, meter.others()


def _jpeg_ms(images: Sequence[np.ndarray], quality: int) -> float:
    """Mean ms to encode one frame as JPEG at ``quality`` (what sending it would cost)."""
    import cv2

    began = time.perf_counter()
    for image in images:
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return (time.perf_counter() - began) * 1000.0 / len(images)


def _spread(indices: Sequence[int], limit: int, keep: Sequence[int] = ()) -> list[int]:
    """At most ``limit`` of ``indices``, evenly spaced, always with those in ``keep``."""
    if len(indices) <= limit:
        return list(indices)
    picks = {indices[round(i)] for i in np.linspace(0, len(indices) - 1, limit)}
    return sorted(picks | set(keep))


# -- persons per frame ---------------------------------------------------------------------


@dataclass
class PersonsRow:
    """People found in one frame (teacher boxes counted from ``COUNTED_SCORE``)."""

    frame: int
    node: int
    members: dict[str, int]
    fused: int
    member_s: dict[str, float]


def measure_persons(
    node: NodePass, model_dir: str | None, threads: int, frames: int
) -> tuple[list[PersonsRow], float]:
    """Node persons vs each teacher member and the fused ensemble on spread frames."""
    meter = LoadMeter()
    teacher = build_teacher(
        model_dir=None if model_dir is None else Path(model_dir), num_threads=threads
    )
    rows = []
    for index in _spread(list(range(len(node.images))), frames):
        image = node.images[index]
        height, width = image.shape[:2]
        found = teacher.member_detections(image, clock=time.perf_counter)
        fused = merge_boxes(
            [boxes for boxes, _ in found.values()], width, height, conf_type=teacher.conf_type
        )
        rows.append(
            PersonsRow(
                index,
                len(node.results[index].persons),
                {name: _counted(boxes) for name, (boxes, _) in found.items()},
                _counted(fused),
                {name: seconds for name, (_, seconds) in found.items()},
            )
        )
    return rows, meter.others()


def _counted(boxes: Sequence[Any]) -> int:
    return sum(1 for box in boxes if box.score >= COUNTED_SCORE)


# -- throughput ----------------------------------------------------------------------------


@dataclass
class Throughput:
    """Cases of one mode through ``streams`` concurrent InferStream calls."""

    mode: str
    cases: int
    ok: int
    wall_s: float
    teacher_ms: float  # mean CloudResult.cloud_seconds (teacher + fusion)
    service_cpu_ms: float  # service CPU time per case
    others: float

    @property
    def per_s(self) -> float:
        """Cases answered per second."""
        return self.ok / self.wall_s if self.wall_s > 0 else math.nan


def _renumbered(
    cases: Sequence[cloud_pb2.HardCase], count: int, node_id: str, first: int = 1
) -> list[cloud_pb2.HardCase]:
    """``count`` copies of ``cases`` (cycled) with fresh frame ids, so none is a retry."""
    out = []
    for frame_id, case in zip(range(first, first + count), itertools.cycle(cases), strict=False):
        copy = cloud_pb2.HardCase()
        copy.CopyFrom(case)
        copy.node_id, copy.frame_id = node_id, frame_id
        out.append(copy)
    return out


def measure_throughput(
    service: CloudProcess, cases: Sequence[cloud_pb2.HardCase], mode: str, count: int
) -> Throughput:
    """Send ``count`` cases over ``THROUGHPUT_STREAMS`` concurrent streams; time them."""
    import grpc

    from fedge.core.proto import cloud_pb2_grpc

    batch = _renumbered(cases, count, f"throughput-{mode}")
    shares = [batch[i::THROUGHPUT_STREAMS] for i in range(THROUGHPUT_STREAMS)]
    replies: list[cloud_pb2.StreamReply] = []
    lock = threading.Lock()

    def stream(share: list[cloud_pb2.HardCase]) -> None:
        with grpc.insecure_channel(service.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = cloud_pb2_grpc.CloudStub(channel)
            gate.wait()
            got = list(stub.InferStream(iter(share), timeout=600))
        with lock:
            replies.extend(got)

    workers = [threading.Thread(target=stream, args=(s,)) for s in shares if s]
    gate = threading.Barrier(len(workers) + 1)
    for worker in workers:
        worker.start()
    gate.wait()
    meter = LoadMeter(service)
    cpu, began = service.cpu_s(), time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - began
    ok = [r for r in replies if r.code == 0]
    teacher = [r.result.cloud_seconds for r in ok]
    return Throughput(
        mode,
        len(batch),
        len(ok),
        wall,
        float(np.mean(teacher)) * 1000.0 if teacher else math.nan,
        (service.cpu_s() - cpu) * 1000.0 / max(1, len(ok)),
        meter.others(),
    )


# -- burst -----------------------------------------------------------------------------------


@dataclass
class Burst:
    """One burst of concurrent unary ``frames`` cases."""

    size: int
    ok: int
    refused: int  # RESOURCE_EXHAUSTED
    other: int
    max_in_flight: int  # from the audit log's answered cases
    idle_rss_mib: float
    peak_rss_mib: float
    hwm_mib: float
    wall_s: float
    others: float


def measure_bursts(
    service: CloudProcess, cases: Sequence[cloud_pb2.HardCase], sizes: Sequence[int]
) -> list[Burst]:
    """Fire each burst at once from ``BURST_THREADS`` threads; watch the service's RSS."""
    return [_burst(service, cases, size, n) for n, size in enumerate(sizes)]


def _burst(
    service: CloudProcess, cases: Sequence[cloud_pb2.HardCase], size: int, number: int
) -> Burst:
    import grpc

    from fedge.core.proto import cloud_pb2_grpc

    time.sleep(0.5)  # settle after the previous section
    idle = service.rss_mib()
    prefix = f"burst{number}-{size}-"
    batch = _renumbered(cases, size, prefix)
    shares = [batch[i::BURST_THREADS] for i in range(BURST_THREADS)]
    for i, share in enumerate(shares):
        for case in share:
            case.node_id = f"{prefix}{i}"
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    shares = [s for s in shares if s]
    gate = threading.Barrier(len(shares) + 1)
    done = threading.Event()
    peak = [idle]

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], service.rss_mib())
            time.sleep(RSS_POLL_S)

    def fire(share: list[cloud_pb2.HardCase]) -> None:
        with grpc.insecure_channel(service.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = cloud_pb2_grpc.CloudStub(channel)
            gate.wait()
            calls = [stub.Infer.future(case, timeout=600) for case in share]
            for call in calls:
                try:
                    call.result()
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with lock:
                    codes[code] += 1

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    workers = [threading.Thread(target=fire, args=(s,)) for s in shares]
    for worker in workers:
        worker.start()
    gate.wait()
    meter = LoadMeter(service)
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - began
    done.set()
    watcher.join()
    peak[0] = max(peak[0], service.rss_mib())
    answered = [
        e
        for e in service.audit()
        if str(e.get("node") or "").startswith(prefix) and e["status"] == "OK"
    ]
    return Burst(
        size,
        codes["OK"],
        codes["RESOURCE_EXHAUSTED"],
        sum(codes.values()) - codes["OK"] - codes["RESOURCE_EXHAUSTED"],
        _max_overlap([(e["time"] - e["latency_ms"] / 1000.0, e["time"]) for e in answered]),
        idle,
        peak[0],
        service.hwm_mib(),
        wall,
        meter.others(),
    )


def _max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one time (an end before a start at the same instant)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# -- round trip --------------------------------------------------------------------------------


class TimedStore(FrameStore):
    """A ``FrameStore`` that notes when each label is written (``time.perf_counter``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labelled_at: dict[int, float] = {}

    def store_label(self, frame_id: int, label: FrameLabel) -> None:
        """Store the label as ``FrameStore`` does, then note the time."""
        super().store_label(frame_id, label)
        self.labelled_at[frame_id] = time.perf_counter()


@dataclass
class RoundTrip:
    """One hard case from the store to its label in the store."""

    mode: str
    schedule: str
    frame: int
    offset_s: float
    seconds: float


def schedules(node: NodePass, cases: int) -> dict[str, list[tuple[float, int]]]:
    """``(offset s, frame index)`` per schedule: the clip's hard cases at their camera
    times, and the default policy's fastest (its burst at once, then one per interval)."""
    interval = 60.0 / node.policy.max_per_minute
    offsets = [0.0] * node.policy.burst + [interval * (k + 1) for k in range(cases)]
    frames = node.accepted + [i for i in node.qualifying if i not in node.accepted]
    fastest = list(zip(offsets[:cases], itertools.cycle(frames), strict=False)) if frames else []
    return {
        "clip": [(index / node.fps, index) for index in node.accepted],
        "policy max": fastest,
    }


def measure_latency(
    service: CloudProcess,
    node: NodePass,
    mode: str,
    plan: dict[str, list[tuple[float, int]]],
    workdir: Path,
    model_dir: str | None,
    threads: int,
) -> tuple[list[RoundTrip], float, float]:
    """Replay each schedule into a fresh store drained by a real uploader; return the
    round trips, the uploader's own mean RTT (ms) and the load."""
    meter = LoadMeter(service)
    rows: list[RoundTrip] = []
    rtts = []
    for name, timeline in plan.items():
        if not timeline:
            continue
        root = workdir / f"latency-{mode}-{name.replace(' ', '-')}"
        with TimedStore(root, STORE_BUDGET) as store:
            privacy = PrivacyFilter.create(mode, model_dir, num_threads=threads)
            config = UploaderConfig(
                target=service.target, node_id=f"latency-{mode}-{name}", insecure=True
            )
            uploader = Uploader(store, privacy, config).start()
            queued: dict[int, tuple[float, int, float]] = {}
            try:
                began = time.perf_counter()
                for offset, index in timeline:
                    time.sleep(max(0.0, began + offset - time.perf_counter()))
                    base = node.results[index]
                    result = FrameResult(
                        frame=index,
                        time=time.time(),
                        source=node.source,
                        persons=base.persons,
                        detections=base.detections,
                        hard=True,
                        hard_reasons=[
                            r for r in base.hard_reasons if not r.startswith("suppressed")
                        ],
                    )
                    frame_id = store.add(node.images[index], result)
                    queued[frame_id] = (time.perf_counter(), index, offset)
                    uploader.wake()
                drained = uploader.drain(300.0)
            finally:
                uploader.stop()
            if not drained:
                print(f"WARNING: {mode}/{name}: the queue did not drain: {uploader.stats}")
            if uploader.stats.rtt_ms is not None:
                rtts.append(uploader.stats.rtt_ms)
            for frame_id, (at, index, offset) in queued.items():
                done = store.labelled_at.get(frame_id)
                seconds = math.nan if done is None else done - at
                rows.append(RoundTrip(mode, name, index, offset, seconds))
    return rows, float(np.mean(rtts)) if rtts else math.nan, meter.others()


# -- reports -----------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one run measured."""

    node: NodePass
    frames_jpeg_bytes: int
    store_quality: int
    jpeg_ms: float  # encoding one frame at the store's quality (the baseline's node cost)
    bytes_rows: list[CaseBytes]
    bytes_others: float
    persons: list[PersonsRow]
    persons_others: float
    throughput: list[Throughput]
    bursts: list[Burst]
    latency: list[RoundTrip]
    uploader_rtt_ms: dict[str, float]
    latency_others: dict[str, float]
    max_concurrency: int = THROUGHPUT_STREAMS


def _pct(values: Sequence[float], q: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else math.nan


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.{digits}f}"


def _load(value: float) -> str:
    return "?" if not math.isfinite(value) else f"{value:.0%}"


def _share(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.3%}"


Cell = str | int | float


def _text(value: Cell) -> str:
    return str(value)


def _count(value: Cell) -> str:
    return f"{int(value):,}" if isinstance(value, int) else _fmt(float(value), 0)


def _digits(digits: int) -> Callable[[Cell], str]:
    return lambda value: _fmt(float(value), digits)


def _ratio(value: Cell) -> str:
    return _share(float(value))


def _others(value: Cell) -> str:
    return _load(float(value))


@dataclass
class Table:
    """A section's table: raw values (for the CSV) and how each column is shown."""

    columns: list[tuple[str, Callable[[Cell], str]]]
    rows: list[list[Cell]]

    @property
    def names(self) -> list[str]:
        """Column names."""
        return [name for name, _ in self.columns]

    def shown(self) -> list[list[str]]:
        """Rows as displayed (units, thousands separators, percentages)."""
        return [
            [show(v) for (_, show), v in zip(self.columns, row, strict=True)] for row in self.rows
        ]

    def raw(self) -> list[list[str]]:
        """Rows as written to CSV: plain numbers (``nan`` when not measured)."""
        return [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in row] for row in self.rows]


def bytes_table(run: Run) -> Table:
    """Bytes per mode: per candidate, and the clip's bytes up against every frame as JPEG."""
    node = run.node
    every = run.frames_jpeg_bytes
    table = Table(
        [
            ("mode", _text),
            ("cases", _count),
            ("bytes/case", _count),
            ("pixel bytes/case", _count),
            ("case / its frame JPEG (median)", _ratio),
            ("case / its frame JPEG (p95)", _ratio),
            ("crops/case", _digits(1)),
            ("node ms/case", _digits(1)),
            ("clip bytes up", _count),
            ("clip vs every frame JPEG", _ratio),
        ],
        [["none", 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0]],
    )
    for mode in MODES:
        cases = [r for r in run.bytes_rows if r.mode == mode]
        clip = sum(r.case_bytes for r in cases if r.accepted)
        table.rows.append(
            [
                mode,
                len(cases),
                _mean([r.case_bytes for r in cases]),
                _mean([r.pixel_bytes for r in cases]),
                _pct([r.share for r in cases], 50),
                _pct([r.share for r in cases], 95),
                _mean([r.crops for r in cases]),
                _mean([r.build_ms for r in cases]),
                clip,
                clip / every,
            ]
        )
    per_frame = every / len(node.images)
    table.rows.append(
        [
            "every frame as JPEG (baseline)",
            len(node.images),
            per_frame,
            per_frame,
            1.0,
            1.0,
            0.0,
            run.jpeg_ms,
            every,
            1.0,
        ]
    )
    return table


def latency_table(run: Run) -> Table:
    """Round trip per mode and schedule, p50/p95 in seconds."""
    table = Table(
        [
            ("mode", _text),
            ("schedule", _text),
            ("cases", _count),
            ("labelled", _count),
            ("p50 s", _digits(2)),
            ("p95 s", _digits(2)),
            ("max s", _digits(2)),
            ("uploader RTT ms (mean)", _digits(1)),
            ("others", _others),
        ],
        [],
    )
    for mode in MODES:
        samples = [r for r in run.latency if r.mode == mode]
        for name in ("clip", "policy max", "all"):
            chosen = samples if name == "all" else [r for r in samples if r.schedule == name]
            seconds = [r.seconds for r in chosen if math.isfinite(r.seconds)]
            table.rows.append(
                [
                    mode,
                    name,
                    len(chosen),
                    len(seconds),
                    _pct(seconds, 50),
                    _pct(seconds, 95),
                    max(seconds, default=math.nan),
                    run.uploader_rtt_ms.get(mode, math.nan),
                    run.latency_others.get(mode, math.nan),
                ]
            )
    return table


def throughput_table(run: Run) -> Table:
    """Cases per second per mode, with teacher and service CPU time per case."""
    per_minute = run.node.policy.max_per_minute
    return Table(
        [
            ("mode", _text),
            ("cases", _count),
            ("answered", _count),
            ("cases/s", _digits(2)),
            ("teacher ms/case", _digits(1)),
            ("service CPU ms/case", _digits(1)),
            (f"nodes at {per_minute:g}/min", _digits(0)),
            ("others", _others),
        ],
        [
            [
                t.mode,
                t.cases,
                t.ok,
                t.per_s,
                t.teacher_ms,
                t.service_cpu_ms,
                t.per_s / (per_minute / 60.0),
                t.others,
            ]
            for t in run.throughput
        ],
    )


def persons_table(run: Run) -> Table:
    """Mean persons per frame by finder, with seconds per frame."""
    finders: list[tuple[str, list[int], float]] = [
        (
            f"node BlazePose ({run.node.pose_workers} worker(s), tracking)",
            [r.node for r in run.persons],
            run.node.node_ms / 1000.0,
        )
    ]
    for name in BUILTIN_MEMBERS:
        finders.append(
            (
                f"teacher: {name}",
                [r.members.get(name, 0) for r in run.persons],
                _mean([r.member_s.get(name, math.nan) for r in run.persons]),
            )
        )
    finders.append(
        (
            "teacher: fused ensemble (WBF)",
            [r.fused for r in run.persons],
            _mean([sum(r.member_s.values()) for r in run.persons]),
        )
    )
    return Table(
        [
            ("finder", _text),
            ("frames", _count),
            ("persons/frame (mean)", _digits(2)),
            ("min", _count),
            ("max", _count),
            ("s/frame", _digits(3)),
        ],
        [
            [name, len(counts), _mean(counts), min(counts), max(counts), seconds]
            for name, counts, seconds in finders
        ],
    )


def burst_table(run: Run) -> Table:
    """Per burst: admitted, refused, most in flight, idle and peak RSS."""
    return Table(
        [
            ("burst (frames cases)", _count),
            ("answered", _count),
            ("refused (RESOURCE_EXHAUSTED)", _count),
            ("other errors", _count),
            ("most in flight", _count),
            ("idle RSS MiB", _digits(1)),
            ("peak RSS MiB", _digits(1)),
            ("peak - idle MiB", _digits(1)),
            ("wall s", _digits(2)),
            ("others", _others),
        ],
        [
            [
                b.size,
                b.ok,
                b.refused,
                b.other,
                b.max_in_flight,
                b.idle_rss_mib,
                b.peak_rss_mib,
                b.peak_rss_mib - b.idle_rss_mib,
                b.wall_s,
                b.others,
            ]
            for b in run.bursts
        ],
    )


def goals(run: Run) -> list[tuple[str, bool, str]]:
    """(goal, met, measured) for each goal of the issue."""
    out = []
    for mode in MODES:
        seconds = [r.seconds for r in run.latency if r.mode == mode]
        p95 = _pct(seconds, 95)
        out.append(
            (
                f"round trip p95 <= {GOAL_RTT_P95_S:g} s ({mode}, both schedules)",
                math.isfinite(p95) and p95 <= GOAL_RTT_P95_S,
                f"p95 {_fmt(p95, 2)} s over {len(seconds)} cases",
            )
        )
    with_crops = [r for r in run.bytes_rows if r.mode == "crops" and r.sends_pixels]
    crops = [r.share for r in with_crops]
    person = _pct([r.person_crop_bytes / r.frame_jpeg_bytes for r in with_crops], 50)
    p95 = _pct(crops, 95)
    within = sum(1 for s in crops if s <= GOAL_CROPS_SHARE)
    out.append(
        (
            f"crops case <= {GOAL_CROPS_SHARE:.0%} of its frame's JPEG (p95 of cases with crops)",
            math.isfinite(p95) and p95 <= GOAL_CROPS_SHARE,
            f"p95 {_share(p95)}, median {_share(_pct(crops, 50))}; {within} of {len(crops)} "
            f"within; the crops around the node's poses alone: median {_share(person)}",
        )
    )
    bounded = bool(run.bursts) and all(
        b.refused > 0 and b.other == 0 and b.max_in_flight <= run.max_concurrency
        for b in run.bursts
    )
    detail = "; ".join(
        f"{b.size}: {b.ok} answered, {b.refused} refused, at most {b.max_in_flight} in flight, "
        f"RSS {_fmt(b.idle_rss_mib, 0)} -> {_fmt(b.peak_rss_mib, 0)} MiB"
        for b in run.bursts
    )
    out.append(
        (
            f"burst bounded (excess refused with RESOURCE_EXHAUSTED, <= {run.max_concurrency} "
            "in flight)",
            bounded,
            detail,
        )
    )
    return out


def summary_rows(run: Run) -> list[list[str]]:
    """The long-format summary (``uplink.csv``): section, item, metric, value, unit."""
    node = run.node
    rows: list[list[str]] = []

    def add(section: str, item: str, metric: str, value: float, unit: str) -> None:
        rows.append([section, item, metric, f"{value:.6g}", unit])

    add("node", "frames", "count", len(node.images), "frames")
    add("node", "hard cases", "qualifying share", len(node.qualifying) / len(node.images), "ratio")
    add("node", "hard cases", "accepted share", len(node.accepted) / len(node.images), "ratio")
    add("node", "hard cases", "accepted", len(node.accepted), "cases")
    add("node", "pose + ssd", "time per frame", node.node_ms, "ms")
    add(
        "bytes",
        "every frame as JPEG",
        "bytes per frame",
        run.frames_jpeg_bytes / len(node.images),
        "B",
    )
    add("bytes", "every frame as JPEG", "clip bytes", run.frames_jpeg_bytes, "B")
    add("bytes", "none", "clip bytes", 0, "B")
    for mode in MODES:
        cases = [r for r in run.bytes_rows if r.mode == mode]
        clip = sum(r.case_bytes for r in cases if r.accepted)
        add("bytes", mode, "bytes per case", _mean([r.case_bytes for r in cases]), "B")
        add("bytes", mode, "pixel bytes per case", _mean([r.pixel_bytes for r in cases]), "B")
        add("bytes", mode, "case / frame JPEG median", _pct([r.share for r in cases], 50), "ratio")
        add("bytes", mode, "case / frame JPEG p95", _pct([r.share for r in cases], 95), "ratio")
        add("bytes", mode, "clip bytes", clip, "B")
        add("bytes", mode, "clip bytes vs every frame JPEG", clip / run.frames_jpeg_bytes, "ratio")
        add("bytes", mode, "node build time per case", _mean([r.build_ms for r in cases]), "ms")
        if mode == "crops":
            person = [r.person_crop_bytes / r.frame_jpeg_bytes for r in cases if r.sends_pixels]
            add("bytes", mode, "person crops / frame JPEG median", _pct(person, 50), "ratio")
    for mode in MODES:
        seconds = [r.seconds for r in run.latency if r.mode == mode]
        add("latency", mode, "round trip p50", _pct(seconds, 50), "s")
        add("latency", mode, "round trip p95", _pct(seconds, 95), "s")
        add("latency", mode, "cases", len(seconds), "cases")
    for t in run.throughput:
        add("throughput", t.mode, "cases per second", t.per_s, "1/s")
        add("throughput", t.mode, "teacher time per case", t.teacher_ms, "ms")
        add("throughput", t.mode, "service CPU per case", t.service_cpu_ms, "ms")
    add("persons", "node", "persons per frame", _mean([r.node for r in run.persons]), "persons")
    for name in BUILTIN_MEMBERS:
        counts = [r.members.get(name, 0) for r in run.persons]
        add("persons", name, "persons per frame", _mean(counts), "persons")
    add("persons", "fused", "persons per frame", _mean([r.fused for r in run.persons]), "persons")
    for b in run.bursts:
        item = f"burst {b.size}"
        add("burst", item, "answered", b.ok, "calls")
        add("burst", item, "refused", b.refused, "calls")
        add("burst", item, "other errors", b.other, "calls")
        add("burst", item, "most in flight", b.max_in_flight, "calls")
        add("burst", item, "idle rss", b.idle_rss_mib, "MiB")
        add("burst", item, "peak rss", b.peak_rss_mib, "MiB")
    for name, met, _ in goals(run):
        add("goals", name, "met", float(met), "bool")
    return rows


SECTIONS: tuple[tuple[str, str, Callable[[Run], Table]], ...] = (
    ("bytes", "Bytes up per privacy mode", bytes_table),
    ("latency", "Hard-case round trip on loopback (store -> label in the store)", latency_table),
    ("throughput", "Cloud throughput, full teacher ensemble", throughput_table),
    ("persons", f"Persons per frame (teacher boxes from score {COUNTED_SCORE})", persons_table),
    ("burst", "Service memory under a burst", burst_table),
)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def write_reports(run: Run, out_dir: Path, header: str, warning: str = "") -> list[Path]:
    """Write ``uplink.md``, ``uplink.csv`` and the per-case/per-frame CSVs; return paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "uplink.csv"
    _write_csv(path, ["section", "item", "metric", "value", "unit"], summary_rows(run))
    written.append(path)
    for key, _, make in SECTIONS:
        table = make(run)
        path = out_dir / f"uplink_{key}.csv"
        _write_csv(path, table.names, table.raw())
        written.append(path)
    path = out_dir / "uplink_cases.csv"
    _write_csv(
        path,
        ["mode", "frame", "accepted", "case bytes", "pixel bytes", "frame JPEG bytes", "crops",
         "person crop bytes", "sends pixels", "build ms"],
        [[r.mode, r.frame, int(r.accepted), r.case_bytes, r.pixel_bytes, r.frame_jpeg_bytes,
          r.crops, r.person_crop_bytes, int(r.sends_pixels), f"{r.build_ms:.2f}"]
         for r in run.bytes_rows],
    )  # fmt: skip
    written.append(path)
    path = out_dir / "uplink_round_trips.csv"
    _write_csv(
        path,
        ["mode", "schedule", "frame", "offset s", "round trip s"],
        [
            [r.mode, r.schedule, r.frame, f"{r.offset_s:.3f}", f"{r.seconds:.4f}"]
            for r in run.latency
        ],
    )
    written.append(path)
    written.append(_write_markdown(run, out_dir / "uplink.md", header, warning))
    return written


def _md_table(table: Table) -> list[str]:
    align = ["---" if show is _text else "---:" for _, show in table.columns]
    return [
        "| " + " | ".join(table.names) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in table.shown()),
    ]


def _write_markdown(run: Run, path: Path, header: str, warning: str) -> Path:
    node = run.node
    lines = [
        "# Uplink: hard cases to fedge cloud and labels back",
        "",
        header,
        "",
        *([f"> **Warning**: {warning}", ""] if warning else []),
        f"Hard cases under the node's default policy: {len(node.qualifying)} of "
        f"{len(node.images)} frames qualify ({len(node.qualifying) / len(node.images):.1%}), "
        f"{len(node.accepted)} are accepted after the duplicate check and the rate limit "
        f"({len(node.accepted) / len(node.images):.1%}; frames {node.accepted}).",
        "",
    ]
    notes = _notes(run)
    for key, title, make in SECTIONS:
        table = make(run)
        lines += [f"## {title}", "", *_md_table(table), "", *notes[key], ""]
    lines += ["## Goals", ""]
    for name, met, measured in goals(run):
        lines.append(f"- **{name}**: {'met' if met else 'NOT met'} ({measured})")
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _notes(run: Run) -> dict[str, list[str]]:
    return {"bytes": [_bytes_note(run)], **NOTES}


def _bytes_note(run: Run) -> str:
    return (
        "Bytes are the serialized `HardCase` (what the uploader counts as `bytes_up`; HTTP/2 "
        "framing not included), built by the node's privacy filter from the stored frame "
        f"with faces blurred (JPEG quality {PrivacyPolicy().jpeg_quality}). Cases are the "
        "hard-case candidates (frames that qualify, before the duplicate check and the rate "
        "limit); `case / its frame JPEG` divides by the same frame's JPEG in the store "
        f"(quality {run.store_quality}, unblurred). `clip bytes up` sums the accepted hard "
        "cases only; the baseline sends every frame as that JPEG. A `crops` case crops "
        "around the node's poses and around its detector's boxes (such as the uncertain box "
        "that made the frame hard); `uplink_cases.csv` gives the pose crops' bytes apart. "
        "One with nothing to crop is sent as `landmarks` (no pixels). `node ms/case`: building the "
        "case on the node (face search on tiles, blur, JPEG, check); for the baseline, "
        "encoding the JPEG."
    )


NOTES: dict[str, list[str]] = {
    "latency": [
        "A real `fedge cloud` process and a real uploader per mode over plaintext loopback; a "
        "case's round trip runs from its frame entering a fresh store (pending) to its "
        "label written back into the store, so it includes building the case on the node. "
        "`clip`: the clip's accepted hard cases at their camera times; `policy max`: the "
        "fastest the default policy allows (its burst at once, then one per interval). The "
        "teacher runs one case at a time, so a burst's later cases wait for the earlier "
        "ones. `uploader RTT ms`: the uploader's own mean (case handed to gRPC -> answer).",
    ],
    "throughput": [
        f"{THROUGHPUT_STREAMS} concurrent `InferStream` calls (the service's default "
        "`--max-concurrency`), cases cycled from the candidates with fresh frame ids. "
        "`teacher ms/case` is the service's `cloud_seconds` (teacher + fusion); the teacher "
        "runs one case at a time. `nodes at N/min`: nodes the service keeps up with at the "
        "node's default hard-case rate.",
    ],
    "persons": [
        "On evenly spaced frames of the source, unblurred. The node's count is the poses its "
        "BlazePose returned for that frame in the node pass; a teacher box counts from "
        f"score {COUNTED_SCORE}. The sample clip shows about 6 people a frame. `s/frame` for "
        "the node is pose + SSD; for the fused ensemble, the members' sum.",
    ],
    "burst": [
        f"Unary `frames` cases fired at once from {BURST_THREADS} threads (one channel "
        "each). `most in flight`: the most answered cases whose service time overlapped "
        "(audit log). RSS polled every 10 ms; idle RSS is measured just before the burst, "
        "after one `frames` and one `crops` case warmed the service (and after the bursts "
        "before it).",
    ],
}


def print_tables(run: Run, header: str) -> None:
    """Print every section as a rich table, then the goals."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=max(Console().width, 140))
    for _, title, make in SECTIONS:
        table = make(run)
        shown = RichTable(title=title)
        for column, show in table.columns:
            shown.add_column(column, justify="left" if show is _text else "right")
        for row in table.shown():
            shown.add_row(*row)
        console.print(shown)
    console.print(header, soft_wrap=True)
    for name, met, measured in goals(run):
        verdict = "[green]met[/green]" if met else "[red]NOT met[/red]"
        console.print(f"goal {name}: {verdict} ({measured})", soft_wrap=True)


# -- main ----------------------------------------------------------------------------------


def _machine() -> str:
    return f"{cpu_model()}, {usable_cores()} usable cores, Python {platform.python_version()}"


def _contention_warning(run: Run, overall: float) -> str:
    sections = {
        "node pass": run.node.others,
        "bytes": run.bytes_others,
        "persons": run.persons_others,
        **{f"throughput {t.mode}": t.others for t in run.throughput},
        **{f"burst {b.size}": b.others for b in run.bursts},
        **{f"round trip {m}": v for m, v in run.latency_others.items()},
    }
    busy = [f"{name} {share:.0%}" for name, share in sections.items() if share > CONTENDED]
    if not (math.isfinite(overall) and overall > CONTENDED) and not busy:
        return ""
    return (
        f"other processes used {_load(overall)} of the CPU during this run (sections over "
        f"{CONTENDED:.0%}: {', '.join(busy) or 'none'}), so times, round trips and "
        "throughput understate what an idle machine does; rerun on an idle machine. Bytes, "
        "counts, memory and the service's CPU ms/case are not affected."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=CLIP, help="video (default: sample clip)")
    parser.add_argument("--frames", type=int, default=240, help="frames of the source (240)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads per model (1)")
    parser.add_argument(
        "--pose-workers", type=int, default=0, help="node pose workers (0: as fedge edge)"
    )
    parser.add_argument("--model-dir", help="pretrained model cache")
    parser.add_argument(
        "--max-cases", type=int, default=40, help="hard-case candidates built per mode (40)"
    )
    parser.add_argument(
        "--latency-cases", type=int, default=6, help="cases of the 'policy max' schedule (6)"
    )
    parser.add_argument(
        "--throughput-cases",
        type=int,
        default=24,
        help="cases per pixel mode for throughput; landmarks sends 10x (24)",
    )
    parser.add_argument(
        "--teacher-frames", type=int, default=12, help="frames for persons per frame (12)"
    )
    parser.add_argument(
        "--bursts", type=int, nargs="+", default=[16, 64], help="burst sizes (16 64)"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.max_cases < 1 or args.teacher_frames < 1:
        parser.error("--frames, --max-cases and --teacher-frames must be 1 or more")
    workers = args.pose_workers or default_pose_workers()
    overall = LoadMeter()
    with tempfile.TemporaryDirectory(prefix="fedge-uplink-") as tmp:
        workdir = Path(tmp)
        with FrameStore(workdir / "node-store", STORE_BUDGET) as store:
            node = run_node(args.source, args.frames, store, args.model_dir, args.threads, workers)
            print(
                f"node: {len(node.images)} frames, {len(node.qualifying)} qualify, "
                f"{len(node.accepted)} accepted {node.accepted}",
                flush=True,
            )
            if not node.qualifying:
                raise SystemExit(
                    f"no frame of the first {len(node.images)} qualifies as a hard case: "
                    "use more --frames"
                )
            frames_jpeg = sum(s.bytes for s in node.stored)
            store_quality, jpeg_ms = store.jpeg_quality, _jpeg_ms(node.images, store.jpeg_quality)
            bytes_rows, cases, bytes_others = measure_bytes(
                node, args.model_dir, args.threads, args.max_cases
            )
        print("bytes: done", flush=True)
        persons, persons_others = measure_persons(
            node, args.model_dir, args.threads, args.teacher_frames
        )
        print("persons: done", flush=True)
        service = CloudProcess(workdir)
        try:
            # warm the service (first calls allocate the teacher's buffers)
            warm = _renumbered(cases["frames"][:1] + cases["crops"][:1], 2, "warm-up")
            measure_throughput(service, warm, "warm-up", 2)
            bursts = measure_bursts(service, cases["frames"], args.bursts)
            print("bursts: done", flush=True)
            throughput = [
                measure_throughput(
                    service,
                    cases[mode],
                    mode,
                    args.throughput_cases * (10 if mode == "landmarks" else 1),
                )
                for mode in MODES
            ]
            print("throughput: done", flush=True)
            plan = schedules(node, args.latency_cases)
            latency: list[RoundTrip] = []
            rtt, latency_others = {}, {}
            for mode in MODES:
                rows, rtt[mode], latency_others[mode] = measure_latency(
                    service, node, mode, plan, workdir, args.model_dir, args.threads
                )
                latency += rows
            print("round trips: done", flush=True)
        finally:
            service_cpu = service.cpu_s() if service.process.poll() is None else 0.0
            service.stop()
    others = overall.others(service_cpu)
    run = Run(
        node,
        frames_jpeg,
        store_quality,
        jpeg_ms,
        bytes_rows,
        bytes_others,
        persons,
        persons_others,
        throughput,
        bursts,
        latency,
        rtt,
        latency_others,
    )
    header = (
        f"{_machine()}; {len(node.images)} frames of {_shown(args.source)} at "
        f"{SIZE[0]}x{SIZE[1]} ({node.fps:g} fps); node: BlazePose (LiteRT, {workers} pose "
        f"worker(s), tracking) + BlazeFace, default hard-case policy "
        f"({node.policy.max_per_minute:g}/min, burst {node.policy.burst}); cloud: fedge cloud "
        "--insecure on loopback, full teacher (hog + blazepose-tiles), fusion mean, max "
        f"concurrency {THROUGHPUT_STREAMS}; other processes used {_load(others)} of the CPU "
        f"meanwhile; run {time.strftime('%Y-%m-%d %H:%M')}"
    )
    warning = _contention_warning(run, others)
    print_tables(run, header)
    if warning:
        print(f"WARNING: {warning}")
    written = write_reports(run, args.out_dir, header, warning)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _shown(source: Path) -> str:
    try:
        return str(Path(source).resolve().relative_to(REPO))
    except ValueError:
        return str(source)


if __name__ == "__main__":
    sys.exit(main())
