"""Per-round metrics as JSON lines: ``<run_dir>/metrics.jsonl``, one object per round.

Keys of each line: ``round``, ``time`` (UNIX seconds), ``seconds`` (round wall time),
``central`` ({loss, accuracy} of the global model on the test set), ``train`` and
``evaluate`` (metrics aggregated by the strategy), ``stage_seconds`` (wall seconds of
each stage: ``train``, ``evaluate``, ``central``, and for an exported model ``export``
and ``broadcast``), ``clients`` (per node:
``node_id``, ``partition_id``, ``train`` and ``eval`` metrics), ``rejected_nodes``
(non-finite updates dropped), ``failed_nodes``, ``bytes_sent`` / ``bytes_received``
(serialized message content, server view), ``raw_bytes_received`` (the same weights
as dense float32), ``aggregated``, ``warm_start_node``, ``cyclic_order`` (the nodes of a
cyclic round in training order), and ``dp_*`` (noise std-dev, clipping norm)
for runs with differential privacy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from server.rounds import RoundReport

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
_PER_CLIENT_ONLY = ("partition-id",)


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if key in _PER_CLIENT_ONLY:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


class MetricsLog:
    """Appends one JSON line per round; on resume, drops lines after the resumed round."""

    def __init__(self, run_dir: Path, keep_through_round: int = 0) -> None:
        self.path = run_dir / METRICS_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["round"] <= keep_through_round]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, report: RoundReport, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``report`` (plus ``extra`` keys) as one line and return the object written."""
        clients: dict[int, dict[str, Any]] = {}
        for stage, reports in (("train", report.train_clients), ("eval", report.evaluate_clients)):
            for client in reports:
                entry = clients.setdefault(client.node_id, {"node_id": client.node_id})
                if "partition-id" in client.metrics:
                    entry["partition_id"] = int(client.metrics["partition-id"])
                entry[stage] = _clean(client.metrics)
        line = {
            "round": report.round,
            "time": time.time(),
            "seconds": report.seconds,
            "stage_seconds": dict(report.stage_seconds),
            "central": _clean(report.central),
            "train": _clean(report.train),
            "evaluate": _clean(report.evaluate),
            "clients": list(clients.values()),
            "rejected_nodes": report.rejected_nodes,
            "failed_nodes": report.failed_nodes,
            "bytes_sent": report.bytes_sent,
            "bytes_received": report.bytes_received,
            "raw_bytes_received": report.raw_bytes_received,
            "aggregated": report.aggregated,
            "warm_start_node": report.warm_start_node,
            "cyclic_order": list(report.cyclic_order),
            **(extra or {}),
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return line


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics file; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    rows = []
    for text in path.read_text().splitlines():
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            break
    return rows
