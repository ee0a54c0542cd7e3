"""``fedge edge``: run the edge node on a camera, a video, a stream or a folder of images.

Per frame: pose (BlazePose) and SSD detections, hard-case selection, the frame in the
local store, optionally a JSON line and an annotated video frame; live FPS and stage
latencies on the console. Ctrl-C (or SIGTERM) stops cleanly.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from fedge.errors import CaptureError, ConfigError

__all__ = ["DEFAULT_SOURCE", "DEFAULT_STORE_DIR", "register"]

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
            "the local store and flag hard cases for the cloud. Frames never leave the node."
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
        "--threads", type=int, default=1, metavar="N", help="LiteRT threads per model"
    )
    parser.add_argument("--model-dir", metavar="DIR", help="pretrained model cache")
    parser.add_argument("--no-pose", action="store_true", help="skip pose estimation")
    parser.add_argument("--no-ssd", action="store_true", help="skip the SSD detector")
    parser.add_argument("--quiet", action="store_true", help="no live console, summary only")
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


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _load_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """Return (pose estimator or None, detector or None) as the flags ask."""
    pose = detector = None
    if not args.no_pose:
        from clients.pose import create_pose_estimator

        pose = create_pose_estimator(model_dir=args.model_dir, num_threads=args.threads)
    if not args.no_ssd:
        from clients.detector import create_detector

        detector = create_detector(model_dir=args.model_dir, num_threads=args.threads)
    return pose, detector


def _run(args: argparse.Namespace) -> int:
    from clients.capture import Capture, CaptureConfig
    from clients.drawing import annotate
    from clients.edge_console import EdgeConsole
    from clients.edge_outputs import JsonlSink, VideoSink, WindowSink
    from clients.hard_cases import HardCasePolicy, HardCaseSelector
    from clients.pipeline import Pipeline
    from data.frame_store import FrameStore

    if args.max_frames < 0:
        raise ConfigError(f"--max-frames must be 0 or more, got {args.max_frames}")
    capture = Capture(
        args.source, CaptureConfig(size=_parse_size(args.size), realtime=args.realtime)
    )
    capture.start()  # fails here, before the models load, when the source cannot be opened
    store = None
    try:
        pose, detector = _load_models(args)
        if not args.no_store:
            budget = int(args.store_budget_mb * 1024**2)
            store = FrameStore(args.store_dir, budget_bytes=budget)
        selector = HardCaseSelector(
            HardCasePolicy(max_per_minute=args.hard_per_minute),
            detector_labels=getattr(detector, "labels", None),
        )
        window = WindowSink() if args.show else None
        jsonl = JsonlSink(args.jsonl) if args.jsonl else None
        video = VideoSink(args.out, capture.fps) if args.out else None
    except BaseException:
        capture.stop()
        if store is not None:
            store.close()
        raise
    console = EdgeConsole(args.source, quiet=args.quiet)
    pipeline = Pipeline(capture, pose=pose, detector=detector, store=store, selector=selector)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        with console, pipeline:
            for output in pipeline:
                result = output.result
                if jsonl:
                    jsonl.write(result)
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
                console.update(pipeline.stats, result)
                if args.max_frames and pipeline.stats.frames >= args.max_frames:
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sink in (jsonl, video, window, store):
            if sink is not None:
                sink.close()
    stats = pipeline.stats
    console.summary(stats, store_dir=None if store is None else str(store.root))
    if interrupted:
        return EXIT_INTERRUPTED
    if capture.stats.error:
        raise CaptureError(capture.stats.error)
    if stats.frames == 0:
        raise CaptureError(f"no frame could be decoded from {args.source}")
    return 0
