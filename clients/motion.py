"""Motion proposals: boxes around what moves, for a node that cannot yet see its people.

Before a node has a person detector it finds people with BlazePose alone, and on a
surveillance view (small, far people) that finds almost nobody: a ``crops`` hard case
would carry no crop and the cloud could label nothing. Moving regions are where the
people are, so :class:`MotionProposer` proposes them:

1. the frame is shrunk to ``work_width`` pixels across (speed; it also smooths noise);
2. OpenCV's MOG2 background subtractor (``cv2.createBackgroundSubtractorMOG2``, shadows
   detected and dropped) marks the foreground; its background model learns from every
   frame, so **feed every frame, in order** (the pipeline's store stage does);
3. a morphological opening removes speckle, a closing joins the pieces of one body;
4. connected components of at least ``min_area`` work pixels become boxes; boxes less
   than ``merge_gap`` work pixels apart are merged (a head and a body the mask split);
5. boxes shorter than ``min_height`` work pixels are dropped and the rest padded by
   ``padding`` of their size on every side, clipped, and scaled back to frame pixels.

A box is a :class:`~fedge.core.records.Detection` labelled ``"motion"`` (:data:`MOTION_LABEL`)
whose score is the share of its (unpadded) area that moved: it is a region to look at,
not a person, and nothing that reads person detections counts it as one (hard-case
selection never sees it, the cloud's fusion and the detector's training read ``person``
boxes only, and the privacy filter keeps it off the wire except as crops).

No box comes out during the first ``warmup_frames`` frames (the background is not known
yet) or when more than ``max_foreground`` of the frame moves at once (a light switched,
the camera moved: the model relearns). On a 640x480 frame it costs about 2 ms (median
on a 2-core development machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.records import Detection

__all__ = ["MOTION_LABEL", "MotionPolicy", "MotionProposer", "merge_close_boxes"]

MOTION_LABEL = "motion"
"""The label of a motion proposal in a frame's ``detections``."""

_FOREGROUND = 200  # MOG2 marks foreground 255 and shadows 127
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MotionPolicy:
    """Knobs of :class:`MotionProposer`; sizes are in work pixels (``work_width`` across)."""

    work_width: int = 320
    history: int = 200
    """Frames MOG2's background model remembers (20 s at 10 fps)."""
    var_threshold: float = 16.0
    """MOG2's squared Mahalanobis distance for a pixel to be foreground (OpenCV's default)."""
    warmup_frames: int = 10
    open_px: int = 3
    close_px: int = 7
    min_area: int = 30
    """Fewest foreground pixels of a component (30 work px: 120 px of a 640-wide frame)."""
    merge_gap: int = 4
    min_height: int = 8
    """Shortest box kept (8 work px: 16 px of a 480-high frame)."""
    padding: float = 0.15
    max_foreground: float = 0.4
    max_boxes: int = 16

    def __post_init__(self) -> None:
        if self.work_width < 32 or self.history < 1 or self.warmup_frames < 0:
            raise ConfigError("motion: work_width >= 32, history >= 1, warmup_frames >= 0")
        if not 0.0 < self.max_foreground <= 1.0 or self.padding < 0 or self.max_boxes < 1:
            raise ConfigError("motion: 0 < max_foreground <= 1, padding >= 0, max_boxes >= 1")


def merge_close_boxes(boxes: list[list[float]], gap: float) -> list[list[float]]:
    """Merge boxes (``[x1, y1, x2, y2]``) whose gap is at most ``gap`` until none is."""
    merged = [list(b) for b in boxes]
    changed = True
    while changed:
        changed = False
        out: list[list[float]] = []
        for box in merged:
            for other in out:
                if (
                    box[0] <= other[2] + gap
                    and other[0] <= box[2] + gap
                    and box[1] <= other[3] + gap
                    and other[1] <= box[3] + gap
                ):
                    other[0], other[1] = min(other[0], box[0]), min(other[1], box[1])
                    other[2], other[3] = max(other[2], box[2]), max(other[3], box[3])
                    changed = True
                    break
            else:
                out.append(box)
        merged = out
    return merged


class MotionProposer:
    """Propose boxes around moving regions, frame after frame (module docstring).

    One instance follows one camera; it is not thread-safe (the pipeline's store stage is
    its single caller).
    """

    def __init__(self, policy: MotionPolicy | None = None) -> None:
        self.policy = policy or MotionPolicy()
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (self.policy.open_px,) * 2)
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (self.policy.close_px,) * 2)
        self._size: tuple[int, int] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the background (e.g. the camera was moved); warm-up starts again."""
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=self.policy.history,
            varThreshold=self.policy.var_threshold,
            detectShadows=True,
        )
        self.frames = 0
        """Frames seen since the background model (re)started."""

    def update(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Learn from ``frame_bgr`` (BGR or gray) and return this frame's motion boxes.

        A frame of another size than the previous ones restarts the background model.
        """
        height, width = frame_bgr.shape[:2]
        if self._size != (width, height):
            if self._size is not None:
                self.reset()
            self._size = (width, height)
        policy = self.policy
        scale = min(1.0, policy.work_width / width)
        work = frame_bgr
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
        mask = self._subtractor.apply(work)
        self.frames += 1
        if self.frames <= policy.warmup_frames:
            return []
        _, mask = cv2.threshold(mask, _FOREGROUND, 255, cv2.THRESH_BINARY)  # drop shadows
        if np.count_nonzero(mask) > policy.max_foreground * mask.size:
            return []
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        boxes = [
            [float(x), float(y), float(x + w), float(y + h)]
            for x, y, w, h, area in stats[1:count]
            if area >= policy.min_area
        ]
        boxes = merge_close_boxes(boxes, policy.merge_gap)
        work_h, work_w = mask.shape
        found = []
        for x1, y1, x2, y2 in boxes:
            if y2 - y1 < policy.min_height:
                continue
            moved = float(np.count_nonzero(mask[int(y1) : int(y2), int(x1) : int(x2)]))
            share = moved / max(1.0, (x2 - x1) * (y2 - y1))
            pad_x, pad_y = (x2 - x1) * policy.padding, (y2 - y1) * policy.padding
            box = (
                max(0.0, x1 - pad_x) / scale,
                max(0.0, y1 - pad_y) / scale,
                min(float(work_w), x2 + pad_x) / scale,
                min(float(work_h), y2 + pad_y) / scale,
            )
            box = (box[0], box[1], min(box[2], float(width)), min(box[3], float(height)))
            found.append(Detection(box, MOTION_LABEL, round(min(1.0, share), 4)))
        found.sort(key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        return found[: policy.max_boxes]
