"""Errors of the update codec: a reply that cannot be decoded, inputs that cannot be encoded."""

from __future__ import annotations

from fedge.core.errors import FedgeError

__all__ = ["UpdateDecodeError", "UpdateEncodeError"]


class UpdateEncodeError(FedgeError, ValueError):
    """Local weights, global weights and residual do not line up (count or shapes)."""


class UpdateDecodeError(FedgeError, ValueError):
    """An encoded update is malformed or was encoded against other global weights.

    The server should drop the reply (like a non-finite one) and keep the round going.
    """
