"""The live console of ``fedge edge``: FPS, per-stage latency and counters (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from clients.pipeline import STAGES, PipelineStats
from fedge.core.records import FrameResult

__all__ = ["EdgeConsole"]

_REFRESH_S = 0.25


class EdgeConsole:
    """A live status table on stderr, refreshed a few times a second."""

    def __init__(self, source: str, *, quiet: bool = False, console: Console | None = None) -> None:
        self.source = source
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._last_refresh = 0.0

    def __enter__(self) -> EdgeConsole:
        if not self.quiet and self.console.is_terminal:
            self._live = Live(
                self._table(PipelineStats(), None), console=self.console, auto_refresh=False
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, stats: PipelineStats, result: FrameResult | None, uplink: Any = None) -> None:
        """Redraw the table if the last redraw is old enough (``uplink``: ``UplinkStats``)."""
        now = time.monotonic()
        if self._live is None or now - self._last_refresh < _REFRESH_S:
            return
        self._last_refresh = now
        self._live.update(self._table(stats, result, uplink), refresh=True)

    def summary(self, stats: PipelineStats, store_dir: str | None) -> None:
        """Print the end-of-run table and one line saying where frames went."""
        self.console.print(self._table(stats, None))
        where = f"stored in {store_dir}" if store_dir else "not stored (--no-store)"
        self.console.print(
            f"{stats.frames} frames from {self.source}, {stats.hard_cases.hard} hard cases; "
            f"frames {where}"
        )

    def _table(self, stats: PipelineStats, result: FrameResult | None, uplink: Any = None) -> Table:
        table = Table(title=f"fedge edge: {self.source}", title_justify="left")
        table.add_column("FPS", justify="right")
        for stage in STAGES:
            table.add_column(f"{stage} ms", justify="right")
        table.add_row(
            f"{stats.fps:.1f}",
            *(f"{stats.stage_ms[s]:.1f}" if s in stats.stage_ms else "-" for s in STAGES),
        )
        cap = stats.capture
        hard = stats.hard_cases
        counters = (
            f"frames {stats.frames} · dropped {cap.dropped} · corrupt {cap.corrupt} · "
            f"reconnects {cap.reconnects} · hard {hard.hard} · "
            f"suppressed {hard.duplicates + hard.rate_limited} · "
            f"already asked {hard.already_asked} · confirmed {hard.already_confirmed} · "
            f"doubt pending {hard.doubt_pending}"
        )
        if uplink is not None:
            rtt = "-" if uplink.rtt_ms is None else f"{uplink.rtt_ms:.0f} ms"
            counters += (
                f"\nuplink {uplink.state} · sent {uplink.sent} · labelled {uplink.labelled} · "
                f"failed {uplink.failed} · pending {uplink.pending} · "
                f"up {uplink.bytes_up / 1024:.1f} KiB · rtt {rtt}"
            )
        if result is not None and result.hard_reasons:
            counters += f"\nframe {result.frame}: {', '.join(result.hard_reasons)}"
        table.caption = counters
        table.caption_justify = "left"
        return table
