"""``fedge cloud``: the inference service for the nodes' hard cases (gRPC, ``fedge.cloud.v1``).

Runs the teacher ensemble on each hard case a node sends, fuses its confidences with the
node's and answers the label. TLS by default (plaintext only with ``--insecure``), per-node
bearer tokens, limits on message size, decoded pixels, cases per node per minute and
calls in flight, an audit line per case. Prints ``listening on HOST:PORT`` when ready;
SIGTERM (or Ctrl-C) stops taking calls, finishes the ones in flight and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from fedge.core.errors import ConfigError

__all__ = ["register"]

FUSION_CHOICES = ("mean", "logit", "cloud", "edge")  # server.cloud.fusion.FUSION_METHODS
EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    """Add ``fedge cloud`` to the top-level subparsers."""
    parser = subparsers.add_parser(
        "cloud",
        help="run the cloud inference service: teacher ensemble + fusion for hard cases (gRPC)",
        description=(
            "Serve fedge.cloud.v1 over gRPC: run the teacher ensemble on the nodes' hard "
            "cases, fuse its confidences with the node's and answer labels."
        ),
    )
    net = parser.add_argument_group("address and security")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    net.add_argument(
        "--port", type=int, default=50051, help="port (0 picks a free one; default 50051)"
    )
    net.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate chain")
    net.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key")
    net.add_argument(
        "--client-ca",
        type=Path,
        metavar="PEM",
        help="CA of the nodes' client certificates: require mutual TLS",
    )
    net.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC (no TLS): only on a trusted network"
    )
    net.add_argument(
        "--tokens",
        type=Path,
        metavar="FILE",
        help="per-node bearer tokens, one 'node_id token' per line ('#' comments)",
    )
    work = parser.add_argument_group("inference")
    work.add_argument(
        "--fusion", choices=FUSION_CHOICES, default="mean", help="confidence fusion (default mean)"
    )
    work.add_argument(
        "--calibration", type=Path, metavar="JSON", help="fitted calibration for --fusion logit"
    )
    work.add_argument(
        "--teacher-model",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="extra TFLite SSD(s) for the teacher ensemble",
    )
    store = parser.add_argument_group("state and logs")
    store.add_argument(
        "--audit-log", type=Path, metavar="FILE", help="JSON-lines audit log (default: stderr)"
    )
    store.add_argument(
        "--keep-uploads",
        type=Path,
        metavar="DIR",
        help="keep the received JPEGs under DIR/<node>/<frame>/ (default: kept nowhere)",
    )
    store.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep answered cases in DIR/results.sqlite across restarts (default: memory)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-message-mb", type=float, default=8.0, metavar="N", help="largest message (8)"
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=4096 * 4096,
        metavar="N",
        help="most decoded pixels per case (4096x4096)",
    )
    limits.add_argument(
        "--rate-per-minute",
        type=float,
        default=600.0,
        metavar="N",
        help="cases per node per minute, also the burst (600; 0: no limit)",
    )
    limits.add_argument(
        "--max-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="calls served at once; more are refused with RESOURCE_EXHAUSTED (4)",
    )
    limits.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds SIGTERM waits for in-flight calls (10)",
    )
    parser.set_defaults(handler=_run)


def _tls(args: argparse.Namespace) -> Any:
    from server.cloud.service import TlsConfig

    if args.tls_cert is None and args.tls_key is None:
        if args.client_ca is not None:
            raise ConfigError("--client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key go together: pass both")
    return TlsConfig.load(args.tls_cert, args.tls_key, args.client_ca)


def _config(args: argparse.Namespace) -> Any:
    from server.cloud.service import ServerConfig
    from server.cloud.tokens import TokenTable

    if args.max_message_mb <= 0:
        raise ConfigError(f"--max-message-mb must be positive, got {args.max_message_mb:g}")
    if args.grace < 0:
        raise ConfigError(f"--grace must be 0 or more, got {args.grace:g}")
    calibration = None
    if args.calibration is not None:
        from server.cloud.calibration import Calibration

        calibration = Calibration.load(args.calibration)
    elif args.fusion == "logit":
        print(
            "fedge cloud: note: --fusion logit without --calibration uses temperature 1 "
            "and equal weights",
            file=sys.stderr,
        )
    return ServerConfig(
        host=args.host,
        port=args.port,
        tls=_tls(args),
        insecure=args.insecure,
        tokens=None if args.tokens is None else TokenTable.load(args.tokens),
        fusion_method=args.fusion,
        calibration=calibration,
        audit_log=args.audit_log,
        keep_uploads=args.keep_uploads,
        state_dir=args.state_dir,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        rate_per_minute=args.rate_per_minute,
        max_concurrency=args.max_concurrency,
    )


def _run(args: argparse.Namespace) -> int:
    config = _config(args)  # flags first: a bad flag fails before models load
    from server.cloud.service import CloudServer
    from server.cloud.teacher import build_teacher

    if config.tokens is None:
        print(
            "fedge cloud: warning: no --tokens: every caller is trusted with the node id it names",
            file=sys.stderr,
        )
    teacher = build_teacher(extra_models=tuple(args.teacher_model))
    server = CloudServer(config, teacher)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = server.start()
        print(f"listening on {args.host}:{port}", flush=True)
        while not stop.wait(1.0):
            pass
        print(f"fedge cloud: draining (up to {args.grace:g} s)", file=sys.stderr, flush=True)
    finally:
        server.stop(args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_INTERRUPTED if signal.SIGINT in received else 0
