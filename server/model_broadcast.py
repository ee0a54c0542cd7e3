"""Send each round's exported model to every connected node, and record their verdicts.

Training samples nodes (``fraction-train``); the model goes to all of them: every node
id the grid knows gets a ``query.install_model`` message (record format in
``clients.model_updates``) with the same content. Each node verifies and installs it, or
rejects it with a reason; a node that does not answer in time, or answers with an error,
is listed as failed. The outcome goes into the round's line of ``metrics.jsonl`` under
the key ``model`` (:meth:`BroadcastOutcome.to_json`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.model_updates import (
    INSTALL_MODEL_ACTION,
    INSTALL_RESULT_KEY,
    MODEL_RECORD_KEY,
    artifact_record,
)
from export.artifact import DEFAULT_NAME, ModelArtifact, artifact_paths, read_artifact
from server.grid_exchange import send_and_receive
from server.wire import messages_bytes

__all__ = [
    "INSTALL_MODEL_TYPE",
    "METRICS_KEY",
    "BroadcastOutcome",
    "broadcast_exported",
    "broadcast_model",
]

log = logging.getLogger(__name__)

INSTALL_MODEL_TYPE = f"{MessageType.QUERY}.{INSTALL_MODEL_ACTION}"
METRICS_KEY = "model"
DEFAULT_TIMEOUT_S = 600.0


@dataclass
class BroadcastOutcome:
    """What the nodes did with one model version.

    ``installed`` maps node id to the version it now runs; ``rejected`` to the node's
    reason; ``failed`` lists nodes that gave no usable answer.
    """

    name: str
    version: int
    sha256: str
    size_bytes: int
    nodes: list[int] = field(default_factory=list)
    installed: dict[int, int] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    bytes_sent: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``model`` key of the round's metrics line (node ids as strings)."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "nodes": list(self.nodes),
            "installed": {str(k): v for k, v in sorted(self.installed.items())},
            "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
            "failed": sorted(self.failed),
            "bytes_sent": self.bytes_sent,
        }


def broadcast_model(
    grid: Grid, artifact: ModelArtifact, *, timeout: float = DEFAULT_TIMEOUT_S
) -> BroadcastOutcome:
    """Send ``artifact`` to every node connected to ``grid`` and collect their verdicts."""
    manifest = artifact.manifest
    outcome = BroadcastOutcome(
        manifest.name, manifest.version, manifest.sha256, manifest.size_bytes
    )
    outcome.nodes = sorted(int(n) for n in grid.get_node_ids())
    if not outcome.nodes:
        log.warning("no node connected: %s v%d not sent", manifest.name, manifest.version)
        return outcome
    content = RecordDict({MODEL_RECORD_KEY: artifact_record(artifact)})
    messages = [
        Message(content=content, message_type=INSTALL_MODEL_TYPE, dst_node_id=node)
        for node in outcome.nodes
    ]
    outcome.bytes_sent = messages_bytes(messages)
    answered: set[int] = set()
    for reply in send_and_receive(grid, messages, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        answered.add(node)
        record = (
            reply.content.config_records.get(INSTALL_RESULT_KEY) if reply.has_content() else None
        )
        if reply.has_error() or record is None:
            outcome.failed.append(node)
            continue
        if record.get("status") == "installed":
            outcome.installed[node] = int(record.get("version", -1))  # type: ignore[arg-type]
        else:
            outcome.rejected[node] = str(record.get("reason", "no reason given"))
    outcome.failed += [n for n in outcome.nodes if n not in answered]
    log.warning(
        "%s v%d: installed on %d of %d nodes, rejected by %d, no answer from %d",
        manifest.name,
        manifest.version,
        len(outcome.installed),
        len(outcome.nodes),
        len(outcome.rejected),
        len(outcome.failed),
    )
    return outcome


def broadcast_exported(
    grid: Grid,
    export_dir: str | os.PathLike[str],
    version: int,
    *,
    name: str = DEFAULT_NAME,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Broadcast the artifact the round's export wrote into ``export_dir``, if any.

    Returns ``{"model": outcome}`` for the metrics line, or ``{}`` when the round
    exported no model (a task without export, or export switched off).
    """
    _, manifest_path = artifact_paths(export_dir, name, version)
    if not manifest_path.exists():
        return {}
    outcome = broadcast_model(grid, read_artifact(export_dir, version, name), timeout=timeout)
    return {METRICS_KEY: outcome.to_json()}
