"""``fedge demo``: the whole edge/cloud loop on one machine (``fedge.demo.runner``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fedge.commands.selection_flags import (
    add_ask_labels_flag,
    add_tracking_flags,
    parse_ask_labels,
)
from fedge.core.errors import ConfigError
from fedge.core.run_config import TRAIN_SCHEDULES
from fedge.core.signals import stop_signals_interrupt

__all__ = ["register"]

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "vtest_clip.mp4"
APP_DIR = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> None:
    """Add ``fedge demo`` to the top-level subparsers."""
    parser = subparsers.add_parser(
        "demo",
        help="the whole loop on one machine: edge sites, fedge cloud, Flower rounds, hot swap",
        description=(
            "Cut a video into camera sites; each runs the edge agent, sends privacy-filtered "
            "hard cases to fedge cloud and stores its labels; Flower rounds train the person "
            "detector on the sites' stores; each site verifies and swaps in the int8 model. "
            "Writes rounds.jsonl, report.md and plots."
        ),
    )
    parser.add_argument(
        "--source",
        default=str(DEFAULT_SOURCE),
        metavar="VIDEO|DIR",
        help="video file or folder of images (default: the bundled clip)",
    )
    parser.add_argument("--sites", type=int, default=3, metavar="N", help="camera sites (3)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="Flower rounds (3)")
    parser.add_argument(
        "--privacy",
        default="crops",
        choices=("landmarks", "crops", "frames"),
        help="what a hard case may reveal (default crops)",
    )
    parser.add_argument(
        "--fusion",
        default="mean",
        choices=("mean", "logit", "cloud", "edge"),
        help="confidence fusion in the cloud (default mean)",
    )
    parser.add_argument(
        "--out",
        default="demo-out",
        metavar="DIR",
        help="output folder, new or empty (default demo-out)",
    )
    parser.add_argument(
        "--size",
        default="640x480",
        metavar="WxH",
        help="frames are resized to WxH ('native' keeps them; default 640x480)",
    )
    parser.add_argument(
        "--local-epochs", type=int, default=15, metavar="N", help="local epochs per round (15)"
    )
    parser.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        metavar="F",
        help="round r trains at Adam 0.01 x F^(r-1) (0.5; detector-lr-decay)",
    )
    parser.add_argument(
        "--schedule",
        choices=TRAIN_SCHEDULES,
        default="auto",
        help="how a Flower round trains the sites: cyclic (one after another, each from the "
        "last one's model; what auto picks for the detector) or parallel (FedAvg of models "
        "trained at once) (train-schedule)",
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="round 1 keeps the model of the site with the most training frames instead of "
        "averaging (detector-warm-start)",
    )
    parser.add_argument(
        "--cold-start-share",
        type=float,
        default=0.4,
        metavar="F",
        help="share of each site's streamed frames seen in round 0, before any detector "
        "(0.4; the other rounds split the rest)",
    )
    parser.add_argument(
        "--final-frames",
        type=int,
        default=20,
        metavar="N",
        help="frames the last round's stretch gets at least: the final version runs on them "
        "and nothing trains on them, so their upload rate is the site's after the loop (20: "
        "one upload is 5%%); the frames it lacks come from the held-out frames, which keep "
        "half of theirs (0: an equal share)",
    )
    policy = parser.add_argument_group(
        "hard-case policy",
        "on the video's clock; the defaults compress time: the bundled clip is 24 s long, "
        "so each site sees under 10 s of video (fedge edge's defaults: 6, 2, 300 s, 6 bits)",
    )
    policy.add_argument(
        "--hard-per-minute",
        type=float,
        default=60.0,
        metavar="N",
        help="hard cases per minute of video per site (60)",
    )
    policy.add_argument(
        "--cold-start-per-minute",
        type=float,
        default=600.0,
        metavar="N",
        help="cold-start samples per minute of video per site, before a detector (600)",
    )
    policy.add_argument(
        "--dedup-window",
        type=float,
        default=300.0,
        metavar="S",
        help="a frame like a hard case of the last S video seconds is not sent (300)",
    )
    policy.add_argument(
        "--dedup-distance",
        type=int,
        default=0,
        metavar="BITS",
        help="... 'like' = dHash within BITS bits (0: only a repeated frame; people walking "
        "across a still camera's view barely change a whole-frame hash)",
    )
    add_tracking_flags(policy)
    add_ask_labels_flag(policy)
    parser.add_argument(
        "--no-warm-worker",
        dest="warm_worker",
        action="store_false",
        help="let every Flower message start its ClientApp from cold, as Flower does by "
        "default (default: one warm training process per site, clients.warm_worker)",
    )
    parser.add_argument(
        "--max-persons",
        type=int,
        default=4,
        metavar="N",
        help="landmarks for at most N people a frame (4)",
    )
    parser.add_argument(
        "--cloud",
        metavar="HOST:PORT",
        help="use this running `fedge cloud --insecure` (default: start one on loopback)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Flower run (0)")
    parser.add_argument("--model-dir", metavar="DIR", help="pretrained model cache")
    parser.add_argument(
        "--app-dir",
        default=str(APP_DIR),
        metavar="DIR",
        help="the Flower App (default: this checkout)",
    )
    parser.set_defaults(handler=_run)


def _size(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be WxH or 'native', got {text!r}") from None
    if width < 32 or height < 32:
        raise ConfigError(f"--size must be at least 32x32, got {text}")
    return width, height


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedge.demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        source=Path(args.source),
        out=Path(args.out),
        sites=args.sites,
        rounds=args.rounds,
        privacy=args.privacy,
        fusion=args.fusion,
        size=_size(args.size),
        local_epochs=args.local_epochs,
        lr_decay=args.lr_decay,
        warm_start=args.warm_start,
        schedule=args.schedule,
        hard_per_minute=args.hard_per_minute,
        cold_start_per_minute=args.cold_start_per_minute,
        dedup_window_s=args.dedup_window,
        dedup_distance=args.dedup_distance,
        track_iou=args.track_iou,
        track_confirm=args.track_confirm,
        track_doubt=args.track_doubt,
        ask_labels=parse_ask_labels(args.ask_labels),
        place_iou=args.place_iou,
        place_change=args.place_change,
        warm_worker=args.warm_worker,
        cold_start_share=args.cold_start_share,
        final_frames=args.final_frames,
        max_persons=args.max_persons,
        seed=args.seed,
        model_dir=args.model_dir,
        cloud=args.cloud,
        app_dir=Path(args.app_dir),
    )
    console = Console(stderr=True)
    # SIGINT too: started with SIGINT ignored, the demo would otherwise run on to its end
    with stop_signals_interrupt():
        with Progress(
            TextColumn("[bold]fedge demo"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("starting", total=1.0)

            def progress(text: str, done: float) -> None:
                if text.startswith("round ") and "mAP" in text:
                    bar.console.print(text, markup=False)
                bar.update(task, description=text[:70], completed=done)

            result = run_demo(options, progress)
    print(f"wrote {result.out / 'rounds.jsonl'} and {result.out / 'report.md'}", file=sys.stdout)
    return 0
