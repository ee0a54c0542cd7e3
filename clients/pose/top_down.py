"""Top-down multi-person pose: a person detector's boxes, then BlazePose landmarks per box.

BlazePose's own detector, run on a whole 640x480 frame letterboxed to 224x224, finds
people taller than ~150 px; in a surveillance view most people are smaller. Here a
person detector (any SSD whose boxes are labelled ``person``: the federated detector, a
COCO SSD) gives the boxes and the landmark model runs once per box.

**ROI rule.** The landmark model expects a square ROI around the whole body. A box has
no keypoints, so the ROI is the square centred on the box centre with side
``BOX_ROI_SCALE`` (1.5) x the box's longer side, rotation 0 (people stand upright in a
fixed camera's view). Measured on 20 frames of the sample clip: the ROI that BlazePose's
detector keypoints give is 1.58x (median; 1.36-1.82 for 80 %) the longer side of the
landmark box it yields, centred on it (offset < 1 % of the height). Run on the HOG
people boxes of those frames (about as tight as landmark boxes), scales 1.25 to 1.6 put
the 33 landmarks within a median 1.2 % of the person's height of those of the keypoint
ROI; 1.5 keeps a margin for boxes that cut a limb off and keeps the 90th percentile
under 3 % (1.75: 4.4 %, 2.0 loses people).

**Which boxes.** Boxes of the ``person`` label scoring ``min_box_score`` or more, best
first, at most ``max_persons`` of them: the landmark model runs at most ``max_persons``
times a frame, whatever the scene. A box whose pose presence is under
``min_presence_score`` gives no person (nor does one whose landmarks repeat an earlier
person's); it is not replaced by the next box.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from clients.detector import Detector, DetectorSpec
from clients.inference.image_tensor import RotatedRect
from clients.pose.base import NUM_LANDMARKS, person_from_landmarks
from clients.pose.litert_backend import PoseLandmarker
from fedge.core.errors import ConfigError, ModelError
from fedge.core.geometry import iou
from fedge.core.records import Detection, Person

__all__ = [
    "BOX_ROI_SCALE",
    "PERSON",
    "PERSON_SSD",
    "PersonFinder",
    "TopDownPoseEstimator",
    "load_person_detector",
    "roi_from_box",
]

PERSON = "person"
BOX_ROI_SCALE = 1.5
"""ROI side / the person box's longer side (see the module docstring)."""

PERSON_SSD = DetectorSpec(labels=(PERSON,), score_threshold=0.3, max_detections=25)
"""A TFLite SSD with post-processed outputs whose class 0 is a person: the federated
single-class detector, and COCO SSD MobileNet too (its class 0 is ``person``). Other
classes get their number as label and are ignored by :class:`TopDownPoseEstimator`."""

_DUPLICATE_IOU = 0.6  # landmark boxes overlapping more than this are one person

PersonFinder = Callable[[np.ndarray], Sequence[Detection]]
"""Frame in, labelled boxes in its pixels out (``Detector.detect`` is one)."""

Box = tuple[float, float, float, float]


def load_person_detector(
    model: str | os.PathLike[str] | bytes,
    *,
    score_threshold: float = PERSON_SSD.score_threshold,
    num_threads: int | None = None,
) -> Detector:
    """Load a person SSD (``PERSON_SSD``: post-processed outputs, class 0 is a person).

    Raises
    ------
    ModelError
        The file is missing, not TFLite, or not an SSD with post-processed outputs.
    """
    spec = replace(PERSON_SSD, score_threshold=score_threshold)
    try:
        return Detector(model, spec, num_threads=num_threads)
    except ModelError as err:
        raise ModelError(
            f"person model: {err}; it must be a TFLite SSD with TFLite_Detection_PostProcess "
            "outputs whose class 0 is a person (the federated detector, COCO SSD MobileNet)"
        ) from None


def roi_from_box(box: Box, scale: float = BOX_ROI_SCALE) -> RotatedRect:
    """Return the landmark ROI of a person box: square, centred, ``scale`` x its longer side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = scale * max(x2 - x1, y2 - y1)
    return RotatedRect((x1 + x2) / 2.0, (y1 + y2) / 2.0, side, side, 0.0)


class TopDownPoseEstimator:
    """Find people with a person detector, then their 33 landmarks one box at a time.

    Parameters
    ----------
    landmarker
        The BlazePose landmark model.
    person_detector
        A :class:`~clients.detector.Detector` or any callable giving labelled boxes.
    max_persons
        Most boxes the landmark model runs on per frame (0: boxes only, no pose).
    min_box_score
        Boxes scoring less get no landmarks (they still go to ``find_people``'s boxes).
    min_presence_score
        Landmark-model pose-presence threshold; the person's ``score`` is its presence.
    label
        The detector label that means a person.
    roi_scale
        ROI side / box longer side (``BOX_ROI_SCALE``).
    """

    def __init__(
        self,
        landmarker: PoseLandmarker,
        person_detector: Detector | PersonFinder,
        *,
        max_persons: int = 4,
        min_box_score: float = 0.5,
        min_presence_score: float = 0.5,
        label: str = PERSON,
        roi_scale: float = BOX_ROI_SCALE,
    ) -> None:
        if max_persons < 0:
            raise ConfigError(f"max persons must be 0 or more, got {max_persons}")
        if roi_scale <= 0:
            raise ConfigError(f"ROI scale must be positive, got {roi_scale}")
        self.landmarker = landmarker
        self.person_detector = person_detector
        self.max_persons = max_persons
        self.min_box_score = min_box_score
        self.min_presence_score = min_presence_score
        self.label = label
        self.roi_scale = roi_scale

    @classmethod
    def from_cache(
        cls,
        person_detector: Detector | PersonFinder,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        num_threads: int | None = None,
        **options: object,
    ) -> TopDownPoseEstimator:
        """Build with the landmark model of the verified cache (``fedge models fetch``)."""
        landmarker = PoseLandmarker.from_cache(cache_dir, num_threads=num_threads)
        return cls(landmarker, person_detector, **options)  # type: ignore[arg-type]

    def with_person_detector(
        self, person_detector: Detector | PersonFinder
    ) -> TopDownPoseEstimator:
        """A copy finding people with ``person_detector`` (same landmark model and options):
        the hot swap of a new detector version (``clients.hot_swap``)."""
        twin = copy.copy(self)
        twin.person_detector = person_detector
        return twin

    def detect_persons(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Return the person detector's ``label`` boxes in ``frame_bgr``, best first."""
        find = getattr(self.person_detector, "detect", self.person_detector)
        found = [d for d in find(frame_bgr) if d.label == self.label]
        return sorted(found, key=lambda d: -d.score)

    def landmarks_for_boxes(
        self, frame_bgr: np.ndarray, boxes: Sequence[Detection]
    ) -> list[Person]:
        """Return a :class:`Person` per box that shows a pose (see the module docstring).

        ``boxes`` are in ``frame_bgr`` pixels; their labels are not checked here.
        """
        height, width = frame_bgr.shape[:2]
        chosen = sorted(
            (d for d in boxes if d.score >= self.min_box_score and _has_area(d.box)),
            key=lambda d: -d.score,
        )[: self.max_persons]
        persons: list[Person] = []
        for detection in chosen:
            roi = roi_from_box(detection.box, self.roi_scale)
            landmarks, presence = self.landmarker.landmarks_in_roi(frame_bgr, roi)
            if presence < self.min_presence_score:
                continue
            person = person_from_landmarks(landmarks[:NUM_LANDMARKS], presence, width, height)
            if not _repeats(person, persons):
                persons.append(person)
        return persons

    def find_people(self, frame_bgr: np.ndarray) -> tuple[list[Person], list[Detection]]:
        """Return the poses and the person detector's boxes (for hard-case selection)."""
        boxes = self.detect_persons(frame_bgr)
        return self.landmarks_for_boxes(frame_bgr, boxes), boxes

    def estimate(self, frame_bgr: np.ndarray) -> list[Person]:
        """Return the people in ``frame_bgr`` with 33 landmarks each, in pixels."""
        return self.find_people(frame_bgr)[0]


def _has_area(box: Box) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def _repeats(person: Person, others: list[Person]) -> bool:
    return bool(others) and float(iou(person.box, [p.box for p in others]).max()) > _DUPLICATE_IOU
