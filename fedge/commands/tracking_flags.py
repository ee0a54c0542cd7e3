"""The tracking flags of hard-case selection, shared by ``fedge edge`` and ``fedge demo``."""

from __future__ import annotations

import argparse

__all__ = ["add_tracking_flags"]


def add_tracking_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--track-iou``, ``--no-track-confirm`` and ``--track-doubt`` to ``parser``
    (``clients.hard_cases.HardCasePolicy``'s ``track_min_iou``, ``track_confirm`` and
    ``track_min_doubt``)."""
    parser.add_argument(
        "--track-iou",
        type=float,
        default=0.3,
        metavar="IOU",
        help="track boxes from frame to frame (greedy IoU from IOU) and ask the cloud once "
        "per uncertain object, not on every frame it appears in (default: 0.3; 0: off)",
    )
    parser.add_argument(
        "--no-track-confirm",
        dest="track_confirm",
        action="store_false",
        help="with tracking, still ask about a tracked person whose score dips into the "
        "uncertainty band after the detector was sure of them (default: such dips are "
        "no hard case)",
    )
    parser.add_argument(
        "--track-doubt",
        type=int,
        default=3,
        metavar="N",
        help="with tracking, ask about an object only once the running detector has been "
        "unsure of it on N frames without being sure of it on any (default: 3; 1: on "
        "the first)",
    )
