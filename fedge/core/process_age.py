"""How long the current process has been running (timing a ClientApp's start-up), and
when a process started (telling a pid's process from a later one with the same pid)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_age_s", "process_start_ticks"]


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


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc``); ``None`` when it
    is not running (or there is no ``/proc``). With the pid it names one process: a pid
    reused later has another start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])
