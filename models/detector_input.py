"""The person detector's input: a frame stretched to the input size, and its normalization.

NumPy and OpenCV only (no TensorFlow), so a process that reads examples or calibration
frames without training (a ClientApp that hands its work to the node's warm worker, the
edge agent) does not import TensorFlow. :mod:`models.person_detector` re-exports these.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.box_coding import DEFAULT_ANCHORS, AnchorSpec

__all__ = ["INPUT_MEAN", "INPUT_STD", "frame_to_input", "normalize_input"]

INPUT_MEAN = 127.5
INPUT_STD = 127.5


def frame_to_input(frame_bgr: np.ndarray, spec: AnchorSpec = DEFAULT_ANCHORS) -> np.ndarray:
    """Return ``frame_bgr`` stretched to the input size as RGB uint8 ``(H, W, 3)``.

    Sampled exactly as ``clients.detector.Detector`` samples a whole frame (an affine map
    of the frame's corners onto the input's, bilinear, no antialiasing), so training and
    calibration see the pixels the node's model sees; a half-pixel difference in the
    sampling moves an undertrained model's scores by up to ~0.1. Boxes in frame pixels
    become input-normalized by dividing by the frame's size.
    """
    height, width = frame_bgr.shape[:2]
    matrix = np.array(
        [[spec.input_width / width, 0.0, 0.0], [0.0, spec.input_height / height, 0.0]]
    )
    resized = cv2.warpAffine(
        frame_bgr,
        matrix,
        (spec.input_width, spec.input_height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def normalize_input(images: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(..., H, W, 3)`` to the model's float32 ``(pixel - 127.5) / 127.5``."""
    return (np.asarray(images, dtype=np.float32) - INPUT_MEAN) / INPUT_STD
