"""The teacher ensemble: heavier person detection than a node can afford, on what a case carries.

Members (each returns ``person`` boxes drawn the same way, scores in 0..1):

``hog``
    OpenCV's HOG people detector (``cv2.HOGDescriptor`` with
    ``HOGDescriptor_getDefaultPeopleDetector``, Dalal-Triggs trained on INRIA). Its window
    is 64x128 pixels, so at full resolution it misses people under ~100 px tall. One
    ``detectMultiScale`` call runs on the image upscaled x``hog_upscale`` (2 by default,
    less where the result would exceed 1.4 M pixels): its image pyramid (steps of 1.05)
    runs from the upscaled size down through full resolution, so one call is multi-scale
    from people ~48 px tall upward. A window becomes a person box by keeping its central
    ``HOG_BOX_HEIGHT`` (0.75) x ``HOG_BOX_WIDTH`` (0.55): INRIA windows frame a 96 px
    person in 128 px, and on the sample clip the landmark boxes of the people HOG found
    were 0.75 (median) of the window's height and 0.57 of its width. The SVM margin ``m``
    (>= 0 at the detection boundary) becomes a score
    ``sigmoid(HOG_SCORE_SLOPE * (m - HOG_SCORE_MIDPOINT))`` = ``sigmoid(1.5 * (m - 0.5))``:
    margin 0 -> 0.32, 0.5 -> 0.5, 1 -> 0.68, 2 -> 0.90, 3 -> 0.98.
``blazepose-tiles``
    The node's BlazePose (``clients.pose.LiteRTPoseEstimator``: its SSD person detector
    and the full landmark model, from the model cache of ``models.pretrained``) on the
    whole image and on ``tile_size`` x ``tile_size`` full-resolution tiles overlapping by
    ``tile_overlap`` pixels (160 and 48 by default: 24 tiles on a 640x480 frame; the last
    tile of a row or column is flush with the image edge). The detector letterboxes its
    input to 224x224, so on a whole 640x480 frame a 60 px pedestrian shrinks to 21 px and
    is missed; on a 160 px tile it grows to 84 px. Each detection's landmark ROI is cut
    from the full image (so a person cut by a tile edge is still seen whole), the box is
    drawn from the visible landmarks (``server.cloud.person_boxes.landmark_person_box``)
    and scored detector score x pose presence.
``ssd:<name>``
    Each TFLite SSD the operator adds (``extra_models``, e.g. a COCO SSD MobileNet they
    own): post-processed outputs read through ``clients.detector.Detector``, COCO class 0
    (``person``) kept.

Each member's own duplicates (overlapping tiles, overlapping crops) and then the
members' boxes are merged with weighted boxes fusion (``ensemble_boxes``, IoU
``WBF_IOU`` = 0.55; boxes of one cluster are averaged weighted by score). The default
score rule ``conf_type="avg"`` rewards agreement: a box all ``M`` members find keeps their
mean score, a box only one of them finds gets its score / ``M``; ``"max"`` keeps the best
member's score (more recall, and every member's false boxes).

What each privacy mode lets the teacher do:

- ``frames``: every member on the whole frame.
- ``crops``: every member on each crop (HOG upscaled further when a crop is smaller
  than its window), boxes shifted back by the crop's offset into frame pixels, then
  merged. People outside every crop cannot be found.
- ``landmarks``: no pixels, so no detector can run. The teacher redraws one box per
  pose from its visible landmarks (the padded rule above) and recalibrates its score
  from the landmark evidence: ``pose score x mean visibility of the 12 limb joints``
  (shoulders, elbows, wrists, hips, knees, ankles), so a pose whose body the landmark
  model itself could not see loses confidence. It finds no one the node missed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from clients.detector import COCO_SSD_MOBILENET, Detector
from clients.pose.landmarks import roi_from_keypoints
from fedge.core.errors import ConfigError, ModelError
from fedge.core.records import Detection
from server.cloud.person_boxes import landmark_person_box

if TYPE_CHECKING:
    from clients.pose import LiteRTPoseEstimator
    from server.cloud.cases import DecodedCase

__all__ = [
    "BUILTIN_MEMBERS",
    "HOG_BOX_HEIGHT",
    "HOG_BOX_WIDTH",
    "HOG_SCORE_MIDPOINT",
    "HOG_SCORE_SLOPE",
    "LIMB_JOINTS",
    "TEACHER_VERSION",
    "WBF_CONF_TYPES",
    "WBF_IOU",
    "HogPeopleDetector",
    "PoseTileDetector",
    "SsdPersonDetector",
    "TeacherEnsemble",
    "TeacherMember",
    "build_teacher",
    "hog_people_detector",
    "landmark_support",
    "merge_boxes",
    "tile_origins",
]

TEACHER_VERSION = 1
"""Bumped whenever a member's box or score rule changes."""
PERSON = "person"
HOG_WINDOW = (64, 128)
HOG_BOX_WIDTH = 0.55
HOG_BOX_HEIGHT = 0.75
HOG_SCORE_SLOPE = 1.5
HOG_SCORE_MIDPOINT = 0.5
WBF_IOU = 0.55
WBF_CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
LIMB_JOINTS: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
"""BlazePose indices of shoulders, elbows, wrists, hips, knees and ankles."""
COCO_PERSON_CLASS = 0


class TeacherMember(Protocol):
    """One detector of the ensemble: BGR image in, ``person`` boxes in its pixels out."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def hog_people_detector() -> cv2.HOGDescriptor:
    """Return OpenCV's HOG descriptor loaded with the default people SVM.

    Raises
    ------
    ModelError
        This OpenCV build lacks the HOG people detector (OpenCV 5 moved it to contrib).
    """
    try:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    except (AttributeError, cv2.error) as err:
        raise ModelError(
            f"OpenCV {cv2.__version__} has no HOG people detector ({err}); install "
            '"opencv-contrib-python>=4.10,<5.2" (pip install "fedge[cloud]")'
        ) from None
    return hog


class HogPeopleDetector:
    """OpenCV's HOG people detector, multi-scale from an upscaled image (module docstring)."""

    name = "hog"

    def __init__(
        self,
        *,
        upscale: float = 2.0,
        max_pixels: int = 1_400_000,
        win_stride: int = 8,
        pyramid_step: float = 1.05,
    ) -> None:
        if upscale < 1.0 or max_pixels < HOG_WINDOW[0] * HOG_WINDOW[1]:
            raise ConfigError(
                f"HOG upscale {upscale} must be 1 or more and max_pixels {max_pixels} at "
                "least one 64x128 window"
            )
        self.hog = hog_people_detector()
        self.upscale = upscale
        self.max_pixels = max_pixels
        self.win_stride = win_stride
        self.pyramid_step = pyramid_step

    def scale_for(self, width: int, height: int) -> float:
        """The factor an image is resized by: ``upscale``, less (not below 1) where the
        result would exceed ``max_pixels``, more where the image is under 1.25 windows."""
        fit = max(1.25 * HOG_WINDOW[0] / width, 1.25 * HOG_WINDOW[1] / height)
        cap = float(np.sqrt(self.max_pixels / float(width * height)))
        return max(min(self.upscale, cap), 1.0, fit)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Person boxes in ``image`` pixels, scores from the SVM margins."""
        height, width = image.shape[:2]
        scale = self.scale_for(width, height)
        resized = image
        if scale != 1.0:
            resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        stride = (self.win_stride, self.win_stride)
        rects, margins = self.hog.detectMultiScale(
            resized, hitThreshold=0.0, winStride=stride, padding=stride, scale=self.pyramid_step
        )
        found = []
        for (x, y, w, h), margin in zip(
            np.asarray(rects, dtype=np.float64).reshape(-1, 4),
            np.asarray(margins, dtype=np.float64).reshape(-1),
            strict=True,
        ):
            cx, cy = (x + w / 2) / scale, (y + h / 2) / scale
            half_w, half_h = HOG_BOX_WIDTH * w / scale / 2, HOG_BOX_HEIGHT * h / scale / 2
            box = _clip_box((cx - half_w, cy - half_h, cx + half_w, cy + half_h), width, height)
            score = 1.0 / (1.0 + np.exp(-HOG_SCORE_SLOPE * (margin - HOG_SCORE_MIDPOINT)))
            found.append(Detection(box=box, label=PERSON, score=float(score)))
        return found


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels overlapping by ``overlap`` along ``length``.

    The last tile ends flush with the edge; a length within one tile gives ``[0]``.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


class PoseTileDetector:
    """BlazePose on the whole image and on overlapping full-resolution tiles."""

    name = "blazepose-tiles"

    def __init__(
        self,
        estimator: LiteRTPoseEstimator,
        *,
        tile_size: int = 160,
        tile_overlap: int = 48,
        min_presence: float = 0.5,
    ) -> None:
        if not 0 <= tile_overlap < tile_size:
            raise ConfigError(
                f"tile overlap {tile_overlap} must be 0 or more and less than the tile "
                f"size {tile_size}"
            )
        self.estimator = estimator
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.min_presence = min_presence

    def windows(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """``(x, y, w, h)`` of the whole image and of every tile."""
        tiles = [
            (x, y, min(self.tile_size, width), min(self.tile_size, height))
            for y in tile_origins(height, self.tile_size, self.tile_overlap)
            for x in tile_origins(width, self.tile_size, self.tile_overlap)
        ]
        whole = (0, 0, width, height)
        return [whole] + [t for t in tiles if t != whole]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Person boxes from landmarks, one per detection per window (duplicates kept)."""
        height, width = image.shape[:2]
        found = []
        for x, y, w, h in self.windows(width, height):
            for hit in self.estimator.detector.detect_keypoints(image[y : y + h, x : x + w]):
                keypoints = hit.keypoints + np.array([x, y], dtype=np.float32)
                roi = roi_from_keypoints(keypoints[0], keypoints[1])
                landmarks, presence = self.estimator.landmarks_in_roi(image, roi)
                if presence < self.min_presence:
                    continue
                box = landmark_person_box(landmarks[:33], width, height)
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue
                score = float(hit.detection.score) * float(presence)
                found.append(Detection(box=box, label=PERSON, score=score))
        return found


class SsdPersonDetector:
    """An operator's TFLite SSD with post-processed outputs; COCO class 0 is a person."""

    def __init__(self, detector: Detector, name: str) -> None:
        self.detector = detector
        self.name = name

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, score_threshold: float = 0.3
    ) -> SsdPersonDetector:
        """Load ``path`` as a COCO SSD (``TFLite_Detection_PostProcess`` outputs)."""
        labels = ["???"] * 91
        labels[COCO_PERSON_CLASS + COCO_SSD_MOBILENET.label_offset] = PERSON
        spec = replace(
            COCO_SSD_MOBILENET,
            labels=tuple(labels),
            score_threshold=score_threshold,
            max_detections=100,
        )
        try:
            detector = Detector(path, spec)
        except ModelError as err:
            raise ModelError(
                f"teacher model {path}: {err}; --teacher-model takes a TFLite SSD with "
                "TFLite_Detection_PostProcess outputs (e.g. COCO SSD MobileNet)"
            ) from None
        return cls(detector, f"ssd:{Path(path).stem}")

    def detect(self, image: np.ndarray) -> list[Detection]:
        """The SSD's person boxes in ``image`` pixels."""
        return [d for d in self.detector.detect(image) if d.label == PERSON]


def _clip_box(
    box: tuple[float, float, float, float], width: float, height: float
) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (
        float(min(max(x1, 0.0), width)),
        float(min(max(y1, 0.0), height)),
        float(min(max(x2, 0.0), width)),
        float(min(max(y2, 0.0), height)),
    )


def merge_boxes(
    groups: Sequence[Sequence[Detection]],
    width: float,
    height: float,
    *,
    iou_threshold: float = WBF_IOU,
    conf_type: str = "avg",
) -> list[Detection]:
    """Weighted boxes fusion of ``groups`` (one per model) of ``person`` boxes in pixels."""
    from ensemble_boxes import weighted_boxes_fusion

    if not any(groups):
        return []
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = [
        np.asarray([d.box for d in g], dtype=np.float64).reshape(-1, 4) / scale for g in groups
    ]
    scores = [np.asarray([d.score for d in g], dtype=np.float64) for g in groups]
    labels = [np.zeros(len(g)) for g in groups]
    fused, fused_scores, _ = weighted_boxes_fusion(
        [np.clip(b, 0.0, 1.0) for b in boxes],
        scores,
        labels,
        iou_thr=iou_threshold,
        conf_type=conf_type,
    )
    return [
        Detection(
            box=tuple(float(v) for v in np.asarray(box) * scale),  # type: ignore[arg-type]
            label=PERSON,
            score=float(np.clip(score, 0.0, 1.0)),
        )
        for box, score in zip(fused, fused_scores, strict=True)
    ]


def landmark_support(landmarks: np.ndarray) -> float:
    """Mean visibility of the 12 limb joints (``LIMB_JOINTS``) of a ``(33, 4)`` pose."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 4)
    return float(np.clip(points[list(LIMB_JOINTS), 3], 0.0, 1.0).mean())


@dataclass(frozen=True)
class _Window:
    image: np.ndarray
    x: int
    y: int


class TeacherEnsemble:
    """The members, run on whatever pixels a case carries and merged (module docstring)."""

    def __init__(self, members: Sequence[TeacherMember], *, conf_type: str = "avg") -> None:
        self.members = tuple(members)
        self.conf_type = conf_type
        self._lock = threading.Lock()  # LiteRT interpreters serve one call at a time
        names = "+".join(m.name for m in self.members) or "landmarks-only"
        self.version = f"{names}/{TEACHER_VERSION}"

    def detect(self, case: DecodedCase) -> list[Detection]:
        """``person`` boxes of ``case`` in frame pixels, scores 0..1, best first."""
        if case.mode == "landmarks":
            return self.detect_landmarks(case)
        if case.mode == "frames":
            if case.frame is None:
                raise ConfigError("a frames case needs its frame: decode it with decode_case")
            windows = [_Window(case.frame, 0, 0)]
        elif case.mode == "crops":
            windows = [_Window(c.image, c.x, c.y) for c in case.crops]
        else:
            raise ConfigError(f"unknown case mode {case.mode!r} (landmarks, crops or frames)")
        with self._lock:
            return self._detect_windows(windows, case.frame_width, case.frame_height)

    def detect_image(self, image: np.ndarray) -> list[Detection]:
        """What :meth:`detect` returns for a ``frames`` case of ``image``."""
        height, width = image.shape[:2]
        with self._lock:
            return self._detect_windows([_Window(image, 0, 0)], width, height)

    def member_detections(
        self, image: np.ndarray, *, clock: Callable[[], float] | None = None
    ) -> dict[str, tuple[list[Detection], float]]:
        """Each member's merged boxes on ``image`` and its seconds (with ``clock``)."""
        height, width = image.shape[:2]
        with self._lock:
            return self._timed_members(image, width, height, clock)

    def _timed_members(
        self, image: np.ndarray, width: int, height: int, clock: Callable[[], float] | None
    ) -> dict[str, tuple[list[Detection], float]]:
        out = {}
        for member in self.members:
            start = clock() if clock else 0.0
            found = merge_boxes([member.detect(image)], width, height, conf_type=self.conf_type)
            out[member.name] = (found, (clock() - start) if clock else 0.0)
        return out

    def detect_landmarks(self, case: DecodedCase) -> list[Detection]:
        """One box per pose from its visible landmarks, score recalibrated (docstring)."""
        found = [
            Detection(
                box=landmark_person_box(p.landmarks, case.frame_width, case.frame_height),
                label=PERSON,
                score=float(np.clip(p.score, 0.0, 1.0)) * landmark_support(p.landmarks),
            )
            for p in case.persons
        ]
        return sorted(found, key=lambda d: -d.score)

    def _detect_windows(
        self, windows: Sequence[_Window], width: int, height: int
    ) -> list[Detection]:
        per_member = []
        for member in self.members:
            shifted = [
                Detection(
                    box=_clip_box(
                        (d.box[0] + w.x, d.box[1] + w.y, d.box[2] + w.x, d.box[3] + w.y),
                        width,
                        height,
                    ),
                    label=PERSON,
                    score=d.score,
                )
                for w in windows
                for d in member.detect(w.image)
            ]
            per_member.append(merge_boxes([shifted], width, height, conf_type=self.conf_type))
        return merge_boxes(per_member, width, height, conf_type=self.conf_type)


BUILTIN_MEMBERS: tuple[str, ...] = ("hog", "blazepose-tiles")


def build_teacher(
    *,
    model_dir: Path | None = None,
    extra_models: Sequence[Path] = (),
    members: Sequence[str] | None = None,
    hog_upscale: float = 2.0,
    tile_size: int = 160,
    tile_overlap: int = 48,
    conf_type: str = "avg",
    num_threads: int | None = None,
) -> TeacherEnsemble:
    """Build the teacher from the model cache and the operator's extra SSDs.

    Parameters
    ----------
    model_dir
        Model cache (``fedge models fetch``); the default cache when ``None``.
    extra_models
        TFLite SSDs with post-processed outputs (``--teacher-model``).
    members
        Built-in members to run (``BUILTIN_MEMBERS``); all of them when ``None``.
    hog_upscale, tile_size, tile_overlap
        See the module docstring.
    conf_type
        Weighted boxes fusion's score rule (``WBF_CONF_TYPES``).
    num_threads
        LiteRT threads per model.
    """
    if conf_type not in WBF_CONF_TYPES:
        raise ConfigError(
            f"unknown box fusion score rule {conf_type!r} (choose one of: "
            f"{', '.join(WBF_CONF_TYPES)})"
        )
    chosen = BUILTIN_MEMBERS if members is None else tuple(members)
    unknown = [m for m in chosen if m not in BUILTIN_MEMBERS]
    if unknown:
        raise ConfigError(
            f"unknown teacher member {unknown[0]!r} (choose from: {', '.join(BUILTIN_MEMBERS)})"
        )
    built: list[TeacherMember] = []
    if "hog" in chosen:
        built.append(HogPeopleDetector(upscale=hog_upscale))
    if "blazepose-tiles" in chosen:
        from clients.pose import LiteRTPoseEstimator

        estimator = LiteRTPoseEstimator.from_cache(
            model_dir, max_poses=10, min_detection_score=0.5, num_threads=num_threads
        )
        built.append(PoseTileDetector(estimator, tile_size=tile_size, tile_overlap=tile_overlap))
    built += [SsdPersonDetector.from_file(path) for path in extra_models]
    return TeacherEnsemble(built, conf_type=conf_type)
