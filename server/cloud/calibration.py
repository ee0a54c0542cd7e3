"""Per-source score calibration for confidence fusion, fitted on held-out boxes.

A :class:`Calibration` holds what the ``logit`` fusion method needs to turn the node's and
the teacher's scores into one calibrated probability (see ``server.cloud.fusion``):

- ``edge_temperature`` ``T_e`` and ``cloud_temperature`` ``T_c``: temperature scaling,
  ``p = sigma(logit(s) / T)``. ``T > 1`` softens an over-confident source, ``T < 1``
  sharpens an under-confident one.
- ``edge_weight`` ``w_e`` (``w_c = 1 - w_e``): how much the node's calibrated log-odds
  count in the pooled log-odds ``w_e * logit(s_e) / T_e + w_c * logit(s_c) / T_c``.
- ``edge_absent`` ``a_e`` and ``cloud_absent`` ``a_c``: the score a source is taken to
  have given a box it did not report (the unmatched-box rule of every fusion method).
  ``0.5`` (the default) says a source's silence is no evidence either way.

:func:`fit_calibration` fits them, in this order, on :class:`CalibrationSample` records
(one per fused box: the two sources' scores, either possibly absent, and whether the
box is a real person by labelled or teacher-labelled held-out data):

1. each temperature by minimising the negative log-likelihood (NLL) of
   ``sigma(logit(s) / T)`` over the samples where that source has a score
   (``T`` bounded to ``[0.05, 20]``);
2. each absent score as the Laplace-smoothed precision ``(k + 1) / (n + 2)`` of the ``n``
   samples that only the *other* source reported (``k`` of them correct);
3. ``w_e`` by minimising the NLL of the pooled log-odds over all samples (``[0, 1]``).

Scores are clipped to ``[1e-4, 1 - 1e-4]`` before ``logit``. The fitted calibration is
saved as JSON beside the service (``fedge cloud --calibration FILE``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from fedge.core.errors import ConfigError
from fedge.core.files import atomic_write

__all__ = [
    "CALIBRATION_KIND",
    "DEFAULT_ABSENT_SCORE",
    "SCORE_EPSILON",
    "SOURCES",
    "Calibration",
    "CalibrationError",
    "CalibrationSample",
    "fit_calibration",
    "logit",
    "sigmoid",
]

SOURCES: tuple[str, ...] = ("edge", "cloud")
SCORE_EPSILON = 1e-4
DEFAULT_ABSENT_SCORE = 0.5
CALIBRATION_KIND = "fedge-fusion-calibration"
SCHEMA_VERSION = 1
TEMPERATURE_BOUNDS = (0.05, 20.0)
MIN_PER_CLASS = 2
"""Fewest correct and fewest wrong scored samples a source needs for its temperature."""


class CalibrationError(ConfigError):
    """Calibration data or a calibration file cannot be used."""


def logit(scores: np.ndarray | float) -> np.ndarray:
    """Log-odds of ``scores`` clipped to ``[SCORE_EPSILON, 1 - SCORE_EPSILON]``."""
    p = np.clip(np.asarray(scores, dtype=np.float64), SCORE_EPSILON, 1.0 - SCORE_EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """The logistic function, overflow-free."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def _nll(z: np.ndarray, correct: np.ndarray) -> float:
    """Mean negative log-likelihood of labels ``correct`` under ``sigmoid(z)``."""
    return float(np.mean(np.logaddexp(0.0, z) - correct * z))


@dataclass(frozen=True)
class CalibrationSample:
    """One fused box of held-out data: each source's score (``None``: it did not report
    the box) and whether the box is a real object of its label."""

    edge_score: float | None
    cloud_score: float | None
    correct: bool


@dataclass(frozen=True)
class Calibration:
    """Temperatures, edge weight and absent scores of the two sources (module docstring)."""

    edge_temperature: float = 1.0
    cloud_temperature: float = 1.0
    edge_weight: float = 0.5
    edge_absent: float = DEFAULT_ABSENT_SCORE
    cloud_absent: float = DEFAULT_ABSENT_SCORE
    fitted_on: int = 0

    def __post_init__(self) -> None:
        for name in ("edge_temperature", "cloud_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CalibrationError(f"{name} {value} must be a positive number")
        if not 0.0 <= self.edge_weight <= 1.0:
            raise CalibrationError(f"edge_weight {self.edge_weight} must lie in 0..1")
        for name in ("edge_absent", "cloud_absent"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise CalibrationError(f"{name} {value} must lie strictly between 0 and 1")

    def temperature(self, source: str) -> float:
        """``T`` of ``source`` (``"edge"`` or ``"cloud"``)."""
        return self.edge_temperature if _source(source) == "edge" else self.cloud_temperature

    def absent(self, source: str) -> float:
        """Absent score of ``source``: the score its silence stands for."""
        return self.edge_absent if _source(source) == "edge" else self.cloud_absent

    def source_logits(self, source: str, scores: np.ndarray) -> np.ndarray:
        """Calibrated log-odds ``logit(s) / T`` of ``scores``; NaN (absent) -> ``logit(a)``."""
        scores = np.asarray(scores, dtype=np.float64)
        present = ~np.isnan(scores)
        out = np.full(scores.shape, float(logit(self.absent(source))))
        out[present] = logit(scores[present]) / self.temperature(source)
        return out

    def calibrated(self, source: str, scores: np.ndarray) -> np.ndarray:
        """``sigma(logit(s) / T)`` of ``scores`` (absent: the absent score)."""
        return sigmoid(self.source_logits(source, scores))

    def to_json(self) -> dict[str, Any]:
        """The JSON form written by :meth:`save`."""
        return {
            "kind": CALIBRATION_KIND,
            "schema_version": SCHEMA_VERSION,
            "edge": {"temperature": self.edge_temperature, "absent_score": self.edge_absent},
            "cloud": {"temperature": self.cloud_temperature, "absent_score": self.cloud_absent},
            "edge_weight": self.edge_weight,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: Any, origin: str = "calibration") -> Calibration:
        """Read the form of :meth:`to_json`."""
        if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
            raise CalibrationError(
                f"{origin} is not a fusion calibration (no kind {CALIBRATION_KIND!r}); "
                "pass a file written by Calibration.save"
            )
        if data.get("schema_version") != SCHEMA_VERSION:
            raise CalibrationError(
                f"{origin} has schema version {data.get('schema_version')!r}, this fedge "
                f"reads {SCHEMA_VERSION}: refit the calibration"
            )
        try:
            return cls(
                edge_temperature=float(data["edge"]["temperature"]),
                cloud_temperature=float(data["cloud"]["temperature"]),
                edge_weight=float(data["edge_weight"]),
                edge_absent=float(data["edge"]["absent_score"]),
                cloud_absent=float(data["cloud"]["absent_score"]),
                fitted_on=int(data.get("fitted_on", 0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(
                f"{origin} lacks or mistypes a field ({err!s}): refit the calibration"
            ) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the calibration as JSON, atomically."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(path), text.encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise CalibrationError(
                f"cannot read calibration {path}: {err.strerror}; fit one with "
                "fit_calibration or run without --calibration"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CalibrationError(
                f"calibration {path} is not JSON ({err.msg}, line {err.lineno}): refit it"
            ) from None
        return cls.from_json(data, origin=f"calibration {path}")


def _source(source: str) -> str:
    if source not in SOURCES:
        raise CalibrationError(f"unknown score source {source!r} (choose one of: edge, cloud)")
    return source


def _fit_temperature(source: str, scores: np.ndarray, correct: np.ndarray) -> float:
    present = ~np.isnan(scores)
    positives = int(correct[present].sum())
    negatives = int(present.sum()) - positives
    if positives < MIN_PER_CLASS or negatives < MIN_PER_CLASS:
        raise CalibrationError(
            f"the {source} scores of the calibration data have {positives} correct and "
            f"{negatives} wrong boxes; fitting its temperature needs at least {MIN_PER_CLASS} "
            "of each: label more held-out boxes"
        )
    logits = logit(scores[present])
    labels = correct[present]
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda u: _nll(logits / np.exp(u), labels), bounds=(low, high), method="bounded"
    )
    return float(np.exp(result.x))


def _fit_absent(scores: np.ndarray, other: np.ndarray, correct: np.ndarray) -> float:
    only_other = np.isnan(scores) & ~np.isnan(other)
    n = int(only_other.sum())
    k = int(correct[only_other].sum())
    return (k + 1.0) / (n + 2.0)


def fit_calibration(samples: Sequence[CalibrationSample]) -> Calibration:
    """Fit temperatures, absent scores and the edge weight (see the module docstring).

    Raises
    ------
    CalibrationError
        A sample has neither score, or a source has fewer than ``MIN_PER_CLASS`` correct
        or wrong scored samples.
    """
    edge = np.array(
        [np.nan if s.edge_score is None else s.edge_score for s in samples], dtype=np.float64
    )
    cloud = np.array(
        [np.nan if s.cloud_score is None else s.cloud_score for s in samples], dtype=np.float64
    )
    correct = np.array([bool(s.correct) for s in samples], dtype=np.float64)
    neither = np.isnan(edge) & np.isnan(cloud)
    if neither.any():
        raise CalibrationError(
            f"calibration sample {int(np.flatnonzero(neither)[0])} has neither an edge nor a "
            "cloud score: every sample is a box at least one source reported"
        )
    partial = Calibration(
        edge_temperature=_fit_temperature("edge", edge, correct),
        cloud_temperature=_fit_temperature("cloud", cloud, correct),
        edge_absent=_fit_absent(edge, cloud, correct),
        cloud_absent=_fit_absent(cloud, edge, correct),
    )
    edge_logits = partial.source_logits("edge", edge)
    cloud_logits = partial.source_logits("cloud", cloud)
    result = minimize_scalar(
        lambda w: _nll(w * edge_logits + (1.0 - w) * cloud_logits, correct),
        bounds=(0.0, 1.0),
        method="bounded",
    )
    return Calibration(
        edge_temperature=partial.edge_temperature,
        cloud_temperature=partial.cloud_temperature,
        edge_weight=float(np.clip(result.x, 0.0, 1.0)),
        edge_absent=partial.edge_absent,
        cloud_absent=partial.cloud_absent,
        fitted_on=len(samples),
    )
