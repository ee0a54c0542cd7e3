"""The federated person detector: a small SSD for surveillance views, trained from scratch.

Network
-------
A MobileNetV2-like backbone at width 0.5 (inverted residual blocks: 1x1 expansion x4,
3x3 depthwise, 1x1 linear projection; ReLU6; batch norm), a light feature pyramid
(1x1 laterals to 32 channels, nearest 2x upsampling, sums) and one SSDLite head per
level (3x3 depthwise + 1x1 convolutions) predicting, for every anchor of
:mod:`models.box_coding`, a box encoding and a person logit. Outputs: ``boxes``
``(B, num_anchors, 4)`` and ``logits`` ``(B, num_anchors, 1)``; the export adds the
sigmoid and ``TFLite_Detection_PostProcess``.

Input: RGB, the whole frame stretched to 384x288 (4:3, as most cameras), normalized to
``(pixel - 127.5) / 127.5``. The people of a surveillance view are small: on the
sample clip (640x480) they are ~50-130 px tall, i.e. ~30-80 px at 288 rows, which the
stride-8 anchors (20 and 32 px) and stride-16 anchors (48, 72 px) cover; at 320x240
(not a multiple of stride 32 in height) or 256x192 the farthest would shrink to ~20 px.

Training
--------
``fit_person_detector`` runs Keras ``fit`` on a wrapper model whose single output is
``concat(boxes, logits)``, with :func:`detection_loss`: focal loss (alpha 0.25, gamma 2)
over non-ignored anchors plus Huber (delta 1) on the encodings of positive anchors, both
weighted by the target weight and divided by the batch's weighted positive count.

Batch-norm statistics
---------------------
Running means and variances are exponential averages of past batches, so after a short
or fast-changing training they describe older weights and the model in inference mode
can find nothing. :func:`recompute_batchnorm_statistics` replaces them by the plain
average of the batch statistics on given frames under the final weights (training-mode
forward passes, no weight update); call it after training and before evaluation or
export. The layers' momentum (0.9) keeps the lag short in between.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

if "tensorflow" not in sys.modules:  # as models.training: oneDNN kernels on AVX2 CPUs too
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from models.box_coding import DEFAULT_ANCHORS, TARGET_COLUMNS, AnchorSpec, encode_targets
from models.detector_input import INPUT_MEAN, INPUT_STD, frame_to_input, normalize_input

__all__ = [
    "BN_MOMENTUM",
    "INPUT_MEAN",
    "INPUT_STD",
    "PERSON_LABELS",
    "PRIOR_PROBABILITY",
    "DetectionBatches",
    "FitReport",
    "build_person_detector",
    "detection_loss",
    "fit_person_detector",
    "frame_to_input",
    "normalize_input",
    "recompute_batchnorm_statistics",
    "training_model",
]

PERSON_LABELS = ("person",)
BN_MOMENTUM = 0.9
PRIOR_PROBABILITY = 0.01
"""Initial person probability of every anchor (focal-loss prior; keeps the first steps stable)."""
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
HUBER_DELTA = 1.0
_FPN_CHANNELS = 32
# (expansion, output channels, repeats, first stride) per stage; width 0.5 of MobileNetV2.
_STAGES = (
    (1, 8, 1, 1),
    (4, 16, 2, 2),  # stride 4
    (4, 16, 3, 2),  # stride 8 -> level 0
    (4, 32, 3, 2),  # stride 16
    (4, 48, 2, 1),  # stride 16 -> level 1
    (4, 80, 2, 2),  # stride 32 -> level 2
)
_LEVEL_STAGES = (2, 4, 5)


def _bn(name: str) -> Any:
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-3, name=name)


class _Initializers:
    """Glorot-uniform initializers seeded ``seed``, ``seed + 1``, ... (no global seeding)."""

    def __init__(self, seed: int) -> None:
        self._next = seed

    def __call__(self) -> keras.initializers.Initializer:
        self._next += 1
        return keras.initializers.GlorotUniform(seed=self._next - 1)


def _inverted_residual(
    x: Any, expansion: int, filters: int, stride: int, name: str, init: _Initializers
) -> Any:
    channels = x.shape[-1]
    h = x
    if expansion != 1:
        h = layers.Conv2D(
            channels * expansion,
            1,
            use_bias=False,
            kernel_initializer=init(),
            name=f"{name}_expand",
        )(h)
        h = layers.ReLU(6.0, name=f"{name}_expand_relu")(_bn(f"{name}_expand_bn")(h))
    h = layers.DepthwiseConv2D(
        3,
        stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=init(),
        name=f"{name}_dw",
    )(h)
    h = layers.ReLU(6.0, name=f"{name}_dw_relu")(_bn(f"{name}_dw_bn")(h))
    h = layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer=init(), name=f"{name}_project"
    )(h)
    h = _bn(f"{name}_project_bn")(h)
    if stride == 1 and channels == filters:
        h = layers.Add(name=f"{name}_add")([x, h])
    return h


def build_person_detector(spec: AnchorSpec = DEFAULT_ANCHORS, seed: int = 0) -> keras.Model:
    """Return the detector (module docstring), weights initialised from ``seed``.

    Outputs ``[boxes (B, N, 4), logits (B, N, 1)]`` for the ``N`` anchors of ``spec``,
    which must have three levels at strides 8, 16 and 32.
    """
    if tuple(level.stride for level in spec.levels) != (8, 16, 32):
        raise ValueError("the person detector has feature levels at strides 8, 16 and 32")
    init = _Initializers(seed)
    inputs = keras.Input((spec.input_height, spec.input_width, 3), name="image")
    x = layers.Conv2D(
        16, 3, 2, padding="same", use_bias=False, kernel_initializer=init(), name="stem"
    )(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(_bn("stem_bn")(x))
    features = []
    for s, (expansion, filters, repeats, stride) in enumerate(_STAGES):
        for r in range(repeats):
            first = stride if r == 0 else 1
            x = _inverted_residual(x, expansion, filters, first, f"b{s}_{r}", init)
        if s in _LEVEL_STAGES:
            features.append(x)
    # Feature pyramid: top-down sums of 1x1 laterals.
    pyramid: list[Any] = []
    top = None
    for k in reversed(range(len(features))):
        lateral = layers.Conv2D(
            _FPN_CHANNELS, 1, kernel_initializer=init(), name=f"fpn{k}_lateral"
        )(features[k])
        if top is not None:
            up = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn{k}_up")(top)
            lateral = layers.Add(name=f"fpn{k}_sum")([lateral, up])
        top = lateral
        pyramid.insert(0, lateral)
    prior_bias = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    boxes, logits = [], []
    for k, (level, p) in enumerate(zip(spec.levels, pyramid, strict=True)):
        anchors = spec.anchors_per_cell(level)
        h = layers.DepthwiseConv2D(
            3, padding="same", use_bias=False, depthwise_initializer=init(), name=f"head{k}_dw"
        )(p)
        h = layers.ReLU(6.0, name=f"head{k}_dw_relu")(_bn(f"head{k}_dw_bn")(h))
        h = layers.Conv2D(
            _FPN_CHANNELS, 1, use_bias=False, kernel_initializer=init(), name=f"head{k}_pw"
        )(h)
        h = layers.ReLU(6.0, name=f"head{k}_pw_relu")(_bn(f"head{k}_pw_bn")(h))
        box = layers.Conv2D(anchors * 4, 1, kernel_initializer=init(), name=f"head{k}_box")(h)
        logit = layers.Conv2D(
            anchors,
            1,
            kernel_initializer=init(),
            bias_initializer=keras.initializers.Constant(prior_bias),
            name=f"head{k}_logit",
        )(h)
        boxes.append(layers.Reshape((-1, 4), name=f"head{k}_box_flat")(box))
        logits.append(layers.Reshape((-1, 1), name=f"head{k}_logit_flat")(logit))
    box_out = layers.Concatenate(axis=1, name="boxes")(boxes)
    logit_out = layers.Concatenate(axis=1, name="logits")(logits)
    return keras.Model(inputs, [box_out, logit_out], name="person_detector")


def training_model(model: keras.Model) -> keras.Model:
    """Return a model sharing ``model``'s layers whose one output is ``concat(boxes, logits)``."""
    boxes, logits = model.outputs
    merged = keras.layers.Concatenate(axis=-1, name="boxes_logits")([boxes, logits])
    return keras.Model(model.inputs, merged, name=f"{model.name}_train")


def detection_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Focal + Huber loss per image (module docstring), normalized so the batch mean is
    the batch's total over its weighted positive count.

    ``y_true``: ``(B, N, 6)`` targets of :func:`models.box_coding.encode_targets`;
    ``y_pred``: ``(B, N, 5)`` = box encodings and person logit.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    label, weight = y_true[..., 4], y_true[..., 5]
    positive = tf.cast(label > 0.5, tf.float32)
    counted = tf.cast(label > -0.5, tf.float32) * weight
    logit = y_pred[..., 4]
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logit)
    prob = tf.sigmoid(logit)
    p_t = positive * prob + (1.0 - positive) * (1.0 - prob)
    alpha_t = positive * FOCAL_ALPHA + (1.0 - positive) * (1.0 - FOCAL_ALPHA)
    focal = alpha_t * tf.pow(1.0 - p_t, FOCAL_GAMMA) * ce * counted
    error = tf.abs(y_true[..., :4] - y_pred[..., :4])
    huber = tf.where(
        error < HUBER_DELTA, 0.5 * tf.square(error), HUBER_DELTA * (error - 0.5 * HUBER_DELTA)
    )
    box = tf.reduce_sum(huber, axis=-1) * positive * weight
    per_image = tf.reduce_sum(focal + box, axis=-1)
    batch = tf.cast(tf.shape(y_true)[0], tf.float32)
    positives = tf.maximum(tf.reduce_sum(positive * weight), 1.0)
    return per_image * batch / positives


class DetectionBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches of ``(normalized images, targets)`` from frames held in memory.

    Parameters
    ----------
    images
        RGB uint8 ``(N, H, W, 3)`` at the input size (see :func:`frame_to_input`).
    boxes
        Per image, its person boxes ``xyxy`` normalized to the input.
    spec
        The detector's anchors.
    batch_size
        Images per batch (the last batch may be smaller).
    flip
        Mirror a random half of each batch horizontally (boxes too).
    weights
        Per image, one weight per box (default 1).
    seed
        Seeds the shuffling and flips.
    """

    def __init__(
        self,
        images: np.ndarray,
        boxes: Sequence[np.ndarray],
        spec: AnchorSpec = DEFAULT_ANCHORS,
        *,
        batch_size: int = 8,
        flip: bool = True,
        weights: Sequence[np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(images) != len(boxes) or len(images) == 0:
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        if images.shape[1:] != (spec.input_height, spec.input_width, 3):
            raise ValueError(
                f"images are {images.shape[1:]}, the detector takes "
                f"{(spec.input_height, spec.input_width, 3)}; use frame_to_input"
            )
        self.images = images
        self.boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
        self.weights = None if weights is None else [np.asarray(w) for w in weights]
        self.spec = spec
        self.batch_size = batch_size
        self.flip = flip
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.images[chosen].copy()
        targets = np.empty((len(chosen), self.spec.num_anchors, TARGET_COLUMNS), np.float32)
        flips = self._rng.random(len(chosen)) < 0.5 if self.flip else np.zeros(len(chosen), bool)
        for row, (i, flip) in enumerate(zip(chosen, flips, strict=True)):
            boxes = self.boxes[i]
            if flip:
                images[row] = images[row, :, ::-1]
                boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
            weights = None if self.weights is None else self.weights[i]
            targets[row] = encode_targets(boxes, self.spec, weights=weights)
        return normalize_input(images), targets

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self.images))


@dataclass(frozen=True)
class FitReport:
    """What one :func:`fit_person_detector` call did: loss per epoch and speed."""

    losses: tuple[float, ...]
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Training images (forward + backward + update) per second of wall time."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def fit_person_detector(
    model: keras.Model,
    batches: DetectionBatches,
    *,
    epochs: int = 1,
    learning_rate: float = 5e-3,
    cosine_decay: bool = False,
    recompute_statistics: bool = True,
) -> FitReport:
    """Train ``model`` with Keras ``fit`` (Adam, :func:`detection_loss`) on ``batches``.

    With ``cosine_decay`` the learning rate falls from ``learning_rate`` to 0 along a
    cosine over the call's steps, so the weights settle at the end of a short training.

    With ``recompute_statistics`` (default) the batch-norm statistics are then
    recomputed on the training images (:func:`recompute_batchnorm_statistics`).
    """
    trainer = training_model(model)
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if cosine_decay:
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * len(batches))
    trainer.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=detection_loss,
        jit_compile=False,  # XLA:CPU lowers depthwise-conv gradients poorly
    )
    start = time.perf_counter()
    history = trainer.fit(batches, epochs=epochs, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    if recompute_statistics:
        recompute_batchnorm_statistics(model, batches.images, batch_size=batches.batch_size)
    return FitReport(
        losses=tuple(float(v) for v in history.history["loss"]),
        images=epochs * len(batches.images),
        seconds=seconds,
    )


def recompute_batchnorm_statistics(
    model: keras.Model, images: np.ndarray, *, batch_size: int = 8
) -> None:
    """Set every batch-norm layer's moving mean and variance to the average of its batch
    statistics over ``images`` (RGB uint8 at the input size), weights unchanged.

    The ``k``-th batch (from 0) is folded in with momentum ``k / (k + 1)``, which makes
    the moving value the plain mean of the batch values.
    """
    norms = [layer for layer in _all_layers(model) if isinstance(layer, layers.BatchNormalization)]
    if not norms or len(images) == 0:
        return
    momenta = [layer.momentum for layer in norms]
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in norms:
                layer.momentum = k / (k + 1)
            model(normalize_input(images[start : start + batch_size]), training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """``layer`` and every layer nested in it (models inside models included)."""
    found = [layer]
    for inner in getattr(layer, "layers", ()):
        found += _all_layers(inner)
    return found
