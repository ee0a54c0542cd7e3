"""Pipeline: real BlazePose + BlazeFace on the sample clip, ordering, errors, events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_clock import FakeClock

from clients.capture import Capture, CaptureConfig
from clients.detector import Detector
from clients.hard_cases import HardCaseEvent, HardCaseFeed, HardCasePolicy, HardCaseSelector
from clients.pipeline import STAGES, Pipeline, PoseModel
from clients.pose import create_pose_estimator
from data.frame_store import FrameStore, LabelStatus
from fedge.core.errors import ModelError
from fedge.core.records import Detection

CLIP = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"


@pytest.fixture(scope="module")
def models(model_dir: Path) -> tuple[list[PoseModel], Detector]:
    """Two BlazePose estimators and one BlazeFace detector from the model cache."""
    poses = [
        create_pose_estimator("litert", model_dir, num_threads=1, track=True) for _ in range(2)
    ]
    return poses, Detector.blazeface(model_dir, score_threshold=0.3, num_threads=1)


class _UncertainDetector:
    """Finds one uncertain face per frame; fails on frame ``fail_at`` if set."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.calls = 0

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise ModelError("detector broke")
        return [Detection((10.0, 10.0, 40.0, 40.0), "face", 0.45)]


def test_real_models_fill_every_stage_in_capture_order(
    tmp_path: Path, models: tuple[list[PoseModel], Detector]
) -> None:
    poses, detector = models
    capture = Capture(CLIP, CaptureConfig(size=(640, 480)))
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store:
        pipeline = Pipeline(
            capture,
            pose=poses,
            detector=detector,
            store=store,
            selector=HardCaseSelector(detector_labels=("face",)),
        )
        with pipeline:
            outputs = [o for _, o in zip(range(24), pipeline, strict=False)]
        stored = [f.frame_index for f in store.iter_frames()]

    frames = [o.result.frame for o in outputs]
    assert frames == list(range(24))
    assert stored[:24] == frames
    assert all(set(STAGES) <= set(o.result.timings_ms) for o in outputs)
    assert sum(len(o.result.persons) for o in outputs) >= 6  # people walk through the clip
    person = next(p for o in outputs for p in o.result.persons)
    assert person.landmarks.shape == (33, 4)
    assert all(o.image.shape == (480, 640, 3) for o in outputs)


def test_hard_cases_are_flagged_in_store_and_published(tmp_path: Path) -> None:
    # Prepare: every frame is hard and distinct; 4 hard cases a second, a burst of 5; the
    # selector's clock moves 1/16 s a frame (a quarter token), however fast frames come.
    feed = HardCaseFeed()
    events: list[HardCaseEvent] = []
    feed.subscribe(events.append)
    policy = HardCasePolicy(max_per_minute=240, burst=5, dedup_max_distance=-1)
    clock = FakeClock(step=1 / 16)
    capture = Capture(CLIP, CaptureConfig(size=(320, 240), max_frames=20))
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store:
        pipeline = Pipeline(
            capture,
            detector=_UncertainDetector(),
            store=store,
            selector=HardCaseSelector(policy, ("face",), clock=clock),
            feed=feed,
        )

        # Execute
        with pipeline:
            outputs = list(pipeline)
        pending = store.hard_cases(LabelStatus.PENDING)
        suppressed = list(store.iter_frames())

    # Assert: the burst (frames 0-4), the quarter tokens gathered meanwhile (frame 5),
    # then one frame in four.
    hard = [o for o in outputs if o.result.hard]
    assert [o.result.frame for o in outputs] == list(range(20))
    assert [o.result.frame for o in hard] == [0, 1, 2, 3, 4, 5, 8, 12, 16]
    assert clock.reads == 20
    assert [e.frame_id for e in events] == [o.store_id for o in hard]
    assert [f.id for f in pending] == [o.store_id for o in hard]
    assert all(e.reasons == ("uncertain_score",) for e in events)
    held = [f for f in suppressed if f.label_status is LabelStatus.SUPPRESSED]
    assert held and all(f.hard_reasons[-1] == "suppressed:rate_limited" for f in held)


def test_stage_error_stops_pipeline_and_is_raised(tmp_path: Path) -> None:
    pipeline = Pipeline(Capture(CLIP), detector=_UncertainDetector(fail_at=5))
    seen = 0
    with pytest.raises(ModelError, match="detector broke"):
        with pipeline:
            for _ in pipeline:
                seen += 1
    assert seen <= 5
    assert not any(t.name.startswith("fedge-") and t.is_alive() for t in threading.enumerate())


def test_replicated_stage_keeps_capture_order() -> None:
    detectors = [_UncertainDetector() for _ in range(3)]
    with Pipeline(Capture(CLIP, CaptureConfig(size=(160, 120))), detector=detectors) as pipeline:
        frames = [o.result.frame for o in pipeline]
    assert frames == list(range(240))
    assert all(d.calls > 0 for d in detectors)
    assert sum(d.calls for d in detectors) == 240


class _Recording:
    """A pose model that finds nobody and keeps a fingerprint of each frame it saw,
    sleeping ``delay_s`` per frame (a worker that is slower than the others)."""

    def __init__(self, inner: PoseModel | None = None, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.seen: list[int] = []

    def estimate(self, frame_bgr: np.ndarray) -> list:
        self.seen.append(_fingerprint(frame_bgr))
        time.sleep(self.delay_s)
        return self.inner.estimate(frame_bgr) if self.inner is not None else []


def _fingerprint(image: np.ndarray) -> int:
    return hash(image.tobytes())


def test_pose_worker_i_of_k_gets_exactly_frames_i_plus_multiples_of_k() -> None:
    # Prepare: three pose workers, the first far slower than the others, so free workers
    # would take its turns if frames went to whichever worker was free
    poses = [_Recording(delay_s=0.02), _Recording(), _Recording()]
    capture = Capture(CLIP, CaptureConfig(size=(160, 120)))
    # Execute
    with Pipeline(capture, pose=poses) as pipeline:
        outputs = [o for _, o in zip(range(60), pipeline, strict=False)]
    # Assert: in capture order, and worker i saw frames i, i + 3, ... and no other
    assert [o.result.frame for o in outputs] == list(range(60))
    order = [_fingerprint(o.image) for o in outputs]
    for i, pose in enumerate(poses):
        assert pose.seen[: len(order[i::3])] == order[i::3]


def test_tracked_pose_results_do_not_depend_on_which_worker_is_slow(
    model_dir: Path,
) -> None:
    """Tracked BlazePose keeps state between frames: the landmarks of a run where one
    worker is slow equal those of a run where the other one is."""

    def run(slow: int) -> list[np.ndarray]:
        poses = [
            _Recording(
                create_pose_estimator("litert", model_dir, num_threads=1, track=True),
                delay_s=0.05 if i == slow else 0.0,
            )
            for i in range(2)
        ]
        capture = Capture(CLIP, CaptureConfig(size=(640, 480)))
        with Pipeline(capture, pose=poses) as pipeline:
            outputs = [o for _, o in zip(range(30), pipeline, strict=False)]
        found = [o.result.persons for o in outputs if o.result.persons]
        return [np.stack([p.landmarks for p in persons]) for persons in found]

    first, second = run(slow=0), run(slow=1)
    assert len(first) >= 6  # people walk through the clip
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
