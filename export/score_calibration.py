"""What a person detector's scores mean, measured per model version on the nodes.

The detector's scores (focal loss) are poorly calibrated: a box at 0.4 may be a person
nine times out of ten for one version and one time in ten for the next. So each node
counts, on its own held-out labelled frames, how many of the version's boxes in each
score bin match a cloud-labelled person (true positives) and how many do not (false
positives) — numbers only, no frame leaves the node — and the server sums them over the
nodes and turns them into thresholds that travel in the version's artifact:

- ``precision``: per score bin (``SCORE_BINS`` bins of width ``1/SCORE_BINS``), the share
  of boxes that are persons, made non-decreasing in the score (weighted isotonic
  regression, pool-adjacent-violators) and filled across empty bins (linear between the
  nearest bins with data, flat above the highest, zero below the lowest: no box scored
  there);
- ``operating_score``: the bin edge where the version's F1 against the labels peaks
  (``2 TP / (boxes + labelled persons)`` over the boxes scoring at or above it; the
  highest such edge on a tie), capped at ``max_operating`` (the uncalibrated default 0.5:
  top-down pose checks each box with its own presence score, so a version is never made
  to keep fewer boxes than before); the node counts a box as a person (poses it) from
  this score on. (The first rule, the lowest edge from which the boxes stay 90% precise,
  never left 0.5 for an under-confident student: measured on the demo clip, version 3's
  boxes at 0.25-0.5 were people 74% of the time against the teacher, 56% against the
  nodes' fused labels, and it found 0.27 of 6.3 people a frame.)
- the uncertainty band ``[uncertain_low, uncertain_high)``: the scores where the node's
  decision on a box is wrong with probability ``error_floor`` (0.3) or more, i.e. boxes
  below the operating score whose precision is at least ``error_floor`` (likely a missed
  person) and boxes at or above it whose precision is at most ``1 - error_floor`` (likely a
  false one). With a monotone precision that set is one interval. It never closes at the
  decision: when the pooled precision steps from under ``error_floor`` to over
  ``1 - error_floor`` at the operating score (no bin's error reaches the floor), the band
  is the bin on either side of it. The step is the bins' doing, not the detector's: its
  precision rises with the score through 0.3-0.7 somewhere near the decision, and with a
  few held-out frames per node one bin holds few boxes (on the demo clip, version 3 of one
  run counted 0 of 1 boxes people at 0.35-0.40 and 6 of 8 at 0.40-0.45). An empty band
  would stop the node asking about any box at all, the ones at its own decision included.

Too little evidence (fewer than ``min_true_positives`` true positives or ``min_boxes``
boxes in all) gives no calibration (``None``): the node then keeps its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OPERATING_SCORE",
    "ERROR_FLOOR",
    "MIN_BOXES",
    "MIN_TRUE_POSITIVES",
    "SCORE_BINS",
    "ScoreCalibration",
    "bin_edges",
    "calibrate_scores",
    "isotonic_precision",
    "score_bin",
]

SCORE_BINS = 20
ERROR_FLOOR = 0.3
DEFAULT_OPERATING_SCORE = 0.5
MIN_TRUE_POSITIVES = 10
MIN_BOXES = 30


def bin_edges(bins: int = SCORE_BINS) -> np.ndarray:
    """The ``bins + 1`` edges of the score bins, ``0, 1/bins, ..., 1``."""
    return np.round(np.linspace(0.0, 1.0, bins + 1), 6)


def score_bin(score: float, bins: int = SCORE_BINS) -> int:
    """The bin of ``score`` (scores of 1.0 fall in the last bin, negative ones in the first)."""
    return int(min(max(int(np.floor(float(score) * bins + 1e-9)), 0), bins - 1))


def isotonic_precision(
    true_positives: Sequence[float], false_positives: Sequence[float]
) -> np.ndarray:
    """Per-bin precision made non-decreasing (weighted pool-adjacent-violators over the
    bins with boxes) and filled across empty bins (module docstring); all zeros when no
    bin has a box."""
    tp = np.asarray(true_positives, np.float64)
    counts = tp + np.asarray(false_positives, np.float64)
    filled = np.flatnonzero(counts > 0)
    if not len(filled):
        return np.zeros(len(tp))
    blocks: list[list[float]] = []  # [true positives, boxes, bins] per pooled block
    for k in filled:
        blocks.append([tp[k], counts[k], 1.0])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last, strict=True)]
    fitted = np.concatenate([[b[0] / b[1]] * int(b[2]) for b in blocks])
    precision = np.interp(np.arange(len(tp)), filled, fitted)
    precision[: filled[0]] = 0.0  # no box ever scored that low (below the detector's floor)
    return precision


@dataclass(frozen=True)
class ScoreCalibration:
    """One version's measured score meaning (module docstring)."""

    true_positives: tuple[int, ...]
    false_positives: tuple[int, ...]
    references: int
    frames: int
    nodes: int
    precision: tuple[float, ...]
    operating_score: float
    uncertain_low: float
    uncertain_high: float
    error_floor: float = ERROR_FLOOR

    @property
    def bins(self) -> int:
        """Number of score bins."""
        return len(self.true_positives)

    def precision_at(self, score: float) -> float:
        """The calibrated precision of a box scoring ``score``."""
        return self.precision[score_bin(score, self.bins)]

    def uncertain(self, score: float) -> bool:
        """Whether a box scoring ``score`` lies in the uncertainty band."""
        return self.uncertain_low <= score < self.uncertain_high

    def error_probability(self, score: float) -> float:
        """How likely the node's decision on a box scoring ``score`` is wrong: ``1 -
        precision`` for a box it keeps (at or above the operating score: a false person),
        the precision for one it drops (below it: a missed person). The band is where this
        is ``error_floor`` or more."""
        precision = self.precision_at(score)
        return 1.0 - precision if score >= self.operating_score else precision

    def to_json(self) -> dict[str, Any]:
        """The calibration as a JSON object (the manifest's ``calibration``)."""
        return {
            "bins": self.bins,
            "true_positives": list(self.true_positives),
            "false_positives": list(self.false_positives),
            "references": self.references,
            "frames": self.frames,
            "nodes": self.nodes,
            "precision": [round(p, 4) for p in self.precision],
            "operating_score": self.operating_score,
            "uncertain_low": self.uncertain_low,
            "uncertain_high": self.uncertain_high,
            "operating_rule": "f1",
            "error_floor": self.error_floor,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreCalibration:
        """Parse :meth:`to_json`'s object; ``ValueError`` names what is wrong."""
        tp = tuple(int(v) for v in data["true_positives"])
        fp = tuple(int(v) for v in data["false_positives"])
        precision = tuple(float(v) for v in data["precision"])
        if not tp or len(fp) != len(tp) or len(precision) != len(tp):
            raise ValueError(
                f"calibration has {len(tp)} true-positive, {len(fp)} false-positive and "
                f"{len(precision)} precision bins; they must be equal and non-zero"
            )
        low, high = float(data["uncertain_low"]), float(data["uncertain_high"])
        operating = float(data["operating_score"])
        if not 0.0 <= low <= high <= 1.0 or not 0.0 <= operating <= 1.0:
            raise ValueError(
                f"calibration band [{low}, {high}) or operating score {operating} is not "
                "within [0, 1]"
            )
        return cls(
            true_positives=tp,
            false_positives=fp,
            references=int(data["references"]),
            frames=int(data["frames"]),
            nodes=int(data["nodes"]),
            precision=precision,
            operating_score=operating,
            uncertain_low=low,
            uncertain_high=high,
            error_floor=float(data.get("error_floor", ERROR_FLOOR)),
        )


def _operating_bin(tp: np.ndarray, counts: np.ndarray, references: float) -> int | None:
    """The bin with boxes whose lower edge maximises F1 over the boxes at or above it
    (the highest one on a tie); ``None`` without a true positive."""
    best, best_f1 = None, 0.0
    kept = total = 0.0
    for k in range(len(tp) - 1, -1, -1):
        if counts[k] == 0:
            continue
        kept, total = kept + tp[k], total + counts[k]
        f1 = 2.0 * kept / (total + max(float(references), kept))
        if f1 > best_f1 + 1e-12:
            best, best_f1 = k, f1
    return best


def calibrate_scores(
    true_positives: Sequence[float],
    false_positives: Sequence[float],
    *,
    references: int,
    frames: int,
    nodes: int = 1,
    error_floor: float = ERROR_FLOOR,
    max_operating: float = DEFAULT_OPERATING_SCORE,
    min_true_positives: int = MIN_TRUE_POSITIVES,
    min_boxes: int = MIN_BOXES,
) -> ScoreCalibration | None:
    """Thresholds from summed per-bin counts (module docstring); ``None`` on too little data.

    Raises
    ------
    ValueError
        The count lists differ in length, are empty or hold a negative count.
    """
    tp = np.asarray(true_positives, np.float64)
    fp = np.asarray(false_positives, np.float64)
    if tp.ndim != 1 or tp.shape != fp.shape or not len(tp):
        raise ValueError(
            "true/false positive counts must be two equal non-empty lists, got "
            f"{tp.shape} and {fp.shape}"
        )
    if (tp < 0).any() or (fp < 0).any():
        raise ValueError("score-bin counts must not be negative")
    counts = tp + fp
    if tp.sum() < min_true_positives or counts.sum() < min_boxes:
        return None
    edges = bin_edges(len(tp))
    precision = isotonic_precision(tp, fp)
    found = _operating_bin(tp, counts, references)
    operating = min(float(edges[found]) if found is not None else 1.0, max_operating)
    start = score_bin(operating, len(tp))
    plausible = np.flatnonzero(precision >= error_floor)
    low = float(edges[plausible[0]]) if len(plausible) else 1.0
    sure = [
        k for k in range(start, len(tp)) if precision[k] > 1.0 - error_floor and operating < 1.0
    ]
    high = float(edges[sure[0]]) if sure else 1.0
    low = min(low, operating, high)
    if low >= high and operating < 1.0:  # the band closed at the decision (module docstring)
        low = float(edges[max(start - 1, 0)])
        high = float(edges[min(start + 1, len(tp))])
    return ScoreCalibration(
        true_positives=tuple(int(v) for v in tp),
        false_positives=tuple(int(v) for v in fp),
        references=int(references),
        frames=int(frames),
        nodes=int(nodes),
        precision=tuple(float(p) for p in precision),
        operating_score=operating,
        uncertain_low=low,
        uncertain_high=high,
        error_floor=error_floor,
    )
