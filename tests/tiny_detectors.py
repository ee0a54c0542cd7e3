"""Tiny real person detectors for install and hot-swap tests.

Each is a real TFLite model ending in ``TFLite_Detection_PostProcess`` (one class,
person) whose single anchor decodes to a fixed box, whatever the frame: two models with
different boxes tell which one produced a detection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.artifact import DetectionSpec, ModelArtifact, make_artifact

__all__ = ["FAINT_SCORE", "tiny_artifact", "tiny_person_ssd"]

FAINT_SCORE = 0.2
"""Score of the corner box every tiny model adds (under a 0.3 detector threshold)."""


def tiny_person_ssd(
    box: tuple[float, float, float, float], *, score: float = 0.9, size: int = 32
) -> bytes:
    """A ``size`` x ``size`` float32 TFLite SSD that finds one person at ``box``
    (``x1, y1, x2, y2`` as fractions of the frame) with ``score`` on any frame, and a
    faint one (``FAINT_SCORE``) in the top-left corner."""
    import tensorflow as tf

    from export.tflite_export import PostProcessOptions, postprocess_signature

    x1, y1, x2, y2 = box
    # A second, faint box in a corner fills the op's second output slot: with one slot
    # the count is not the only one-element output, and a slot left empty holds whatever
    # was in memory (NaN at times), which export.artifact.verify_artifact checks too.
    anchors = np.array(
        [[(y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1], [0.02, 0.02, 0.02, 0.02]],
        dtype=np.float32,
    )
    options = PostProcessOptions(max_detections=2, score_threshold=0.1, iou_threshold=0.5)
    signature = postprocess_signature(options=options)

    @tf.function(experimental_implements=signature)
    def postprocess(box_encodings: Any, class_predictions: Any, anchor_boxes: Any) -> Any:
        # Placeholder body: the converter replaces the call with the TFLite custom op.
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    class PersonSsd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, image: Any) -> Any:
            zero = tf.reduce_mean(image) * 0.0  # depends on the input, adds nothing
            encodings = tf.zeros([1, 2, 4]) + zero
            person = tf.constant([[[score], [FAINT_SCORE]]], dtype=tf.float32) + zero
            scores = tf.concat([tf.zeros_like(person), person], axis=2)  # background, person
            return postprocess(encodings, scores, tf.constant(anchors))

    module = PersonSsd()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    return bytes(converter.convert())


def tiny_artifact(model: bytes, version: int) -> ModelArtifact:
    """``model`` as version ``version`` of the person detector (float32, 2 anchors)."""
    spec = DetectionSpec(labels=("person",), score_threshold=0.3, num_anchors=2, max_detections=2)
    return make_artifact(model, version=version, quantization="float32", detector=spec)
