"""``fedge edge``: run the edge node on a camera, a video, a stream or a folder of images.

Per frame: pose (BlazePose; with ``--person-model``, top-down on a person detector's
boxes; with ``--detector-dir``, on the installed detector, each new version swapped in
between frames) and SSD detections, hard-case selection, the frame in the local store,
optionally a JSON line and an annotated video frame; live FPS and stage latencies on
the console. Ctrl-C (or SIGTERM) stops cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.commands.edge_uplink import (
    add_uplink_flags,
    check_uplink_flags,
    drain_uploader,
    start_uploader,
    uplink_summary,
)
from fedge.commands.selection_flags import (
    add_ask_labels_flag,
    add_tracking_flags,
    parse_ask_labels,
)
from fedge.core.errors import CaptureError, ConfigError
from fedge.core.signals import stop_signals_interrupt

if TYPE_CHECKING:
    from clients.hard_cases import HardCasePolicy, HardCaseSelector
    from clients.hot_swap import DetectorFollower
    from clients.motion import MotionProposer

__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_STORE_DIR",
    "default_pose_workers",
    "hard_case_selector",
    "register",
    "usable_cores",
]

# data/samples/ beside fedge/, in a checkout and in site-packages alike (no import of
# the data package, which may pull in heavy dependencies).
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "vtest_clip.mp4"
DEFAULT_STORE_DIR = Path("outputs") / "edge-store"
EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    """Add ``fedge edge`` to the top-level subparsers."""
    parser = subparsers.add_parser(
        "edge",
        help="run the edge node: capture, pose + SSD, hard cases, local frame store",
        description=(
            "Capture frames, run BlazePose and the SSD detector on LiteRT, keep the frames in "
            "the local store and flag hard cases for the cloud. Nothing leaves the node "
            "unless --cloud sends hard cases, as --privacy allows."
        ),
    )
    parser.add_argument(
        "--source",
        default=str(DEFAULT_SOURCE),
        metavar="PATH|INDEX|URL|DIR",
        help="video file, camera index, rtsp/http URL or folder of images "
        "(default: the bundled sample clip)",
    )
    parser.add_argument(
        "--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: all)"
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="start a file or folder again at its end, frame numbers counting on, until "
        "stopped or --max-frames (not for a camera or stream)",
    )
    parser.add_argument(
        "--size",
        default="640x480",
        metavar="WxH",
        help="resize frames to WxH before inference ('native' keeps them; default 640x480)",
    )
    parser.add_argument("--show", action="store_true", help="show the annotated frames")
    parser.add_argument("--out", metavar="FILE.mp4", help="write annotated video here")
    parser.add_argument("--jsonl", metavar="FILE", help="write one JSON record per frame here")
    parser.add_argument(
        "--store-dir",
        default=str(DEFAULT_STORE_DIR),
        metavar="DIR",
        help=f"local frame store (default: {DEFAULT_STORE_DIR})",
    )
    parser.add_argument(
        "--store-budget-mb",
        type=float,
        default=2048.0,
        metavar="N",
        help="disk budget of the frame store; oldest frames are evicted (default: 2048)",
    )
    parser.add_argument("--no-store", action="store_true", help="do not keep frames")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="pace a file at its frame rate like a camera (late frames are dropped)",
    )
    parser.add_argument(
        "--hard-per-minute",
        type=float,
        default=6.0,
        metavar="N",
        help="at most N hard cases a minute (default: 6)",
    )
    parser.add_argument(
        "--cold-start-per-minute",
        type=float,
        default=2.0,
        metavar="N",
        help="without a person detector, sample at most N frames a minute as hard cases "
        "for the cloud to label (default: 2; 0: off)",
    )
    add_tracking_flags(parser)
    add_ask_labels_flag(parser)
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N", help="LiteRT threads per model (default: 1)"
    )
    parser.add_argument(
        "--pose-workers",
        type=int,
        default=0,
        metavar="N",
        help="pose estimators run side by side on alternate frames "
        "(default 0: one per CPU core, at most 3)",
    )
    parser.add_argument(
        "--model-dir",
        metavar="DIR",
        help="pretrained model cache (default: $FEDGE_MODEL_DIR or ~/.cache/fedge/models)",
    )
    parser.add_argument(
        "--pose-backend",
        default="litert",
        choices=("litert", "tasks"),
        help="BlazePose on LiteRT (default) or on MediaPipe Tasks",
    )
    parser.add_argument(
        "--person-model",
        metavar="PATH",
        help="person detector (TFLite SSD with TFLite_Detection_PostProcess outputs, class 0 "
        "a person): pose runs top-down, BlazePose landmarks on each of its boxes",
    )
    parser.add_argument(
        "--detector-dir",
        nargs="?",
        const="",
        metavar="DIR",
        help="run the person detector the SuperNode installed in DIR (default: "
        "$FEDGE_DETECTOR_DIR, else detector/ in --store-dir) and swap each new version in "
        "between frames; pose runs top-down as with --person-model",
    )
    parser.add_argument(
        "--max-persons",
        type=int,
        default=4,
        metavar="N",
        help="with --person-model: landmarks for at most N people a frame, best boxes "
        "first (default: 4; 0: boxes only)",
    )
    parser.add_argument("--no-pose", action="store_true", help="skip pose estimation")
    parser.add_argument("--no-ssd", action="store_true", help="skip the SSD detector")
    parser.add_argument("--quiet", action="store_true", help="no live console, summary only")
    parser.add_argument(
        "--motion",
        choices=("auto", "on", "off"),
        default="auto",
        help="propose boxes around moving regions (label 'motion' in the records); in "
        "--privacy crops they become extra crops, so the cloud sees the people pose missed "
        "(default auto: on with --privacy crops)",
    )
    add_uplink_flags(parser)
    parser.set_defaults(handler=_run)


def _parse_size(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--size must look like 640x480 or 'native', got {text!r}") from err
    if width <= 0 or height <= 0:
        raise ConfigError(f"--size must be positive, got {text!r}")
    return width, height


def usable_cores() -> int:
    """CPU cores this process may run on (respects ``taskset`` and cgroup pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_pose_workers() -> int:
    """One pose worker per usable CPU core, at most 3 (pose is the costliest stage)."""
    return max(1, min(3, usable_cores()))


def _top_down(args: argparse.Namespace, follower: DetectorFollower | None = None) -> bool:
    """Whether pose runs top-down on a person detector (a file or the installed one);
    with ``--detector-dir`` and no version installed yet (``follower`` has none) the agent
    starts in cold start, whole-frame pose, until the first version arrives."""
    if follower is not None and follower.active is None:
        return False
    return bool(args.person_model) or args.detector_dir is not None


def _load_models(
    args: argparse.Namespace, min_score: float, follower: DetectorFollower | None = None
) -> tuple[Any, Any]:
    """Return (pose estimator or None, SSD detector or None) as the flags ask.

    The detector keeps boxes down to ``min_score`` (the bottom of the hard-case
    uncertainty band), so uncertain boxes reach hard-case selection.
    """
    pose: list[Any] | None = None
    detector = None
    if _top_down(args, follower):
        pose = _top_down_estimators(args, min_score, follower)
    elif not args.no_pose:
        from clients.pose import create_pose_estimator

        workers = args.pose_workers or default_pose_workers()
        pose = [
            create_pose_estimator(
                args.pose_backend, args.model_dir, num_threads=args.threads, track=True
            )
            for _ in range(workers)
        ]
    if not args.no_ssd:
        from clients.detector import Detector

        detector = Detector.blazeface(
            args.model_dir, score_threshold=min_score, num_threads=args.threads
        )
    return pose, detector


def _top_down_estimators(
    args: argparse.Namespace, min_score: float, follower: DetectorFollower | None
) -> list[Any]:
    """One top-down pose estimator per pose worker, each with its own person detector
    (keeping boxes down to ``min_score``, like the SSD) and landmark model; with
    ``--detector-dir`` the detectors of the installed version ``follower`` loaded."""
    from clients.pose.top_down import TopDownPoseEstimator, load_person_detector

    if follower is not None and follower.active is not None:
        detectors = list(follower.active.detectors)
    else:
        detectors = [
            load_person_detector(
                args.person_model, score_threshold=min_score, num_threads=args.threads
            )
            for _ in range(args.pose_workers or default_pose_workers())
        ]
    return [
        TopDownPoseEstimator.from_cache(
            detector, args.model_dir, num_threads=args.threads, max_persons=args.max_persons
        )
        for detector in detectors
    ]


def _detector_follower(args: argparse.Namespace, min_score: float) -> DetectorFollower:
    """The installed person detector of ``--detector-dir``, loaded once per pose worker."""
    from clients.hot_swap import DetectorFollower, person_detector_loader
    from clients.model_installer import resolve_detector_dir

    follower = DetectorFollower(
        resolve_detector_dir(args.detector_dir or None, args.store_dir),
        load=person_detector_loader(min_score, num_threads=args.threads),
        copies=args.pose_workers or default_pose_workers(),
    )
    follower.load_current(required=False)  # none yet: cold start until the first arrives
    return follower


def _first_estimator(args: argparse.Namespace) -> Any:
    """Builds a worker's top-down estimator around the first installed detector version."""
    from clients.pose.top_down import TopDownPoseEstimator

    def build(detector: Any) -> Any:
        return TopDownPoseEstimator.from_cache(
            detector, args.model_dir, num_threads=args.threads, max_persons=args.max_persons
        )

    return build


def _detector_labels(detector: Any, person_model: bool = False) -> tuple[str, ...] | None:
    spec = getattr(detector, "spec", None)
    labels = tuple(getattr(spec, "labels", None) or ())
    if person_model:  # its person boxes take part in the pose/box disagreement check
        labels += ("person",)
    return labels or None


def _check_person_flags(args: argparse.Namespace) -> None:
    if args.max_persons < 0:
        raise ConfigError(f"--max-persons must be 0 or more, got {args.max_persons}")
    if args.person_model and args.detector_dir is not None:
        raise ConfigError(
            "--person-model FILE and --detector-dir DIR both pick the person detector: keep one"
        )
    if _top_down(args) and (args.no_pose or args.pose_backend != "litert"):
        flag = "--person-model" if args.person_model else "--detector-dir"
        raise ConfigError(
            f"{flag} runs BlazePose's landmark model on LiteRT: drop --no-pose and "
            "--pose-backend tasks (--max-persons 0 keeps the boxes without pose)"
        )


def hard_case_selector(
    policy: HardCasePolicy,
    labels: tuple[str, ...] | None,
    top_down: bool,
    privacy: str | None,
) -> HardCaseSelector:
    """The agent's hard-case selector: in cold start until a person detector runs
    (``top_down``); with an uplink (``privacy``: its mode), only the objects the mode's
    cases show count as asked about (``clients.privacy_filter.shown_regions``)."""
    from clients.hard_cases import HardCaseSelector
    from clients.privacy_filter import shown_regions

    shows = None if privacy is None else shown_regions(privacy)
    return HardCaseSelector(policy, detector_labels=labels, cold_start=not top_down, shows=shows)


def _run(args: argparse.Namespace) -> int:
    from clients.capture import Capture, CaptureConfig
    from clients.drawing import annotate
    from clients.edge_console import EdgeConsole
    from clients.edge_outputs import JsonlSink, VideoSink, WindowSink
    from clients.hot_swap import swap_into
    from clients.pipeline import Pipeline
    from data.frame_store import FrameStore

    if args.max_frames < 0:
        raise ConfigError(f"--max-frames must be 0 or more, got {args.max_frames}")
    if args.pose_workers < 0 or args.threads < 1:
        raise ConfigError("--pose-workers must be 0 or more and --threads 1 or more")
    _check_person_flags(args)
    uplink = check_uplink_flags(args)
    config = CaptureConfig(
        size=_parse_size(args.size),
        realtime=args.realtime,
        max_frames=args.max_frames,
        loop=args.loop,
    )
    capture = Capture(args.source, config)
    window = WindowSink() if args.show else None  # fails fast without a display
    capture.start()  # fails here, before the models load, when the source cannot be opened
    store = None
    uploader = None
    follower: DetectorFollower | None = None
    try:
        policy = _hard_case_policy(args)
        if args.detector_dir is not None:
            follower = _detector_follower(args, policy.uncertain_low)
        pose, detector = _load_models(args, policy.uncertain_low, follower)
        if not args.no_store:
            budget = int(args.store_budget_mb * 1024**2)
            store = FrameStore(args.store_dir, budget_bytes=budget)
        top_down = _top_down(args, follower)
        labels = _detector_labels(detector, person_model=top_down)
        privacy = None if uplink is None else uplink.privacy
        selector = hard_case_selector(policy, labels, top_down, privacy)
        if follower is not None and follower.active is not None:  # its calibrated thresholds
            from clients.hot_swap import apply_version

            apply_version(follower.active, pose or [], selector)
        jsonl = JsonlSink(args.jsonl) if args.jsonl else None
        video = VideoSink(args.out, capture.fps) if args.out else None
        if uplink is not None and store is not None:
            uploader = start_uploader(uplink, store, args.model_dir, args.threads)
            if follower is not None:  # hard cases name the detector version running
                running = follower
                uploader.model_version = lambda: running.version
    except BaseException:
        capture.stop()
        if uploader is not None:
            uploader.stop()
        if store is not None:
            store.close()
        raise
    console = EdgeConsole(args.source, quiet=args.quiet)
    pipeline = Pipeline(
        capture,
        pose=pose,
        detector=detector,
        store=store,
        selector=selector,
        model_version=follower.version if follower else "",
        motion=_motion_proposer(args),
    )
    if uploader is not None:
        uploader.watch(pipeline.feed)
    if follower is not None:  # new versions go to the frames taken after they load
        follower.on_swap = swap_into(
            pipeline, pose or [], first_estimator=_first_estimator(args), selector=selector
        )
        follower.start()
    # Ctrl-C and SIGTERM stop the agent cleanly, also where SIGINT was ignored at start
    # (a process launched in the background by a non-interactive shell)
    signals = contextlib.ExitStack()
    signals.enter_context(stop_signals_interrupt())
    interrupted = False
    try:
        with console, pipeline:
            for output in pipeline:
                result = output.result
                if jsonl:
                    jsonl.write(result, uplink=uploader.stats.to_json() if uploader else None)
                if video or window:
                    frame = annotate(
                        output.image,
                        result.persons,
                        result.detections,
                        fps=pipeline.stats.fps,
                        hard=result.hard,
                        reasons=result.hard_reasons,
                    )
                    if video:
                        video.write(frame)
                    if window and not window.show(frame):
                        break
                console.update(pipeline.stats, result, uploader.stats if uploader else None)
            if uploader is not None and uplink is not None and not capture.kind.live:
                drain_uploader(uploader, uplink.drain_timeout_s, console, pipeline.stats)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signals.close()
        if follower is not None:
            follower.stop()
        if uploader is not None:
            uploader.stop()
        for sink in (jsonl, video, window, store):
            if sink is not None:
                sink.close()
    stats = pipeline.stats
    console.summary(stats, store_dir=None if store is None else str(store.root))
    if uploader is not None and uplink is not None:
        console.console.print(uplink_summary(uploader, uplink), markup=False, soft_wrap=True)
    if interrupted:
        return EXIT_INTERRUPTED
    if capture.stats.error:
        raise CaptureError(capture.stats.error)
    if stats.frames == 0:
        raise CaptureError(f"no frame could be decoded from {args.source}")
    return 0


def _motion_proposer(args: argparse.Namespace) -> MotionProposer | None:
    """The motion proposer ``--motion`` asks for (``auto``: with ``--privacy crops``)."""
    if args.motion == "off" or (args.motion == "auto" and args.privacy != "crops"):
        return None
    from clients.motion import MotionProposer

    return MotionProposer()


def _hard_case_policy(args: argparse.Namespace) -> HardCasePolicy:
    """The hard-case policy of these flags: with top-down pose (``--person-model``) only
    the ``--max-persons`` best person boxes are expected to carry a pose."""
    from clients.hard_cases import HardCasePolicy

    if not 0.0 <= args.track_iou <= 1.0:
        raise ConfigError(f"--track-iou must lie in [0, 1], got {args.track_iou}")
    if args.track_doubt < 1:
        raise ConfigError(f"--track-doubt must be 1 or more, got {args.track_doubt}")
    if not 0.0 <= args.place_iou <= 1.0:
        raise ConfigError(f"--place-iou must lie in [0, 1], got {args.place_iou}")
    if not 0.0 <= args.place_change <= 255.0:
        raise ConfigError(f"--place-change must lie in [0, 255], got {args.place_change}")
    policy = HardCasePolicy(
        max_per_minute=args.hard_per_minute,
        cold_start_per_minute=args.cold_start_per_minute,
        track_min_iou=args.track_iou,
        track_confirm=args.track_confirm,
        track_min_doubt=args.track_doubt,
        ask_labels=parse_ask_labels(args.ask_labels),
        place_iou=args.place_iou,
        place_max_change=args.place_change,
    )
    if not _top_down(args):
        return policy
    checks = tuple(
        dataclasses.replace(c, max_posed=args.max_persons) if c.label == "person" else c
        for c in policy.disagreement
    )
    return dataclasses.replace(policy, disagreement=checks)
