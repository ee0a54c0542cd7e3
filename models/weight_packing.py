"""A model's weights as one flat float32 array on the wire, and back.

flwr 1.42 sends every array of an ``ArrayRecord`` as objects of its own, each pushed
and pulled with an HTTP request of its own: the person detector's 306 arrays (weights
and batch-norm statistics) made every model message hundreds of requests, and the
SuperLink spent seconds of CPU relaying each one (measured in the demo's cyclic rounds,
where those hand-offs lie between one site's training and the next). Packed, a model
message carries one array. Every strategy fedge offers works element by element
(averages, clipping norms, control variates, medians over the same positions), so a
packed model aggregates exactly as the arrays it holds would. Update compression
(``compression-bits``, ``compression-topk``) works per array, so the person-detector task
does not pack when it is on (one quantization scale per layer, not one for the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedge.core.errors import ConfigError

__all__ = ["pack_weights", "unpack_weights"]


def pack_weights(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``weights`` flattened and concatenated into one float32 array (a one-item list)."""
    if not weights:
        raise ValueError("no weights to pack")
    return [np.concatenate([np.asarray(w, np.float32).ravel() for w in weights])]


def unpack_weights(
    arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """The arrays of ``shapes`` from a packed model, or ``arrays`` themselves when they
    already have those shapes (an unpacked model, as older checkpoints hold).

    Raises
    ------
    ConfigError
        If ``arrays`` are neither: not this model's weights.
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if [tuple(np.shape(a)) for a in arrays] == shapes:
        return [np.asarray(a) for a in arrays]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if len(arrays) != 1 or np.ndim(arrays[0]) != 1 or np.size(arrays[0]) != sum(sizes):
        got = [tuple(np.shape(a)) for a in arrays][:3]
        raise ConfigError(
            f"received {len(arrays)} weight arrays (first shapes {got}) that are neither this "
            f"model's {len(shapes)} arrays nor one packed array of {sum(sizes)} values; start "
            "server and nodes with the same fedge and task"
        )
    flat = np.asarray(arrays[0], np.float32)
    ends = np.cumsum(sizes)
    return [
        flat[end - size : end].reshape(shape)
        for end, size, shape in zip(ends, sizes, shapes, strict=True)
    ]
