"""Cut a (rotated) rectangle out of a frame into a model input, and map points back.

This follows MediaPipe's ``ImageToTensorCalculator``: the rectangle's corners go to the
tensor's corners (bilinear sampling), ``keep_aspect_ratio`` grows the rectangle to the
tensor's aspect ratio (letterboxing), and model outputs normalized to the tensor map
back to pixels through the same rectangle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

__all__ = ["RotatedRect", "crop_to_tensor", "normalize_pixels"]

BorderMode = Literal["zero", "replicate"]
_BORDERS = {"zero": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


@dataclass(frozen=True)
class RotatedRect:
    """A rectangle in pixels: centre, size and rotation (radians, clockwise on screen)."""

    center_x: float
    center_y: float
    width: float
    height: float
    rotation: float = 0.0

    @classmethod
    def full_frame(cls, width: int, height: int) -> RotatedRect:
        """Return the rectangle covering a whole ``width`` x ``height`` frame."""
        return cls(width / 2.0, height / 2.0, float(width), float(height))

    def fit_aspect(self, out_width: int, out_height: int) -> RotatedRect:
        """Grow the shorter side so the rectangle has the tensor's aspect ratio."""
        target = out_width / out_height
        if self.width / self.height > target:
            return RotatedRect(
                self.center_x, self.center_y, self.width, self.width / target, self.rotation
            )
        return RotatedRect(
            self.center_x, self.center_y, self.height * target, self.height, self.rotation
        )

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` points normalized to the rectangle ([0, 1]) to frame pixels."""
        pts = np.asarray(points, dtype=np.float64)
        dx = (pts[..., 0] - 0.5) * self.width
        dy = (pts[..., 1] - 0.5) * self.height
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        out = np.empty(pts.shape[:-1] + (2,), dtype=np.float64)
        out[..., 0] = self.center_x + cos * dx - sin * dy
        out[..., 1] = self.center_y + sin * dx + cos * dy
        return out


def crop_to_tensor(
    frame: np.ndarray,
    rect: RotatedRect,
    out_width: int,
    out_height: int,
    border: BorderMode = "zero",
) -> np.ndarray:
    """Return ``rect`` of ``frame`` resampled to ``out_height x out_width`` (same dtype)."""
    src = rect.to_image(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).astype(np.float32)
    dst = np.array([[0, 0], [out_width, 0], [0, out_height]], dtype=np.float32)
    matrix = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(
        frame,
        matrix,
        (out_width, out_height),
        flags=cv2.INTER_LINEAR,
        borderMode=_BORDERS[border],
        borderValue=0,
    )


def normalize_pixels(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Return ``(pixels - mean) / std`` as float32 with a leading batch axis."""
    return ((pixels.astype(np.float32) - np.float32(mean)) / np.float32(std))[None]
