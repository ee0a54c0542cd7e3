"""The demo's site agents ask the hard-case selector to count as asked only what their
privacy mode's cases show (``clients.privacy_filter.shown_regions``)."""

from __future__ import annotations

from pathlib import Path

from clients.hard_cases import HardCasePolicy
from fedge.core.records import Detection
from fedge.demo.site_agent import SiteAgent


def _crowd(count: int) -> list[Detection]:
    return [
        Detection((40.0 * i, 100.0, 40.0 * i + 30.0, 180.0), "person", 0.4) for i in range(count)
    ]


def test_a_demo_site_counts_as_asked_only_what_its_crops_show(
    tmp_path: Path, model_dir: Path
) -> None:
    for privacy, shown in (("crops", 16), ("frames", None)):
        agent = SiteAgent(
            "site-0",
            tmp_path / privacy,
            cloud="127.0.0.1:9",  # never started: nothing connects
            privacy=privacy,
            policy=HardCasePolicy(),
            model_dir=str(model_dir),
            fps=10.0,
            epoch=0.0,
        )
        try:
            shows = agent.selector.shows
            assert shows is not None
            regions = shows([], _crowd(17), 700, 480)
            assert (None if regions is None else len(regions)) == shown
        finally:
            agent.close()
