"""Confidence fusion: one box and one score per object from the node's and the teacher's boxes.

**Matching.** Per label, edge boxes ``E`` and cloud boxes ``C`` are paired one-to-one by
the assignment that maximises the summed IoU (``scipy.optimize.linear_sum_assignment``
on ``fedge.core.geometry.iou_matrix``); pairs whose IoU is below ``iou_threshold``
(0.5 by default) count as 0 in that sum and are not matches. Unlike greedy
highest-IoU-first matching, this never lets one good pair block two others.

**Scores** (``s_e``, ``s_c`` the node's and the cloud's score of a matched pair):

- ``mean``: ``w_e * s_e + w_c * s_c`` with ``w_c = 1 - w_e`` (``w_e = 0.5`` unless set),
  so an edge 0.8 and a cloud 0.9 give 0.85, the design's worked example. The design's
  original formula ``P_edge + P_cloud`` is a sum, not a probability (0.8 + 0.9 = 1.7);
  the weighted mean is its normalised form.
- ``logit``: a calibrated log-odds pool,
  ``sigma(w_e * logit(s_e) / T_e + w_c * logit(s_c) / T_c)``: each source is
  temperature-scaled (``sigma(logit(s) / T)`` is its calibrated probability) and the
  calibrated log-odds are averaged with weights ``w_e + w_c = 1``. ``T_e``, ``T_c`` and
  ``w_e`` come from a :class:`~server.cloud.calibration.Calibration` fitted by minimising
  the NLL on labelled or teacher-labelled held-out boxes; without one, ``T = 1`` and
  ``w_e = 0.5`` (an uncalibrated pool).
- ``cloud`` and ``edge``: baselines, ``mean`` with ``w_e = 0`` and ``w_e = 1``.

**Unmatched boxes** (one rule for every method): a box that only one source reported is
fused as if the silent source had reported it with its *absent score* ``a_e`` / ``a_c``:
``mean`` gives ``w_e * s_e + w_c * a_c`` for an edge-only box, ``logit`` gives
``sigma(w_e * logit(s_e) / T_e + w_c * logit(a_c))`` (``a`` is already a probability,
so it is not temperature-scaled), the baselines give the silent source's ``a``. The
absent scores are part of the calibration: fitted as the precision of the boxes the
source missed. Without one, silence is no evidence (``0.5``) except where the teacher
*looked*: an edge box with at least :data:`LOOKED_SHARE` of its area inside one region
the case showed the cloud (the crops of a ``crops`` case, the whole frame of a ``frames``
case; ``looked``) and no teacher box matching it scores :data:`CLOUD_SILENT_SCORE` (0) as
the cloud's, because the teacher saw those pixels and found nobody. So the node's own
unconfirmed guesses do not come back to it as labels: with ``mean``, an edge-only box
the teacher looked at is a label (fused score >= 0.3) only from an edge score of 0.6, and
below that the node trains on its pixels as background, the teacher's answer
(``clients.tasks.detector_data``; under the old rule they were fused to about 0.4 and
trained on as persons). Nothing is dropped: every box either source reported
comes out once, with both sources' original scores (``None`` for the silent one) beside
the fused score.

**Boxes.** A matched pair's box is the score-weighted average of the two boxes,
``(s_e * B_e + s_c * B_c) / (s_e + s_c)`` (plain average when both scores are 0); an
unmatched box keeps its coordinates.

**Expected calibration error.** :func:`expected_calibration_error` bins the scores into
``bins`` equal-width bins over ``[0, 1]`` (the last one closed) and returns
``sum_b (n_b / N) * |accuracy_b - mean score_b|``; :func:`method_ece` reports it for
every method on held-out :class:`~server.cloud.calibration.CalibrationSample` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from fedge.core.errors import ConfigError
from fedge.core.geometry import LOOKED_SHARE, covered_share, iou, iou_matrix
from fedge.core.records import Detection
from server.cloud.calibration import Calibration, CalibrationSample, sigmoid
from server.cloud.person_boxes import landmark_person_box

if TYPE_CHECKING:
    from server.cloud.cases import DecodedCase

__all__ = [
    "CLOUD_SILENT_SCORE",
    "DEFAULT_EDGE_WEIGHT",
    "DEFAULT_IOU_THRESHOLD",
    "FUSION_METHODS",
    "PERSON_LABEL",
    "LOOKED_SHARE",
    "FusedBox",
    "case_looked",
    "check_method",
    "edge_person_detections",
    "expected_calibration_error",
    "fuse_detections",
    "fuse_scores",
    "label_fused_boxes",
    "match_boxes",
    "method_ece",
]

FUSION_METHODS: tuple[str, ...] = ("mean", "logit", "cloud", "edge")
DEFAULT_EDGE_WEIGHT = 0.5
DEFAULT_IOU_THRESHOLD = 0.5
PERSON_LABEL = "person"
EDGE_DUPLICATE_IOU = 0.5
"""The node's detector box and pose box of one person overlap at least this much."""
CLOUD_SILENT_SCORE = 0.0
"""The cloud's score of an edge box it looked at and did not report (uncalibrated)."""


@dataclass(frozen=True)
class FusedBox:
    """One fused object: box in frame pixels, fused score, each source's own score."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    edge_score: float | None
    cloud_score: float | None


def check_method(method: str) -> str:
    """Return ``method`` if it is a fusion method, else raise ConfigError naming them."""
    if method not in FUSION_METHODS:
        raise ConfigError(
            f"unknown fusion method {method!r} (choose one of: {', '.join(FUSION_METHODS)})"
        )
    return method


def _check_unit(name: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0.0 if open_low else value >= 0.0
    if not (low_ok and value <= 1.0):
        bounds = "in (0, 1]" if open_low else "in [0, 1]"
        raise ConfigError(f"{name} {value} must lie {bounds}")


def match_boxes(
    edge_boxes: np.ndarray | Sequence[Sequence[float]],
    cloud_boxes: np.ndarray | Sequence[Sequence[float]],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> list[tuple[int, int]]:
    """Pair edge and cloud boxes one-to-one by maximal summed IoU (module docstring).

    Returns ``(edge index, cloud index)`` pairs with IoU >= ``iou_threshold``, by edge index.
    """
    overlaps = iou_matrix(edge_boxes, cloud_boxes)
    if overlaps.size == 0:
        return []
    eligible = np.where(overlaps >= iou_threshold, overlaps, 0.0)
    rows, cols = linear_sum_assignment(eligible, maximize=True)
    return [
        (int(r), int(c)) for r, c in zip(rows, cols, strict=True) if overlaps[r, c] >= iou_threshold
    ]


def fuse_scores(
    edge_scores: np.ndarray | Sequence[float],
    cloud_scores: np.ndarray | Sequence[float],
    method: str = "mean",
    *,
    calibration: Calibration | None = None,
    edge_weight: float | None = None,
) -> np.ndarray:
    """Fused scores of aligned score arrays; NaN marks a source that did not report the box.

    ``edge_weight=None`` means the calibration's fitted ``w_e`` for ``logit`` and
    ``DEFAULT_EDGE_WEIGHT`` for ``mean``; the baselines ignore it.
    """
    check_method(method)
    edge = np.asarray(edge_scores, dtype=np.float64)
    cloud = np.asarray(cloud_scores, dtype=np.float64)
    if edge.shape != cloud.shape:
        raise ConfigError(f"edge scores {edge.shape} and cloud scores {cloud.shape} differ")
    if (np.isnan(edge) & np.isnan(cloud)).any():
        raise ConfigError("a box needs a score from at least one source (both are NaN)")
    calibration = calibration or Calibration()
    if method == "logit":
        weight = calibration.edge_weight if edge_weight is None else edge_weight
    elif method == "mean":
        weight = DEFAULT_EDGE_WEIGHT if edge_weight is None else edge_weight
    else:
        weight = 1.0 if method == "edge" else 0.0
    _check_unit("edge_weight", weight)
    if method == "logit":
        pooled = weight * calibration.source_logits("edge", edge) + (
            1.0 - weight
        ) * calibration.source_logits("cloud", cloud)
        return sigmoid(pooled)
    edge = np.where(np.isnan(edge), calibration.edge_absent, edge)
    cloud = np.where(np.isnan(cloud), calibration.cloud_absent, cloud)
    return weight * edge + (1.0 - weight) * cloud


def _weighted_box(
    edge: tuple[float, float, float, float],
    cloud: tuple[float, float, float, float],
    edge_score: float,
    cloud_score: float,
) -> tuple[float, float, float, float]:
    total = edge_score + cloud_score
    we, wc = (0.5, 0.5) if total <= 0 else (edge_score / total, cloud_score / total)
    merged = we * np.asarray(edge, dtype=np.float64) + wc * np.asarray(cloud, dtype=np.float64)
    return (float(merged[0]), float(merged[1]), float(merged[2]), float(merged[3]))


def fuse_detections(
    edge: Sequence[Detection],
    cloud: Sequence[Detection],
    method: str = "mean",
    *,
    calibration: Calibration | None = None,
    edge_weight: float | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    looked: Sequence[Sequence[float]] | None = (),
) -> list[FusedBox]:
    """Match the node's and the teacher's boxes per label and fuse them (module docstring).

    Parameters
    ----------
    edge, cloud
        The node's evidence (:func:`edge_person_detections`) and the teacher's boxes.
    method
        One of ``FUSION_METHODS``.
    calibration
        Temperatures, weight and absent scores; defaults without one.
    edge_weight
        ``w_e``; ``None``: the calibration's for ``logit``, 0.5 for ``mean``.
    iou_threshold
        Least IoU of a match.
    looked
        Regions (frame pixels ``xyxy``) the teacher saw (:func:`case_looked`): ``None``
        the whole frame, ``()`` none. Without a calibration, an unmatched edge box there
        takes :data:`CLOUD_SILENT_SCORE` as the cloud's score (module docstring).

    Returns
    -------
    list[FusedBox]
        Every reported object once, highest fused score first.
    """
    check_method(method)
    _check_unit("iou_threshold", iou_threshold, open_low=True)
    if edge_weight is not None:
        _check_unit("edge_weight", edge_weight)
    labels = sorted({d.label for d in edge} | {d.label for d in cloud})
    rows: list[tuple[tuple[float, float, float, float], str, float | None, float | None]] = []
    for label in labels:
        mine = [d for d in edge if d.label == label]
        theirs = [d for d in cloud if d.label == label]
        pairs = match_boxes(
            np.asarray([d.box for d in mine], dtype=np.float64).reshape(-1, 4),
            np.asarray([d.box for d in theirs], dtype=np.float64).reshape(-1, 4),
            iou_threshold,
        )
        matched_edge = {i for i, _ in pairs}
        matched_cloud = {j for _, j in pairs}
        for i, j in pairs:
            e, c = mine[i], theirs[j]
            rows.append((_weighted_box(e.box, c.box, e.score, c.score), label, e.score, c.score))
        rows += [(d.box, label, d.score, None) for i, d in enumerate(mine) if i not in matched_edge]
        rows += [
            (d.box, label, None, d.score) for j, d in enumerate(theirs) if j not in matched_cloud
        ]
    if not rows:
        return []
    cloud_scores = np.asarray([np.nan if r[3] is None else r[3] for r in rows], np.float64)
    if calibration is None:
        seen = _looked_at(np.asarray([r[0] for r in rows], np.float64), looked)
        cloud_scores[seen & np.isnan(cloud_scores)] = CLOUD_SILENT_SCORE
    scores = fuse_scores(
        [np.nan if r[2] is None else r[2] for r in rows],
        cloud_scores,
        method,
        calibration=calibration,
        edge_weight=edge_weight,
    )
    fused = [
        FusedBox(
            box=tuple(float(v) for v in box),  # type: ignore[arg-type]
            label=label,
            score=float(score),
            edge_score=None if edge_score is None else float(edge_score),
            cloud_score=None if cloud_score is None else float(cloud_score),
        )
        for (box, label, edge_score, cloud_score), score in zip(rows, scores, strict=True)
    ]
    return sorted(fused, key=lambda f: -f.score)


def _looked_at(boxes: np.ndarray, looked: Sequence[Sequence[float]] | None) -> np.ndarray:
    """Which ``boxes`` ``(N, 4)`` lie where the teacher looked (:data:`LOOKED_SHARE`)."""
    if looked is None:
        return np.ones(len(boxes), dtype=bool)
    return covered_share(boxes, looked) >= LOOKED_SHARE


def case_looked(case: DecodedCase) -> tuple[tuple[float, float, float, float], ...] | None:
    """What of its frame ``case`` showed the teacher: ``None`` the whole frame
    (``frames``), the crops' rectangles (``crops``), nothing (``landmarks``)."""
    if case.mode == "frames":
        return None
    return tuple(
        (float(c.x), float(c.y), float(c.x + c.image.shape[1]), float(c.y + c.image.shape[0]))
        for c in case.crops
    )


def edge_person_detections(case: DecodedCase) -> list[Detection]:
    """The node's person evidence: its ``person`` detections and its poses' boxes.

    A pose's box is redrawn from its landmarks by
    :func:`~server.cloud.person_boxes.landmark_person_box` (the rule the teacher uses,
    so the two sources' boxes are comparable); its score is the pose score. Where the
    node's detector box and a pose box of one person overlap by IoU >= 0.5, only the
    higher-scored one is kept (greedy, best first), so one person is one piece of evidence.
    """
    evidence = [d for d in case.detections if d.label == PERSON_LABEL]
    evidence += [
        Detection(
            box=landmark_person_box(p.landmarks, case.frame_width, case.frame_height),
            label=PERSON_LABEL,
            score=float(p.score),
        )
        for p in case.persons
    ]
    kept: list[Detection] = []
    for candidate in sorted(evidence, key=lambda d: -d.score):
        if kept and (iou(candidate.box, [k.box for k in kept]) >= EDGE_DUPLICATE_IOU).any():
            continue
        kept.append(candidate)
    return kept


def expected_calibration_error(
    scores: np.ndarray | Sequence[float],
    correct: np.ndarray | Sequence[bool],
    bins: int = 10,
) -> float:
    """ECE over ``bins`` equal-width score bins on ``[0, 1]`` (module docstring)."""
    if bins < 1:
        raise ConfigError(f"bins {bins} must be 1 or more")
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ConfigError(f"{p.size} scores but {y.size} outcomes: pass one outcome per score")
    if p.size == 0:
        raise ConfigError("no scores to measure the calibration error of")
    if not ((p >= 0) & (p <= 1)).all():
        raise ConfigError("scores must lie in 0..1 to measure their calibration error")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    confidence = np.bincount(index, weights=p, minlength=bins)
    accuracy = np.bincount(index, weights=y, minlength=bins)
    return float(np.abs(accuracy - confidence).sum() / p.size)


def method_ece(
    samples: Sequence[CalibrationSample],
    calibration: Calibration | None = None,
    *,
    bins: int = 10,
    edge_weight: float | None = None,
) -> dict[str, float]:
    """ECE of each fusion method's scores on held-out ``samples``."""
    edge = [np.nan if s.edge_score is None else s.edge_score for s in samples]
    cloud = [np.nan if s.cloud_score is None else s.cloud_score for s in samples]
    correct = [s.correct for s in samples]
    return {
        method: expected_calibration_error(
            fuse_scores(edge, cloud, method, calibration=calibration, edge_weight=edge_weight),
            correct,
            bins,
        )
        for method in FUSION_METHODS
    }


def label_fused_boxes(
    fused: Sequence[FusedBox],
    truth: Sequence[Detection],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> list[CalibrationSample]:
    """Calibration samples from fused boxes and reference boxes (labels or a teacher's).

    A fused box is correct when the one-to-one optimal IoU matching per label pairs it
    with a reference box at IoU >= ``iou_threshold``.
    """
    correct = [False] * len(fused)
    for label in {f.label for f in fused}:
        indices = [i for i, f in enumerate(fused) if f.label == label]
        reference = [t.box for t in truth if t.label == label]
        pairs = match_boxes(
            np.asarray([fused[i].box for i in indices], dtype=np.float64).reshape(-1, 4),
            np.asarray(reference, dtype=np.float64).reshape(-1, 4),
            iou_threshold,
        )
        for i, _ in pairs:
            correct[indices[i]] = True
    return [
        CalibrationSample(edge_score=f.edge_score, cloud_score=f.cloud_score, correct=ok)
        for f, ok in zip(fused, correct, strict=True)
    ]
