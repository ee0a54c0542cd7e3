"""Hard-case selection: which frames are worth a cloud label.

A frame qualifies when the node's own models are unsure of it:

- ``uncertain_score``: a detection's score falls in the uncertainty band: the label's
  calibrated :class:`ScoreBand` when the selector has one (``set_band``: the person
  detector's version measured on the nodes, ``export.score_calibration``: boxes the node's
  decision on is wrong with probability >= 0.3), else ``policy.uncertain_low`` to
  ``policy.uncertain_high``;
- ``pose_ssd_disagree``: the pose estimator and the detector disagree: a confident pose
  with no matching box, or a confident box with no pose; which detector labels take
  part, and how a box matches a pose (IoU for person boxes, "inside" for face boxes), is
  set per label by ``DisagreementCheck`` (the shipped SSD is BlazeFace: faces only);
- ``small_margin``: two overlapping boxes of different labels score almost the same;
- ``cold_start``: the node has no person detector yet (``cold_start=True``), so the
  detector's uncertainty is undefined: a sample of frames, at most
  ``cold_start_per_minute`` (a budget of its own, beside the hard-case rate limit) and
  never one that looks like a recent hard case, goes to the cloud so its labels can
  train the first model. Once a detector is installed the node selects by uncertainty
  alone.

With ``policy.track_min_iou > 0`` the selector tracks the boxes from frame to frame
(``clients.tracking.IouTracker``) and asks the cloud once per uncertain object, not once
per frame: every tracked object that a frame going to the cloud shows is marked
``asked`` (the case carries every box; in ``crops`` mode an object counts as shown when
``PLACE_INSIDE`` of its box lies inside the case's crops, which the selector's ``shows``
says: the privacy filter keeps ``max_crops`` crops, for the people it is least sure of
first, so on a crowded frame the objects left out stay to be asked), and an uncertain
box of an asked object no longer makes a frame hard (counted in
``SelectorStats.already_asked`` when it is the frame's only reason). A frame that was
held back marks nothing, so its objects stay to be asked. With ``policy.track_confirm``
(the default) an object is also known once the detector running now was sure of it: a
box of its track scored at or above the top of its label's band on this or an earlier
frame. A person walking through the view scores above the band on most frames and dips
into it on some (a turn, a partial occlusion); the dips of a person the detector has
already found are not doubt about whether a person is there, and asking the cloud about
them would spend the uplink on flicker (counted in ``SelectorStats.already_confirmed``).
A new detector version (``set_band``) starts every confirmation afresh: what an earlier
version was sure of says nothing about the new one; the cloud's answers (``asked``)
stay.

The pose/box check is asked once per object too: the poses are tracked like the boxes
(a tracker of their own), a confident box without a pose counts as its box's object and a
confident pose without a box as its pose's, and an object already asked about is no
disagreement. Confirmation does not settle a disagreement (the box without a pose is a
confident one): only the cloud's answer does.

With ``policy.track_min_doubt`` = N > 1 an object makes a frame hard only once the
detector running now has been unsure of it on N frames (its in-band boxes while it is
neither asked nor confirmed, and its disagreements with the pose estimator while it is not
asked; a frame counts once per object): an object the detector is unsure of on first
sight and sure of a frame or two later (a person stepping out of an occlusion or into the
view) was found by the detector itself, a pose lost on a frame or two (a turn, a crossing)
is found again, and one still in doubt after N frames is worth a label. The frames that
only such younger doubts would have made hard are counted in
``SelectorStats.doubt_pending``; a new version (``set_band``) counts afresh.

With ``policy.place_iou`` > 0 the selector also remembers where the objects on frames it
sent stood: a box (or pose) that lies where a frame sent within ``dedup_window_s`` showed
an object of its label (IoU >= ``place_iou``) counts as asked about. A still camera's
detector keeps scoring the same background (a door, a window edge) in the band; its
track ends when the score drops under the detector's floor for a few frames and a new
one starts in the same place, and without this memory each new track would ask the
cloud again about a place it has already labelled. The cost: someone standing exactly
where an object was asked about within the window is taken as asked while they stay.

With ``policy.place_max_change`` > 0 the selector also keeps a small grey copy of each
frame it sent (``VIEWS_KEPT`` at most, ``VIEW_SIDE`` pixels on the long side) and the
boxes of its objects: a box (or pose) that lies inside one of them grown by
``place_margin`` of its size on every side (what a ``crops`` case shows the cloud with the
privacy filter's default padding), on a frame sent within ``dedup_window_s``, and whose
pixels there differ from that frame's by at most ``place_max_change`` grey levels on
average (each region's own mean taken out, so a change of light is no change), counts as
asked about: the cloud has seen exactly this there, whatever box shape a new detector
version draws around it. On the demo clip (``benchmarks/place_change.py``) in-band boxes
on background changed by a median 1.4 grey levels since a sent frame, and boxes where
someone had stepped in by a median 50 (2 of 104 by 8 or less), so the default 8 keeps them
apart. Alone, without ``place_iou``, it would not take someone who steps into such a
place as asked about: they change its pixels. Both rules remember only the objects a sent
frame showed, as ``asked`` does.

With ``policy.ask_labels`` (e.g. ``("person",)``, what the cloud's teacher labels), once
the node runs a detector of one of those labels (``detector_labels`` has it: after the
first person detector is installed) only boxes of those labels take part: an uncertain
face box, or a face outside every pose, is then no reason to upload a frame, since the
cloud's labels could not answer it. Before that (cold start, BlazeFace alone) every label
counts: any sign of a person makes a frame worth labelling for the first model.

A qualifying frame is then held back (``suppressed``) when it looks like a recent hard
case (a dHash of a small grayscale thumbnail within a Hamming distance) or when the
rate limit (a token bucket) is spent, so a static scene cannot flood the uplink. Both
run on the selector's clock (``time.monotonic`` unless another is injected, as tests
do to make the limit independent of how fast the machine is). Accepted hard cases are
flagged in the frame store and published as ``HardCaseEvent`` on a ``HardCaseFeed``
for the uploader.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np

from clients.tracking import IouTracker, Track
from fedge.core.geometry import box_area, covered_share, intersection_area, iou_matrix
from fedge.core.records import Detection, Person

__all__ = [
    "Clock",
    "DisagreementCheck",
    "HardCaseDecision",
    "HardCaseEvent",
    "HardCaseFeed",
    "HardCasePolicy",
    "HardCaseSelector",
    "PLACES_KEPT",
    "PLACE_INSIDE",
    "Reason",
    "ScoreBand",
    "SelectorStats",
    "Shows",
    "Suppression",
    "TOKEN_TOLERANCE",
    "TokenBucket",
    "VIEWS_KEPT",
    "VIEW_SIDE",
    "dhash",
    "disagreements",
    "find_hard_reasons",
    "grey_view",
    "grown_box",
    "region_change",
]

Box = tuple[float, float, float, float]
TOKEN_TOLERANCE = 1e-3
"""How much short of a whole token still counts as one (``TokenBucket``)."""
PLACES_KEPT = 1024
"""Places of sent objects a selector remembers at most (``HardCasePolicy.place_iou``)."""
VIEWS_KEPT = 64
"""Sent frames whose grey copy a selector keeps at most (``HardCasePolicy.place_max_change``)."""
VIEW_SIDE = 320
"""Long side, in pixels, of the grey copies the unchanged-place rule compares."""
PLACE_INSIDE = 0.9
"""Share of a box inside a sent object's grown box for the unchanged-place rule."""
Clock = Callable[[], float]  # seconds, e.g. time.monotonic
Shows = Callable[[Sequence[Person], Sequence[Detection], int, int], Sequence[Box] | None]
"""What a hard case of a frame shows the cloud, from the frame's persons, detections (motion
proposals included) and width and height: rectangles of the frame, or ``None`` for every
object on it (``clients.privacy_filter.shown_regions`` makes one for a privacy mode)."""


class Reason(StrEnum):
    """Why a frame qualifies as a hard case."""

    UNCERTAIN_SCORE = "uncertain_score"
    POSE_SSD_DISAGREE = "pose_ssd_disagree"
    SMALL_MARGIN = "small_margin"
    COLD_START = "cold_start"


class Suppression(StrEnum):
    """Why a qualifying frame was held back."""

    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class DisagreementCheck:
    """How boxes of one detector ``label`` must agree with poses.

    ``match`` is ``"iou"`` (box and pose box overlap by IoU) or ``"inside"`` (the box lies
    inside the pose box, for faces). ``pose_implies_box``: a confident pose with no such
    box is a disagreement (true for whole-person boxes, false for faces, which a person
    seen from behind does not show). A confident box with no pose disagrees, but only among
    the ``max_posed`` highest-scored boxes of the label when that is > 0: top-down pose
    (``--max-persons N``) poses only the best N boxes, so the rest are not expected to
    have a pose.
    """

    label: str
    match: Literal["iou", "inside"] = "iou"
    pose_implies_box: bool = True
    max_posed: int = 0


@dataclass(frozen=True)
class ScoreBand:
    """Scores ``low <= score < high`` of one label are uncertain (empty when equal)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"score band [{self.low}, {self.high}) is not within [0, 1]")

    def contains(self, score: float) -> bool:
        """Whether ``score`` lies in the band."""
        return self.low <= float(score) < self.high


@dataclass(frozen=True)
class HardCasePolicy:
    """Thresholds of hard-case selection; every value is a knob."""

    uncertain_low: float = 0.3
    uncertain_high: float = 0.6
    pose_confident: float = 0.7
    pose_min: float = 0.3
    box_confident: float = 0.6
    match_threshold: float = 0.3
    disagreement: tuple[DisagreementCheck, ...] = (
        DisagreementCheck("person", "iou", pose_implies_box=True),
        DisagreementCheck("face", "inside", pose_implies_box=False),
    )
    min_margin: float = 0.1
    margin_iou: float = 0.5
    max_per_minute: float = 6.0
    burst: int = 3
    dedup_hash_size: int = 8
    dedup_max_distance: int = 6
    dedup_window_s: float = 300.0
    dedup_recent: int = 32
    cold_start_per_minute: float = 2.0
    track_min_iou: float = 0.0  # > 0: ask once per tracked object (module docstring)
    track_max_age: int = 3  # frames a track outlives its last box
    track_confirm: bool = True  # with tracking: dips of confirmed objects are no reason
    track_min_doubt: int = 1  # with tracking: frames of doubt before an object is a reason
    ask_labels: tuple[str, ...] = ()  # out of cold start, only these labels' boxes count
    place_iou: float = 0.0  # with tracking, > 0: a box where a sent frame showed one is asked
    place_max_change: float = 0.0  # with tracking, > 0: ... or a sent frame showed it unchanged
    place_margin: float = 0.5  # a sent box grown by this share of its size on every side

    def __post_init__(self) -> None:
        if self.track_min_doubt < 1:
            raise ValueError(f"track_min_doubt must be 1 or more, got {self.track_min_doubt}")
        if not 0.0 <= self.place_iou <= 1.0:
            raise ValueError(f"place_iou must lie in [0, 1], got {self.place_iou}")
        if not 0.0 <= self.place_max_change <= 255.0:
            raise ValueError(
                f"place_max_change must lie in [0, 255] grey levels, got {self.place_max_change}"
            )
        if self.place_margin < 0.0:
            raise ValueError(f"place_margin must be 0 or more, got {self.place_margin}")

    @property
    def band(self) -> ScoreBand:
        """The uncertainty band of a label without a calibrated one."""
        return ScoreBand(self.uncertain_low, self.uncertain_high)


@dataclass(frozen=True)
class HardCaseDecision:
    """The selector's verdict on one frame."""

    reasons: tuple[str, ...] = ()
    suppressed: str | None = None

    @property
    def hard(self) -> bool:
        """Whether the frame is a hard case to upload."""
        return bool(self.reasons) and self.suppressed is None

    def record_reasons(self) -> list[str]:
        """Reasons as written to ``FrameResult.hard_reasons`` (``suppressed:...`` last)."""
        tail = [f"suppressed:{self.suppressed}"] if self.suppressed and self.reasons else []
        return [*self.reasons, *tail]


@dataclass(frozen=True)
class HardCaseEvent:
    """A hard case for the uploader; ``frame_id`` is its id in the frame store."""

    frame_id: int | None
    frame_index: int
    time: float
    source: str
    reasons: tuple[str, ...]


def _inside(inner: Box, outer: Box) -> float:
    """Share of ``inner``'s area that lies inside ``outer``."""
    area = float(box_area(np.asarray(inner)))
    return float(intersection_area(inner, outer)[0, 0]) / area if area > 0 else 0.0


def _iou(a: Box, b: Box) -> float:
    return float(iou_matrix(a, b)[0, 0])


def _matches(check: DisagreementCheck, box: Box, pose_box: Box, threshold: float) -> bool:
    score = _inside(box, pose_box) if check.match == "inside" else _iou(box, pose_box)
    return score >= threshold


def find_hard_reasons(
    persons: Sequence[Person],
    detections: Sequence[Detection],
    policy: HardCasePolicy,
    detector_labels: Collection[str] | None = None,
    bands: Mapping[str, ScoreBand] | None = None,
    known: Sequence[bool] | None = None,
    known_disagree: Sequence[bool] | None = None,
    known_poses: Sequence[bool] | None = None,
    lone: tuple[set[int], set[int]] | None = None,
) -> tuple[str, ...]:
    """Return why a frame is hard (empty when it is not), before any suppression.

    ``detector_labels`` are the labels the detector can emit; disagreement checks for
    other labels are skipped (``None``: only labels present in ``detections``). ``bands``
    are calibrated uncertainty bands by label (other labels: the policy's band).
    ``known`` says, per detection, whether its object is already known (the cloud was
    asked about it, or the detector was sure of it on a frame before): such a box is not
    an uncertain score (``None``: none is). ``known_disagree`` (per detection) and
    ``known_poses`` (per person) say the same of the pose/box check: a confident box
    without a pose, or a confident pose without a box, whose object is known is no
    disagreement (``None``: none is). ``lone`` is what :func:`disagreements` returns for
    these arguments when the caller has it already (``None``: computed here).
    """
    reasons: list[str] = []
    default = policy.band
    own = bands or {}
    seen = _mask(known, len(detections), "known", "detections")
    if any(
        own.get(d.label, default).contains(d.score) and not is_known
        for d, is_known in zip(detections, seen, strict=True)
    ):
        reasons.append(Reason.UNCERTAIN_SCORE)
    boxes, poses = lone or disagreements(persons, detections, policy, detector_labels)
    box_known = _mask(known_disagree, len(detections), "known_disagree", "detections")
    pose_known = _mask(known_poses, len(persons), "known_poses", "persons")
    if any(not box_known[i] for i in boxes) or any(not pose_known[j] for j in poses):
        reasons.append(Reason.POSE_SSD_DISAGREE)
    if _small_margin(detections, policy):
        reasons.append(Reason.SMALL_MARGIN)
    return tuple(reasons)


def _mask(values: Sequence[bool] | None, count: int, name: str, what: str) -> Sequence[bool]:
    if values is None:
        return [False] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} {what}")
    return values


def disagreements(
    persons: Sequence[Person],
    detections: Sequence[Detection],
    policy: HardCasePolicy,
    detector_labels: Collection[str] | None = None,
) -> tuple[set[int], set[int]]:
    """Where the pose estimator and the detector disagree: the indices of the confident
    boxes without a pose and of the confident poses without a box (``policy.disagreement``
    says, per label, how a box matches a pose; see :class:`DisagreementCheck`)."""
    labels = set(detector_labels) if detector_labels is not None else {d.label for d in detections}
    poses = [p.box for p in persons if p.score >= policy.pose_min]
    lone_boxes: set[int] = set()
    lone_poses: set[int] = set()
    for check in policy.disagreement:
        if check.label not in labels:
            continue
        mine = [i for i, d in enumerate(detections) if d.label == check.label]
        expect_pose = sorted(mine, key=lambda i: -detections[i].score)
        if check.max_posed > 0:
            expect_pose = expect_pose[: check.max_posed]
        for i in expect_pose:
            det = detections[i]
            if det.score >= policy.box_confident and not any(
                _matches(check, det.box, pose, policy.match_threshold) for pose in poses
            ):
                lone_boxes.add(i)
        if check.pose_implies_box:
            for j, person in enumerate(persons):
                if person.score >= policy.pose_confident and not any(
                    _matches(check, detections[i].box, person.box, policy.match_threshold)
                    for i in mine
                    if detections[i].score >= policy.uncertain_low
                ):
                    lone_poses.add(j)
    return lone_boxes, lone_poses


def _small_margin(detections: Sequence[Detection], policy: HardCasePolicy) -> bool:
    for i, a in enumerate(detections):
        for b in detections[i + 1 :]:
            if (
                a.label != b.label
                and abs(a.score - b.score) < policy.min_margin
                and _iou(a.box, b.box) >= policy.margin_iou
            ):
                return True
    return False


def dhash(image: np.ndarray, hash_size: int = 8) -> int:
    """Return the difference hash of ``image`` (``hash_size**2`` bits) as an int."""
    import cv2

    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


class TokenBucket:
    """A rate limit: ``rate_per_s`` tokens a second, at most ``capacity``.

    Time is whatever the caller passes to ``take`` (seconds on one clock). A token is
    whole within ``TOKEN_TOLERANCE``: frame times are absolute (epoch seconds), so the
    gap between two frames at 10 fps reads 0.0999998 s, and a bucket refilling exactly
    one token per frame would otherwise hand one out on only about 3 frames in 5.
    """

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._last: float | None = None

    def peek(self, now: float) -> bool:
        """Whether a token is available at time ``now`` (nothing is spent)."""
        self._refill(now)
        return self._tokens >= 1.0 - TOKEN_TOLERANCE

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` if one is available."""
        self._refill(now)
        if self._tokens >= 1.0 - TOKEN_TOLERANCE:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_per_s)
        if self._last is None or now > self._last:
            self._last = now


@dataclass
class SelectorStats:
    """How many frames each verdict reached."""

    frames: int = 0
    hard: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    already_asked: int = 0  # frames hard only by boxes of objects already asked about
    already_confirmed: int = 0  # ... only by dips of objects the detector was sure of
    doubt_pending: int = 0  # ... only by objects doubted on fewer than track_min_doubt frames
    reasons: dict[str, int] = field(default_factory=dict)


class HardCaseSelector:
    """Decide, frame by frame, which frames are hard cases (see the module docstring).

    ``clock`` returns the current time in seconds; the rate limit and the duplicate
    window run on it. ``bands`` are calibrated uncertainty bands by label;
    :meth:`set_band` replaces one from another thread (the detector follower, when it
    swaps a version in) while :meth:`decide` runs: each decision uses the bands of one
    moment. ``shows`` says what a case of a frame shows the cloud (default: every object
    on it), so that only objects it showed count as asked about.
    """

    def __init__(
        self,
        policy: HardCasePolicy | None = None,
        detector_labels: Collection[str] | None = None,
        clock: Clock = time.monotonic,
        cold_start: bool = False,
        bands: Mapping[str, ScoreBand] | None = None,
        shows: Shows | None = None,
    ) -> None:
        self.policy = policy or HardCasePolicy()
        self.shows = shows
        self.detector_labels = detector_labels
        self._bands: Mapping[str, ScoreBand] = dict(bands or {})
        self._bands_lock = threading.Lock()
        self.clock = clock
        self.cold_start = cold_start and self.policy.cold_start_per_minute > 0
        self.stats = SelectorStats()
        self._bucket = TokenBucket(self.policy.max_per_minute / 60.0, float(self.policy.burst))
        self._cold_bucket = TokenBucket(self.policy.cold_start_per_minute / 60.0, 1.0)
        self._recent: deque[tuple[float, int]] = deque(maxlen=self.policy.dedup_recent)
        tracking = self.policy.track_min_iou > 0
        self._tracker = (
            IouTracker(self.policy.track_min_iou, self.policy.track_max_age) if tracking else None
        )
        self._pose_tracker = (  # poses are objects too: a pose without a box is asked once
            IouTracker(self.policy.track_min_iou, self.policy.track_max_age) if tracking else None
        )
        self._generation = 0  # bumped by set_band: confirmations count within one version
        self._places: deque[tuple[float, str, Box]] = deque(maxlen=PLACES_KEPT)
        self._views: deque[_View] = deque(maxlen=VIEWS_KEPT)

    @property
    def bands(self) -> dict[str, ScoreBand]:
        """The calibrated bands by label now (a copy)."""
        return dict(self._bands)

    def set_band(self, label: str, band: ScoreBand | None) -> None:
        """Use ``band`` for ``label``'s boxes from the next decision on (``None``: the
        policy's band again). Safe to call from any thread."""
        with self._bands_lock:
            bands = dict(self._bands)
            if band is None:
                bands.pop(label, None)
            else:
                bands[label] = band
            self._bands = bands  # one reference swap: decide reads either whole mapping
            self._generation += 1  # a new version: its confirmations start afresh

    def decide(
        self,
        image: np.ndarray,
        persons: Sequence[Person],
        detections: Sequence[Detection],
        now: float | None = None,
        proposals: Sequence[Detection] | None = None,
    ) -> HardCaseDecision:
        """Return the verdict for one frame; accepted hard cases spend the rate limit.

        ``now`` is the decision time on the selector's clock (default: read the clock).
        ``proposals`` are the caller's person-candidate regions (motion boxes) when it
        runs a proposer: in cold start a frame with neither a person nor a proposal is
        then not sampled (a crop-only case of it would show the cloud nothing), so the
        sample's budget goes to frames with something to label.
        """
        self.stats.frames += 1
        generation = self._generation  # read before the bands (set_band: after them)
        bands = self._bands
        asked = self.policy.ask_labels
        own = self.detector_labels or ()
        carried = detections  # the case carries them all, whatever ask_labels filters
        if asked and any(label in asked for label in own):  # (module docstring)
            detections = [d for d in detections if d.label in asked]
        frame_time = self.clock() if now is None else now
        tracks: list[Track] | None = None
        if self._tracker is None or self._pose_tracker is None:
            reasons = find_hard_reasons(
                persons, detections, self.policy, self.detector_labels, bands
            )
        else:
            tracks = self._tracker.update(detections)
            tracks += self._pose_tracker.update([_pose_box(p) for p in persons])
            settled = self._settle(
                image, persons, detections, tracks, bands, generation, frame_time
            )
            reasons = find_hard_reasons(
                persons,
                detections,
                self.policy,
                self.detector_labels,
                bands,
                settled.scores,
                settled.disagree,
                settled.poses,
                settled.lone,
            )
            if not reasons:
                self._count_settled(settled.doubts)
        if not reasons and self.cold_start:
            if proposals is not None and not persons and not proposals:
                return HardCaseDecision()
            decision = self._cold_start_sample(image, frame_time)
            if decision.hard:
                shown = self._shown(image, persons, carried, proposals)
                self._mark_asked(tracks, frame_time, image, shown)
            return decision
        if not reasons:
            return HardCaseDecision()
        for reason in reasons:
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        fingerprint = dhash(image, self.policy.dedup_hash_size)
        if self._is_duplicate(fingerprint, frame_time):
            self.stats.duplicates += 1
            return HardCaseDecision(reasons, Suppression.DUPLICATE)
        if not self._bucket.take(frame_time):
            self.stats.rate_limited += 1
            return HardCaseDecision(reasons, Suppression.RATE_LIMITED)
        self._recent.append((frame_time, fingerprint))
        self.stats.hard += 1
        shown = self._shown(image, persons, carried, proposals)
        self._mark_asked(tracks, frame_time, image, shown)
        return HardCaseDecision(reasons)

    def _settle(
        self,
        image: np.ndarray,
        persons: Sequence[Person],
        detections: Sequence[Detection],
        tracks: Sequence[Track],
        bands: Mapping[str, ScoreBand],
        generation: int,
        frame_time: float,
    ) -> _Settled:
        """Which objects of this frame are known (``tracks``: the boxes' tracks, then the
        poses'). A box's uncertain score is known when its object was asked about,
        (``track_confirm``) confirmed by a box at or above its band while this version
        runs, or still young doubt; a disagreement when its object was asked about or is
        still young doubt. Young doubt: this version has been unsure of the object (an
        unsettled uncertain score or disagreement) on fewer than ``track_min_doubt``
        frames, this one included. An object counts as asked about when its track was, or
        (``place_iou``) when it stands where a frame sent within ``dedup_window_s`` showed
        an object of its label, or (``place_max_change``) when such a frame showed its
        place unchanged."""
        default = self.policy.band
        placed = self._at_asked_places(tracks, frame_time)
        asked = [t.asked or here for t, here in zip(tracks, placed, strict=True)]
        box_tracks, pose_tracks = tracks[: len(detections)], tracks[len(detections) :]
        if self.policy.track_confirm:
            for detection, track in zip(detections, box_tracks, strict=True):
                if detection.score >= bands.get(detection.label, default).high:
                    track.confirmed_in = generation
        lone_boxes, lone_poses = disagreements(
            persons, detections, self.policy, self.detector_labels
        )
        doubtful = [  # objects that would be a reason unless asked about
            k
            for k, track in enumerate(tracks)
            if not asked[k]
            and (
                k in lone_boxes
                or k - len(detections) in lone_poses
                or (
                    k < len(detections)
                    and bands.get(detections[k].label, default).contains(detections[k].score)
                    and track.confirmed_in != generation
                )
            )
        ]
        for k in self._shown_unchanged(image, [tracks[k] for k in doubtful], frame_time):
            asked[doubtful[k]] = True
        settled = _Settled(lone=(lone_boxes, lone_poses))
        for i, (detection, track) in enumerate(zip(detections, box_tracks, strict=True)):
            in_band = bands.get(detection.label, default).contains(detection.score)
            confirmed = track.confirmed_in == generation
            unsure = in_band and not (asked[i] or confirmed)
            at_odds = i in lone_boxes and not asked[i]
            young = (unsure or at_odds) and self._doubt(track, generation)
            settled.scores.append(not unsure or young)
            settled.disagree.append(not at_odds or young)
            if in_band or i in lone_boxes:  # a confirmation settles no disagreement
                settled.doubts.append((asked[i], confirmed and i not in lone_boxes))
        for j, track in enumerate(pose_tracks):
            at_odds = j in lone_poses and not asked[len(detections) + j]
            settled.poses.append(not at_odds or self._doubt(track, generation))
            if j in lone_poses:
                settled.doubts.append((asked[len(detections) + j], False))
        return settled

    def _at_asked_places(self, tracks: Sequence[Track], frame_time: float) -> list[bool]:
        """Per track, whether its box lies where a frame sent within ``dedup_window_s``
        showed an object of its label (IoU >= ``place_iou``; all ``False`` when off)."""
        placed = [False] * len(tracks)
        if self.policy.place_iou <= 0 or not tracks:
            return placed
        horizon = frame_time - self.policy.dedup_window_s
        recent = [(label, box) for seen, label, box in self._places if seen >= horizon]
        for label in {t.label for t in tracks}:
            mine = [k for k, t in enumerate(tracks) if t.label == label]
            there = [box for other, box in recent if other == label]
            if not there:
                continue
            overlap = iou_matrix(
                np.asarray([tracks[k].box for k in mine], np.float64),
                np.asarray(there, np.float64),
            )
            for row, k in enumerate(mine):
                placed[k] = bool(overlap[row].max() >= self.policy.place_iou)
        return placed

    def _shown_unchanged(
        self, image: np.ndarray, tracks: Sequence[Track], frame_time: float
    ) -> list[int]:
        """The indices of ``tracks`` whose box lies inside a sent object's grown box of its
        label, on a frame sent within ``dedup_window_s`` that showed the box's pixels
        changed by at most ``place_max_change`` (none when off)."""
        if self.policy.place_max_change <= 0 or not tracks:
            return []
        horizon = frame_time - self.policy.dedup_window_s
        views = [v for v in reversed(self._views) if v.time >= horizon]
        if not views:
            return []
        grey, scale = grey_view(image)
        limit = self.policy.place_max_change
        shown = []
        for k, track in enumerate(tracks):
            for view in views:
                mine = [box for label, box in view.boxes if label == track.label]
                inside = covered_share(track.box, mine)[0]
                if view.grey.shape != grey.shape or inside < PLACE_INSIDE:
                    continue
                if region_change(grey, view.grey, track.box, scale) <= limit:
                    shown.append(k)
                    break
        return shown

    def _shown(
        self,
        image: np.ndarray,
        persons: Sequence[Person],
        detections: Sequence[Detection],
        proposals: Sequence[Detection] | None,
    ) -> Sequence[Box] | None:
        """``shows`` for a frame that goes, with its motion ``proposals`` (``None``: every
        object, also when there is no ``shows``)."""
        if self.shows is None:
            return None
        height, width = image.shape[:2]
        return self.shows(persons, [*detections, *(proposals or ())], width, height)

    def _mark_asked(
        self,
        tracks: Sequence[Track] | None,
        frame_time: float,
        image: np.ndarray,
        shown: Sequence[Box] | None,
    ) -> None:
        """The frame goes to the cloud: every object it shows (``shown``: the case's
        rectangles, ``None``: all) has been asked about, and with ``place_iou`` its place
        is remembered, with ``place_max_change`` its grey view."""
        tracks = list(tracks or ())
        if shown is not None and tracks:
            inside = covered_share(np.asarray([t.box for t in tracks], np.float64), shown)
            tracks = [t for t, share in zip(tracks, inside, strict=True) if share >= PLACE_INSIDE]
        for track in tracks:
            track.asked = True
            if self.policy.place_iou > 0:
                self._places.append((frame_time, track.label, track.box))
        if tracks and self.policy.place_max_change > 0:
            grown = [(t.label, grown_box(t.box, self.policy.place_margin)) for t in tracks]
            self._views.append(_View(frame_time, grey_view(image)[0], grown))

    def _doubt(self, track: Track, generation: int) -> bool:
        """Count one more frame of doubt about ``track``'s object under ``generation``;
        return whether the doubt is still young (fewer than ``track_min_doubt`` frames)."""
        if track.doubted_in != generation:
            track.doubted_in, track.doubted = generation, 0
        track.doubted += 1
        return track.doubted < self.policy.track_min_doubt

    def _count_settled(self, doubts: Sequence[tuple[bool, bool]]) -> None:
        """A frame with no reason: count why its doubtful objects (asked, confirmed) were
        none."""
        if not doubts:
            return
        if all(asked for asked, _ in doubts):
            self.stats.already_asked += 1  # only objects already asked about
        elif all(asked or confirmed for asked, confirmed in doubts):
            self.stats.already_confirmed += 1  # ... or dips of confirmed objects
        else:
            self.stats.doubt_pending += 1  # ... or objects not yet doubted long enough

    def _cold_start_sample(self, image: np.ndarray, frame_time: float) -> HardCaseDecision:
        """No person detector yet, so its uncertainty is undefined: send a sample of the
        frames, at most ``cold_start_per_minute`` (its own budget: the hard-case rate
        limit is for frames selected by uncertainty, and taking from it too would cap
        ``cold_start_per_minute`` at ``max_per_minute`` without saying so) and none that
        looks like a recent hard case. A frame not sampled is simply not hard (no
        ``suppressed`` reason is recorded for a sample)."""
        if not self._cold_bucket.peek(frame_time):
            return HardCaseDecision()
        fingerprint = dhash(image, self.policy.dedup_hash_size)
        if self._is_duplicate(fingerprint, frame_time):
            return HardCaseDecision()
        self._cold_bucket.take(frame_time)
        self._recent.append((frame_time, fingerprint))
        self.stats.reasons[Reason.COLD_START] = self.stats.reasons.get(Reason.COLD_START, 0) + 1
        self.stats.hard += 1
        return HardCaseDecision((Reason.COLD_START,))

    def _is_duplicate(self, fingerprint: int, frame_time: float) -> bool:
        horizon = frame_time - self.policy.dedup_window_s
        return any(
            seen >= horizon and (fingerprint ^ other).bit_count() <= self.policy.dedup_max_distance
            for seen, other in self._recent
        )


@dataclass
class _Settled:
    """Per object of one frame, whether it is known (``HardCaseSelector._settle``), and
    for each object doubted on it whether it was asked about and whether confirmed."""

    scores: list[bool] = field(default_factory=list)
    disagree: list[bool] = field(default_factory=list)
    poses: list[bool] = field(default_factory=list)
    doubts: list[tuple[bool, bool]] = field(default_factory=list)
    lone: tuple[set[int], set[int]] = field(default_factory=lambda: (set(), set()))


@dataclass(frozen=True)
class _View:
    """A sent frame as the unchanged-place rule remembers it: its time, its grey copy and
    its objects' grown boxes by label (frame pixels)."""

    time: float
    grey: np.ndarray
    boxes: list[tuple[str, Box]]


def grey_view(image: np.ndarray) -> tuple[np.ndarray, float]:
    """``image`` in grey (uint8: 77 KB at 320x240), scaled so that its long side is at
    most ``VIEW_SIDE``, and the scale."""
    import cv2

    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    scale = min(1.0, VIEW_SIDE / max(grey.shape[:2]))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey, dtype=np.uint8), scale


def region_change(now: np.ndarray, then: np.ndarray, box: Box, scale: float) -> float:
    """Mean absolute grey difference inside ``box`` (frame pixels; ``scale``: view pixels
    per frame pixel) between two grey views of one frame size, each region's own mean
    taken out; infinite for a region under 2x2 view pixels."""
    height, width = now.shape[:2]
    x1, x2 = (min(max(int(round(v * scale)), 0), width) for v in (box[0], box[2]))
    y1, y2 = (min(max(int(round(v * scale)), 0), height) for v in (box[1], box[3]))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return float("inf")
    a = now[y1:y2, x1:x2].astype(np.float32)
    b = then[y1:y2, x1:x2].astype(np.float32)
    return float(np.abs((a - a.mean()) - (b - b.mean())).mean())


def grown_box(box: Box, margin: float) -> Box:
    """``box`` grown by ``margin`` of its width and height on every side."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return (x1 - dx, y1 - dy, x2 + dx, y2 + dy)


def _pose_box(person: Person) -> Detection:
    """A pose as a box for the pose tracker."""
    return Detection(box=person.box, label="pose", score=person.score)


class HardCaseFeed:
    """A bounded stream of ``HardCaseEvent`` for the uploader.

    ``publish`` never blocks: when the consumer lags, the oldest event is dropped (the
    frame stays flagged ``pending`` in the store, where the uploader can catch up).
    Iterating blocks for the next event and ends after ``close()``; ``get`` waits at
    most a timeout measured on ``clock``. Callbacks added with ``subscribe`` run in the
    publishing thread and must be quick. ``dropped`` counts the events dropped so far.
    """

    def __init__(self, maxsize: int = 256, clock: Clock = time.monotonic) -> None:
        self._events: deque[HardCaseEvent] = deque()
        self._maxsize = maxsize
        self._clock = clock
        self._ready = threading.Condition()
        self._closed = False
        self._callbacks: list[Callable[[HardCaseEvent], None]] = []
        self.dropped = 0

    def subscribe(self, callback: Callable[[HardCaseEvent], None]) -> None:
        """Call ``callback(event)`` for every event published from now on."""
        self._callbacks.append(callback)

    def publish(self, event: HardCaseEvent) -> None:
        """Queue ``event`` (dropping the oldest if full) and run the callbacks."""
        with self._ready:
            if len(self._events) >= self._maxsize:
                self._events.popleft()
                self.dropped += 1
            self._events.append(event)
            self._ready.notify_all()
        for callback in self._callbacks:
            callback(event)

    def get(self, timeout: float | None = None) -> HardCaseEvent | None:
        """Return the next event, waiting for one up to ``timeout`` seconds (``None``: forever).

        Returns ``None`` once the feed is closed and empty, or when the timeout has passed
        on the feed's clock with no event; wake-ups without an event do not end the wait.
        """
        with self._ready:
            deadline = None if timeout is None else self._clock() + timeout
            while not self._events and not self._closed:
                if deadline is None:
                    self._ready.wait()
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            return self._events.popleft() if self._events else None

    def close(self) -> None:
        """End iteration once the queued events are consumed."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __iter__(self) -> Iterator[HardCaseEvent]:
        while (event := self.get()) is not None:
            yield event
