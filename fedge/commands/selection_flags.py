"""Flags of hard-case selection shared by ``fedge edge``, ``fedge demo`` and the demo
benchmark: tracking (``--track-iou``, ``--no-track-confirm``, ``--track-doubt``,
``--place-iou``, ``--place-change``) and the labels the cloud is asked about (``--ask-labels``)."""

from __future__ import annotations

import argparse

from fedge.core.errors import ConfigError

__all__ = ["ASK_ALL", "add_ask_labels_flag", "add_tracking_flags", "parse_ask_labels"]

ASK_ALL = "all"
"""``--ask-labels all``: every label the node's detectors emit."""


def add_tracking_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--track-iou``, ``--no-track-confirm``, ``--track-doubt``, ``--place-iou`` and
    ``--place-change`` to ``parser`` (``clients.hard_cases.HardCasePolicy``'s
    ``track_min_iou``, ``track_confirm``, ``track_min_doubt``, ``place_iou`` and
    ``place_max_change``)."""
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
        "unsure of it on N frames (a score in the band while it was sure of it on none, or "
        "a box at odds with the pose estimator; default: 3; 1: on the first)",
    )
    parser.add_argument(
        "--place-iou",
        type=float,
        default=0.5,
        metavar="IOU",
        help="with tracking, an object where a frame sent within the look-alike window "
        "showed one of its label (IoU from IOU) counts as asked about: a still camera's "
        "background box whose track restarts is not asked again (default: 0.5; 0: off)",
    )
    parser.add_argument(
        "--place-change",
        type=float,
        default=8.0,
        metavar="GREY",
        help="with tracking, an object inside what a frame sent within the look-alike "
        "window showed (its objects' boxes grown by half on every side), with pixels there "
        "changed by at most GREY grey levels on average since, counts as asked about: a "
        "still camera's background box is not asked again when its track restarts or a "
        "new model version draws it anew (default: 8; 0: off)",
    )


def add_ask_labels_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--ask-labels`` (``HardCasePolicy.ask_labels``; read it with
    :func:`parse_ask_labels`)."""
    parser.add_argument(
        "--ask-labels",
        default="person",
        metavar="LABELS",
        help="once the node runs a detector of one of these labels (comma-separated), only "
        "their boxes make a frame hard: the cloud's teacher labels persons, so an unsure "
        "face box is no question it answers (default: person; 'all': every label; before "
        "a person detector, every label counts)",
    )


def parse_ask_labels(text: str) -> tuple[str, ...]:
    """``--ask-labels`` as ``HardCasePolicy.ask_labels`` (``()``: every label)."""
    if text.strip() == ASK_ALL:
        return ()
    labels = tuple(label.strip() for label in text.split(",") if label.strip())
    if not labels:
        raise ConfigError(f"--ask-labels needs a label or '{ASK_ALL}', got {text!r}")
    return labels
