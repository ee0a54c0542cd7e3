"""How long the current process has been running, for timing a ClientApp's start-up."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_age_s"]


def process_age_s() -> float | None:
    """Seconds since this process started, from ``/proc`` (``None`` where there is none)."""
    try:
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None
    # field 22 (starttime, clock ticks after boot); the name (field 2) may hold spaces
    fields = stat[stat.rindex(")") + 2 :].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return max(uptime - started, 0.0)
