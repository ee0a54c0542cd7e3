"""The federated person detector task: each site trains the SSD of ``models.person_detector``
on its own frame store, and reports mAP@0.5 on its held-out frames, float and int8.

Node config
-----------
``store-dir`` (required): the frame store the edge agent writes (``fedge edge
--store-dir``), opened read-only and listed again every round. ``partition-id`` is
optional (metrics order, attacks in research runs). A simulated node has no store of its
own: with ``detector-store-root`` set, the node of ``partition-id`` ``i`` takes the
``i``-th store under that folder (``data.store_sets``; e.g. ``fedge demo``'s ``OUT/sites``).

Training (:class:`DetectorTrainer`)
-----------------------------------
Keras ``fit`` on the detector's training model with the helper's loss
(``models.person_detector.detection_loss``: focal + Huber) plus FedProx's
``mu/2 * ||w - w_global||^2`` over the trainable weights (``proximal-mu`` from the
strategy's train config; 0 for strategies without it). Adam at
``detector-learning-rate`` times ``detector-lr-decay`` to the power of the rounds before
this one, its state reset every round (as a fresh optimizer, without re-tracing the
graph); ``local-epochs`` passes over the training examples of
:mod:`clients.tasks.detector_data` (``detector-max-frames`` caps them with a seeded sample
per round), ``detector-batch-size`` frames per batch read from the JPEGs. Afterwards the
batch-norm statistics are recomputed on up to :data:`STATISTICS_FRAMES` training frames
under the final weights (``recompute_batchnorm_statistics``), so the reply's running
statistics match its weights. The reply carries the model's ``get_weights()`` (trainable
weights and batch-norm statistics), which FedAvg averages like any other weight, packed
into one flat array (``models.weight_packing``; so is the server's initial model): Flower
sends each array of a message with requests of its own.

Batch-norm statistics across sites
----------------------------------
FedAvg averages the sites' running means and variances along with the weights, but the
averaged statistics do not describe what the averaged weights compute (measured on the
sample clip, 2 sites of 30 HOG-labelled frames, 6 local epochs at Adam 0.01, after 2
rounds: held-out mAP@0.5 0.001-0.006 with the averaged statistics, 0.40-0.52 once
re-estimated). So whoever runs the global model first re-estimates them
on frames it may use, unlabelled: the node on its own training frames before measuring
mAP, the server on its calibration frames before exporting.

Evaluation
----------
mAP@0.5 (:mod:`clients.tasks.detector_eval`, pycocotools) of the received model, its
batch-norm statistics re-estimated on this node's training frames, on the node's
held-out frames: ``eval_map50`` for the float model, and, on every
``detector-int8-eval-every``-th round and the last, ``eval_map50_int8`` for the full-int8
TFLite the export helper builds (``export.tflite_export``), calibrated on this node's
training frames and run in LiteRT through ``clients.detector.Detector``. Both happen on
the node: the int8 accuracy drop is measured without any frame leaving it. The reply also
carries the score calibration counts (``score-bins-tp`` / ``score-bins-fp``: per score
bin, boxes matching a labelled person and not; :func:`clients.tasks.detector_eval.score_bin_counts`)
of the int8 model when it was measured, else of the float one.

Server side
-----------
No central evaluation (the cloud holds no site's frames). After each round
:meth:`PersonDetectorTask.export` writes the global model as a versioned artifact
(``export.artifact``; ``detector-export``: int8, float16, float32 or none) into the run
directory's ``models/``. Its batch-norm statistics are re-estimated, and int8 is
calibrated, on up to :data:`CALIBRATION_FRAMES` frames of ``detector-calibration-dir``
(frames the operator kept, e.g. uploads in ``frames``/``crops`` mode) or, when that is
empty, of the sample clip fedge ships, so no site's pixel is needed. The nodes'
evaluation replies of the same round (they evaluated exactly the exported weights) are
summed into the artifact's score calibration (``export.score_calibration``: operating
score, uncertainty band), which the edge's hard-case selection follows per version; with
too few counts the artifact has none and nodes keep their defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.model_updates import node_store_config
from clients.tasks.base import EvaluateOutcome, NodeSetup, TrainOutcome
from clients.tasks.detector_data import (
    DetectorExample,
    ExampleRules,
    NodeExamples,
    list_examples,
    load_input,
)
from clients.tasks.detector_eval import (
    MAX_DETECTIONS,
    SCORE_FLOOR,
    FrameDetections,
    calibration_from_metrics,
    map50,
    predict_float,
    score_bin_counts,
)
from fedge.core.errors import ConfigError, StoreError
from fedge.core.run_config import RunConfig
from models.box_coding import DEFAULT_ANCHORS, AnchorSpec
from models.weight_packing import pack_weights, unpack_weights

if TYPE_CHECKING:  # Keras: imported only where the node trains (module detector_batches)
    from clients.tasks.detector_batches import StoreBatches

__all__ = [
    "CALIBRATION_FRAMES",
    "STATISTICS_FRAMES",
    "STORE_DIR_KEY",
    "DetectorTrainer",
    "NoExamplesError",
    "PersonDetectorTask",
    "int8_due",
]

log = logging.getLogger(__name__)

STORE_DIR_KEY = "store-dir"
STATISTICS_FRAMES = 32
"""Frames the batch-norm statistics are recomputed on (~11 MB of input at 384x288)."""
CALIBRATION_FRAMES = 32
"""Frames of the node (int8 mAP) or of the server's calibration set (export) for int8."""
_SAMPLE_CLIP = "vtest_clip.mp4"
_CLIP_STEP = 4


class NoExamplesError(StoreError):
    """The node's store has nothing to train or evaluate on yet."""


class DetectorTrainer:
    """The detector, its Keras training model and Adam, compiled once per process.

    Parameters
    ----------
    spec
        Anchors and input size.
    """

    def __init__(self, spec: AnchorSpec = DEFAULT_ANCHORS) -> None:
        import keras
        import tensorflow as tf

        from models.person_detector import (
            build_person_detector,
            detection_loss,
            training_model,
        )

        self.spec = spec
        self.model = build_person_detector(spec, seed=0)
        self._train_model = training_model(self.model)
        self._trainable = list(self.model.trainable_variables)
        self._mu = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self._start = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in self._trainable
        ]
        self.optimizer = keras.optimizers.Adam(learning_rate=0.005)

        def loss(y_true: Any, y_pred: Any) -> Any:
            drift = tf.add_n(
                [
                    tf.reduce_sum(tf.square(v - s))
                    for v, s in zip(self._trainable, self._start, strict=True)
                ]
            )
            return detection_loss(y_true, y_pred) + 0.5 * self._mu * drift

        # XLA:CPU lowers depthwise-convolution gradients poorly (see models.person_detector)
        self._train_model.compile(optimizer=self.optimizer, loss=loss, jit_compile=False)
        # Adam's slots, made now: built lazily they would be created inside the first
        # traced train step, and TensorFlow then traces that step twice (measured on the
        # demo's sample clip: the first ``fit`` of a process 24 s instead of 13 s).
        self.optimizer.build(self._train_model.trainable_variables)

    def get_weights(self) -> list[np.ndarray]:
        """The detector's weights (``get_weights()`` order, batch-norm statistics included)."""
        return [np.asarray(w) for w in self.model.get_weights()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load ``weights``, packed (``models.weight_packing``) or not; ``ConfigError``
        when they are not this detector's."""
        self.model.set_weights(_unpacked(self.model, weights))

    def fit(
        self, batches: StoreBatches, *, epochs: int, learning_rate: float, proximal_mu: float
    ) -> tuple[list[float], float]:
        """Train in place from fresh Adam state; return the loss per epoch and seconds."""
        import tensorflow as tf

        for variable in self.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        self.optimizer.learning_rate.assign(learning_rate)
        self._mu.assign(proximal_mu)
        for start, variable in zip(self._start, self._trainable, strict=True):
            start.assign(variable)
        began = time.perf_counter()
        history = self._train_model.fit(batches, epochs=epochs, verbose=0, shuffle=False)
        seconds = time.perf_counter() - began
        return [float(v) for v in history.history["loss"]], seconds

    def recompute_statistics(self, examples: Sequence[DetectorExample]) -> None:
        """Batch-norm statistics from up to :data:`STATISTICS_FRAMES` of ``examples``."""
        chosen = _spread(examples, STATISTICS_FRAMES)
        _recompute(self.model, np.stack([load_input(e, self.spec) for e in chosen]))


def _on_wire(cfg: RunConfig, weights: list[np.ndarray]) -> list[np.ndarray]:
    """``weights`` as messages carry them: packed, unless updates are compressed (which
    quantizes per array: one scale per layer, not one for the whole model)."""
    return weights if cfg.compression.enabled else pack_weights(weights)


def _unpacked(model: Any, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    return unpack_weights(weights, [tuple(w.shape) for w in model.weights])


def _recompute(model: Any, images: np.ndarray) -> None:
    from models.person_detector import recompute_batchnorm_statistics

    recompute_batchnorm_statistics(model, images, batch_size=8)


@functools.lru_cache(maxsize=1)
def _node_trainer(cpu_threads: int = 0) -> DetectorTrainer:
    """The process-wide trainer (built and traced once); ``cpu_threads`` as fashion-mnist's."""
    if cpu_threads:
        from models.training import set_cpu_threads

        try:
            set_cpu_threads(cpu_threads)
        except RuntimeError as err:
            raise ConfigError(f"cpu-threads={cpu_threads}: {err}") from err
    return DetectorTrainer()


@functools.lru_cache(maxsize=1)
def _server_model() -> Any:
    from models.person_detector import build_person_detector

    return build_person_detector(DEFAULT_ANCHORS, seed=0)


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, evenly spaced, in order."""
    if len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _rules(cfg: RunConfig) -> ExampleRules:
    return ExampleRules(
        label_min_score=cfg.detector_label_min_score,
        pose_min_score=cfg.detector_pose_min_score,
        self_min_score=cfg.detector_self_min_score,
        own_weight=cfg.detector_own_weight,
        held_out_share=cfg.validation_share,
    )


def _node_seed(cfg: RunConfig, node: NodeSetup, server_round: int) -> int:
    who = node.partition_id if node.partition_id is not None else node.config[STORE_DIR_KEY]
    return zlib.crc32(f"{cfg.seed}/{server_round}/{who}".encode())


def int8_due(cfg: RunConfig, server_round: int) -> bool:
    """Whether the node measures int8 mAP this round (``detector-int8-eval-every``)."""
    every = cfg.detector_int8_eval_every
    if every == 0 or server_round < 1:
        return False
    return server_round % every == 0 or server_round == cfg.num_server_rounds


def _examples(cfg: RunConfig, node: NodeSetup) -> NodeExamples:
    examples = list_examples(node.config[STORE_DIR_KEY], _rules(cfg))
    if examples.unreadable_labels:
        log.warning(
            "%d frame labels could not be read (unknown schema) and were skipped",
            examples.unreadable_labels,
        )
    return examples


def _calibration_frames(examples: Sequence[DetectorExample]) -> list[np.ndarray]:
    import cv2

    from export.tflite_export import MIN_CALIBRATION_FRAMES

    frames = [
        cv2.imread(str(e.path), cv2.IMREAD_COLOR) for e in _spread(examples, CALIBRATION_FRAMES)
    ]
    frames = [f for f in frames if f is not None]
    while frames and len(frames) < MIN_CALIBRATION_FRAMES:
        frames += frames[: MIN_CALIBRATION_FRAMES - len(frames)]
    return frames


class PersonDetectorTask:
    """The ``person-detector`` task (see the module docstring)."""

    name = "person-detector"

    def node_setup(self, cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeSetup:
        """Read ``store-dir`` and ``partition-id`` / ``num-partitions`` (optional).

        A node without ``store-dir`` (a simulated one) takes the ``partition-id``-th store
        of ``detector-store-root`` when that is set (``data.store_sets``).
        """
        partition = node_config.get("partition-id")
        count = cfg.num_partitions or node_config.get("num-partitions")
        root = {"detector-store-root": cfg.detector_store_root}
        store = str(node_store_config(node_config, root).get(STORE_DIR_KEY) or "")
        if not store:
            raise ConfigError(
                "node config lacks 'store-dir'; start the SuperNode with "
                "--node-config 'store-dir=\"/var/lib/fedge/store\"' (the edge agent's "
                "--store-dir), or, in a simulation, set detector-store-root to a folder of "
                "frame stores"
            )
        return NodeSetup(
            None if partition is None else int(partition),
            None if count is None else int(count),
            {**node_config, STORE_DIR_KEY: store},
        )

    def initial_weights(self, cfg: RunConfig) -> list[np.ndarray]:
        """The untrained detector, initialised from ``cfg.seed``."""
        from models.person_detector import build_person_detector

        model = build_person_detector(DEFAULT_ANCHORS, seed=cfg.seed)
        return _on_wire(cfg, model.get_weights())

    def train(
        self,
        cfg: RunConfig,
        node: NodeSetup,
        weights: Sequence[np.ndarray],
        *,
        server_round: int,
        proximal_mu: float,
        correction: Sequence[np.ndarray] | None,
    ) -> TrainOutcome:
        """Train on the store's examples this round (module docstring).

        Raises
        ------
        NoExamplesError
            If the store holds no training example yet (no cloud label, no confident box).
        """
        if correction is not None:
            raise ConfigError("person-detector does not take a SCAFFOLD correction")
        examples = _examples(cfg, node)
        train = examples.train
        if not train:
            raise NoExamplesError(
                f"the frame store at {node.config[STORE_DIR_KEY]} holds no training frame yet "
                f"({examples.frames_seen} frames, none labelled by the cloud or with a confident "
                "person box); let the edge agent run with --cloud first"
            )
        seed = _node_seed(cfg, node, server_round)
        if cfg.detector_max_frames and len(train) > cfg.detector_max_frames:
            picks = np.random.default_rng(seed).choice(len(train), cfg.detector_max_frames, False)
            train = [train[i] for i in sorted(picks)]
        trainer = _node_trainer(cfg.cpu_threads)
        trainer.set_weights(weights)
        from clients.tasks.detector_batches import StoreBatches  # Keras: only where it trains

        batches = StoreBatches(
            train,
            trainer.spec,
            batch_size=cfg.detector_batch_size,
            augmentation=cfg.detector_augment,
            seed=seed,
        )
        losses, seconds = trainer.fit(
            batches,
            epochs=cfg.local_epochs,
            learning_rate=cfg.detector_learning_rate * cfg.detector_lr_decay ** (server_round - 1),
            proximal_mu=proximal_mu,
        )
        trainer.recompute_statistics(train)
        images = len(train) * cfg.local_epochs
        metrics = {
            "train_loss": losses[-1],
            "samples-per-second": images / seconds if seconds > 0 else 0.0,
            "train-seconds": seconds,
            "cloud-frames": float(sum(1 for e in train if e.source == "cloud")),
            "own-frames": float(sum(1 for e in train if e.source == "own")),
            "held-out-frames": float(len(examples.held_out)),
        }
        return TrainOutcome(
            _on_wire(cfg, trainer.get_weights()),
            metrics,
            len(train),
            cfg.local_epochs * len(batches),
        )

    def evaluate(
        self, cfg: RunConfig, node: NodeSetup, weights: Sequence[np.ndarray], *, server_round: int
    ) -> EvaluateOutcome:
        """mAP@0.5 of ``weights`` on the held-out frames, float and (when due) int8.

        Raises
        ------
        NoExamplesError
            If no held-out frame carries a cloud label with a person yet.
        """
        examples = _examples(cfg, node)
        held_out = examples.held_out
        people = sum(len(e.boxes) for e in held_out)
        if not people:
            raise NoExamplesError(
                f"the frame store at {node.config[STORE_DIR_KEY]} has no held-out frame with a "
                f"cloud-labelled person yet ({len(held_out)} held-out labelled frames); "
                "evaluation needs cloud labels"
            )
        trainer = _node_trainer(cfg.cpu_threads)
        trainer.set_weights(weights)
        trainer.recompute_statistics(examples.train or held_out)
        found = predict_float(trainer.model, held_out, trainer.spec)
        metrics: dict[str, Any] = {
            "eval_map50": map50(held_out, found),
            "eval-frames": float(len(held_out)),
            "eval-people": float(people),
        }
        if int8_due(cfg, server_round):
            int8_metrics, int8_found = self._int8_metrics(trainer, examples)
            metrics.update(int8_metrics)
            found = int8_found or found
        metrics.update(score_bin_counts(held_out, found).metrics())
        return EvaluateOutcome(metrics, len(held_out))

    def _int8_metrics(
        self, trainer: DetectorTrainer, examples: NodeExamples
    ) -> tuple[dict[str, float], list[FrameDetections]]:
        """int8 mAP on the node and the int8 detections (empty when the export module is
        not installed)."""
        try:
            from export.tflite_export import PostProcessOptions, export_tflite
        except ImportError:
            log.warning("export.tflite_export is missing: int8 mAP not measured")
            return {}, []
        from clients.detector import Detector, DetectorSpec
        from clients.tasks.detector_eval import predict_with

        began = time.perf_counter()
        model = export_tflite(
            trainer.model,
            trainer.spec,
            quantization="int8",
            calibration_frames=_calibration_frames(examples.train or examples.held_out),
            postprocess=PostProcessOptions(
                max_detections=MAX_DETECTIONS, score_threshold=SCORE_FLOOR
            ),
        )
        seconds = time.perf_counter() - began
        spec = DetectorSpec(
            labels=("person",), score_threshold=SCORE_FLOOR, max_detections=MAX_DETECTIONS
        )
        detector = Detector(model, spec, num_threads=1)
        found = predict_with(detector.detect, examples.held_out)
        metrics = {
            "eval_map50_int8": map50(examples.held_out, found),
            "int8-bytes": float(len(model)),
            "int8-export-seconds": seconds,
        }
        return metrics, found

    def warm_start(self, cfg: RunConfig) -> bool:
        """``detector-warm-start`` (off by default): round 1 keeps the model of the node
        with the most training frames (``server.rounds``, warm start)."""
        return cfg.detector_warm_start

    def central_evaluation(self, cfg: RunConfig) -> None:
        """None: the cloud holds no site's frames; the nodes report mAP."""
        return None

    def export(
        self,
        cfg: RunConfig,
        server_round: int,
        weights: Sequence[np.ndarray],
        out_dir: str | os.PathLike[str],
        *,
        node_evaluations: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, float]:
        """Write the global model after ``server_round`` as an artifact in ``out_dir``.

        ``node_evaluations`` are the nodes' evaluation metrics of these weights (this
        round's replies): their score-bin counts become the artifact's calibration.
        Returns ``export-bytes`` and ``export-seconds``, and with a calibration
        ``calibration-operating-score`` and ``calibration-uncertain-low``/``-high``
        (nothing when ``detector-export`` is none or the export module is not installed).
        """
        if cfg.detector_export == "none":
            return {}
        try:
            from export.artifact import DetectionSpec, make_artifact, write_artifact
            from export.tflite_export import PostProcessOptions, export_tflite
        except ImportError:
            log.warning("export/ is not installed: round %d not exported", server_round)
            return {}
        from models.person_detector import frame_to_input

        model = _server_model()
        model.set_weights(_unpacked(model, weights))
        frames = _server_calibration(cfg)
        began = time.perf_counter()
        _recompute(model, np.stack([frame_to_input(f, DEFAULT_ANCHORS) for f in frames]))
        options = PostProcessOptions()
        content = export_tflite(
            model,
            DEFAULT_ANCHORS,
            quantization=cfg.detector_export,
            calibration_frames=frames,
            postprocess=options,
        )
        seconds = time.perf_counter() - began
        calibration = calibration_from_metrics(node_evaluations)
        detector = DetectionSpec(
            num_anchors=DEFAULT_ANCHORS.num_anchors,
            max_detections=options.max_detections,
            nms_iou_threshold=options.iou_threshold,
        )
        if calibration is not None:
            detector = dataclasses.replace(detector, score_threshold=calibration.operating_score)
        artifact = make_artifact(
            content,
            version=server_round,
            quantization=cfg.detector_export,
            detector=detector,
            metrics={"export_seconds": round(seconds, 3), "calibration_frames": len(frames)},
            calibration=calibration,
        )
        write_artifact(out_dir, artifact)
        figures = {"export-bytes": float(len(content)), "export-seconds": seconds}
        if calibration is not None:
            figures.update(
                {
                    "calibration-operating-score": calibration.operating_score,
                    "calibration-uncertain-low": calibration.uncertain_low,
                    "calibration-uncertain-high": calibration.uncertain_high,
                }
            )
        return figures


def _server_calibration(cfg: RunConfig) -> list[np.ndarray]:
    """int8 calibration frames the server may use (module docstring)."""
    import cv2

    if cfg.detector_calibration_dir:
        folder = Path(cfg.detector_calibration_dir)
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in _spread(paths, CALIBRATION_FRAMES)]
        frames = [f for f in frames if f is not None]
        if not frames:
            raise ConfigError(
                f"detector-calibration-dir {folder} holds no readable .jpg/.png frame; "
                'point it at kept uploads or set detector-calibration-dir = "" (sample clip)'
            )
        return frames
    from data.samples import sample_path

    capture = cv2.VideoCapture(str(sample_path(_SAMPLE_CLIP)))
    frames = []
    index = 0
    try:
        while len(frames) < CALIBRATION_FRAMES:
            ok, frame = capture.read()
            if not ok:
                break
            if index % _CLIP_STEP == 0:
                frames.append(frame)
            index += 1
    finally:
        capture.release()
    return frames
