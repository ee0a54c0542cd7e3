"""Decode raw SSD outputs (box regressions + class logits per anchor) into candidates.

Follows MediaPipe's ``TensorsToDetectionsCalculator``: boxes are offsets from anchors,
scaled by ``x_scale``..``h_scale``; keypoints (BlazeFace, BlazePose) follow the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BoxDecoding", "Candidates", "decode_ssd", "sigmoid"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return the logistic function of ``x`` without overflow warnings."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float32)))).astype(np.float32)


@dataclass(frozen=True)
class BoxDecoding:
    """How the box tensor of a raw-anchor SSD is laid out and scaled."""

    num_coords: int = 4
    box_coord_offset: int = 0
    num_keypoints: int = 0
    keypoint_coord_offset: int = 4
    num_values_per_keypoint: int = 2
    x_scale: float = 1.0
    y_scale: float = 1.0
    w_scale: float = 1.0
    h_scale: float = 1.0
    reverse_output_order: bool = True  # [x, y, w, h] (MediaPipe); False: [y, x, h, w]
    apply_exponential_on_box_size: bool = False
    sigmoid_score: bool = True
    score_clipping_thresh: float | None = 100.0


@dataclass(frozen=True)
class Candidates:
    """Decoded per-anchor candidates, normalized to the model input.

    ``boxes`` is ``(N, 4)`` x1, y1, x2, y2; ``keypoints`` is ``(N, K, 2)``; ``scores``
    and ``classes`` are ``(N,)``.
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def select(self, mask: np.ndarray) -> Candidates:
        """Return the candidates where ``mask`` (bool or indices) selects."""
        return Candidates(
            self.boxes[mask], self.keypoints[mask], self.scores[mask], self.classes[mask]
        )


def decode_ssd(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, decoding: BoxDecoding
) -> Candidates:
    """Decode ``(N, num_coords)`` boxes and ``(N, C)`` scores against ``(N, 4)`` anchors."""
    raw_boxes = raw_boxes.reshape(-1, decoding.num_coords).astype(np.float32)
    raw_scores = raw_scores.reshape(raw_boxes.shape[0], -1).astype(np.float32)
    if anchors.shape[0] != raw_boxes.shape[0]:
        raise ValueError(f"model has {raw_boxes.shape[0]} boxes but {anchors.shape[0]} anchors")
    ax, ay, aw, ah = (anchors[:, i] for i in range(4))
    off = decoding.box_coord_offset
    first, second = raw_boxes[:, off], raw_boxes[:, off + 1]
    third, fourth = raw_boxes[:, off + 2], raw_boxes[:, off + 3]
    if decoding.reverse_output_order:
        x, y, w, h = first, second, third, fourth
    else:
        y, x, h, w = first, second, third, fourth
    cx = x / decoding.x_scale * aw + ax
    cy = y / decoding.y_scale * ah + ay
    if decoding.apply_exponential_on_box_size:
        w = np.exp(w / decoding.w_scale) * aw
        h = np.exp(h / decoding.h_scale) * ah
    else:
        w = w / decoding.w_scale * aw
        h = h / decoding.h_scale * ah
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)

    keypoints = np.zeros((raw_boxes.shape[0], decoding.num_keypoints, 2), dtype=np.float32)
    for k in range(decoding.num_keypoints):
        base = decoding.keypoint_coord_offset + k * decoding.num_values_per_keypoint
        kx, ky = raw_boxes[:, base], raw_boxes[:, base + 1]
        if not decoding.reverse_output_order:
            kx, ky = ky, kx
        keypoints[:, k, 0] = kx / decoding.x_scale * aw + ax
        keypoints[:, k, 1] = ky / decoding.y_scale * ah + ay

    logits = raw_scores
    if decoding.score_clipping_thresh is not None:
        limit = decoding.score_clipping_thresh
        logits = np.clip(logits, -limit, limit)
    probs = sigmoid(logits) if decoding.sigmoid_score else logits
    classes = np.argmax(probs, axis=1)
    scores = probs[np.arange(probs.shape[0]), classes]
    return Candidates(boxes.astype(np.float32), keypoints, scores.astype(np.float32), classes)
