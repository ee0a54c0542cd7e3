"""What the demo measures on each site's held-out frames, outside the privacy flow.

The held-out frames of a site (``fedge.demo.plan``) are labelled once by the same
teacher ensemble ``fedge cloud`` runs, **for evaluation only**: the demo's evaluator
sees these frames in full, no site ever stores, uploads or trains on them, and no
label of them reaches a node. Every round the model each site runs is scored on them:
mAP@0.5 (pycocotools, ``clients.tasks.detector_eval.map50``; teacher boxes under the
label floor count as crowd regions) and the persons it finds per frame, beside the
persons the teacher finds. Round 0's model is BlazePose alone (the node's only person
finder before a detector is installed); later rounds run the site's installed int8
detector through LiteRT, exactly as the agent loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clients.detector import Detector, DetectorSpec
from clients.tasks.detector_data import DetectorExample, ExampleRules, list_examples
from clients.tasks.detector_eval import MAX_DETECTIONS, SCORE_FLOOR, map50, predict_with
from data.frame_store import FrameStore
from export.artifact import read_manifest
from fedge.core.labels import FrameLabel, LabelBox
from fedge.core.records import Detection, FrameResult

__all__ = [
    "HeldOut",
    "ModelScore",
    "installed_detector",
    "label_held_out",
    "score_detect",
    "score_installed",
]

PERSON_MIN_SCORE = 0.5
"""A box counts as a found person from this score when its version has no calibration
(a calibrated version brings its own operating score, as on the node)."""


@dataclass(frozen=True)
class HeldOut:
    """A site's held-out frames with the teacher's labels."""

    site: str
    examples: tuple[DetectorExample, ...]
    teacher_persons: float  # per frame, boxes at or above the label floor
    label_floor: float


@dataclass(frozen=True)
class ModelScore:
    """One model on one site's held-out frames."""

    map50: float
    persons_per_frame: float


def label_held_out(
    site: str,
    frames: Sequence[tuple[int, np.ndarray]],
    folder: Path,
    teacher: Any,
    label_floor: float,
    epoch: float = 0.0,
    fps: float = 10.0,
) -> HeldOut:
    """Store ``frames`` with the teacher's labels in an evaluation store under ``folder``."""
    found = 0
    with FrameStore(folder, fsync=False) as store:
        for index, frame in frames:
            detections = [d for d in teacher.detect_image(frame) if d.label == "person"]
            found += sum(1 for d in detections if d.score >= label_floor)
            frame_id = store.add(
                frame, FrameResult(frame=index, time=epoch + index / fps, source=site)
            )
            label = FrameLabel(
                boxes=tuple(
                    LabelBox(box=d.box, label="person", score=d.score, cloud_score=d.score)
                    for d in detections
                ),
                source="evaluation",
                fusion_method="teacher-only",
                teacher_version=str(getattr(teacher, "version", "teacher")),
                frame_width=frame.shape[1],
                frame_height=frame.shape[0],
                teacher_detections=tuple(detections),
            )
            store.set_label(frame_id, label, "evaluation")
    rules = ExampleRules(held_out_share=0.0, label_min_score=label_floor)
    examples = tuple(list_examples(folder, rules).train)
    return HeldOut(site, examples, found / max(1, len(frames)), label_floor)


def score_detect(
    detect: Callable[[np.ndarray], Sequence[Detection]],
    held: HeldOut,
    person_score: float = PERSON_MIN_SCORE,
) -> ModelScore:
    """mAP@0.5 and persons per frame (boxes from ``person_score``) of any detector
    function on ``held``."""
    found = predict_with(detect, held.examples)
    value = map50(held.examples, found)
    persons = sum(int(np.sum(f.scores >= person_score)) for f in found)
    return ModelScore(
        0.0 if np.isnan(value) else float(value), persons / max(1, len(held.examples))
    )


def score_installed(model_path: Path, manifest_path: Path, held: HeldOut) -> ModelScore:
    """Score the installed artifact as the agent runs it (LiteRT, its manifest's spec; a
    box counts as a person from the version's calibrated operating score)."""
    manifest = read_manifest(manifest_path)
    calibration = getattr(manifest, "calibration", None)
    person_score = PERSON_MIN_SCORE if calibration is None else calibration.operating_score
    return score_detect(installed_detector(model_path, manifest).detect, held, person_score)


def installed_detector(model_path: Path, manifest: Any) -> Detector:
    """The artifact at ``model_path`` in LiteRT with its manifest's spec, one thread, boxes
    from the evaluation's score floor (``SCORE_FLOOR``)."""
    spec = DetectorSpec(
        labels=tuple(manifest.detector.labels),
        score_threshold=SCORE_FLOOR,
        input_mean=manifest.input.mean,
        input_std=manifest.input.std,
        max_detections=min(MAX_DETECTIONS, manifest.detector.max_detections),
    )
    return Detector(model_path, spec, num_threads=1)


def pose_detect(pose: Any) -> Callable[[np.ndarray], list[Detection]]:
    """BlazePose's person boxes as detections (round 0: the node's only person finder)."""

    def detect(frame: np.ndarray) -> list[Detection]:
        return [Detection(box=p.box, label="person", score=p.score) for p in pose.estimate(frame)]

    return detect


def read_frames(paths: Sequence[tuple[int, Path]]) -> list[tuple[int, np.ndarray]]:
    """Decode ``(index, JPEG path)`` pairs (unreadable files are skipped)."""
    frames = []
    for index, path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            frames.append((index, image))
    return frames
