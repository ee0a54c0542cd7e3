"""How the demo cuts one source into camera sites, stretches and held-out frames.

Sites are **time segments** of the source: site ``i`` of ``N`` gets the ``i``-th of ``N``
equal, contiguous, disjoint runs of frames, the whole view of the camera (as if ``N``
cameras of the same kind watched similar scenes at different times). Inside its
segment a site keeps the last ``held_out_share`` of the frames apart, contiguous, for
evaluation only (they are never stored on the node, never uploaded and never trained
on), and splits the rest into ``rounds + 1`` consecutive **stretches**: stretch ``r`` is
what the site's camera sees while it runs model version ``r`` (``0``: no detector yet),
so the hard-case rate of each round is measured on frames no model has trained on.
Stretch 0 (cold start) takes ``cold_start_share`` of them: the first model can only
learn from the labels of the cold-start sample; the others split the rest equally.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core.errors import ConfigError

__all__ = ["MIN_HELD_OUT", "MIN_STRETCH", "DemoPlan", "SitePlan", "plan_sites"]

MIN_STRETCH = 4
"""Fewest frames of a stretch."""
MIN_HELD_OUT = 2
"""Fewest held-out frames of a site."""


@dataclass(frozen=True)
class SitePlan:
    """One site's frames, as indices into the source."""

    site: int
    start: int
    stop: int
    stretches: tuple[tuple[int, ...], ...]
    held_out: tuple[int, ...]

    @property
    def name(self) -> str:
        """``site-<i>``: the site's node id, folder and label."""
        return f"site-{self.site}"


@dataclass(frozen=True)
class DemoPlan:
    """Every site's plan and the source's frame count."""

    frames: int
    sites: tuple[SitePlan, ...]
    rounds: int

    def describe(self) -> str:
        """One line: sites, frames per site, stretch and held-out sizes."""
        first = self.sites[0]
        sizes = "/".join(str(len(s)) for s in first.stretches)
        return (
            f"{len(self.sites)} sites x {first.stop - first.start} frames (time segments of "
            f"{self.frames}); per site: stretches of {sizes} frames for rounds "
            f"0..{self.rounds}, {len(first.held_out)} held-out frames"
        )


def plan_sites(
    frames: int,
    sites: int,
    rounds: int,
    held_out_share: float = 0.2,
    cold_start_share: float = 0.4,
) -> DemoPlan:
    """Cut ``frames`` source frames into ``sites`` sites (module docstring).

    Raises
    ------
    ConfigError
        When a site would get fewer than ``MIN_STRETCH`` frames per stretch or fewer than
        ``MIN_HELD_OUT`` held-out frames; the message says how many frames are needed.
    """
    if sites < 1:
        raise ConfigError(f"--sites must be 1 or more, got {sites}")
    if rounds < 1:
        raise ConfigError(f"--rounds must be 1 or more, got {rounds}")
    if not 0.0 < held_out_share < 1.0:
        raise ConfigError(f"the held-out share must lie in (0, 1), got {held_out_share}")
    if not 0.0 < cold_start_share < 1.0:
        raise ConfigError(f"the cold-start share must lie in (0, 1), got {cold_start_share}")
    per_site = frames // sites
    held = int(round(per_site * held_out_share))
    stream = per_site - held
    first = max(int(round(stream * cold_start_share)), MIN_STRETCH)
    per_stretch = (stream - first) // rounds
    if per_stretch < MIN_STRETCH or held < MIN_HELD_OUT:
        need = _frames_needed(sites, rounds, held_out_share, cold_start_share)
        raise ConfigError(
            f"the source has {frames} frames: too few for {sites} sites and {rounds} rounds "
            f"(each site needs {rounds + 1} stretches of at least {MIN_STRETCH} frames and "
            f"{MIN_HELD_OUT} held-out frames, {need} frames in all); use fewer --sites or "
            "--rounds, or a longer --source"
        )
    plans = []
    for site in range(sites):
        start = site * per_site
        stretches = (tuple(range(start, start + first)),) + tuple(
            tuple(range(start + first + r * per_stretch, start + first + (r + 1) * per_stretch))
            for r in range(rounds)
        )
        held_out = tuple(range(start + per_site - held, start + per_site))
        plans.append(SitePlan(site, start, start + per_site, stretches, held_out))
    return DemoPlan(frames, tuple(plans), rounds)


def _frames_needed(sites: int, rounds: int, held_out_share: float, cold_start_share: float) -> int:
    for per_site in range(1, 1_000_000):
        held = int(round(per_site * held_out_share))
        stream = per_site - held
        first = max(int(round(stream * cold_start_share)), MIN_STRETCH)
        if held >= MIN_HELD_OUT and (stream - first) // rounds >= MIN_STRETCH:
            return per_site * sites
    raise AssertionError("unreachable")
