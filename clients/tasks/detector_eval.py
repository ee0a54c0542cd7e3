"""mAP@0.5 of the person detector on a node's held-out frames, float and int8.

The float Keras model is decoded with the shared box coding
(:func:`models.box_coding.decode_boxes`) and suppressed with TensorFlow's
``tf.image.non_max_suppression`` at the export's post-processing settings (score floor
0.05, IoU 0.5, 50 boxes), so its boxes are comparable with those of the exported model,
which runs in LiteRT through ``clients.detector.Detector``. The average precision is
pycocotools' ``COCOeval`` (``stats[1]``: AP at IoU 0.5, all areas, 100 detections);
ground truth is the cloud label's boxes, and its boxes below the label score floor are
``iscrowd`` regions (a detection on them counts neither way); where the cloud saw only
crops, a detection outside them that matches no labelled box is not counted
(``detector_data.seen_detections``). Frames never leave the node: only the resulting
numbers do.

Score calibration: :func:`score_bin_counts` counts, per score bin
(``export.score_calibration.SCORE_BINS``), the boxes that match a labelled person
one-to-one at IoU 0.5 (best score first) and those that match nothing (a box on a crowd
region, or where the cloud did not look, counts neither way); the node reports them as
``score-bins-tp`` / ``score-bins-fp`` (lists of ints) and :func:`calibration_from_metrics`
sums the nodes' replies into the version's
:class:`~export.score_calibration.ScoreCalibration`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.tasks.detector_data import DetectorExample, load_input, seen_detections
from export.score_calibration import SCORE_BINS, ScoreCalibration, calibrate_scores, score_bin
from fedge.core.geometry import iou_matrix
from models.box_coding import DEFAULT_ANCHORS, AnchorSpec, decode_boxes, generate_anchors
from models.detector_input import normalize_input

__all__ = [
    "FP_BINS_KEY",
    "MATCH_IOU",
    "MAX_DETECTIONS",
    "NMS_IOU",
    "SCORE_FLOOR",
    "TP_BINS_KEY",
    "FrameDetections",
    "ScoreBinCounts",
    "calibration_from_metrics",
    "map50",
    "predict_float",
    "predict_with",
    "score_bin_counts",
]

SCORE_FLOOR = 0.05
NMS_IOU = 0.5
MAX_DETECTIONS = 50
_PERSON_CATEGORY = 1
MATCH_IOU = 0.5
TP_BINS_KEY = "score-bins-tp"
FP_BINS_KEY = "score-bins-fp"
_PEOPLE_KEY = "eval-people"
_FRAMES_KEY = "eval-frames"


@dataclass(frozen=True)
class FrameDetections:
    """One frame's detections: ``boxes`` ``(K, 4)`` ``xyxy`` frame pixels and ``scores``."""

    boxes: np.ndarray
    scores: np.ndarray


def predict_float(
    model: object,
    examples: Sequence[DetectorExample],
    spec: AnchorSpec = DEFAULT_ANCHORS,
    *,
    batch_size: int = 8,
) -> list[FrameDetections]:
    """Run the Keras detector (inference mode) on each example's frame."""
    import tensorflow as tf

    anchors = generate_anchors(spec)
    results: list[FrameDetections] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = np.stack([load_input(e, spec) for e in chunk])
        encodings, logits = model(normalize_input(images), training=False)  # type: ignore[operator]
        scores = tf.sigmoid(logits[..., 0]).numpy()
        boxes = decode_boxes(np.asarray(encodings), anchors)
        for example, frame_boxes, frame_scores in zip(chunk, boxes, scores, strict=True):
            keep = tf.image.non_max_suppression(
                frame_boxes[:, [1, 0, 3, 2]],
                frame_scores,
                max_output_size=MAX_DETECTIONS,
                iou_threshold=NMS_IOU,
                score_threshold=SCORE_FLOOR,
            ).numpy()
            size = np.array([example.width, example.height] * 2, np.float32)
            kept = np.clip(frame_boxes[keep], 0.0, 1.0) * size
            results.append(FrameDetections(kept.astype(np.float32), frame_scores[keep]))
    return results


def predict_with(
    detect: Callable[[np.ndarray], Sequence[object]], examples: Sequence[DetectorExample]
) -> list[FrameDetections]:
    """Run ``detect`` (e.g. ``clients.detector.Detector.detect``) on each example's frame.

    ``detect`` takes a BGR frame and returns :class:`fedge.core.records.Detection` s.
    """
    import cv2

    results = []
    for example in examples:
        frame = cv2.imread(str(example.path), cv2.IMREAD_COLOR)
        found = [d for d in detect(frame) if getattr(d, "label", "person") == "person"]
        boxes = np.asarray([d.box for d in found], np.float32).reshape(-1, 4)  # type: ignore[attr-defined]
        scores = np.asarray([d.score for d in found], np.float32)  # type: ignore[attr-defined]
        results.append(FrameDetections(boxes, scores))
    return results


def _annotation(ann_id: int, image_id: int, box: np.ndarray, crowd: int) -> dict[str, object]:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": _PERSON_CATEGORY,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": crowd,
    }


def map50(examples: Sequence[DetectorExample], detections: Sequence[FrameDetections]) -> float:
    """pycocotools' AP at IoU 0.5 of ``detections`` against the examples' boxes.

    Returns ``nan`` when the examples hold no person box (AP is undefined) and 0.0 when
    there are people but no detections.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(examples) != len(detections):
        raise ValueError(f"{len(examples)} frames but {len(detections)} detection lists")
    images, annotations, results = [], [], []
    for image_id, (example, found) in enumerate(zip(examples, detections, strict=True), 1):
        images.append({"id": image_id, "width": example.width, "height": example.height})
        for crowd, boxes in ((0, example.boxes), (1, example.ignore)):
            for box in boxes:
                annotations.append(_annotation(len(annotations) + 1, image_id, box, crowd))
        seen = seen_detections(example, found.boxes)  # where the cloud looked
        for box, score in zip(found.boxes[seen], found.scores[seen], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": _PERSON_CATEGORY,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    if not any(a["iscrowd"] == 0 for a in annotations):
        return float("nan")
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": _PERSON_CATEGORY, "name": "person"}],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return max(float(evaluation.stats[1]), 0.0)


@dataclass(frozen=True)
class ScoreBinCounts:
    """Per score bin, boxes matching a labelled person (``true_positives``) and not
    (``false_positives``); ``references`` labelled persons in ``frames`` frames."""

    true_positives: list[int]
    false_positives: list[int]
    references: int
    frames: int

    def metrics(self) -> dict[str, list[int]]:
        """The node's reply entries (``score-bins-tp``, ``score-bins-fp``)."""
        return {TP_BINS_KEY: list(self.true_positives), FP_BINS_KEY: list(self.false_positives)}


def score_bin_counts(
    examples: Sequence[DetectorExample],
    detections: Sequence[FrameDetections],
    bins: int = SCORE_BINS,
    iou_threshold: float = MATCH_IOU,
) -> ScoreBinCounts:
    """Count true and false positives per score bin (module docstring)."""
    if len(examples) != len(detections):
        raise ValueError(f"{len(examples)} frames but {len(detections)} detection lists")
    tp, fp = [0] * bins, [0] * bins
    references = 0
    for example, found in zip(examples, detections, strict=True):
        truth = np.asarray(example.boxes, np.float64).reshape(-1, 4)
        crowd = np.asarray(example.ignore, np.float64).reshape(-1, 4)
        references += len(truth)
        boxes = np.asarray(found.boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        overlaps = iou_matrix(boxes, truth) if len(truth) else np.zeros((len(boxes), 0))
        judged = seen_detections(example, boxes)
        if len(crowd):
            judged &= iou_matrix(boxes, crowd).max(axis=1) < iou_threshold
        taken = np.zeros(len(truth), bool)
        for i in np.argsort(-np.asarray(found.scores, np.float64), kind="stable"):
            k = score_bin(float(found.scores[i]), bins)
            if len(truth):
                candidates = np.where(taken, -1.0, overlaps[i])
                j = int(np.argmax(candidates))
                if candidates[j] >= iou_threshold:
                    taken[j] = True
                    tp[k] += 1
                    continue
            if judged[i]:
                fp[k] += 1
    return ScoreBinCounts(tp, fp, references, len(examples))


def calibration_from_metrics(
    replies: Sequence[Mapping[str, Any]], **options: Any
) -> ScoreCalibration | None:
    """Sum the nodes' ``score-bins-*`` counts and calibrate (``None``: no or too few counts).

    ``replies`` are the nodes' evaluation metrics of one round (replies without the counts,
    or with another number of bins than the first, are skipped); ``options`` go to
    :func:`export.score_calibration.calibrate_scores`.
    """
    tp: np.ndarray | None = None
    fp: np.ndarray | None = None
    references = frames = nodes = 0
    for reply in replies:
        if TP_BINS_KEY not in reply or FP_BINS_KEY not in reply:
            continue
        node_tp = np.asarray(reply[TP_BINS_KEY], np.float64).ravel()
        node_fp = np.asarray(reply[FP_BINS_KEY], np.float64).ravel()
        if node_tp.shape != node_fp.shape or (tp is not None and node_tp.shape != tp.shape):
            continue
        tp = node_tp if tp is None else tp + node_tp
        fp = node_fp if fp is None else fp + node_fp
        references += int(reply.get(_PEOPLE_KEY, 0))
        frames += int(reply.get(_FRAMES_KEY, 0))
        nodes += 1
    if tp is None or fp is None or not len(tp):
        return None
    return calibrate_scores(tp, fp, references=references, frames=frames, nodes=nodes, **options)
