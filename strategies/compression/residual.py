"""Keeping the error-feedback residual in a node's ``context.state`` between rounds.

Typical client use::

    stored = context.state.array_records.get(RESIDUAL_STATE_KEY)
    record, residual = encode_update(new, old, cfg, residual_from_record(stored))
    context.state[RESIDUAL_STATE_KEY] = residual_to_record(residual)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord
from numpy.typing import NDArray

__all__ = ["RESIDUAL_STATE_KEY", "residual_from_record", "residual_to_record"]

RESIDUAL_STATE_KEY = "compression-residual"
"""Key of the residual's ``ArrayRecord`` in ``context.state``."""


def residual_to_record(residual: Sequence[NDArray[np.floating]]) -> ArrayRecord:
    """The residual as an ``ArrayRecord`` (empty when there is none), for ``context.state``."""
    return ArrayRecord([np.asarray(r, np.float32) for r in residual]) if residual else ArrayRecord()


def residual_from_record(record: ArrayRecord | None) -> list[NDArray[np.float32]] | None:
    """The residual stored by :func:`residual_to_record`; ``None`` if nothing is stored.

    Its shapes are checked against the model by ``encode_update``.
    """
    if record is None or len(record) == 0:
        return None
    return [np.asarray(r, np.float32) for r in record.to_numpy_ndarrays()]
