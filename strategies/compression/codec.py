"""Delta encoding of client updates, carried in one Flower ``ArrayRecord``.

The client sends ``Δ = w_local − w_global`` per tensor (plus its error-feedback
residual), optionally top-k sparsified and/or int8 quantized; the server rebuilds
``w_global + Δ̂`` before any strategy aggregates, so strategies see plain weights.

Wire layout (every value a NumPy array, no pickles)::

    "fedge-delta/format"  int64 [FORMAT_VERSION, number of tensors]
    "fedge-delta/base"    uint8 [16]: BLAKE2b digest of the global weights Δ is against
    tensor i, one of four layouts:
      raw          "{i}/raw"   float32, the tensor's shape (small tensors, 32-bit, non-finite)
      int8         "{i}/q"     int8, the tensor's shape; "{i}/scale" float32 scalar
      sparse       "{i}/idx"   flat indices, strictly increasing (uint16, int32 or int64)
                   "{i}/val"   float32 values
      sparse-int8  "{i}/idx", "{i}/q" int8 values, "{i}/scale"

Shapes come from the global weights, which the decoder needs anyway.

Error bounds, per element, of the Δ actually encoded (``Δ + residual``):
raw and sparse values are float32 roundings of it; int8 values are within
``scale / 2`` (``scale = max|Δ| / 127``, one float32 rounding aside, see
:mod:`.quantization`); entries dropped by top-k decode to exactly 0. The server's
weights are ``fl32(w_global + Δ̂)``: with a dense float32 Δ that is ``w_local`` bit for
bit unless the subtraction rounded (a weight changing sign or halving), and always
within 2 float32 spacings of ``max(|w_global|, |w_local|)``. With error
feedback, what was not sent is returned as the new residual, so over rounds
``Σ sent − Σ true = −residual`` stays bounded instead of growing.

Non-finite Δ (a diverged or malicious client) is not hidden: that tensor is sent raw,
so its NaN/Inf reach the server, whose non-finite guard rejects the reply; the
decoder passes such values through, and the tensor's residual restarts at zero.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

from fedge.core.compression_config import CompressionConfig
from strategies.compression.errors import UpdateDecodeError, UpdateEncodeError
from strategies.compression.quantization import (
    dequantize_int8,
    index_dtype,
    quantize_int8,
    top_k_count,
    top_k_indices,
)

__all__ = [
    "BASE_KEY",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "decode_deltas",
    "decode_update",
    "decode_update_record",
    "encode_update",
    "is_encoded_update",
]

log = logging.getLogger(__name__)

FORMAT_KEY = "fedge-delta/format"
BASE_KEY = "fedge-delta/base"
FORMAT_VERSION = 1

_DIGEST_SIZE = 16
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_TENSOR_KEY = re.compile(r"(0|[1-9][0-9]*)/([a-z]+)")
_LAYOUTS: dict[frozenset[str], str] = {
    frozenset({"raw"}): "raw",
    frozenset({"q", "scale"}): "int8",
    frozenset({"idx", "val"}): "sparse",
    frozenset({"idx", "q", "scale"}): "sparse-int8",
}

Arrays = dict[str, NDArray[np.generic]]


def is_encoded_update(record: ArrayRecord) -> bool:
    """True if ``record`` is an encoded update (else it holds plain weights)."""
    return FORMAT_KEY in record


def encode_update(
    new: Sequence[NDArray[np.floating]],
    old: Sequence[NDArray[np.floating]],
    cfg: CompressionConfig,
    residual: Sequence[NDArray[np.floating]] | None = None,
) -> tuple[ArrayRecord, list[NDArray[np.float32]]]:
    """Encode ``new − old (+ residual)`` as an ``ArrayRecord``; return it and the new residual.

    Parameters
    ----------
    new, old
        The locally trained weights and the global weights they started from.
    cfg
        What to quantize and sparsify.
    residual
        Last round's residual (``None`` or empty in the first round); used only with
        ``cfg.error_feedback``.

    Returns
    -------
    tuple
        The record to send, and the residual to keep for the next round (one float32
        array per tensor; an empty list without error feedback).

    Raises
    ------
    UpdateEncodeError
        ``new``, ``old`` and ``residual`` differ in tensor count or shapes.
    """
    _check_alignment(new, old, residual)
    carried = residual if cfg.error_feedback and residual else None
    record = ArrayRecord()
    record[FORMAT_KEY] = Array(np.array([FORMAT_VERSION, len(new)], dtype=np.int64))
    record[BASE_KEY] = Array(_base_digest(old))
    kept: list[NDArray[np.float32]] = []
    for i, (w_new, w_old) in enumerate(zip(new, old, strict=True)):
        target = np.asarray(w_new, np.float64) - np.asarray(w_old, np.float64)
        if carried is not None:
            target += np.asarray(carried[i], np.float64)
        sendable = _fits_float32(target)
        if sendable:
            arrays = _encode_tensor(target, cfg)
        else:
            log.warning(
                "tensor %d of the update is not finite; sent as float32 for the server to reject",
                i,
            )
            with np.errstate(over="ignore"):  # beyond float32 it becomes ±Inf, as it should
                arrays = {"raw": target.astype(np.float32)}
        for suffix, values in arrays.items():
            record[f"{i}/{suffix}"] = Array(values)
        if cfg.error_feedback:
            kept.append(_unsent(target, arrays) if sendable else np.zeros_like(target, np.float32))
    return record, kept


def decode_deltas(
    record: ArrayRecord, old: Sequence[NDArray[np.floating]]
) -> list[NDArray[np.float32]]:
    """Return the decoded ``Δ̂`` per tensor (float32, shapes of ``old``).

    Raises
    ------
    UpdateDecodeError
        The record is not an encoded update, is malformed, or was encoded against
        other global weights than ``old``.
    """
    count = _read_header(record)
    if count != len(old):
        raise UpdateDecodeError(
            f"update holds {count} tensors but the global model has {len(old)}; "
            "client and server run different models"
        )
    digest = _read(record, BASE_KEY, np.uint8, (_DIGEST_SIZE,))
    if digest.tobytes() != _base_digest(old).tobytes():
        raise UpdateDecodeError(
            "update was encoded against other global weights than the ones given; "
            "decode it with the weights sent to the client in the same round"
        )
    groups = _group_tensor_keys(record, count)
    deltas = []
    for i, reference in enumerate(old):
        shape = tuple(np.shape(reference))
        layout = _match_layout(i, groups.get(i, set()))
        arrays = _read_tensor(record, i, layout, shape)
        deltas.append(_decode_tensor(layout, arrays, shape))
    return deltas


def decode_update(
    record: ArrayRecord, old: Sequence[NDArray[np.floating]]
) -> list[NDArray[np.float32]]:
    """Return the client's weights as the server sees them: ``old + Δ̂`` in float32.

    Raises
    ------
    UpdateDecodeError
        As :func:`decode_deltas`.
    """
    deltas = decode_deltas(record, old)
    return [np.asarray(w, np.float32) + d for w, d in zip(old, deltas, strict=True)]


def decode_update_record(record: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """:func:`decode_update` on records: plain weights under the keys of ``old``.

    Raises
    ------
    UpdateDecodeError
        As :func:`decode_deltas`.
    """
    weights = decode_update(record, old.to_numpy_ndarrays())
    decoded = ArrayRecord()
    for key, values in zip(old.keys(), weights, strict=True):
        decoded[key] = Array(values)
    return decoded


# --- encoding ---------------------------------------------------------------------------


def _check_alignment(
    new: Sequence[NDArray[np.floating]],
    old: Sequence[NDArray[np.floating]],
    residual: Sequence[NDArray[np.floating]] | None,
) -> None:
    if len(new) != len(old):
        raise UpdateEncodeError(
            f"local model has {len(new)} tensors, global model {len(old)}; "
            "encode the weights trained from the global model just received"
        )
    if residual and len(residual) != len(new):
        raise UpdateEncodeError(
            f"residual has {len(residual)} tensors, model {len(new)}; "
            "drop the stored residual (the model changed)"
        )
    for i, (w_new, w_old) in enumerate(zip(new, old, strict=True)):
        if np.shape(w_new) != np.shape(w_old):
            raise UpdateEncodeError(
                f"tensor {i}: local shape {np.shape(w_new)} != global shape {np.shape(w_old)}"
            )
        if residual and np.shape(residual[i]) != np.shape(w_new):
            raise UpdateEncodeError(
                f"tensor {i}: residual shape {np.shape(residual[i])} != model shape "
                f"{np.shape(w_new)}; drop the stored residual (the model changed)"
            )


def _encode_tensor(target: NDArray[np.float64], cfg: CompressionConfig) -> Arrays:
    """Arrays for one finite tensor, keyed by layout suffix."""
    size = target.size
    if size < cfg.min_elements or not cfg.enabled:
        return {"raw": target.astype(np.float32)}
    k = top_k_count(size, cfg.topk_ratio)
    value_bytes = 1 if cfg.bits == 8 else 4
    if k < size:
        picked = top_k_indices(target, k)
        kept = target.ravel()[picked]
        idx_dtype = index_dtype(size)
        if k * (idx_dtype.itemsize + value_bytes) < size * value_bytes:
            sparse: Arrays = {"idx": picked.astype(idx_dtype)}
            if cfg.bits == 8:
                q, scale = quantize_int8(kept)
                return sparse | {"q": q, "scale": np.asarray(scale, dtype=np.float32)}
            return sparse | {"val": kept.astype(np.float32)}
        dense = np.zeros(size, np.float64)  # indices cost more than the zeros they save
        dense[picked] = kept
        target = dense.reshape(target.shape)
    if cfg.bits == 8:
        q, scale = quantize_int8(target)
        return {"q": q, "scale": np.asarray(scale, dtype=np.float32)}
    return {"raw": target.astype(np.float32)}


def _unsent(target: NDArray[np.float64], arrays: Arrays) -> NDArray[np.float32]:
    """What the server will not see of ``target``: the next round's residual."""
    unsent = target - _decode_tensor(_LAYOUTS[frozenset(arrays)], arrays, target.shape)
    if not np.isfinite(unsent).all():  # int8 steps at the very edge of the float32 range
        return np.zeros(target.shape, np.float32)
    return unsent.astype(np.float32)


def _fits_float32(values: NDArray[np.float64]) -> bool:
    if not np.isfinite(values).all():
        return False
    return values.size == 0 or float(np.max(np.abs(values))) <= _FLOAT32_MAX


def _base_digest(weights: Sequence[NDArray[np.floating]]) -> NDArray[np.uint8]:
    """Digest of the float32 weights an update is relative to."""
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    digest.update(np.int64(len(weights)).tobytes())
    for tensor in weights:
        values = np.ascontiguousarray(tensor, dtype=np.float32)
        digest.update(np.array(values.shape, dtype=np.int64).tobytes())
        digest.update(values.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8).copy()


# --- decoding ---------------------------------------------------------------------------


def _decode_tensor(layout: str, arrays: Arrays, shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Δ̂ of one tensor from validated arrays."""
    if layout == "raw":
        return np.asarray(arrays["raw"], np.float32).reshape(shape)
    if layout == "int8":
        return dequantize_int8(arrays["q"], arrays["scale"][()]).reshape(shape)
    if layout == "sparse":
        values = np.asarray(arrays["val"], np.float32)
    else:
        values = dequantize_int8(arrays["q"], arrays["scale"][()])
    flat = np.zeros(int(np.prod(shape)), np.float32)
    flat[np.asarray(arrays["idx"], np.int64)] = values
    return flat.reshape(shape)


def _read_header(record: ArrayRecord) -> int:
    if FORMAT_KEY not in record:
        raise UpdateDecodeError(
            f"record has no {FORMAT_KEY!r} key: it holds plain weights, not an encoded "
            "update (check is_encoded_update first)"
        )
    header = _read(record, FORMAT_KEY, np.int64, (2,))
    version, count = int(header[0]), int(header[1])
    if version != FORMAT_VERSION:
        raise UpdateDecodeError(
            f"update format version {version} is not supported (this server reads "
            f"{FORMAT_VERSION}); run the same fedge version on clients and server"
        )
    if count < 0:
        raise UpdateDecodeError(f"update declares {count} tensors")
    return count


def _group_tensor_keys(record: ArrayRecord, count: int) -> dict[int, set[str]]:
    groups: dict[int, set[str]] = {}
    for key in record:
        if key in (FORMAT_KEY, BASE_KEY):
            continue
        match = _TENSOR_KEY.fullmatch(key)
        if match is None or int(match.group(1)) >= count:
            raise UpdateDecodeError(
                f"unexpected key {key!r} in update of {count} tensors; "
                "keys are '<tensor index>/<part>'"
            )
        groups.setdefault(int(match.group(1)), set()).add(match.group(2))
    return groups


def _match_layout(index: int, parts: set[str]) -> str:
    if not parts:
        raise UpdateDecodeError(
            f"update has no arrays for tensor {index} (no '{index}/...' keys); "
            "the reply is truncated or was built by a different encoder"
        )
    layout = _LAYOUTS.get(frozenset(parts))
    if layout is not None:
        return layout
    candidates = [keys for keys in _LAYOUTS if parts < keys]
    if candidates:
        closest = min(candidates, key=len)
        missing = ", ".join(f"'{index}/{part}'" for part in sorted(closest - parts))
        raise UpdateDecodeError(
            f"tensor {index} lacks {missing} (a {_LAYOUTS[closest]} tensor); "
            "the reply is truncated or was built by a different encoder"
        )
    raise UpdateDecodeError(
        f"tensor {index} has parts {sorted(parts)}, which match no layout; expected one of "
        + "; ".join(f"{name}: {sorted(keys)}" for keys, name in _LAYOUTS.items())
    )


def _read_tensor(record: ArrayRecord, index: int, layout: str, shape: tuple[int, ...]) -> Arrays:
    """Read and validate one tensor's arrays against the global tensor's ``shape``."""
    key = f"{index}/"
    if layout == "raw":
        return {"raw": _read(record, key + "raw", np.float32, shape)}
    arrays: Arrays = {}
    if layout in ("int8", "sparse-int8"):
        arrays["scale"] = _read(record, key + "scale", np.float32, ())
        scale = float(arrays["scale"][()])
        if not (np.isfinite(scale) and scale >= 0.0):
            raise UpdateDecodeError(f"'{key}scale' is {scale}; a scale must be finite and >= 0")
    if layout == "int8":
        arrays["q"] = _read(record, key + "q", np.int8, shape)
        return arrays
    idx = _read_indices(record, key + "idx", int(np.prod(shape)))
    values_key, dtype = ("q", np.int8) if layout == "sparse-int8" else ("val", np.float32)
    arrays[values_key] = _read(record, key + values_key, dtype, idx.shape)
    arrays["idx"] = idx
    return arrays


def _read_indices(record: ArrayRecord, key: str, size: int) -> NDArray[np.integer]:
    idx = _load(record, key)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise UpdateDecodeError(
            f"{key!r} must be a 1-D integer array, got {idx.dtype} with shape {idx.shape}"
        )
    if idx.size > size:
        raise UpdateDecodeError(f"{key!r} holds {idx.size} indices for a tensor of {size}")
    if idx.size:
        wide = idx.astype(np.int64)
        if wide[0] < 0 or wide[-1] >= size:
            raise UpdateDecodeError(
                f"{key!r} has indices out of range [0, {size}) (first {wide[0]}, last {wide[-1]})"
            )
        if not (np.diff(wide) > 0).all():
            raise UpdateDecodeError(f"{key!r} must be strictly increasing (sorted, no repeats)")
    return idx


def _read(
    record: ArrayRecord, key: str, dtype: type[np.generic], shape: tuple[int, ...]
) -> NDArray[np.generic]:
    values = _load(record, key)
    if values.dtype != np.dtype(dtype) or values.shape != shape:
        raise UpdateDecodeError(
            f"{key!r} must be {np.dtype(dtype)} with shape {shape}, "
            f"got {values.dtype} with shape {values.shape}"
        )
    return values


def _load(record: ArrayRecord, key: str) -> NDArray[np.generic]:
    if key not in record:
        raise UpdateDecodeError(f"update lacks key {key!r}")
    try:
        return record[key].numpy()
    except Exception as err:  # corrupt bytes, pickled objects, unknown stype
        raise UpdateDecodeError(f"{key!r} is not a readable NumPy array: {err}") from err
