"""The edge pipeline: capture → pose → SSD → hard cases + store, one thread per stage.

Each stage runs in its own thread and hands frames to the next through a small
bounded queue, so while SSD looks at frame *n*, pose is already on frame *n + 1* and
the store is writing frame *n − 1*: throughput is set by the slowest stage, not by the
sum of them. Only the capture queue drops frames (see ``clients.capture``); the queues
between stages apply back-pressure. The caller just iterates::

    with Pipeline(capture, pose=pose, detector=detector, store=store) as pipeline:
        for output in pipeline:
            print(output.result.to_json())
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clients.capture import Capture, CaptureStats, Frame
from clients.hard_cases import HardCaseEvent, HardCaseFeed, HardCaseSelector, SelectorStats
from clients.results import Detection, FrameResult, Person
from data.frame_store import FrameStore

__all__ = [
    "STAGES",
    "DetectorModel",
    "Pipeline",
    "PipelineOutput",
    "PipelineStats",
    "PoseModel",
]

STAGES: tuple[str, ...] = ("capture", "pose", "ssd", "store", "total")
_END = object()
_POLL_S = 0.1


class PoseModel(Protocol):
    """Anything that finds people and their pose landmarks in a BGR frame."""

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]: ...


class DetectorModel(Protocol):
    """Anything that finds labelled boxes in a BGR frame (the SSD interface)."""

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]: ...


@dataclass(frozen=True)
class PipelineOutput:
    """One processed frame: its record, its pixels and its id in the store (if stored)."""

    result: FrameResult
    image: np.ndarray
    store_id: int | None


@dataclass
class PipelineStats:
    """Live figures of a run: FPS and mean stage latencies over the last frames."""

    frames: int = 0
    fps: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    stored: int = 0
    capture: CaptureStats = field(default_factory=CaptureStats)
    hard_cases: SelectorStats = field(default_factory=SelectorStats)


@dataclass
class _Work:
    frame: Frame
    result: FrameResult
    store_id: int | None = None


class _Stage(threading.Thread):
    """One pipeline stage: take work, apply ``step``, pass it on."""

    def __init__(
        self,
        name: str,
        take: Callable[[], object],
        step: Callable[[_Work], None],
        outbox: queue.Queue[object],
        pipeline: Pipeline,
    ) -> None:
        super().__init__(name=f"fedge-{name}", daemon=True)
        self._take = take
        self._step = step
        self._outbox = outbox
        self._pipeline = pipeline

    def run(self) -> None:
        try:
            while not self._pipeline.stopping:
                work = self._take()
                if work is _END:
                    break
                if isinstance(work, _Work):
                    self._step(work)
                    self._put(work)
        except BaseException as err:  # handed to the consumer, raised there
            self._pipeline.fail(err)
        finally:
            self._put(_END)

    def _put(self, item: object) -> None:
        while True:
            try:
                self._outbox.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self._pipeline.stopping:
                    return


class Pipeline:
    """Run pose, SSD, hard-case selection and the store over a ``Capture``.

    ``pose``, ``detector``, ``store`` and ``selector`` are each optional; a missing one is
    a skipped stage. Accepted hard cases are published on ``feed``. Iterating yields a
    ``PipelineOutput`` per frame, in capture order; an exception in any stage stops
    the pipeline and is raised from the iteration.
    """

    def __init__(
        self,
        capture: Capture,
        *,
        pose: PoseModel | None = None,
        detector: DetectorModel | None = None,
        store: FrameStore | None = None,
        selector: HardCaseSelector | None = None,
        feed: HardCaseFeed | None = None,
        queue_size: int = 2,
        window: int = 30,
    ) -> None:
        self.capture = capture
        self.pose = pose
        self.detector = detector
        self.store = store
        self.selector = selector
        self.feed = feed if feed is not None else HardCaseFeed()
        self._queue_size = queue_size
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads: list[_Stage] = []
        self._outbox: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._frames = 0
        self._stored = 0
        self._done_times: deque[float] = deque(maxlen=window)
        self._timings: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Open the capture and start every stage thread."""
        self.capture.start()
        steps: list[tuple[str, Callable[[_Work], None]]] = []
        if self.pose is not None:
            steps.append(("pose", self._run_pose))
        if self.detector is not None:
            steps.append(("ssd", self._run_detector))
        steps.append(("store", self._run_store))
        take: Callable[[], object] = self._take_frame
        for name, step in steps:
            last = name == steps[-1][0]
            outbox = self._outbox if last else queue.Queue(maxsize=self._queue_size)
            stage = _Stage(name, take, step, outbox, self)
            self._threads.append(stage)
            take = _queue_taker(outbox, self)
        for stage in self._threads:
            stage.start()
        return self

    def stop(self) -> None:
        """Stop every stage and the capture; safe to call twice."""
        self._stop.set()
        self.capture.stop()
        for stage in self._threads:
            stage.join(timeout=5.0)
        self.feed.close()

    @property
    def stopping(self) -> bool:
        """Whether the pipeline is shutting down."""
        return self._stop.is_set()

    def fail(self, err: BaseException) -> None:
        """Record the first stage error and stop the pipeline."""
        if self._error is None:
            self._error = err
        self._stop.set()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[PipelineOutput]:
        while True:
            try:
                item = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set() and not any(t.is_alive() for t in self._threads):
                    break
                continue
            if item is _END:
                break
            assert isinstance(item, _Work)
            self._record(item)
            yield PipelineOutput(item.result, item.frame.image, item.store_id)
        if self._error is not None:
            raise self._error

    @property
    def stats(self) -> PipelineStats:
        """FPS and mean stage latencies over the last ``window`` frames."""
        fps = 0.0
        if len(self._done_times) >= 2:
            span = self._done_times[-1] - self._done_times[0]
            fps = (len(self._done_times) - 1) / span if span > 0 else 0.0
        return PipelineStats(
            frames=self._frames,
            fps=fps,
            stage_ms={s: sum(v) / len(v) for s, v in self._timings.items() if v},
            stored=self._stored,
            capture=self.capture.stats,
            hard_cases=self.selector.stats if self.selector else SelectorStats(),
        )

    # -- stages ------------------------------------------------------------------------

    def _take_frame(self) -> object:
        while not self._stop.is_set():
            try:
                frame = self.capture.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if frame is None:
                return _END
            result = FrameResult(frame=frame.index, time=frame.time, source=frame.source)
            result.timings_ms["capture"] = frame.capture_ms
            return _Work(frame, result)
        return _END

    def _run_pose(self, work: _Work) -> None:
        assert self.pose is not None
        started = time.perf_counter()
        work.result.persons = list(self.pose.estimate(work.frame.image))
        work.result.timings_ms["pose"] = (time.perf_counter() - started) * 1000.0

    def _run_detector(self, work: _Work) -> None:
        assert self.detector is not None
        started = time.perf_counter()
        work.result.detections = list(self.detector.detect(work.frame.image))
        work.result.timings_ms["ssd"] = (time.perf_counter() - started) * 1000.0

    def _run_store(self, work: _Work) -> None:
        started = time.perf_counter()
        result = work.result
        if self.selector is not None:
            decision = self.selector.decide(
                work.frame.image, result.persons, result.detections, result.time
            )
            result.hard = decision.hard
            result.hard_reasons = decision.record_reasons()
        if self.store is not None:
            work.store_id = self.store.add(work.frame.image, result)
            self._stored += 1
        if result.hard:
            self.feed.publish(
                HardCaseEvent(
                    work.store_id,
                    result.frame,
                    result.time,
                    result.source,
                    tuple(r for r in result.hard_reasons if not r.startswith("suppressed:")),
                )
            )
        done = time.perf_counter()
        result.timings_ms["store"] = (done - started) * 1000.0
        result.timings_ms["total"] = (done - work.frame.started) * 1000.0

    def _record(self, work: _Work) -> None:
        self._frames += 1
        self._done_times.append(time.perf_counter())
        for stage, value in work.result.timings_ms.items():
            if stage in self._timings:
                self._timings[stage].append(value)


def _queue_taker(inbox: queue.Queue[object], pipeline: Pipeline) -> Callable[[], object]:
    def take() -> object:
        while not pipeline.stopping:
            try:
                return inbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END

    return take
