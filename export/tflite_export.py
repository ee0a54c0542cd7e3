"""Convert the Keras person detector to TensorFlow Lite ending in ``TFLite_Detection_PostProcess``.

The graph is ``image -> detector -> sigmoid -> TFLite_Detection_PostProcess`` with the
anchors of :mod:`models.box_coding` as a constant input of the op and its box scales as
the op's attributes, so any LiteRT runtime decodes it the way training encoded it, and
``clients.detector.Detector`` reads its four outputs (boxes, classes, scores, count).

The op is made the way TensorFlow's object-detection export does it
(``export_tflite_graph_tf2.py``): a ``tf.function`` carrying
``experimental_implements='name: "TFLite_Detection_PostProcess" attr {...}'`` whose
body is a placeholder; the converter replaces the call with the custom op
(``allow_custom_ops``). Tested with TensorFlow 2.21 and LiteRT 2.3.

Quantization (``quantization``):

``int8``
    Full-integer post-training quantization: weights and activations int8, int8 input
    (the op's outputs stay float32). Needs representative frames to calibrate the
    activation ranges (see the README on what frames each privacy mode allows).
``float16``
    Weights stored as float16, computed in float32; float32 input.
``float32``
    No quantization.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.core.errors import ConfigError
from models.box_coding import DEFAULT_ANCHORS, AnchorSpec, generate_anchors

__all__ = [
    "MIN_CALIBRATION_FRAMES",
    "POSTPROCESS_OP",
    "QUANTIZATIONS",
    "PostProcessOptions",
    "export_tflite",
    "postprocess_signature",
]

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
QUANTIZATIONS = ("int8", "float16", "float32")
MIN_CALIBRATION_FRAMES = 8


@dataclass(frozen=True)
class PostProcessOptions:
    """Attributes of the ``TFLite_Detection_PostProcess`` op.

    ``score_threshold`` is the op's own floor (candidates below it are dropped before
    NMS); the node's operating threshold is the manifest's and is applied after it.
    """

    max_detections: int = 50
    score_threshold: float = 0.05
    iou_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.max_detections < 1:
            raise ConfigError(f"max_detections must be at least 1, got {self.max_detections}")
        if not 0.0 <= self.score_threshold < 1.0 or not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(
                f"post-process score threshold {self.score_threshold} must be in [0, 1) "
                f"and IoU threshold {self.iou_threshold} in (0, 1]"
            )


def postprocess_signature(
    spec: AnchorSpec = DEFAULT_ANCHORS,
    options: PostProcessOptions = PostProcessOptions(),
    num_classes: int = 1,
) -> str:
    """The ``experimental_implements`` string that becomes the op with these attributes."""
    ints = {
        "max_detections": options.max_detections,
        "max_classes_per_detection": 1,
        "detections_per_class": options.max_detections,
        "num_classes": num_classes,
    }
    floats = {
        "nms_score_threshold": options.score_threshold,
        "nms_iou_threshold": options.iou_threshold,
        "y_scale": spec.scales.y,
        "x_scale": spec.scales.x,
        "h_scale": spec.scales.h,
        "w_scale": spec.scales.w,
    }
    parts = [f'name: "{POSTPROCESS_OP}"']
    parts += [f'attr {{ key: "{k}" value {{ i: {v} }} }}' for k, v in ints.items()]
    parts += [f'attr {{ key: "{k}" value {{ f: {float(v)!r} }} }}' for k, v in floats.items()]
    parts += ['attr { key: "use_regular_nms" value { b: false } }']
    return " ".join(parts)


def _exportable(model: Any, spec: AnchorSpec, options: PostProcessOptions) -> Any:
    import tensorflow as tf

    @tf.function(experimental_implements=postprocess_signature(spec, options))
    def postprocess(box_encodings: Any, class_predictions: Any, anchors: Any) -> Any:
        # Placeholder body: the converter replaces this call with the TFLite custom op.
        del box_encodings, class_predictions, anchors
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    anchors = tf.constant(generate_anchors(spec))
    # Weights as constants: Keras 3 variables reach the converter as mutable resource
    # variables (no folding, no int8 calibration), so the graph calls the model
    # statelessly on frozen copies of its weights.
    trainable = [tf.constant(v.numpy()) for v in model.trainable_variables]
    non_trainable = [tf.constant(v.numpy()) for v in model.non_trainable_variables]
    shape = [1, spec.input_height, spec.input_width, 3]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def detect(image: Any) -> Any:
        (boxes, logits), _ = model.stateless_call(trainable, non_trainable, image, training=False)
        scores = tf.sigmoid(logits)
        # Column 0 is the background class the op skips.
        classes = tf.concat([tf.zeros_like(scores), scores], axis=-1)
        return postprocess(boxes, classes, anchors)

    return detect


def _representative(frames: list[np.ndarray], spec: AnchorSpec) -> Iterator[list[np.ndarray]]:
    from models.person_detector import frame_to_input, normalize_input

    for frame in frames:
        yield [normalize_input(frame_to_input(frame, spec))[None]]


def export_tflite(
    model: Any,
    spec: AnchorSpec = DEFAULT_ANCHORS,
    *,
    quantization: str = "int8",
    calibration_frames: Iterable[np.ndarray] | None = None,
    postprocess: PostProcessOptions = PostProcessOptions(),
) -> bytes:
    """Return the ``.tflite`` bytes of ``model`` (from ``models.person_detector``).

    Parameters
    ----------
    model
        The Keras detector (outputs ``[boxes, logits]`` for the anchors of ``spec``); its
        batch-norm statistics should be current
        (``models.person_detector.recompute_batchnorm_statistics``).
    spec
        Its anchors and input size.
    quantization
        ``"int8"``, ``"float16"`` or ``"float32"`` (module docstring).
    calibration_frames
        BGR frames (any size; stretched to the input as the node does) for ``int8``:
        at least :data:`MIN_CALIBRATION_FRAMES`, ideally 50-300 of the scenes the model
        will see. Ignored otherwise.
    postprocess
        Attributes of the post-processing op.

    Raises
    ------
    ConfigError
        Unknown quantization, or ``int8`` without enough calibration frames.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    frames: list[np.ndarray] = []
    if quantization == "int8":
        frames = list(calibration_frames or ())
        if len(frames) < MIN_CALIBRATION_FRAMES:
            raise ConfigError(
                f"int8 export needs at least {MIN_CALIBRATION_FRAMES} calibration frames, got "
                f"{len(frames)}; pass frames the privacy mode allows (README) or export float16"
            )
    detect = _exportable(model, spec, postprocess)
    # With a trackable object the converter goes through a SavedModel, where it turns
    # the ``experimental_implements`` function into the op (without one it inlines it).
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [detect.get_concrete_function()], tf.Module()
    )
    converter.allow_custom_ops = True
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(frames, spec)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
    return bytes(converter.convert())
