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
learn from the labels of the cold-start sample; the others split the rest equally, and the
last stretch also gets what the division leaves over.

The **last** stretch is, like the held-out frames, a measurement: the final version runs
on it and nothing trains on it (the site after the loop), so its upload rate is what the
goal of at most 5% of a site's frames is judged on. Over 12 frames a single question is
8.3%, so no run could meet it except by asking nothing; the last stretch therefore gets
at least ``final_frames`` (:data:`FINAL_STRETCH`, 20: one question is 5%), the frames it
lacks taken from the held-out frames (which keep at least half of theirs and
:data:`MIN_HELD_OUT`). The stretches the sites train on stay as they were: on the bundled
clip 26/12/12 and a last stretch of 20 instead of 12, 10 held-out frames instead of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from fedge.core.errors import ConfigError

__all__ = ["FINAL_STRETCH", "MIN_HELD_OUT", "MIN_STRETCH", "DemoPlan", "SitePlan", "plan_sites"]

MIN_STRETCH = 4
"""Fewest frames of a stretch."""
MIN_HELD_OUT = 2
"""Fewest held-out frames of a site."""
FINAL_STRETCH = 20
"""Frames the last stretch gets at least, where the held-out frames can spare them."""


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
    final_frames: int = FINAL_STRETCH,
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
    if final_frames < 0:
        raise ConfigError(f"--final-frames must be 0 or more, got {final_frames}")
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
    sizes = [first] + [per_stretch] * rounds
    sizes[-1] += stream - first - per_stretch * rounds  # the division's rest
    spare = held - max(MIN_HELD_OUT, (held + 1) // 2)
    lent = max(0, min(final_frames - sizes[-1], spare))
    sizes[-1] += lent
    held -= lent
    plans = []
    for site in range(sites):
        start = site * per_site
        bounds = [start]
        for size in sizes:
            bounds.append(bounds[-1] + size)
        stretches = tuple(tuple(range(a, b)) for a, b in pairwise(bounds))
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
