"""One camera site of the demo: the edge agent as ``fedge edge --detector-dir --cloud`` runs it.

The same parts as ``fedge edge``: motion proposals in ``crops`` mode (``--motion auto``),
whole-frame BlazePose until a person detector is
installed (cold start), then top-down pose on the installed detector's boxes (swapped
in live by ``clients.hot_swap.DetectorFollower`` from ``<store>/detector``, where the
site's SuperNode installs each round's model), BlazeFace, hard-case selection on the
video's clock, the frame store, and the uploader sending privacy-filtered hard cases
to ``fedge cloud`` and writing its labels back into the store. The camera is a
:class:`~fedge.demo.staged_source.StagedSource`, fed one stretch per round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.detector import Detector
from clients.drawing import annotate
from clients.hard_cases import HardCasePolicy, HardCaseSelector
from clients.hot_swap import DetectorFollower, person_detector_loader, swap_into
from clients.motion import MotionProposer
from clients.pipeline import Pipeline
from clients.pose import create_pose_estimator
from clients.pose.top_down import TopDownPoseEstimator
from clients.privacy_filter import PrivacyFilter, shown_regions
from clients.uploader import Uploader, UploaderConfig
from data.frame_store import FrameStore
from export.score_calibration import ScoreCalibration
from fedge.core.errors import FedgeError
from fedge.core.records import FrameResult
from fedge.demo.staged_source import StagedFrame, StagedSource

__all__ = ["SiteAgent", "StageReport", "tally_results"]

STORE_BUDGET_BYTES = 512 * 1024**2


@dataclass
class StageReport:
    """What one site did with one stretch."""

    frames: int = 0
    hard_frames: int = 0  # frames with a hard-case reason (before dedup and rate limit)
    flagged: int = 0  # frames flagged for upload (after them)
    held_back: dict[str, int] = field(default_factory=dict)  # hard frames by suppression
    already_asked: int = 0  # frames not hard only because the cloud saw their objects
    already_confirmed: int = 0  # ... or the detector was sure of them on a frame before
    doubt_pending: int = 0  # ... or it had been unsure of them on too few frames yet
    sent: int = 0  # cases the cloud answered
    labelled: int = 0
    bytes_up: int = 0
    persons: int = 0  # posed persons over the stretch
    boxes: int = 0  # person boxes from the version's operating score over the stretch
    # with a calibrated version: person boxes in its uncertainty band, and the number of
    # its box decisions its calibration expects to be wrong, over the stretch
    calibrated: bool = False
    band: tuple[float, float] | None = None  # the version's uncertainty band [low, high)
    uncertain_boxes: int = 0
    expected_box_errors: float = 0.0
    fps: float = 0.0
    latency_ms: float = 0.0
    model_version: str = ""
    reasons: dict[str, int] = field(default_factory=dict)
    drained: bool = True


def tally_results(
    report: StageReport,
    results: Sequence[FrameResult],
    min_box_score: float,
    calibration: ScoreCalibration | None,
) -> None:
    """Add what ``results`` say to ``report``: hard frames by reason and held back by
    suppression, flagged frames, posed persons, person boxes from ``min_box_score`` on, and
    with a ``calibration`` the person boxes in its band and its expected wrong decisions."""
    for result in results:
        reasons = [r for r in result.hard_reasons if not r.startswith("suppressed:")]
        report.hard_frames += bool(reasons)
        report.flagged += bool(result.hard)
        for reason in reasons:
            report.reasons[reason] = report.reasons.get(reason, 0) + 1
        for held in result.hard_reasons:
            if held.startswith("suppressed:"):
                kind = held.removeprefix("suppressed:")
                report.held_back[kind] = report.held_back.get(kind, 0) + 1
        report.persons += len(result.persons)
        people = [d for d in result.detections if d.label == "person"]
        report.boxes += sum(1 for d in people if d.score >= min_box_score)
        report.model_version = result.model_version or report.model_version
        if calibration is not None:
            report.uncertain_boxes += sum(1 for d in people if calibration.uncertain(d.score))
            report.expected_box_errors += sum(
                calibration.error_probability(d.score) for d in people
            )


class SiteAgent:
    """The edge agent of one site (module docstring)."""

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        cloud: str,
        privacy: str,
        policy: HardCasePolicy,
        model_dir: str | None,
        fps: float,
        epoch: float,
        max_persons: int = 4,
        keep_frames: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.root = root
        self.store_dir = root / "store"
        self.store = FrameStore(self.store_dir, budget_bytes=STORE_BUDGET_BYTES, fsync=False)
        self.source = StagedSource(name, fps, epoch)
        self.follower = DetectorFollower(
            self.store_dir / "detector",
            load=person_detector_loader(policy.uncertain_low, num_threads=1),
            copies=1,
            poll_s=0.2,
        )
        if self.follower.load_current(required=False) is not None:
            raise FedgeError(f"{self.store_dir} already holds a detector: use a fresh --out")
        self.face = Detector.blazeface(
            model_dir, score_threshold=policy.uncertain_low, num_threads=1
        )
        self.pose = [create_pose_estimator("litert", model_dir, num_threads=1, track=True)]
        self.selector = HardCaseSelector(
            policy,
            detector_labels=tuple(self.face.spec.labels),
            cold_start=True,
            shows=shown_regions(privacy),  # only what a case shows counts as asked about
        )
        self.pipeline = Pipeline(
            self.source,
            pose=self.pose,
            detector=self.face,
            store=self.store,
            selector=self.selector,
            frame_clock=True,
            motion=MotionProposer()
            if privacy == "crops"
            else None,  # as `fedge edge --motion auto`
        )
        self.uploader = Uploader(
            self.store,
            PrivacyFilter.create(privacy, model_dir, num_threads=1),
            UploaderConfig(target=cloud, node_id=name, token=None, insecure=True),
        )
        follower = self.follower
        self.uploader.model_version = lambda: follower.version

        def first_estimator(detector: Any) -> TopDownPoseEstimator:
            return TopDownPoseEstimator.from_cache(
                detector, model_dir, num_threads=1, max_persons=max_persons
            )

        self.follower.on_swap = swap_into(
            self.pipeline, self.pose, first_estimator=first_estimator, selector=self.selector
        )
        self.keep_frames = set(keep_frames)
        self.kept: dict[int, np.ndarray] = {}  # annotated frames for the report's strip
        self._results: list[tuple[float, FrameResult]] = []
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._consumer = threading.Thread(target=self._consume, name=f"{name}-out", daemon=True)

    def start(self) -> SiteAgent:
        """Start the pipeline, the uploader and the detector follower."""
        self.pipeline.start()
        self.uploader.start()
        self.uploader.watch(self.pipeline.feed)
        self.follower.start()
        self._consumer.start()
        return self

    @property
    def version(self) -> str:
        """The detector version serving now (``""``: none, cold start)."""
        return self.follower.version

    def wait_for_version(self, version: int, timeout: float) -> None:
        """Block until the agent serves detector ``version`` (the live hot swap)."""
        deadline = time.monotonic() + timeout
        while (self.follower.active is None or self.follower.active.version != version) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        active = self.follower.active
        if active is None or active.version != version:
            rejected = "; ".join(self.follower.rejected.values()) or "nothing installed"
            raise FedgeError(
                f"{self.name} did not swap in detector version {version} within "
                f"{timeout:.0f} s (running: {self.version or 'none'}; {rejected})"
            )

    def run_stage(self, frames: Sequence[StagedFrame], timeout: float) -> StageReport:
        """Process ``frames``, then wait for the cloud's labels of their hard cases."""
        active = self.follower.active
        min_box_score = 0.5 if active is None else active.operating_score
        calibration = None if active is None else active.calibration
        before = _uplink_counts(self.uploader)
        asked_before = self.selector.stats.already_asked
        confirmed_before = self.selector.stats.already_confirmed
        pending_before = self.selector.stats.doubt_pending
        with self._lock:
            first = len(self._results)
        self.source.release(frames)
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._results) < first + len(frames) and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.5))
            if self._error is not None:
                raise FedgeError(f"{self.name}'s edge agent failed: {self._error}")
            done = self._results[first:]
        if len(done) + self.source.stats.corrupt < len(frames):
            raise FedgeError(
                f"{self.name} processed {len(done)} of {len(frames)} frames in {timeout:.0f} s"
            )
        drained = self.uploader.drain(max(1.0, deadline - time.monotonic()))
        after = _uplink_counts(self.uploader)
        report = StageReport(
            frames=len(done),
            sent=after[0] - before[0],
            labelled=after[1] - before[1],
            bytes_up=after[2] - before[2],
            drained=drained,
            calibrated=calibration is not None,
            band=None
            if calibration is None
            else (calibration.uncertain_low, calibration.uncertain_high),
            already_asked=self.selector.stats.already_asked - asked_before,
            already_confirmed=self.selector.stats.already_confirmed - confirmed_before,
            doubt_pending=self.selector.stats.doubt_pending - pending_before,
        )
        tally_results(report, [result for _, result in done], min_box_score, calibration)
        times = [t for t, _ in done]
        if len(times) >= 2 and times[-1] > times[0]:
            report.fps = (len(times) - 1) / (times[-1] - times[0])
        totals = [r.timings_ms.get("total", 0.0) for _, r in done]
        report.latency_ms = float(np.mean(totals)) if totals else 0.0
        return report

    def close(self) -> None:
        """Stop everything the agent runs and close its store (safe to call twice)."""
        self.source.finish()
        self.follower.stop()
        self.pipeline.stop()
        self.uploader.stop()
        if self._consumer.is_alive():
            self._consumer.join(timeout=10.0)
        self.store.close()

    def _consume(self) -> None:
        try:
            for output in self.pipeline:
                result = output.result
                if result.frame in self.keep_frames:
                    self.kept[result.frame] = annotate(
                        output.image,
                        result.persons,
                        result.detections,
                        fps=self.pipeline.stats.fps,
                        hard=result.hard,
                        reasons=result.hard_reasons,
                    )
                with self._lock:
                    self._results.append((time.perf_counter(), result))
                    self._lock.notify_all()
        except BaseException as err:  # noqa: BLE001 - reported by run_stage
            with self._lock:
                self._error = err
                self._lock.notify_all()


def _uplink_counts(uploader: Uploader) -> tuple[int, int, int]:
    stats = uploader.stats
    return stats.sent, stats.labelled, stats.bytes_up
