"""Reject client replies whose weights hold NaN or Inf before any strategy sees them."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Message

__all__ = ["has_non_finite_arrays", "split_non_finite"]

log = logging.getLogger(__name__)


def has_non_finite_arrays(message: Message) -> bool:
    """True if any ArrayRecord in the reply holds a NaN or Inf value."""
    for record in message.content.array_records.values():
        for array in record.values():
            values = array.numpy()
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                return True
    return False


def split_non_finite(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """Split replies into (kept, rejected); error replies are kept for the strategy to log.

    Every rejected reply is logged with its node id.
    """
    kept: list[Message] = []
    rejected: list[Message] = []
    for reply in replies:
        if reply.has_content() and has_non_finite_arrays(reply):
            log.warning(
                "rejected update from node %s: non-finite weights (NaN/Inf) not aggregated",
                reply.metadata.src_node_id,
            )
            rejected.append(reply)
        else:
            kept.append(reply)
    return kept, rejected
