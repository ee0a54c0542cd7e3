"""The edge pipeline: capture → pose → SSD → hard cases + store, in threads.

With a top-down pose model (``clients.pose.TopDownPoseEstimator``: a person detector,
then BlazePose landmarks per box) the pose stage also puts the person detector's boxes
into the frame's ``detections``, where hard-case selection sees them beside the SSD's.

Each stage runs in its own thread(s) and hands frames to the next through a small
bounded queue, so while SSD looks at frame *n*, pose is already on frame *n + 1* and
the store is writing frame *n − 1*: throughput is set by the slowest stage, not by the
sum of them. A model stage may be given several model instances (``pose=[a, b]``):
each runs in its own thread, which is how a multi-core node keeps up when pose alone is
the bottleneck (LiteRT releases the GIL while it runs). Pose models keep state between
frames (a tracked pose's next ROI comes from its last landmarks), so pose worker *i* of
*k* gets exactly the frames *i*, *i + k*, *i + 2k*, ...: what each model sees, and so
every result, does not depend on which thread happened to be free (SSD models keep no
state: any free SSD worker takes the next frame).
The store stage puts frames back in capture order. Only the capture queue drops
frames (see ``clients.capture``); the queues between stages apply back-pressure.

The caller just iterates::

    with Pipeline(capture, pose=pose, detector=detector, store=store) as pipeline:
        for output in pipeline:
            print(output.result.to_json())
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from clients.capture import Capture, CaptureStats, Frame
from clients.hard_cases import HardCaseEvent, HardCaseFeed, HardCaseSelector, SelectorStats
from data.frame_store import FrameStore
from fedge.core.records import Detection, FrameResult, Person

if TYPE_CHECKING:
    from clients.motion import MotionProposer

__all__ = [
    "STAGES",
    "DetectorModel",
    "Pipeline",
    "PipelineOutput",
    "PipelineStats",
    "PoseModel",
    "TopDownPoseModel",
]

STAGES: tuple[str, ...] = ("capture", "pose", "ssd", "store", "total")
_END = object()
_POLL_S = 0.1

M = TypeVar("M")


class PoseModel(Protocol):
    """Anything that finds people and their pose landmarks in a BGR frame."""

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]: ...


@runtime_checkable
class TopDownPoseModel(Protocol):
    """A pose model with its own person detector: poses and the detector's boxes."""

    def find_people(self, frame_bgr: np.ndarray) -> tuple[list[Person], list[Detection]]: ...


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


@dataclass(frozen=True)
class _PoseSet:
    """The pose models (one per pose worker) a frame is served by, and their version."""

    models: tuple[PoseModel, ...]
    version: str = ""


@dataclass
class _Work:
    seq: int
    frame: Frame
    result: FrameResult
    poses: _PoseSet
    store_id: int | None = None


class _Inbox:
    """The queue a stage's workers take from, fed by ``producers`` upstream workers.

    ``take`` returns ``_END`` once every producer has finished. An ``ordered`` inbox
    (single consumer) hands work out in ``seq`` order whatever order it arrived in.
    Its size needs no bound: the pipeline limits the frames in flight as a whole.
    """

    def __init__(self, producers: int, ordered: bool, stop: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue()  # bounded by the in-flight slots
        self._producers = producers
        self._ordered = ordered
        self._stop = stop
        self._ends = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[int, _Work]] = []
        self._next_seq = 0

    def put(self, item: object) -> None:
        self._queue.put(item)

    def take(self) -> object:
        while True:
            if self._ordered and self._pending and self._pending[0][0] == self._next_seq:
                self._next_seq += 1
                return heapq.heappop(self._pending)[1]
            if self._finished():
                if self._ordered and self._pending:  # a worker died: hand out what is left
                    return heapq.heappop(self._pending)[1]
                return _END
            if self._stop.is_set():
                return _END
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                with self._lock:
                    self._ends += 1
                continue
            assert isinstance(item, _Work)
            if not self._ordered:
                return item
            heapq.heappush(self._pending, (item.seq, item))

    def _finished(self) -> bool:
        with self._lock:
            return self._ends >= self._producers and self._queue.empty()


class _RoundRobin:
    """Hands the items of ``source`` to ``takers`` takers in turn: taker *i* of *k* gets
    items *i*, *i + k*, ... (in ``source`` order); each gets ``_END`` once ``source``
    has ended and its own items are gone.

    Whichever taker is free reads the next item from ``source`` (one reader at a time)
    and keeps it for its owner, so a slow taker delays only its own items.
    """

    def __init__(self, source: Callable[[], object], takers: int, stop: threading.Event) -> None:
        self._source = source
        self._held: list[deque[object]] = [deque() for _ in range(takers)]
        self._turn = 0
        self._reading = False
        self._ended = False
        self._stop = stop
        self._changed = threading.Condition()

    def taker(self, index: int) -> Callable[[], object]:
        """The ``take`` of taker ``index``."""

        def take() -> object:
            while True:
                with self._changed:
                    while not self._held[index]:
                        if self._ended or self._stop.is_set():
                            return _END
                        if not self._reading:
                            self._reading = True
                            break
                        self._changed.wait(timeout=_POLL_S)
                    else:
                        return self._held[index].popleft()
                item = _END
                try:
                    item = self._source()  # blocks: outside the lock
                finally:
                    with self._changed:
                        self._reading = False
                        if isinstance(item, _Work):
                            self._held[self._turn].append(item)
                            self._turn = (self._turn + 1) % len(self._held)
                        else:
                            self._ended = True
                        self._changed.notify_all()

        return take


class _Worker(threading.Thread):
    """One thread of a stage: take work, apply ``step``, pass it on."""

    def __init__(
        self,
        name: str,
        take: Callable[[], object],
        step: Callable[[_Work], None],
        outbox: _Inbox,
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
                if not isinstance(work, _Work):
                    break
                self._step(work)
                self._outbox.put(work)
        except BaseException as err:  # handed to the consumer, raised there
            self._pipeline.fail(err)
        finally:
            self._outbox.put(_END)


def _replicas(models: M | Sequence[M] | None) -> list[M]:
    if models is None:
        return []
    if isinstance(models, Sequence):
        return list(models)
    return [models]


class Pipeline:
    """Run pose, SSD, hard-case selection and the store over a ``Capture``.

    ``pose`` and ``detector`` are a model, a sequence of model instances (one worker
    thread each) or ``None`` (stage skipped); ``store`` and ``selector`` are optional
    too. Accepted hard cases are published on ``feed``. Iterating yields a
    ``PipelineOutput`` per frame, in capture order; an exception in any stage stops
    the pipeline and is raised from the iteration. At most ``2 * workers + queue_size``
    frames are in flight at once; the live FPS and latencies average the last
    ``window`` frames. With ``frame_clock`` the selector's rate limit and duplicate window
    run on the frames' own times (a recording processed faster than real time is limited
    per minute of video, not of processing). With ``motion`` (a
    ``clients.motion.MotionProposer``) the store stage feeds it every frame in order and
    adds its boxes, labelled ``"motion"``, to the record's ``detections`` after hard-case
    selection has judged the frame (selection never sees them). Each record carries
    ``model_version`` (the version of the pose models' person detector); :meth:`swap_pose`
    hot-swaps the pose models between frames.
    """

    def __init__(
        self,
        capture: Capture,
        *,
        pose: PoseModel | Sequence[PoseModel] | None = None,
        detector: DetectorModel | Sequence[DetectorModel] | None = None,
        store: FrameStore | None = None,
        selector: HardCaseSelector | None = None,
        feed: HardCaseFeed | None = None,
        queue_size: int = 2,
        window: int = 30,
        model_version: str = "",
        frame_clock: bool = False,
        motion: MotionProposer | None = None,
    ) -> None:
        self.capture = capture
        self.frame_clock = frame_clock
        self.motion = motion
        self.poses: list[PoseModel] = _replicas(pose)
        self._pose_set = _PoseSet(tuple(self.poses), model_version)
        self.detectors: list[DetectorModel] = _replicas(detector)
        self.store = store
        self.selector = selector
        self.feed = feed if feed is not None else HardCaseFeed()
        self._queue_size = queue_size
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads: list[_Worker] = []
        self._outbox = _Inbox(1, ordered=False, stop=self._stop)
        self._slots = threading.Semaphore(1)
        self._seq = itertools.count()
        self._take_lock = threading.Lock()
        self._frames = 0
        self._stored = 0
        self._done_times: deque[float] = deque(maxlen=window)
        self._timings: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Open the capture and start every stage thread."""
        self.capture.start()
        stages: list[tuple[str, list[Callable[[_Work], None]]]] = []
        if self.poses:
            stages.append(("pose", [_pose_step(i) for i in range(len(self.poses))]))
        if self.detectors:
            stages.append(("ssd", [_detector_step(m) for m in self.detectors]))
        stages.append(("store", [self._store_step]))
        workers = sum(len(steps) for _, steps in stages)
        self._slots = threading.Semaphore(2 * workers + self._queue_size)
        take: Callable[[], object] = self._take_frame
        for index, (name, steps) in enumerate(stages):
            last = index == len(stages) - 1
            feeds_store = index == len(stages) - 2
            outbox = self._outbox if last else _Inbox(len(steps), feeds_store, self._stop)
            # pose models keep state between frames: each worker gets every k-th frame
            turns = _RoundRobin(take, len(steps), self._stop) if name == "pose" else None
            for i, step in enumerate(steps):
                own_take = turns.taker(i) if turns is not None else take
                self._threads.append(_Worker(f"{name}-{i}", own_take, step, outbox, self))
            take = outbox.take
        for worker in self._threads:
            worker.start()
        return self

    def swap_pose(self, models: Sequence[PoseModel], version: str = "") -> None:
        """Serve the frames taken from now on with ``models`` (one per pose worker).

        Frames already taken finish on the models they started with, so the records'
        ``model_version`` changes at one frame and no frame is dropped or waits for a
        load (load and verify ``models`` before calling this).
        """
        if len(models) != len(self.poses):
            raise ValueError(f"swap_pose needs {len(self.poses)} models, got {len(models)}")
        self._pose_set = _PoseSet(tuple(models), version)

    def stop(self) -> None:
        """Stop every stage and the capture; safe to call twice."""
        self._stop.set()
        self.capture.stop()
        for worker in self._threads:
            worker.join(timeout=5.0)
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
            item = self._outbox.take()
            if not isinstance(item, _Work):
                break
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
            if not self._slots.acquire(timeout=_POLL_S):  # too many frames in flight
                continue
            with self._take_lock:  # frames and sequence numbers in the same order
                try:
                    frame = self.capture.get(timeout=_POLL_S)
                except queue.Empty:
                    self._slots.release()
                    continue
                if frame is None:
                    self._slots.release()
                    return _END
                seq = next(self._seq)
                poses = self._pose_set  # frames taken after a swap_pose get the new set
            result = FrameResult(frame=frame.index, time=frame.time, source=frame.source)
            result.timings_ms["capture"] = frame.capture_ms
            result.model_version = poses.version
            return _Work(seq, frame, result, poses)
        return _END

    def _store_step(self, work: _Work) -> None:
        started = time.perf_counter()
        result = work.result
        moving = self.motion.update(work.frame.image) if self.motion is not None else []
        if self.motion is not None:
            result.timings_ms["motion"] = (time.perf_counter() - started) * 1000.0
        if self.selector is not None:
            # the rate limit runs on the selector's clock, not on the frame's wall-clock time
            now = work.frame.time if self.frame_clock else None
            decision = self.selector.decide(
                work.frame.image,
                result.persons,
                result.detections,
                now=now,
                proposals=moving if self.motion is not None else None,
            )
            result.hard = decision.hard
            result.hard_reasons = decision.record_reasons()
        result.detections.extend(moving)  # after selection: motion is not a detection
        if self.store is not None:
            work.store_id = self.store.add(work.frame.image, result)
            self._stored += 1
        if result.hard:
            reasons = tuple(r for r in result.hard_reasons if not r.startswith("suppressed:"))
            self.feed.publish(
                HardCaseEvent(work.store_id, result.frame, result.time, result.source, reasons)
            )
        done = time.perf_counter()
        result.timings_ms["store"] = (done - started) * 1000.0
        result.timings_ms["total"] = (done - work.frame.started) * 1000.0

    def _record(self, work: _Work) -> None:
        self._slots.release()
        self._frames += 1
        self._done_times.append(time.perf_counter())
        for stage, value in work.result.timings_ms.items():
            if stage in self._timings:
                self._timings[stage].append(value)


def _pose_step(worker: int) -> Callable[[_Work], None]:
    def step(work: _Work) -> None:
        started = time.perf_counter()
        model = work.poses.models[worker]
        if isinstance(model, TopDownPoseModel):
            persons, boxes = model.find_people(work.frame.image)
            work.result.detections.extend(boxes)
        else:
            persons = model.estimate(work.frame.image)
        work.result.persons = list(persons)
        work.result.timings_ms["pose"] = (time.perf_counter() - started) * 1000.0

    return step


def _detector_step(model: DetectorModel) -> Callable[[_Work], None]:
    def step(work: _Work) -> None:
        started = time.perf_counter()
        work.result.detections.extend(model.detect(work.frame.image))  # after pose's boxes
        work.result.timings_ms["ssd"] = (time.perf_counter() - started) * 1000.0

    return step
