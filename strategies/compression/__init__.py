"""Communication-efficient client updates: delta encoding, int8, top-k, error feedback.

Clients call :func:`encode_update` (keeping the returned residual in ``context.state``
with :func:`residual_to_record`); the server calls :func:`decode_update` (or
:func:`decode_update_record`) on every reply for which :func:`is_encoded_update` is true,
before any strategy aggregates. Wire layout and error bounds: :mod:`.codec`.
"""

from fedge.core.compression_config import CompressionConfig
from strategies.compression.codec import (
    decode_deltas,
    decode_update,
    decode_update_record,
    encode_update,
    is_encoded_update,
)
from strategies.compression.errors import UpdateDecodeError, UpdateEncodeError
from strategies.compression.residual import (
    RESIDUAL_STATE_KEY,
    residual_from_record,
    residual_to_record,
)

__all__ = [
    "RESIDUAL_STATE_KEY",
    "CompressionConfig",
    "UpdateDecodeError",
    "UpdateEncodeError",
    "decode_deltas",
    "decode_update",
    "decode_update_record",
    "encode_update",
    "is_encoded_update",
    "residual_from_record",
    "residual_to_record",
]
