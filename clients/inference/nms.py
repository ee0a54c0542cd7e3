"""Non-maximum suppression: plain (keep the best) and weighted (MediaPipe's blend)."""

from __future__ import annotations

import numpy as np

from clients.inference.ssd_decoding import Candidates
from fedge.core.geometry import iou

__all__ = ["non_max_suppression"]


def non_max_suppression(
    candidates: Candidates,
    iou_threshold: float,
    max_detections: int,
    *,
    weighted: bool = True,
) -> Candidates:
    """Suppress overlapping candidates of the same class, best score first.

    With ``weighted`` (MediaPipe's ``WEIGHTED`` algorithm) each kept box and its
    keypoints are the score-weighted mean of every candidate it suppresses; the kept
    score is the best one's.
    """
    keep_boxes, keep_kps, keep_scores, keep_classes = [], [], [], []
    for cls in np.unique(candidates.classes):
        group = candidates.select(candidates.classes == cls)
        order = np.argsort(-group.scores, kind="stable")
        kept = 0
        while order.size and kept < max_detections:
            kept += 1
            best = order[0]
            overlaps = iou(group.boxes[best], group.boxes[order]) > iou_threshold
            overlaps[0] = True
            members = order[overlaps]
            if weighted:
                weights = group.scores[members][:, None]
                total = float(weights.sum())
                box = (group.boxes[members] * weights).sum(axis=0) / total
                kps = (group.keypoints[members] * weights[:, :, None]).sum(axis=0) / total
            else:
                box, kps = group.boxes[best], group.keypoints[best]
            keep_boxes.append(box)
            keep_kps.append(kps)
            keep_scores.append(group.scores[best])
            keep_classes.append(cls)
            order = order[~overlaps]
    if not keep_scores:
        return candidates.select(np.zeros(0, dtype=np.int64))
    order = np.argsort(-np.asarray(keep_scores), kind="stable")[:max_detections]
    return Candidates(
        np.asarray(keep_boxes, dtype=np.float32)[order],
        np.asarray(keep_kps, dtype=np.float32)[order],
        np.asarray(keep_scores, dtype=np.float32)[order],
        np.asarray(keep_classes)[order],
    )
