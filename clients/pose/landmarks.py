"""Decode the BlazePose landmark model's tensors (MediaPipe's post-processing).

The model sees a 256x256 crop of a rotated ROI and returns 39 landmarks (33 body + 6
auxiliary) as x, y, z, visibility and presence logits in crop pixels, a pose-presence
probability and a 64x64x39 heatmap used to refine x and y.
"""

from __future__ import annotations

import math

import numpy as np

from clients.inference.image_tensor import RotatedRect
from clients.inference.ssd_decoding import sigmoid

__all__ = [
    "ALIGNMENT_SCALE",
    "NUM_MODEL_LANDMARKS",
    "decode_landmarks",
    "project_landmarks",
    "refine_with_heatmap",
    "roi_from_keypoints",
]

NUM_MODEL_LANDMARKS = 39
ALIGNMENT_SCALE = 1.25  # ROI margin used in training (RectTransformationCalculator)


def decode_landmarks(raw: np.ndarray, input_size: int) -> np.ndarray:
    """Return ``(39, 5)`` x, y, z normalized to the crop, visibility, presence."""
    values = raw.reshape(NUM_MODEL_LANDMARKS, 5).astype(np.float32)
    out = np.empty_like(values)
    out[:, :3] = values[:, :3] / np.float32(input_size)
    out[:, 3:] = sigmoid(values[:, 3:])
    return out


def refine_with_heatmap(
    landmarks: np.ndarray, heatmap: np.ndarray, kernel: int = 7, min_confidence: float = 0.5
) -> np.ndarray:
    """Move x, y to the confidence-weighted mean of the heatmap around each landmark."""
    maps = sigmoid(heatmap.reshape(heatmap.shape[-3:]))
    rows, cols, channels = maps.shape
    out = landmarks.copy()
    half = (kernel - 1) // 2
    for i in range(min(channels, landmarks.shape[0])):
        col, row = int(landmarks[i, 0] * cols), int(landmarks[i, 1] * rows)  # truncates
        if not (0 <= col < cols and 0 <= row < rows):
            continue
        window = maps[max(0, row - half) : row + half + 1, max(0, col - half) : col + half + 1, i]
        total = float(window.sum())
        if total <= 0.0 or float(window.max()) < min_confidence:
            continue
        ys, xs = np.mgrid[max(0, row - half) : min(rows, row + half + 1),
                          max(0, col - half) : min(cols, col + half + 1)]  # fmt: skip
        out[i, 0] = float((xs * window).sum()) / cols / total
        out[i, 1] = float((ys * window).sum()) / rows / total
    return out


def project_landmarks(landmarks: np.ndarray, roi: RotatedRect) -> np.ndarray:
    """Map crop-normalized landmarks to frame pixels: ``(N, 4)`` x, y, z, visibility.

    ``z`` is scaled like x (MediaPipe's convention), so it is in pixels too.
    """
    out = np.empty((landmarks.shape[0], 4), dtype=np.float32)
    out[:, :2] = roi.to_image(landmarks[:, :2])
    out[:, 2] = landmarks[:, 2] * roi.width
    out[:, 3] = landmarks[:, 3]
    return out


def roi_from_keypoints(center: np.ndarray, scale_point: np.ndarray) -> RotatedRect:
    """Return the square landmark ROI from two alignment points in pixels.

    The first point is the body centre, the second encodes size and rotation (the
    detector's keypoints 0 and 1, or auxiliary landmarks 33 and 34 when tracking).
    """
    dx = float(scale_point[0] - center[0])
    dy = float(scale_point[1] - center[1])
    side = 2.0 * math.hypot(dx, dy) * ALIGNMENT_SCALE
    rotation = math.pi / 2 - math.atan2(-dy, dx)
    rotation -= 2 * math.pi * math.floor((rotation + math.pi) / (2 * math.pi))
    return RotatedRect(float(center[0]), float(center[1]), side, side, rotation)
