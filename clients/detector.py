"""One SSD detector for every model on the node: BlazeFace, a user's COCO SSD, our own.

A :class:`Detector` is built from a ``.tflite`` path or bytes plus a :class:`DetectorSpec`
saying how to feed it and read it. Float and quantized (uint8/int8) models take the
same path: inputs are quantized from the tensor's own parameters and outputs are
dequantized. Two output layouts are understood:

* **post-processed** (``spec.raw is None``): the TFLite ``TFLite_Detection_PostProcess``
  outputs (boxes, classes, scores, count), as in the public COCO SSD MobileNet models;
  the four tensors are told apart by the op's output order, then by name and shape.
* **raw anchors** (``spec.raw`` set): per-anchor box regressions and class logits, as in
  BlazeFace and BlazePose; anchors are generated, decoded and suppressed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from clients.inference.anchors import AnchorOptions, generate_anchors
from clients.inference.image_tensor import RotatedRect, crop_to_tensor, normalize_pixels
from clients.inference.litert_model import LiteRTModel, TensorSpec
from clients.inference.nms import non_max_suppression
from clients.inference.ssd_decoding import BoxDecoding, Candidates, decode_ssd
from fedge.core.errors import ModelError
from fedge.core.records import Detection

__all__ = [
    "BLAZEFACE_SHORT_RANGE",
    "BLAZEPOSE_DETECTOR",
    "COCO_SSD_MOBILENET",
    "Detector",
    "DetectorSpec",
    "KeypointDetection",
    "RawSsdSpec",
    "load_labels",
]

POSTPROCESS_OP = "TFLite_Detection_PostProcess"


@dataclass(frozen=True)
class RawSsdSpec:
    """Anchors, box layout and suppression of a raw-anchor SSD."""

    anchors: AnchorOptions
    decoding: BoxDecoding
    nms_iou: float = 0.3
    weighted_nms: bool = True


@dataclass(frozen=True)
class DetectorSpec:
    """How to feed a detector and read its outputs.

    Float inputs get ``(pixel - input_mean) / input_std`` (RGB); quantized inputs get
    that value quantized with the tensor's scale and zero point. Class ``c`` is named
    ``labels[c + label_offset]`` (or ``str(c)`` without labels).
    """

    labels: tuple[str, ...] = ()
    label_offset: int = 0
    score_threshold: float = 0.5
    input_mean: float = 127.5
    input_std: float = 127.5
    keep_aspect_ratio: bool = False
    max_detections: int = 100
    raw: RawSsdSpec | None = None

    def label(self, class_id: int) -> str:
        """Return the label of class ``class_id``."""
        index = class_id + self.label_offset
        if 0 <= index < len(self.labels):
            return self.labels[index]
        return str(class_id)


BLAZEFACE_SHORT_RANGE = DetectorSpec(
    labels=("face",),
    keep_aspect_ratio=True,
    raw=RawSsdSpec(
        anchors=AnchorOptions(
            input_width=128,
            input_height=128,
            num_layers=4,
            min_scale=0.1484375,
            max_scale=0.75,
            strides=(8, 16, 16, 16),
        ),
        decoding=BoxDecoding(
            num_coords=16, num_keypoints=6, x_scale=128, y_scale=128, w_scale=128, h_scale=128
        ),
    ),
)
"""BlazeFace short range (``face_detection_short_range.tflite``): 128x128, 896 anchors."""

BLAZEPOSE_DETECTOR = DetectorSpec(
    labels=("person",),
    keep_aspect_ratio=True,
    raw=RawSsdSpec(
        anchors=AnchorOptions(
            input_width=224,
            input_height=224,
            num_layers=5,
            min_scale=0.1484375,
            max_scale=0.75,
            strides=(8, 16, 32, 32, 32),
        ),
        decoding=BoxDecoding(
            num_coords=12, num_keypoints=4, x_scale=224, y_scale=224, w_scale=224, h_scale=224
        ),
    ),
)
"""BlazePose detector (``pose_detection.tflite``): 224x224, 2254 anchors, 4 keypoints."""

COCO_SSD_MOBILENET = DetectorSpec(label_offset=1, max_detections=10)
"""The public COCO SSD MobileNet v1 (TFLite post-processed outputs, ``labelmap.txt``
whose first line is ``???``): pass ``labels=load_labels(path)``."""


@dataclass(frozen=True)
class KeypointDetection:
    """A detection with its keypoints (``(K, 2)`` pixels), for raw-anchor SSDs."""

    detection: Detection
    keypoints: np.ndarray


def load_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Read a label map: one label per line (``index label`` lines are accepted too)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ModelError(f"cannot read label map {path}: {err.strerror}") from None
    labels = []
    for line in lines:
        head, _, tail = line.strip().partition(" ")
        labels.append(tail.strip() if head.isdigit() and tail.strip() else line.strip())
    return tuple(labels)


class Detector:
    """Run an SSD on BGR frames and return :class:`~fedge.core.records.Detection` boxes.

    Parameters
    ----------
    model
        ``.tflite`` path or bytes.
    spec
        Input normalization, output layout, labels and threshold.
    num_threads
        LiteRT interpreter threads.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        spec: DetectorSpec = COCO_SSD_MOBILENET,
        *,
        num_threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.model = LiteRTModel(model, num_threads=num_threads)
        if len(self.model.inputs) != 1 or len(self.model.inputs[0].shape) != 4:
            raise ModelError(f"{self.model.name}: expected one NHWC image input")
        _, self.input_height, self.input_width, channels = self.model.inputs[0].shape
        if channels != 3:
            raise ModelError(f"{self.model.name}: expected a 3-channel input, got {channels}")
        self._anchors: np.ndarray | None = None
        if spec.raw is not None:
            self._anchors = generate_anchors(spec.raw.anchors)
            self._raw_order = _raw_output_order(self.model, spec.raw)
        else:
            self._post_order = _postprocess_output_order(self.model)

    @classmethod
    def blazeface(
        cls,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        score_threshold: float = BLAZEFACE_SHORT_RANGE.score_threshold,
        num_threads: int | None = None,
    ) -> Detector:
        """Return BlazeFace short range from the model cache (``fedge models fetch``)."""
        from models.pretrained import read_model

        spec = replace(BLAZEFACE_SHORT_RANGE, score_threshold=score_threshold)
        model = read_model("face_detection_short_range", cache_dir)
        return cls(model, spec, num_threads=num_threads)

    def detect(
        self, frame_bgr: np.ndarray, score_threshold: float | None = None
    ) -> list[Detection]:
        """Return the detections in ``frame_bgr``, best first, boxes in pixels."""
        return [d.detection for d in self.detect_keypoints(frame_bgr, score_threshold)]

    def detect_keypoints(
        self, frame_bgr: np.ndarray, score_threshold: float | None = None
    ) -> list[KeypointDetection]:
        """Like :meth:`detect`, also returning each box's keypoints (none without anchors)."""
        threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        height, width = frame_bgr.shape[:2]
        rect = RotatedRect.full_frame(width, height)
        if self.spec.keep_aspect_ratio:
            rect = rect.fit_aspect(self.input_width, self.input_height)
        pixels = crop_to_tensor(frame_bgr, rect, self.input_width, self.input_height, "zero")
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        outputs = self.model.run(
            normalize_pixels(pixels, self.spec.input_mean, self.spec.input_std)
        )
        candidates = self._decode(outputs, threshold)
        corners = rect.to_image(candidates.boxes.reshape(-1, 2, 2))
        keypoints = rect.to_image(candidates.keypoints)
        results = []
        for i in range(candidates.scores.shape[0]):
            (x1, y1), (x2, y2) = corners[i]
            box = (
                float(np.clip(x1, 0, width)),
                float(np.clip(y1, 0, height)),
                float(np.clip(x2, 0, width)),
                float(np.clip(y2, 0, height)),
            )
            label = self.spec.label(int(candidates.classes[i]))
            detection = Detection(box=box, label=label, score=float(candidates.scores[i]))
            results.append(KeypointDetection(detection, keypoints[i].astype(np.float32)))
        return results

    def _decode(self, outputs: list[np.ndarray], threshold: float) -> Candidates:
        if self.spec.raw is None:
            return _decode_postprocessed(outputs, self._post_order, threshold, self.spec)
        assert self._anchors is not None
        raw = self.spec.raw
        boxes, scores = (outputs[i] for i in self._raw_order)
        candidates = decode_ssd(boxes, scores, self._anchors, raw.decoding)
        candidates = candidates.select(candidates.scores >= threshold)
        return non_max_suppression(
            candidates, raw.nms_iou, self.spec.max_detections, weighted=raw.weighted_nms
        )


def _raw_output_order(model: LiteRTModel, raw: RawSsdSpec) -> tuple[int, int]:
    """Return the output positions of (box regressions, class scores)."""
    if len(model.outputs) != 2:
        raise ModelError(
            f"{model.name}: a raw-anchor SSD needs 2 outputs, has {len(model.outputs)}"
        )
    first, second = (spec.shape[-1] for spec in model.outputs)
    num_coords = raw.decoding.num_coords
    order = (1, 0) if second == num_coords and first != num_coords else (0, 1)
    boxes = model.outputs[order[0]]
    if boxes.shape[-1] != num_coords:
        raise ModelError(
            f"{model.name}: no output has {num_coords} values per anchor "
            f"(shapes {[s.shape for s in model.outputs]}); check the DetectorSpec"
        )
    return order


def _postprocess_output_order(model: LiteRTModel) -> tuple[int, int, int, int]:
    """Return the output positions of (boxes, classes, scores, count)."""
    outputs = model.outputs
    if len(outputs) != 4:
        raise ModelError(
            f"{model.name}: expected the 4 outputs of {POSTPROCESS_OP} (boxes, classes, "
            f"scores, count), got {len(outputs)}; use a DetectorSpec with raw= for raw SSDs"
        )
    position = {spec.index: i for i, spec in enumerate(outputs)}
    op_outputs = model.op_outputs(POSTPROCESS_OP)
    if op_outputs and all(i in position for i in op_outputs[:4]):
        boxes, classes, scores, count = (position[i] for i in op_outputs[:4])
        return boxes, classes, scores, count
    by_suffix = _order_by_name_suffix(outputs)
    if by_suffix is not None:
        return by_suffix
    return _order_by_shape(model.name, outputs)


def _order_by_name_suffix(outputs: list[TensorSpec]) -> tuple[int, int, int, int] | None:
    """TF1 exports name them ``TFLite_Detection_PostProcess``, ``...:1``, ``:2``, ``:3``."""
    slots: dict[int, int] = {}
    for i, spec in enumerate(outputs):
        if not spec.name.startswith(POSTPROCESS_OP):
            return None
        _, _, suffix = spec.name.partition(":")
        slots[int(suffix) if suffix.isdigit() else 0] = i
    if sorted(slots) != [0, 1, 2, 3]:
        return None
    return slots[0], slots[1], slots[2], slots[3]


def _order_by_shape(name: str, outputs: list[TensorSpec]) -> tuple[int, int, int, int]:
    boxes = [i for i, s in enumerate(outputs) if len(s.shape) == 3 and s.shape[-1] == 4]
    count = [i for i, s in enumerate(outputs) if int(np.prod(s.shape)) == 1]
    rest = [i for i in range(4) if i not in boxes + count]
    if len(boxes) != 1 or len(count) != 1 or len(rest) != 2:
        raise ModelError(f"{name}: cannot tell the post-processed outputs apart by shape")
    # Without names or op order, TF2 exports list scores before classes.
    scores, classes = rest
    return boxes[0], classes, scores, count[0]


def _decode_postprocessed(
    outputs: list[np.ndarray],
    order: tuple[int, int, int, int],
    threshold: float,
    spec: DetectorSpec,
) -> Candidates:
    boxes, classes, scores, count = (outputs[i] for i in order)
    n = min(int(round(float(count.reshape(-1)[0]))), spec.max_detections, scores.size)
    yx = boxes.reshape(-1, 4)[:n]
    xyxy = yx[:, [1, 0, 3, 2]].astype(np.float32)
    candidates = Candidates(
        boxes=xyxy,
        keypoints=np.zeros((n, 0, 2), dtype=np.float32),
        scores=scores.reshape(-1)[:n].astype(np.float32),
        classes=np.rint(classes.reshape(-1)[:n]).astype(np.int64),
    )
    keep = np.flatnonzero(candidates.scores >= threshold)
    return candidates.select(keep[np.argsort(-candidates.scores[keep], kind="stable")])
