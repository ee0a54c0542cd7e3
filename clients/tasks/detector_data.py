"""The person detector's training and evaluation examples, read from the node's frame store.

Examples
--------
Every round the node lists its store again (it grows between rounds) and turns frames
into examples; only file paths and boxes are held, the JPEGs are read a batch at a time
(:class:`clients.tasks.detector_batches.StoreBatches`, the one part that needs Keras).

- **Cloud-labelled frames** (label status ``labelled``, a :class:`~fedge.core.labels.FrameLabel`
  with the fused boxes): every ``person`` box whose fused score is at least
  ``label_min_score`` is a target of weight :data:`CLOUD_WEIGHT` (1.0); boxes below it are
  *ignored regions* (anchors overlapping them are neither person nor background), except
  the node's own boxes the teacher looked at and did not find (an edge-only box below the
  floor where the cloud looked): that silence is the cloud's answer to the hard case,
  "nobody here", and the box's anchors are background like the rest of what the cloud
  saw. (Ignoring them threw the answer away: the student kept scoring the same window,
  door and car in its uncertainty band version after version, and every site asked
  about them again; ``benchmarks/demo_loop.py``'s ``labels.md`` counts such boxes and
  how many of them the teacher run on the whole frame calls people.) The other exception
  is the node's own guess where the cloud did not look: a box only the node
  reported (no cloud score) with less than ``LOOKED_SHARE`` (60%) of its area in any crop
  of a ``crops`` label, or any such box in a ``landmarks`` label (the cloud saw the
  poses' landmarks, not the node's detector boxes without a pose). Fusion scores the
  cloud's silence there as "no evidence" (0.5), so such a box would clear the floor from
  an edge score of 0.1; it is no cloud label, and it trains as the node's own box does
  (below: weight ``own_weight`` from ``self_min_score``), else it is an ignored region
  (in the demo most such boxes were nobody by the teacher run on the whole frame:
  ``benchmarks/demo_loop.py``'s ``labels.md`` counts them). Other anchors are background
  only where the cloud looked (the label's ``coverage``): the whole frame for a
  ``frames`` case (and labels older than coverage); only inside the crops for a
  ``crops`` case, an anchor being "inside" when at least ``1 - negative_iou``
  of it (the part in the frame) lies in one crop, so a person the cloud never saw
  overlaps it by less than ``negative_iou`` and the anchor would be background in a
  whole-frame label too; nowhere for a ``landmarks`` case (only its boxes train, and a
  label with no box there is skipped). Anchors outside are background of weight
  :data:`UNSEEN_BACKGROUND_WEIGHT` (0.1), not ignored: with crops alone no anchor too big
  for a crop ever saw a negative, and the detector learnt to call large boxes people
  everywhere (measured: 27-50 boxes >= 0.5 per frame after 1-2 demo rounds, against
  ~6 people); most of a camera's view is background, and the low weight keeps a person
  the cloud did not see from counting much.
- **The node's own confident boxes** on frames without a label: BlazePose person boxes
  (``persons``, score >= ``pose_min_score``) and the node's detector boxes (``detections``
  labelled ``person``, score >= ``self_min_score``), weight ``own_weight`` (0.5 by
  default). Only their positive anchors train: the pose model finds about one of six
  people in a crowded frame, so calling the rest background would teach the detector to
  miss them.
- Frames with neither are skipped (a frame nobody labelled is not known to be empty).

Held-out share
--------------
A frame is held out when the CRC-32 of ``frame/<id>`` falls in the first ``share`` of its
range: deterministic, stable as the store grows, the same on every run. A held-out frame
is never trained on, labelled or not; its cloud label (if any) is the evaluation's truth.

Augmentation (training only, NumPy/OpenCV, seeded per round, epoch and batch)
------------------------------------------------------------------------------
Scale/crop jitter (a crop of 70-100 % of the frame's side, same aspect, at a random
place; a box keeps at least half its area or becomes an ignored region), horizontal flip
(p = 0.5), and photometric jitter (contrast and saturation x0.75-1.25, brightness
+-20 levels).
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data.frame_store import FrameStore, StoredFrame
from fedge.core.errors import StoreError
from fedge.core.geometry import LOOKED_SHARE, covered_share, iou_matrix
from fedge.core.labels import LabelBox, LabelError
from models.box_coding import (
    DEFAULT_ANCHORS,
    AnchorSpec,
    encode_targets,
    generate_anchors,
)
from models.detector_input import frame_to_input

__all__ = [
    "UNSEEN_BACKGROUND_WEIGHT",
    "CLOUD_WEIGHT",
    "DetectorExample",
    "ExampleRules",
    "NodeExamples",
    "AugmentedView",
    "augment",
    "augment_view",
    "covered_share",
    "example_targets",
    "is_held_out",
    "list_examples",
    "load_input",
    "read_frame",
    "seen_detections",
]

log = logging.getLogger(__name__)

CLOUD_WEIGHT = 1.0
"""Loss weight of a box the cloud labelled (the node's own boxes: ``own_weight``)."""
PERSON = "person"
CROP_SCALE = (0.7, 1.0)
MIN_VISIBLE = 0.5
UNSEEN_BACKGROUND_WEIGHT = 0.1
"""Loss weight of a background anchor outside what the cloud saw (module docstring)."""
PHOTOMETRIC = {"contrast": 0.25, "saturation": 0.25, "brightness": 20.0}


@dataclass(frozen=True)
class ExampleRules:
    """Which boxes train, with what weight, and the held-out share (module docstring)."""

    label_min_score: float = 0.3
    pose_min_score: float = 0.8
    self_min_score: float = 0.9
    own_weight: float = 0.5
    held_out_share: float = 0.2


@dataclass(frozen=True)
class DetectorExample:
    """One frame as a training or evaluation example; boxes in frame pixels ``xyxy``.

    ``background`` says whether anchors away from every box are background (cloud
    labels) or ignored (the node's own partial boxes); ``coverage`` limits background to
    the regions the labeller saw (``None``: the whole frame; see the module docstring).
    """

    frame_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    weights: np.ndarray
    ignore: np.ndarray
    background: bool
    source: str
    coverage: np.ndarray | None = None


@dataclass(frozen=True)
class NodeExamples:
    """A node's examples this round: training, held-out evaluation, and counts."""

    train: list[DetectorExample] = field(default_factory=list)
    held_out: list[DetectorExample] = field(default_factory=list)
    frames_seen: int = 0
    unreadable_labels: int = 0

    def count(self, source: str) -> int:
        """Training examples from ``source`` (``"cloud"`` or ``"own"``)."""
        return sum(1 for e in self.train if e.source == source)


def is_held_out(frame_id: int, share: float) -> bool:
    """Whether frame ``frame_id`` belongs to the held-out share (module docstring)."""
    return zlib.crc32(f"frame/{frame_id}".encode()) < share * 2**32


def _boxes(values: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 4)


def _cloud_example(frame: StoredFrame, rules: ExampleRules) -> DetectorExample | None:
    label = frame.frame_label
    if label is None:
        return None
    people = [b for b in label.boxes if b.label == PERSON]
    coverage = None if label.coverage is None else _boxes(label.coverage)
    unseen = _unseen_guesses(people, coverage)
    sure, weights, unsure = [], [], []
    for box, guess in zip(people, unseen, strict=True):
        if guess:  # the node's own guess the cloud never saw: trains as the node's own box
            own = box.edge_score is not None and box.edge_score >= rules.self_min_score
            (sure if own else unsure).append(box.box)
            weights += [rules.own_weight] if own else []
        elif box.score >= rules.label_min_score:
            sure.append(box.box)
            weights.append(CLOUD_WEIGHT)
        elif box.cloud_score is None and box.edge_score is not None:
            continue  # the teacher looked there and found nobody: background, the answer
        else:
            unsure.append(box.box)
    if coverage is not None and len(coverage) == 0 and not sure:
        return None  # no pixel seen and no box: nothing to learn from this label
    return DetectorExample(
        frame_id=frame.id,
        path=frame.path,
        width=frame.width,
        height=frame.height,
        boxes=_boxes(sure),
        weights=np.asarray(weights, np.float32),
        ignore=_boxes(unsure),
        background=True,
        source="cloud",
        coverage=coverage,
    )


def _unseen_guesses(people: Sequence[LabelBox], coverage: np.ndarray | None) -> list[bool]:
    """Per box: whether it is the node's own guess where the cloud did not look (module
    docstring): a box only the node reported (no cloud score) with less than
    :data:`~fedge.core.geometry.LOOKED_SHARE` of its area in any crop of a ``crops``
    label; in a ``landmarks`` label (no pixel seen) every such box."""
    if coverage is None or not people:
        return [False] * len(people)  # a whole frame: the cloud looked everywhere
    inside = covered_share(np.asarray([b.box for b in people], np.float64), coverage)
    return [
        b.cloud_score is None and b.edge_score is not None and share < LOOKED_SHARE
        for b, share in zip(people, inside, strict=True)
    ]


def _own_example(frame: StoredFrame, rules: ExampleRules) -> DetectorExample | None:
    own = [p["box"] for p in frame.persons if float(p["score"]) >= rules.pose_min_score]
    own += [
        d["box"]
        for d in frame.detections
        if d["label"] == PERSON and float(d["score"]) >= rules.self_min_score
    ]
    if not own:
        return None
    boxes = _boxes(own)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, frame.width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, frame.height)
    return DetectorExample(
        frame_id=frame.id,
        path=frame.path,
        width=frame.width,
        height=frame.height,
        boxes=boxes,
        weights=np.full(len(boxes), rules.own_weight, np.float32),
        ignore=_boxes([]),
        background=False,
        source="own",
    )


def list_examples(store_dir: str | os.PathLike[str], rules: ExampleRules) -> NodeExamples:
    """List the store's examples now (read-only; JPEGs are not opened).

    Raises
    ------
    StoreError
        If there is no frame store at ``store_dir``.
    """
    train: list[DetectorExample] = []
    held_out: list[DetectorExample] = []
    seen = unreadable = 0
    store = FrameStore.open_reader(store_dir)
    try:
        for frame in store.iter_frames():
            seen += 1
            try:
                example = _cloud_example(frame, rules)
            except LabelError as err:
                unreadable += 1
                log.debug("frame %d: label skipped (%s)", frame.id, err)
                example = None
            if is_held_out(frame.id, rules.held_out_share):
                if example is not None:
                    held_out.append(example)
                continue
            if example is None and rules.own_weight > 0:
                example = _own_example(frame, rules)
            if example is not None:
                train.append(example)
    finally:
        store.close()
    return NodeExamples(train, held_out, seen, unreadable)


def load_input(example: DetectorExample, spec: AnchorSpec = DEFAULT_ANCHORS) -> np.ndarray:
    """The example's frame as the detector's RGB uint8 input (no augmentation)."""
    return frame_to_input(read_frame(example), spec)


def read_frame(example: DetectorExample) -> np.ndarray:
    """The example's frame as stored (BGR); ``StoreError`` when it is gone or unreadable."""
    image = cv2.imread(str(example.path), cv2.IMREAD_COLOR)
    if image is None:
        raise StoreError(
            f"frame {example.frame_id} is missing or unreadable at {example.path} "
            "(evicted since the round started?); the next round lists the store again"
        )
    return image


@dataclass(frozen=True)
class AugmentedView:
    """One augmented example: the RGB uint8 input; kept boxes, ignored regions and the
    covered regions (``None``: all of it), normalized to the input ``xyxy``; and which of
    the example's boxes were kept."""

    image: np.ndarray
    boxes: np.ndarray
    ignore: np.ndarray
    keep: np.ndarray
    coverage: np.ndarray | None


def augment(
    frame_bgr: np.ndarray,
    boxes: np.ndarray,
    ignore: np.ndarray,
    rng: np.random.Generator,
    spec: AnchorSpec = DEFAULT_ANCHORS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crop-jitter, flip and recolour one frame (module docstring).

    Returns the RGB uint8 input, the kept boxes and the ignored regions (both normalized
    to the input, ``xyxy``), and which of ``boxes`` were kept (:func:`augment_view`
    without coverage).
    """
    view = augment_view(frame_bgr, boxes, ignore, rng, spec)
    return view.image, view.boxes, view.ignore, view.keep


def augment_view(
    frame_bgr: np.ndarray,
    boxes: np.ndarray,
    ignore: np.ndarray,
    rng: np.random.Generator,
    spec: AnchorSpec = DEFAULT_ANCHORS,
    *,
    coverage: np.ndarray | None = None,
) -> AugmentedView:
    """:func:`augment`, also carrying the covered regions (frame pixels; ``None``: the
    whole frame) through the same crop and flip; the same draws from ``rng``."""
    height, width = frame_bgr.shape[:2]
    scale = rng.uniform(*CROP_SCALE)
    crop_w, crop_h = max(1, round(width * scale)), max(1, round(height * scale))
    x0 = int(rng.integers(0, width - crop_w + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    crop = frame_bgr[y0 : y0 + crop_h, x0 : x0 + crop_w]
    shift = np.array([x0, y0, x0, y0], np.float32)
    size = np.array([crop_w, crop_h, crop_w, crop_h], np.float32)

    def clipped(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moved = b - shift
        inside = np.clip(moved, 0, size)
        area = np.prod(np.maximum(moved[:, 2:] - moved[:, :2], 1e-6), axis=1)
        visible = np.prod(np.maximum(inside[:, 2:] - inside[:, :2], 0), axis=1) / area
        return inside / size, visible

    kept_boxes, visible = clipped(boxes)
    keep = visible >= MIN_VISIBLE
    cut = (visible > 0) & ~keep  # people cut by the crop: neither person nor background
    ignored, ignore_visible = clipped(ignore)
    regions = np.concatenate([ignored[ignore_visible > 0], kept_boxes[cut]])
    kept_boxes = kept_boxes[keep]
    seen = None
    if coverage is not None:
        seen, seen_visible = clipped(_boxes(coverage))
        seen = seen[seen_visible > 0]
    image = frame_to_input(crop, spec)
    if rng.random() < 0.5:
        image = np.ascontiguousarray(image[:, ::-1])
        kept_boxes = _flip(kept_boxes)
        regions = _flip(regions)
        seen = None if seen is None else _flip(seen)
    image = _photometric(image, rng)
    return AugmentedView(image, kept_boxes, regions, keep, seen)


def _flip(boxes: np.ndarray) -> np.ndarray:
    return np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    gray = pixels.mean(axis=2, keepdims=True)
    saturation = rng.uniform(1 - PHOTOMETRIC["saturation"], 1 + PHOTOMETRIC["saturation"])
    pixels = gray + (pixels - gray) * saturation
    contrast = rng.uniform(1 - PHOTOMETRIC["contrast"], 1 + PHOTOMETRIC["contrast"])
    brightness = rng.uniform(-PHOTOMETRIC["brightness"], PHOTOMETRIC["brightness"])
    pixels = (pixels - gray.mean()) * contrast + gray.mean() + brightness
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _anchor_corners(spec: AnchorSpec) -> np.ndarray:
    yc, xc, h, w = generate_anchors(spec).astype(np.float64).T
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)


def seen_detections(
    example: DetectorExample,
    boxes: np.ndarray,
    *,
    min_share: float = LOOKED_SHARE,
    min_iou: float = 0.5,
) -> np.ndarray:
    """Which detections ``boxes`` (frame pixels ``(K, 4)``) the example's label can judge.

    All of them for a whole-frame label; otherwise those with at least ``min_share`` of
    their area inside one covered region (the rule fusion uses for "the teacher looked",
    :data:`fedge.core.geometry.LOOKED_SHARE`), or overlapping a labelled box (or ignored
    region) by IoU ``min_iou`` or more (a match at mAP@0.5 is always judged). A
    detection elsewhere lies where the cloud did not look: neither right nor wrong
    (evaluation drops it).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if example.coverage is None:
        return np.ones(len(boxes), dtype=bool)
    seen = covered_share(boxes, example.coverage) >= min_share
    labelled = np.concatenate([example.boxes, example.ignore]).reshape(-1, 4)
    if len(labelled) and len(boxes):
        seen |= iou_matrix(boxes, labelled).max(axis=1) >= min_iou
    return seen


def example_targets(
    boxes: np.ndarray,
    weights: np.ndarray,
    ignore: np.ndarray,
    background: bool,
    spec: AnchorSpec = DEFAULT_ANCHORS,
    *,
    negative_iou: float = 0.4,
    coverage: np.ndarray | None = None,
    unseen_weight: float = UNSEEN_BACKGROUND_WEIGHT,
) -> np.ndarray:
    """Targets ``(num_anchors, 6)`` of one example (boxes normalized to the input).

    :func:`models.box_coding.encode_targets`, then background anchors overlapping an
    ignored region by ``negative_iou`` or more, all of them when ``background`` is
    false, and, with ``coverage`` (regions the labeller saw; ``None``: all), those of
    which less than ``1 - negative_iou`` (of the part in the input) lies in one region,
    are background of weight ``unseen_weight`` (0: ignored, label -1).
    """
    targets = encode_targets(boxes, spec, weights=weights, negative_iou=negative_iou)
    negative = targets[:, 4] == 0.0
    if not background:
        targets[negative, 4] = -1.0
        return targets
    if len(ignore):
        near = iou_matrix(_anchor_corners(spec), np.asarray(ignore, np.float64)).max(axis=1)
        targets[negative & (near >= negative_iou), 4] = -1.0
    if coverage is not None:
        anchors = np.clip(_anchor_corners(spec), 0.0, 1.0)  # nothing lies outside the input
        unseen = covered_share(anchors, np.asarray(coverage, np.float64)) < 1.0 - negative_iou
        if unseen_weight > 0:
            targets[negative & unseen, 5] = unseen_weight
        else:
            targets[negative & unseen, 4] = -1.0
    return targets
