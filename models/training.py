"""Fast local training and evaluation of a Keras classifier on in-memory arrays.

What makes it fast
------------------
Keras' ``Model.fit`` pays a large fixed cost per call (compile, data adapter, callbacks,
retracing) and per batch (a Python round trip); a federated client calls it on small
data every round. ``LocalTrainer`` builds the model, the optimizer state and the graph
functions once per process and reuses them every round:

- **one graph call per epoch**: the whole epoch (gather a batch, forward, loss,
  backward, SGD-with-momentum update) is one ``tf.function`` with an in-graph
  ``tf.range`` loop, so Python is entered once per epoch, not once per batch;
- **oneDNN kernels, no XLA**: on x86 CPUs without AVX-512 (this one: AMD EPYC, AVX2)
  TensorFlow leaves oneDNN *off* by default and runs convolutions on Eigen, which
  for this small CNN is 3-8x slower (conv 5x5 with one input channel: ~2.4 ms vs
  ~0.5 ms per batch of 32). Importing this module turns oneDNN on
  (``TF_ENABLE_ONEDNN_OPTS=1``, only if TensorFlow is not imported yet and the
  variable is unset). XLA is not used: XLA:CPU lowers the backward convolutions to
  naive loops (5-6 ms per batch for conv2's input and filter gradients), so a jitted
  step or a jitted epoch loop is 3x slower than the oneDNN graph;
- **nothing retraces between rounds**: the learning rate, the FedProx weight and the
  global weights are ``tf.Variable`` s; the batch size is the only trace key;
- **batches are gathered in the graph** from the whole partition with ``tf.gather``
  (about 1% of a step; pre-shuffled contiguous slices measured the same).

The algorithm is plain minibatch SGD with momentum, exactly Keras' ``SGD`` update
(``m = momentum * m - lr * g; w = w + m``), on the batches of a seeded permutation
per epoch, the last batch possibly smaller; the momentum buffers start at zero in
every ``fit`` call. With ``proximal_mu`` > 0 the FedProx gradient
``mu * (w - w_global)`` is added to ``g``.

What limits it
--------------
At batch 32 a step is ~50 small kernels; the time goes to the convolutions and
pooling (conv1 forward and filter gradient with one input channel, conv2's input
gradient, the first max-pool gradient: together ~75% of a step), which oneDNN runs
at 10-35 GFLOP/s on one core because the tensors are tiny (6 and 16 channels).
Training this CNN costs ~1.5 MFLOP per sample, so 10k samples/s needs ~15 GFLOP/s
sustained. See ``benchmarks/train_speed.py`` for measured figures.

Determinism
-----------
Two runs with the same starting weights, data, seed and thread settings give
bit-identical weights, also in fresh processes; ``tf.config.experimental.
enable_op_determinism()`` is not needed on CPU for these kernels. Results do depend
on the number of intra-op threads and on whether oneDNN is on, so a resumed run must
use the same settings as the original one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
if "tensorflow" not in sys.modules:  # read once, when TensorFlow loads
    os.environ.setdefault(ONEDNN_ENV, "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = [
    "ONEDNN_ENV",
    "FitResult",
    "LocalTrainer",
    "onednn_enabled",
    "set_cpu_threads",
    "to_model_input",
]

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 1000


@dataclass(frozen=True)
class FitResult:
    """What one call of ``LocalTrainer.fit`` did.

    ``loss`` and ``accuracy`` are means over every sample seen during training
    (cross-entropy only, without the proximal term); ``num_examples`` counts samples
    times epochs.
    """

    loss: float
    accuracy: float
    num_examples: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        """Training throughput in samples (times epochs) per second."""
        return self.num_examples / self.seconds if self.seconds > 0 else 0.0


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, 28, 28)`` images to float32 ``(n, 28, 28, 1)`` in [0, 1]."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    return x[..., None] if x.ndim == 3 else x


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN (MKL) kernels in this process."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def set_cpu_threads(intra_op: int, inter_op: int = 1) -> None:
    """Fix TensorFlow's CPU thread pools; call before any TensorFlow op runs.

    One intra-op thread per process is best when several trainers share the cores
    (the simulation runs one client process per core). The thread count changes the
    floating-point summation order, so a resumed run must use the same setting.

    Raises
    ------
    RuntimeError
        If TensorFlow has already started and the pools can no longer change; call
        this first thing in the process.
    """
    if tf.config.threading.get_intra_op_parallelism_threads() == intra_op and (
        tf.config.threading.get_inter_op_parallelism_threads() == inter_op
    ):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as err:
        raise RuntimeError(
            f"TensorFlow is already running; call set_cpu_threads({intra_op}) before "
            "building any model or running any op in this process"
        ) from err


class LocalTrainer:
    """A model with its SGD state and graph train/eval functions, reused per round.

    Parameters
    ----------
    build_model
        Returns a fresh Keras model that outputs logits; called once.
    momentum
        SGD momentum (Keras ``SGD``, not Nesterov).
    """

    def __init__(self, build_model: Callable[[], tf.keras.Model], momentum: float = 0.0) -> None:
        if not onednn_enabled():
            log.warning(
                "oneDNN is off (%s=%r): convolutions run 3-8x slower; import "
                "models.training before TensorFlow or set %s=1",
                ONEDNN_ENV,
                os.environ.get(ONEDNN_ENV),
                ONEDNN_ENV,
            )
        self.model = build_model()
        self.momentum = float(momentum)
        self._vars = list(self.model.trainable_variables)
        self._velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._vars]
        self._global = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._vars]
        self._momentum = tf.constant(self.momentum, dtype=tf.float32)
        self._lr = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self._mu = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self._train_epoch = tf.function(self._epoch, reduce_retracing=True)
        self._eval_all = tf.function(self._evaluate, reduce_retracing=True)

    # -- weights -------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Return the model weights as NumPy arrays (Keras order)."""
        return [np.asarray(w) for w in self.model.get_weights()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load ``weights`` (Keras order).

        Raises
        ------
        ValueError
            If their number or shapes differ from the model's.
        """
        expected = [tuple(w.shape) for w in self.model.weights]
        got = [tuple(np.shape(w)) for w in weights]
        if expected != got:
            raise ValueError(
                f"weight shapes {got} do not match the model's {expected}; "
                "send weights of the same architecture, in get_weights() order"
            )
        self.model.set_weights(list(weights))

    # -- graph functions -----------------------------------------------------------
    def _step(self, x: tf.Tensor, y: tf.Tensor, proximal: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """One SGD-with-momentum update on batch ``(x, y)``; returns loss sum, hits."""
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss_sum = tf.reduce_sum(losses)
            loss = loss_sum / tf.cast(tf.shape(x)[0], tf.float32)
        grads = tape.gradient(loss, self._vars)
        for var, vel, grad, start in zip(
            self._vars, self._velocity, grads, self._global, strict=True
        ):
            if proximal:
                grad = grad + self._mu * (var - start)
            # Keras' SGD rule in one kernel: vel = momentum * vel - lr * grad; var += vel
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=var.handle,
                accum=vel.handle,
                lr=self._lr,
                grad=grad,
                momentum=self._momentum,
                use_locking=False,
                use_nesterov=False,
            )
        hits = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        )
        return loss_sum, hits

    def _epoch(
        self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch_size: int, proximal: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """All batches of one epoch in ``order``, in one graph loop."""
        n = tf.shape(order)[0]
        num_batches = (n + batch_size - 1) // batch_size
        loss_total = tf.constant(0.0)
        hits_total = tf.constant(0.0)
        for i in tf.range(num_batches):
            idx = order[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
            loss, hits = self._step(tf.gather(x, idx), tf.gather(y, idx), proximal)
            loss_total += loss
            hits_total += hits
        return loss_total, hits_total

    def _evaluate(self, x: tf.Tensor, y: tf.Tensor, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Loss sum and hits over ``x`` in chunks of ``batch_size``."""
        n = tf.shape(x)[0]
        loss_total = tf.constant(0.0)
        hits_total = tf.constant(0.0)
        for start in tf.range(0, n, batch_size):
            end = tf.minimum(start + batch_size, n)
            logits = self.model(x[start:end], training=False)
            yb = y[start:end]
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            loss_total += tf.reduce_sum(losses)
            pred = tf.argmax(logits, axis=1, output_type=tf.int32)
            hits_total += tf.reduce_sum(tf.cast(tf.equal(pred, yb), tf.float32))
        return loss_total, hits_total

    # -- public --------------------------------------------------------------------
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        seed: int,
        proximal_mu: float = 0.0,
    ) -> FitResult:
        """Train in place for ``epochs`` with fresh momentum; return the means.

        Each epoch visits the samples in ``np.random.default_rng(seed)``'s next
        permutation, in batches of ``batch_size`` (the last one may be smaller).
        ``proximal_mu`` > 0 adds FedProx's ``mu/2 * ||w - w_global||^2`` with the
        weights held at the start of this call as ``w_global``.

        Raises
        ------
        ValueError
            If ``x`` is empty, ``x`` and ``y`` differ in length, or ``epochs`` or
            ``batch_size`` is not positive.
        """
        if len(x) == 0:
            raise ValueError("cannot train on an empty partition; give at least one sample")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
        for vel in self._velocity:
            vel.assign(tf.zeros_like(vel))
        self._lr.assign(learning_rate)
        self._mu.assign(proximal_mu)
        proximal = proximal_mu != 0.0
        if proximal:
            for start, var in zip(self._global, self._vars, strict=True):
                start.assign(var)
        xt = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        yt = tf.convert_to_tensor(np.asarray(y, dtype=np.int32))
        rng = np.random.default_rng(seed)
        loss_sum = hits = 0.0
        start_time = time.perf_counter()
        for _ in range(epochs):
            order = tf.constant(rng.permutation(len(x)), dtype=tf.int32)
            loss, correct = self._train_epoch(xt, yt, order, int(batch_size), proximal)
            loss_sum += float(loss)
            hits += float(correct)
        seconds = time.perf_counter() - start_time
        seen = len(x) * epochs
        return FitResult(loss_sum / seen, hits / seen, seen, seconds)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, batch_size: int = EVAL_BATCH_SIZE
    ) -> tuple[float, float]:
        """Return mean cross-entropy loss and accuracy of the current weights.

        Raises
        ------
        ValueError
            If ``x`` is empty or ``x`` and ``y`` differ in length.
        """
        if len(x) == 0:
            raise ValueError("cannot evaluate on an empty set; give at least one sample")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
        xt = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
        yt = tf.convert_to_tensor(np.asarray(y, dtype=np.int32))
        loss_sum, hits = self._eval_all(xt, yt, int(batch_size))
        return float(loss_sum) / len(x), float(hits) / len(x)
