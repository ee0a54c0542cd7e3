"""Anchors and box coding of the person detector: the one source of truth.

Training encodes its targets with these functions, the loss reads those targets, and the
export puts the same anchors (as a constant) and the same scales into TensorFlow Lite's
``TFLite_Detection_PostProcess`` op, which decodes exactly as :func:`decode_boxes` does.

Conventions
-----------
- Boxes are ``[x1, y1, x2, y2]`` normalized to the model input (0..1 across its width
  and height; the frame is stretched to the input, so these are also fractions of the
  frame). IoU is unchanged by that stretch, so matching in normalized units is matching
  in pixels.
- Anchors are ``[y_center, x_center, height, width]``, normalized the same way, in the
  order the model's outputs are flattened: level by level, then row, column, anchor.
- An encoding is ``[ty, tx, th, tw]`` (the Faster R-CNN / SSD box coder)::

      ty = y_scale * (yc - ya) / ha      th = h_scale * log(h / ha)
      tx = x_scale * (xc - xa) / wa      tw = w_scale * log(w / wa)

  with ``(y_scale, x_scale, h_scale, w_scale) = (10, 10, 5, 5)`` (:data:`BOX_SCALES`).

Matching (:func:`encode_targets`): an anchor is positive when its IoU with a box is at
least ``positive_iou`` (0.5), negative below ``negative_iou`` (0.4), ignored between;
each box also claims its best anchor, so a person smaller than every anchor still
trains one. Each row of the target array is ``[ty, tx, th, tw, label, weight]`` with
``label`` 1 (person), 0 (background) or -1 (ignored) and ``weight`` the box's weight
(1 for background).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedge.core.geometry import iou_matrix

__all__ = [
    "BOX_SCALES",
    "DEFAULT_ANCHORS",
    "TARGET_COLUMNS",
    "AnchorLevel",
    "AnchorSpec",
    "BoxScales",
    "decode_boxes",
    "encode_boxes",
    "encode_targets",
    "generate_anchors",
]

TARGET_COLUMNS = 6
"""Columns of a target row: ``ty, tx, th, tw, label, weight``."""


@dataclass(frozen=True)
class BoxScales:
    """The box coder's divisors: centre offsets x ``y``/``x``, log sizes x ``h``/``w``."""

    y: float = 10.0
    x: float = 10.0
    h: float = 5.0
    w: float = 5.0


BOX_SCALES = BoxScales()


@dataclass(frozen=True)
class AnchorLevel:
    """One feature map: its stride and its anchor heights, in input pixels."""

    stride: int
    heights: tuple[float, ...]


@dataclass(frozen=True)
class AnchorSpec:
    """Input size, feature levels, anchor shapes and box scales of a detector.

    ``aspect_ratios`` are anchor width / height in input pixels; every level has one
    anchor per (height, aspect ratio) pair at each cell.
    """

    input_width: int = 384
    input_height: int = 288
    levels: tuple[AnchorLevel, ...] = (
        AnchorLevel(8, (20.0, 32.0)),
        AnchorLevel(16, (48.0, 72.0)),
        AnchorLevel(32, (108.0, 160.0, 240.0)),
    )
    aspect_ratios: tuple[float, ...] = (0.41,)
    scales: BoxScales = BOX_SCALES

    def __post_init__(self) -> None:
        for level in self.levels:
            if self.input_width % level.stride or self.input_height % level.stride:
                raise ValueError(
                    f"input {self.input_width}x{self.input_height} is not a multiple of "
                    f"stride {level.stride}"
                )

    def anchors_per_cell(self, level: AnchorLevel) -> int:
        """Anchors at each cell of ``level``."""
        return len(level.heights) * len(self.aspect_ratios)

    def grid(self, level: AnchorLevel) -> tuple[int, int]:
        """``(rows, columns)`` of ``level``'s feature map."""
        return self.input_height // level.stride, self.input_width // level.stride

    @property
    def num_anchors(self) -> int:
        """Anchors over all levels."""
        return sum(
            rows * cols * self.anchors_per_cell(level)
            for level in self.levels
            for rows, cols in [self.grid(level)]
        )


DEFAULT_ANCHORS = AnchorSpec()
"""384x288 input; strides 8, 16, 32; anchors 20-240 px tall, 0.41 wide per unit height."""


@functools.lru_cache(maxsize=8)
def _anchors(spec: AnchorSpec) -> np.ndarray:
    per_level = []
    for level in spec.levels:
        rows, cols = spec.grid(level)
        shapes = np.array(
            [
                (h / spec.input_height, h * a / spec.input_width)
                for h in level.heights
                for a in spec.aspect_ratios
            ],
            dtype=np.float64,
        )
        yc = (np.arange(rows) + 0.5) * level.stride / spec.input_height
        xc = (np.arange(cols) + 0.5) * level.stride / spec.input_width
        grid_y, grid_x, shape = np.meshgrid(yc, xc, np.arange(len(shapes)), indexing="ij")
        per_level.append(
            np.stack(
                [
                    grid_y.ravel(),
                    grid_x.ravel(),
                    shapes[shape.ravel(), 0],
                    shapes[shape.ravel(), 1],
                ],
                axis=1,
            )
        )
    anchors = np.concatenate(per_level).astype(np.float32)
    anchors.setflags(write=False)
    return anchors


def generate_anchors(spec: AnchorSpec = DEFAULT_ANCHORS) -> np.ndarray:
    """Return the ``(num_anchors, 4)`` float32 anchors ``[yc, xc, h, w]`` (read-only)."""
    return _anchors(spec)


def _yxhw_to_xyxy(yxhw: np.ndarray) -> np.ndarray:
    yc, xc, h, w = (yxhw[..., i] for i in range(4))
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=-1)


def encode_boxes(
    boxes: np.ndarray, anchors: np.ndarray, scales: BoxScales = BOX_SCALES
) -> np.ndarray:
    """Encode ``boxes`` (M, 4) ``xyxy`` against their ``anchors`` (M, 4) ``yxhw``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    yc = boxes[:, 1] + h / 2
    xc = boxes[:, 0] + w / 2
    ya, xa, ha, wa = anchors.T
    return np.stack(
        [
            scales.y * (yc - ya) / ha,
            scales.x * (xc - xa) / wa,
            scales.h * np.log(h / ha),
            scales.w * np.log(w / wa),
        ],
        axis=1,
    ).astype(np.float32)


def decode_boxes(
    encodings: np.ndarray, anchors: np.ndarray, scales: BoxScales = BOX_SCALES
) -> np.ndarray:
    """Decode ``encodings`` (..., 4) against ``anchors`` (..., 4) to ``xyxy`` boxes.

    This is the arithmetic of ``TFLite_Detection_PostProcess``.
    """
    t = np.asarray(encodings, dtype=np.float64)
    a = np.asarray(anchors, dtype=np.float64)
    yc = t[..., 0] / scales.y * a[..., 2] + a[..., 0]
    xc = t[..., 1] / scales.x * a[..., 3] + a[..., 1]
    h = np.exp(t[..., 2] / scales.h) * a[..., 2]
    w = np.exp(t[..., 3] / scales.w) * a[..., 3]
    return _yxhw_to_xyxy(np.stack([yc, xc, h, w], axis=-1)).astype(np.float32)


def encode_targets(
    boxes: np.ndarray | Sequence[Sequence[float]],
    spec: AnchorSpec = DEFAULT_ANCHORS,
    *,
    weights: np.ndarray | Sequence[float] | None = None,
    positive_iou: float = 0.5,
    negative_iou: float = 0.4,
) -> np.ndarray:
    """Return the ``(num_anchors, 6)`` float32 training targets of one image.

    Parameters
    ----------
    boxes
        Person boxes ``xyxy`` normalized to the input (0..1); empty boxes are dropped.
    spec
        The detector's anchors.
    weights
        One weight per box (default 1): how much a positive anchor of that box counts
        in the loss (e.g. less for a node's own, unconfirmed detections).
    positive_iou, negative_iou
        IoU at or above which an anchor is a person, below which it is background.
    """
    anchors = generate_anchors(spec)
    targets = np.zeros((anchors.shape[0], TARGET_COLUMNS), dtype=np.float32)
    targets[:, 5] = 1.0
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box_weights = np.ones(len(boxes)) if weights is None else np.asarray(weights, dtype=np.float64)
    if box_weights.shape != (len(boxes),):
        raise ValueError(f"{len(boxes)} boxes but {box_weights.size} weights")
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, box_weights = boxes[keep], box_weights[keep]
    if len(boxes) == 0:
        return targets
    overlaps = iou_matrix(_yxhw_to_xyxy(anchors.astype(np.float64)), boxes)  # (N, G)
    best_box = overlaps.argmax(axis=1)
    best_iou = overlaps[np.arange(len(anchors)), best_box]
    labels = np.where(best_iou >= positive_iou, 1.0, np.where(best_iou < negative_iou, 0.0, -1.0))
    # Every box claims its best anchor (boxes in order of that IoU, so the best wins).
    best_anchor = overlaps.argmax(axis=0)
    for g in np.argsort(overlaps[best_anchor, np.arange(len(boxes))], kind="stable"):
        if overlaps[best_anchor[g], g] > 0.0:
            best_box[best_anchor[g]] = g
            labels[best_anchor[g]] = 1.0
    positive = labels == 1.0
    targets[:, 4] = labels
    targets[positive, :4] = encode_boxes(boxes[best_box[positive]], anchors[positive], spec.scales)
    targets[positive, 5] = box_weights[best_box[positive]]
    return targets
