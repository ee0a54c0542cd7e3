"""Fast local training and evaluation of a Keras classifier on in-memory arrays.

What makes it fast
------------------
Keras' ``Model.fit`` pays a large fixed cost per call (compile, data adapter, callbacks,
tracing) and per batch (a Python round trip); a federated client calls it on small data
every round. ``LocalTrainer`` builds the model, the optimizer state and its graph
functions once per process and reuses them every round:

- **one graph call per epoch**: the whole epoch (gather a batch, forward, loss,
  backward, update) is one ``tf.function`` with an in-graph ``tf.range`` loop, so
  Python is entered once per epoch, not once per batch; evaluation likewise;
- **oneDNN kernels**: on x86 CPUs without AVX-512 (this AMD EPYC has AVX2) TensorFlow
  leaves oneDNN *off* and runs convolutions and pooling on Eigen, 2-10x slower per
  kernel for this CNN (conv 5x5 on one input channel, batch 32: ~2.4 ms vs ~0.5 ms;
  conv2's input gradient about equal), ~2x slower per step. Importing this
  module sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the variable is set or TensorFlow is
  already imported (it is read once, when TensorFlow loads), so import it first;
  ``onednn_enabled()`` tells, and the trainer logs a warning when it is off;
- **no XLA**: XLA:CPU lowers conv2's input and filter gradients to naive loops
  (5-6 ms per batch of 32), so an XLA-jitted step ran at ~2.5k samples/s and a
  jitted epoch loop at ~1.2k, against ~6-7k for this graph, in the same process;
- **one update kernel per variable**: ``ResourceApplyKerasMomentum`` is Keras' SGD rule
  in one op instead of five (bit-identical weights; the gain is within the noise);
- **nothing retraces between rounds**: learning rate, FedProx weight, global weights
  and the drift correction are variables; a trace is keyed by batch size and whether
  FedProx and the correction are on.

Measured and rejected (same process, A/B): pre-shuffled contiguous batches instead of
``tf.gather`` (no difference: the gather is ~1% of a step), ``tf.data`` in the loop
(~20% slower), ``mixed_bfloat16`` (~6x slower: no bf16 hardware), keeping the data as
a cached constant across rounds (converting 15k samples costs ~20 ms, <1% of a round),
two intra-op threads (fewer samples per CPU-second; see ``set_cpu_threads``).

What limits it
--------------
A training step at batch 32 is ~60 small kernels. One-thread oneDNN timings
(medians, ``ONEDNN_VERBOSE``): conv2 input gradient 0.73 ms (13 GFLOP/s), conv1
forward on one input channel 0.52 ms (11 GFLOP/s), first max-pool forward+backward
0.38 ms, conv1 filter gradient 0.29 ms, conv2 forward and filter gradient 0.21 ms
each (~47 GFLOP/s), dense layers ~0.2 ms; the other TensorFlow kernels and the
executor ~0.8 ms. With 6 and 16 channels the tensors are too narrow for AVX2 to run
near its peak (~78 GFLOP/s per 2.45 GHz core): training costs 1.52 MFLOP per sample,
and a step reaches ~12-15 GFLOP/s, i.e. ~8-10k samples per CPU-second at batch 32 and
~9.5k at 64, on one thread. A second intra-op thread buys less than it costs (~5.5k
samples per CPU-second), so throughput comes from one process per free core: two
one-thread processes on two idle cores should do about twice that. Figures: see
``benchmarks/train_speed.py``.

The algorithm
-------------
Plain minibatch SGD with momentum, exactly Keras' ``SGD`` (``v = momentum * v - lr *
g; w = w + v``; not Nesterov), on the batches of a seeded permutation per epoch, the
last batch possibly smaller, the loss being the batch mean of the cross-entropy; the
velocity starts at zero in every ``fit``. With ``proximal_mu`` > 0 the FedProx
gradient ``mu * (w - w_global)`` is added to ``g``. With a ``correction`` δ (one array
per variable; SCAFFOLD's ``c - c_i``) every step also moves each variable by ``-lr * δ``
after the momentum update, outside the velocity (``w = w + v - lr * δ``; for momentum 0
this is SGD on ``g + δ``), as NIID-Bench's and Flower's SCAFFOLD implementations do.
Without a correction the graph is the one traced before the option existed.

Determinism
-----------
The same starting weights, data, seed and settings give bit-identical weights, also
in a fresh process. ``tf.config.experimental.enable_op_determinism()`` is not needed
for that on CPU (it cost ~5-10% and changes the numbers). The numbers do depend on the
number of intra-op threads and on oneDNN being on, so a resumed run must use the same
settings as the run it resumes.
"""

from __future__ import annotations

import functools
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
_INDEX_SPEC = tf.TensorSpec([None], tf.int32)  # labels, and the epoch's sample order

GraphResult = tuple[tf.Tensor, tf.Tensor]  # (loss sum, correct predictions)


def _samples_spec(sample_shape: tuple[int, ...]) -> tf.TensorSpec:
    return tf.TensorSpec([None, *sample_shape], tf.float32)


@dataclass(frozen=True)
class FitResult:
    """What one call of ``LocalTrainer.fit`` did.

    ``loss`` and ``accuracy`` are means over every sample seen during training
    (cross-entropy only, without the proximal term); ``num_examples`` counts samples
    times epochs; ``steps`` counts the SGD updates (batches times epochs).
    """

    loss: float
    accuracy: float
    num_examples: int
    seconds: float
    steps: int = 0

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
                "oneDNN is off (%s=%r): convolutions run several times slower; import "
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
        self._correction = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._vars]
        self._graphs: dict[tuple[object, ...], Callable[..., GraphResult]] = {}

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
    def _train_graph(
        self, sample_shape: tuple[int, ...], batch_size: int, proximal: bool, corrected: bool
    ) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], GraphResult]:
        """``_epoch`` as a graph for these options, traced once for any partition size.

        The input signature leaves the number of samples open, so partitions of every
        size share one trace (and the same kernels) whatever the order of the calls.
        """
        key = ("train", sample_shape, batch_size, proximal, corrected)
        if key not in self._graphs:
            body = functools.partial(
                self._epoch, batch_size=batch_size, proximal=proximal, corrected=corrected
            )
            signature = [_samples_spec(sample_shape), _INDEX_SPEC, _INDEX_SPEC]
            self._graphs[key] = tf.function(body, input_signature=signature)
        return self._graphs[key]

    def _evaluate_graph(
        self, sample_shape: tuple[int, ...], batch_size: int
    ) -> Callable[[tf.Tensor, tf.Tensor], GraphResult]:
        """``_evaluate`` as a graph, traced once for any number of samples."""
        key = ("evaluate", sample_shape, batch_size)
        if key not in self._graphs:
            body = functools.partial(self._evaluate, batch_size=batch_size)
            signature = [_samples_spec(sample_shape), _INDEX_SPEC]
            self._graphs[key] = tf.function(body, input_signature=signature)
        return self._graphs[key]

    def _step(self, x: tf.Tensor, y: tf.Tensor, proximal: bool, corrected: bool) -> GraphResult:
        """One SGD-with-momentum update on batch ``(x, y)``; returns loss sum, hits."""
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss_sum = tf.reduce_sum(losses)
            loss = loss_sum / tf.cast(tf.shape(x)[0], tf.float32)
        grads = tape.gradient(loss, self._vars)
        for var, vel, grad, start, shift in zip(
            self._vars, self._velocity, grads, self._global, self._correction, strict=True
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
            if corrected:  # SCAFFOLD's drift correction, outside the velocity
                var.assign_sub(self._lr * shift)
        hits = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
        )
        return loss_sum, hits

    def _epoch(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        order: tf.Tensor,
        batch_size: int,
        proximal: bool,
        corrected: bool,
    ) -> GraphResult:
        """All batches of one epoch in ``order``, in one graph loop."""
        n = tf.shape(order)[0]
        num_batches = (n + batch_size - 1) // batch_size
        loss_total = tf.constant(0.0)
        hits_total = tf.constant(0.0)
        for i in tf.range(num_batches):
            idx = order[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
            loss, hits = self._step(tf.gather(x, idx), tf.gather(y, idx), proximal, corrected)
            loss_total += loss
            hits_total += hits
        return loss_total, hits_total

    def _evaluate(self, x: tf.Tensor, y: tf.Tensor, batch_size: int) -> GraphResult:
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
        correction: Sequence[np.ndarray] | None = None,
    ) -> FitResult:
        """Train in place for ``epochs`` with fresh momentum; return the means.

        Each epoch visits the samples in ``np.random.default_rng(seed)``'s next
        permutation, in batches of ``batch_size`` (the last one may be smaller).
        ``proximal_mu`` > 0 adds FedProx's ``mu/2 * ||w - w_global||^2`` with the
        weights held at the start of this call as ``w_global``. ``correction`` (one
        array per trainable variable, ``model.trainable_variables`` order, which is
        ``get_weights()`` order for this CNN) is subtracted, times the learning rate,
        after every step (SCAFFOLD); ``None`` trains without it.

        Raises
        ------
        ValueError
            If ``x`` is empty, ``x`` and ``y`` differ in length, ``epochs`` or
            ``batch_size`` is not positive, or ``correction`` does not match the
            trainable variables' shapes.
        """
        if len(x) == 0:
            raise ValueError("cannot train on an empty partition; give at least one sample")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
        corrected = correction is not None
        if correction is not None:
            self._load_correction(correction)
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
        train_epoch = self._train_graph(tuple(xt.shape[1:]), int(batch_size), proximal, corrected)
        rng = np.random.default_rng(seed)
        loss_sum = hits = 0.0
        start_time = time.perf_counter()
        for _ in range(epochs):
            order = tf.constant(rng.permutation(len(x)), dtype=tf.int32)
            loss, correct = train_epoch(xt, yt, order)
            loss_sum += float(loss)
            hits += float(correct)
        seconds = time.perf_counter() - start_time
        seen = len(x) * epochs
        steps = epochs * -(-len(x) // batch_size)
        return FitResult(loss_sum / seen, hits / seen, seen, seconds, steps)

    def _load_correction(self, correction: Sequence[np.ndarray]) -> None:
        expected = [tuple(v.shape) for v in self._vars]
        got = [tuple(np.shape(c)) for c in correction]
        if expected != got:
            raise ValueError(
                f"correction shapes {got} do not match the trainable variables' {expected}; "
                "give one array per trainable variable, in their order"
            )
        for shift, value in zip(self._correction, correction, strict=True):
            shift.assign(np.asarray(value, dtype=np.float32))

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
        evaluate_all = self._evaluate_graph(tuple(xt.shape[1:]), int(batch_size))
        loss_sum, hits = evaluate_all(xt, yt)
        return float(loss_sum) / len(x), float(hits) / len(x)
