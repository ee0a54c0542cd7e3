"""Box geometry shared by the node and the cloud: boxes are ``[x1, y1, x2, y2]`` pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "LOOKED_SHARE",
    "BoxesLike",
    "box_area",
    "covered_share",
    "intersection_area",
    "iou",
    "iou_matrix",
]

BoxesLike = np.ndarray | Sequence[Sequence[float]] | Sequence[float]

LOOKED_SHARE = 0.6
"""A box lies where a label's source looked (a crop, a covered region) from this share of
its area inside one region: fusion's "the teacher looked" rule and the node's judging of
its own boxes against a crops label both use it (as the node's background-anchor rule
uses ``1 - negative_iou``, 0.6 by default)."""


def box_area(boxes: BoxesLike) -> np.ndarray:
    """Areas of ``boxes`` (..., 4); degenerate boxes have area 0."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(
        boxes[..., 3] - boxes[..., 1], 0, None
    )


def intersection_area(a: BoxesLike, b: BoxesLike) -> np.ndarray:
    """Pairwise intersection areas of ``a`` (N, 4) and ``b`` (M, 4): an (N, M) array."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def iou_matrix(a: BoxesLike, b: BoxesLike) -> np.ndarray:
    """Pairwise intersection over union of ``a`` (N, 4) and ``b`` (M, 4): an (N, M) array.

    Pairs whose union is empty (two degenerate boxes) have IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = intersection_area(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(box: BoxesLike, boxes: BoxesLike) -> np.ndarray:
    """IoU of one ``box`` (4,) with each of ``boxes`` (N, 4): an (N,) array."""
    return iou_matrix(np.asarray(box).reshape(1, 4), boxes)[0]


def covered_share(boxes: BoxesLike, coverage: BoxesLike) -> np.ndarray:
    """For each box ``(N, 4)``, the largest share of its area inside one ``coverage``
    region ``(M, 4)`` (same units; 0 when there is no region; a degenerate box: 0)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    regions = np.asarray(coverage, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or len(regions) == 0:
        return np.zeros(len(boxes))
    inside = intersection_area(boxes, regions).max(axis=1)
    area = box_area(boxes)
    return np.where(area > 0, inside / np.where(area > 0, area, 1.0), 0.0)
