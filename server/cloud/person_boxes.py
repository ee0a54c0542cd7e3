"""One way to draw a person's box from BlazePose landmarks, shared by the teacher and fusion.

BlazePose's 33 landmarks stop at the eyes and ears on top and at the heels and toes
below, and run along the skeleton, not the silhouette, so the box that merely bounds
them is too small: it misses the top of the head and the width of the body. For the
node's poses and the teacher's boxes to be compared by IoU they must be drawn the
same way, so both use :func:`landmark_person_box`:

1. keep the landmarks with visibility >= ``min_visibility`` (all 33 when fewer than
   ``MIN_VISIBLE`` are visible: an occluded pose still has a place in the frame);
2. bound them: ``x1, y1, x2, y2`` with ``s = max(x2 - x1, y2 - y1)``;
3. pad by ``PAD_TOP * s`` above (forehead and hair above the eyes), ``PAD_BOTTOM * s``
   below (soles under the heel landmarks) and ``PAD_SIDE * s`` left and right (clothes
   and arms beside the joints);
4. clip to the frame.

The paddings were measured by eye on people of the sample clip (``vtest_clip.mp4``),
whose skeleton boxes are about 0.1 of their height short on top.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MIN_VISIBLE",
    "PAD_BOTTOM",
    "PAD_SIDE",
    "PAD_TOP",
    "landmark_person_box",
]

PAD_TOP = 0.10
PAD_BOTTOM = 0.03
PAD_SIDE = 0.05
MIN_VISIBLE = 4
"""Fewest visible landmarks a box is drawn from; below that all landmarks are used."""


def landmark_person_box(
    landmarks: np.ndarray,
    frame_width: float,
    frame_height: float,
    *,
    min_visibility: float = 0.5,
) -> tuple[float, float, float, float]:
    """Return the padded person box ``(x1, y1, x2, y2)`` of a ``(33, 4)`` pose, in pixels.

    Parameters
    ----------
    landmarks
        Pixel x, y, z and visibility per landmark (``fedge.core.records.Person``).
    frame_width, frame_height
        The frame the box is clipped to.
    min_visibility
        Visibility a landmark needs to count (see the module docstring).
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 4)
    visible = points[points[:, 3] >= min_visibility]
    if visible.shape[0] < MIN_VISIBLE:
        visible = points
    x1, y1 = visible[:, :2].min(axis=0)
    x2, y2 = visible[:, :2].max(axis=0)
    size = max(x2 - x1, y2 - y1)
    box = np.array(
        [
            x1 - PAD_SIDE * size,
            y1 - PAD_TOP * size,
            x2 + PAD_SIDE * size,
            y2 + PAD_BOTTOM * size,
        ]
    )
    box = np.clip(box, 0.0, [frame_width, frame_height, frame_width, frame_height])
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
