"""The uplink part of ``fedge edge``: its flags, their checks, the uploader's start and drain.

``fedge edge --cloud HOST:PORT --privacy MODE`` sends the store's hard cases to
``fedge cloud`` (see ``clients.uploader``); kept here so ``fedge/commands/edge.py`` only
calls in. Nothing heavy is imported until an uploader is built.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.core.errors import ConfigError

if TYPE_CHECKING:
    from clients.uploader import Uploader
    from data.frame_store import FrameStore

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "PRIVACY_CHOICES",
    "UplinkSettings",
    "add_uplink_flags",
    "check_uplink_flags",
    "drain_uploader",
    "start_uploader",
    "uplink_summary",
]

PRIVACY_CHOICES = ("none", "landmarks", "crops", "frames")
DEFAULT_DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class UplinkSettings:
    """The checked uplink flags."""

    target: str
    privacy: str
    node_id: str
    token: str | None
    insecure: bool
    root_cert: bytes | None
    drain_timeout_s: float


def add_uplink_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--cloud``, ``--privacy``, ``--token-file``, ``--root-cert`` / ``--insecure``,
    ``--drain-timeout`` and ``--node-id``."""
    group = parser.add_argument_group(
        "uplink", "send hard cases to `fedge cloud` for labels (the store is the queue)"
    )
    group.add_argument("--cloud", metavar="HOST:PORT", help="the cloud inference service")
    group.add_argument(
        "--privacy",
        choices=PRIVACY_CHOICES,
        help="what a hard case reveals: none (nothing leaves the node), landmarks (no "
        "pixels), crops (person crops) or frames; faces are blurred on the node "
        "(required with --cloud)",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help="this node's bearer token (the token alone, or a 'node_id token' line)",
    )
    security = group.add_mutually_exclusive_group()
    security.add_argument(
        "--root-cert", metavar="PEM", help="CA certificate of the cloud (default: system roots)"
    )
    security.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC (loopback and tests only)"
    )
    group.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="at the end of a file or folder, wait up to S s for the queue to drain "
        f"(default: {DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--node-id",
        metavar="ID",
        help="this node's id (default: the token file's, else the host name)",
    )


def check_uplink_flags(args: argparse.Namespace) -> UplinkSettings | None:
    """Validate the uplink flags; ``None`` without ``--cloud``. Reads the token and cert."""
    if args.cloud is None:
        extra = [
            flag
            for flag, value in (
                ("--privacy", args.privacy not in (None, "none")),
                ("--token-file", args.token_file),
                ("--root-cert", args.root_cert),
                ("--insecure", args.insecure),
                ("--node-id", args.node_id),
            )
            if value
        ]
        if extra:
            raise ConfigError(f"{', '.join(extra)} need --cloud HOST:PORT")
        return None
    from clients.uploader import parse_target, read_token_file

    target = parse_target(args.cloud)
    if args.privacy is None:
        raise ConfigError(
            "--cloud needs --privacy none|landmarks|crops|frames: choose what leaves the node"
        )
    if args.no_store:
        raise ConfigError("--cloud needs the frame store (it is the upload queue): drop --no-store")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be 0 or more, got {args.drain_timeout}")
    token_node, token = (None, None)
    if args.token_file:
        token_node, token = read_token_file(args.token_file, args.node_id)
    if args.node_id and token_node and args.node_id != token_node:
        raise ConfigError(
            f"--node-id {args.node_id} differs from the token file's node {token_node}"
        )
    node_id = args.node_id or token_node or socket.gethostname()
    root_cert = None
    if args.root_cert:
        try:
            root_cert = Path(args.root_cert).read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read --root-cert {args.root_cert}: {err.strerror}") from None
    return UplinkSettings(
        target=target,
        privacy=args.privacy,
        node_id=node_id,
        token=token,
        insecure=bool(args.insecure),
        root_cert=root_cert,
        drain_timeout_s=float(args.drain_timeout),
    )


def start_uploader(
    settings: UplinkSettings, store: FrameStore, model_dir: str | None, threads: int
) -> Uploader:
    """Build the privacy filter and the uploader and start its thread."""
    from clients.privacy_filter import PrivacyFilter
    from clients.uploader import Uploader, UploaderConfig

    privacy = PrivacyFilter.create(settings.privacy, model_dir, num_threads=threads)
    config = UploaderConfig(
        target=settings.target,
        node_id=settings.node_id,
        token=settings.token,
        insecure=settings.insecure,
        root_cert=settings.root_cert,
    )
    return Uploader(store, privacy, config).start()


def drain_uploader(uploader: Uploader, timeout: float, console: Any, stats: Any) -> bool:
    """Wait up to ``timeout`` s for the queue to drain, refreshing the console."""
    if not uploader.privacy.mode.sends_cases:
        return False
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if uploader.drain(min(0.25, max(0.0, left))):
            return True
        console.update(stats, None, uploader.stats)
        if left <= 0 or not uploader.alive:
            return False


def uplink_summary(uploader: Uploader, settings: UplinkSettings) -> str:
    """One line for the end of the run: what the uplink did and what still waits."""
    s = uploader.stats
    if not uploader.privacy.mode.sends_cases:
        return f"uplink: --privacy none, {s.pending} hard cases kept on the node"
    rtt = "-" if s.rtt_ms is None else f"{s.rtt_ms:.0f} ms"
    line = (
        f"uplink to {settings.target} ({settings.privacy}): {s.sent} sent, {s.labelled} "
        f"labelled, {s.failed} failed, {s.bytes_up / 1024:.1f} KiB up, round trip {rtt}"
    )
    if s.pending:
        line += f"; {s.pending} still pending in the store (sent on the next run)"
    if s.last_error and s.pending:
        line += f"; last error: {s.last_error}"
    return line
