"""Per-tensor primitives: symmetric int8 quantization and top-k selection.

Quantization is symmetric: ``q = round(x / scale)`` with
``scale = max|x| / 127`` (rounded up to the next float32, so ``|q| <= 127`` and no
value is clipped). Decoding is ``q · scale`` and its error is

    |dequantize(quantize(x)) − x| <= scale / 2        (elementwise)

plus at most one float32 rounding of the decoded value (``|x| · 2⁻²⁴``). Zero is
exact, so entries dropped by top-k and unchanged weights stay exactly zero; an
all-zero tensor has ``scale = 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "INT8_LEVELS",
    "dequantize_int8",
    "index_dtype",
    "quantize_int8",
    "top_k_count",
    "top_k_indices",
]

INT8_LEVELS = 127
"""Largest ``|q|``: symmetric, so ``-128`` is never produced."""


def quantize_int8(values: NDArray[np.floating]) -> tuple[NDArray[np.int8], np.float32]:
    """Return ``(q, scale)`` with ``|q · scale − values| <= scale / 2``.

    ``values`` must be finite and no larger in magnitude than the float32 maximum.
    """
    x = np.asarray(values, dtype=np.float64)
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    if amax == 0.0:
        return np.zeros(x.shape, np.int8), np.float32(0.0)
    scale = np.float32(amax / INT8_LEVELS)
    while float(scale) * INT8_LEVELS < amax:  # float32 rounded down (or underflowed)
        scale = np.nextafter(scale, np.float32(np.inf))
    q = np.clip(np.rint(x / float(scale)), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q, scale


def dequantize_int8(q: NDArray[np.int8], scale: np.float32) -> NDArray[np.float32]:
    """Return ``q · scale`` in float32."""
    return q.astype(np.float32) * np.float32(scale)


def top_k_count(size: int, ratio: float) -> int:
    """``ceil(ratio · size)``, at least 1, without float noise (10% of 2400 is 240)."""
    if size == 0:
        return 0
    return max(1, min(size, math.ceil(round(ratio * size, 6))))


def top_k_indices(values: NDArray[np.floating], k: int) -> NDArray[np.int64]:
    """Flat indices of the ``k`` largest-magnitude entries, sorted ascending."""
    flat = np.abs(np.ravel(values))
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    picked = np.argpartition(flat, flat.size - k)[flat.size - k :]
    return np.sort(picked).astype(np.int64)


def index_dtype(size: int) -> np.dtype[Any]:
    """Smallest index type for a tensor of ``size`` elements (uint16, int32 or int64)."""
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    if size <= 1 << 31:
        return np.dtype(np.int32)
    return np.dtype(np.int64)
