"""What each export costs and keeps: file size, LiteRT latency, accuracy, float agreement.

Accuracy here is recall and precision at one operating point (the detector's score
threshold) against reference boxes: labels, or the float model's own detections (then
it measures what quantization changed). Matching is greedy by descending score, one
reference per detection, at ``iou_threshold`` (as in COCO/VOC evaluation). mAP over all
thresholds is left to the training task's evaluation (pycocotools).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fedge.core.geometry import iou_matrix
from fedge.core.records import Detection

__all__ = [
    "Agreement",
    "ExportReport",
    "compare_detections",
    "match_detections",
    "measure_export",
    "partner_score_gaps",
]

Detect = Callable[[np.ndarray], Sequence[Detection]]


def match_detections(
    detections: Sequence[Detection],
    references: np.ndarray | Sequence[Sequence[float]],
    iou_threshold: float = 0.5,
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: ``(detection index, reference index)`` pairs.

    Detections are taken best score first; each takes the unmatched reference it
    overlaps most, if that IoU is at least ``iou_threshold``.
    """
    refs = np.asarray(references, dtype=np.float64).reshape(-1, 4)
    if not detections or len(refs) == 0:
        return []
    overlaps = iou_matrix([d.box for d in detections], refs)
    order = np.argsort([-d.score for d in detections], kind="stable")
    taken = np.zeros(len(refs), dtype=bool)
    pairs = []
    for i in order:
        candidates = np.where(taken, -1.0, overlaps[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


@dataclass(frozen=True)
class Agreement:
    """How two detectors' outputs on the same frames pair up.

    ``pairs`` are ``(frame, index in a, index in b)``; ``ious`` and ``score_diffs``
    (``|score_a - score_b|``) follow them; ``unmatched_a`` / ``unmatched_b`` are
    ``(frame, index, score)`` of detections without a partner.
    """

    pairs: tuple[tuple[int, int, int], ...]
    ious: tuple[float, ...]
    score_diffs: tuple[float, ...]
    unmatched_a: tuple[tuple[int, int, float], ...]
    unmatched_b: tuple[tuple[int, int, float], ...]


def compare_detections(
    a: Sequence[Sequence[Detection]],
    b: Sequence[Sequence[Detection]],
    iou_threshold: float = 0.5,
) -> Agreement:
    """Pair ``a``'s and ``b``'s detections frame by frame (:func:`match_detections`)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames of detections against {len(b)}")
    pairs, ious, diffs, lone_a, lone_b = [], [], [], [], []
    for frame, (found_a, found_b) in enumerate(zip(a, b, strict=True)):
        matched = match_detections(found_a, [d.box for d in found_b], iou_threshold)
        for i, j in matched:
            pairs.append((frame, i, j))
            ious.append(float(iou_matrix([found_a[i].box], [found_b[j].box])[0, 0]))
            diffs.append(abs(found_a[i].score - found_b[j].score))
        paired_a = {i for i, _ in matched}
        paired_b = {j for _, j in matched}
        lone_a += [(frame, i, d.score) for i, d in enumerate(found_a) if i not in paired_a]
        lone_b += [(frame, j, d.score) for j, d in enumerate(found_b) if j not in paired_b]
    return Agreement(tuple(pairs), tuple(ious), tuple(diffs), tuple(lone_a), tuple(lone_b))


def partner_score_gaps(
    a: Sequence[Sequence[Detection]],
    b: Sequence[Sequence[Detection]],
    *,
    counted_score: float = 0.4,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """For each detection of ``a`` scoring at least ``counted_score``: the smallest
    ``|score difference|`` to a detection of ``b`` on the same frame overlapping it at IoU
    ``>= iou_threshold`` (``inf`` where there is none).

    Unlike one-to-one matching, this is not misled by near-ties of non-maximum
    suppression (two overlapping anchors whose order differs between the models).
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames of detections against {len(b)}")
    gaps = []
    for found_a, found_b in zip(a, b, strict=True):
        counted = [d for d in found_a if d.score >= counted_score]
        if not counted:
            continue
        if not found_b:
            gaps += [np.inf] * len(counted)
            continue
        overlaps = iou_matrix([d.box for d in counted], [d.box for d in found_b])
        scores_b = np.array([d.score for d in found_b])
        for row, detection in zip(overlaps, counted, strict=True):
            near = row >= iou_threshold
            gaps.append(
                float(np.min(np.abs(scores_b[near] - detection.score))) if near.any() else np.inf
            )
    return np.asarray(gaps, dtype=np.float64)


@dataclass(frozen=True)
class ExportReport:
    """Size, latency and accuracy of one export.

    ``latency_ms`` is the median (``latency_p90_ms`` the 90th percentile) wall time of
    one ``detect`` call (resize, normalize, LiteRT invoke, decode) on this machine.
    ``recall`` and ``precision`` are ``None`` without references.
    """

    quantization: str
    size_bytes: int
    latency_ms: float
    latency_p90_ms: float
    frames: int
    detections_per_frame: float
    recall: float | None
    precision: float | None
    iou_threshold: float

    def to_json(self) -> dict[str, object]:
        """The report as a JSON object (floats rounded)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def measure_export(
    model: bytes,
    detect: Detect,
    frames: Sequence[np.ndarray],
    *,
    quantization: str,
    references: Sequence[np.ndarray | Sequence[Sequence[float]]] | None = None,
    iou_threshold: float = 0.5,
    warmup: int = 2,
) -> ExportReport:
    """Run ``detect`` (e.g. ``clients.detector.Detector(model, spec).detect``) on
    ``frames`` and report size, latency and, with ``references`` (boxes in frame
    pixels, one list per frame), recall and precision.
    """
    if not frames:
        raise ValueError("measure_export needs at least one frame")
    if references is not None and len(references) != len(frames):
        raise ValueError(f"{len(references)} reference lists for {len(frames)} frames")
    for frame in frames[:warmup]:
        detect(frame)
    times, found = [], []
    for frame in frames:
        start = time.perf_counter()
        found.append(list(detect(frame)))
        times.append((time.perf_counter() - start) * 1000.0)
    recall = precision = None
    if references is not None:
        matched = sum(
            len(match_detections(f, r, iou_threshold))
            for f, r in zip(found, references, strict=True)
        )
        total_refs = sum(len(np.asarray(r).reshape(-1, 4)) for r in references)
        total_found = sum(len(f) for f in found)
        recall = matched / total_refs if total_refs else 1.0
        precision = matched / total_found if total_found else 1.0
    return ExportReport(
        quantization=quantization,
        size_bytes=len(model),
        latency_ms=float(np.median(times)),
        latency_p90_ms=float(np.percentile(times, 90)),
        frames=len(frames),
        detections_per_frame=sum(len(f) for f in found) / len(frames),
        recall=recall,
        precision=precision,
        iou_threshold=iou_threshold,
    )
