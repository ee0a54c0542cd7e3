"""What the client does to its update before sending it: the ``compression-*`` run-config keys."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core.errors import ConfigError

__all__ = ["CompressionConfig"]

_BITS = (8, 32)


@dataclass(frozen=True)
class CompressionConfig:
    """How a client encodes ``Δ = w_local − w_global``.

    Attributes
    ----------
    bits : int
        32 sends float32 values; 8 sends symmetric int8 values with one float32
        scale per tensor (run-config key ``compression-bits``).
    topk_ratio : float
        In (0, 1]; below 1 only the ``ceil(topk_ratio · n)`` largest-magnitude entries
        of each tensor are sent (``compression-topk``).
    min_elements : int
        Tensors with fewer elements (biases) are always sent as float32 Δ
        (``compression-min-elements``).
    error_feedback : bool
        Keep what was not sent in a residual and add it to the next round's Δ
        (``compression-error-feedback``).
    """

    bits: int = 32
    topk_ratio: float = 1.0
    min_elements: int = 256
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in _BITS:
            raise ConfigError(f"compression-bits must be 8 or 32, got {self.bits!r}")
        if not 0.0 < self.topk_ratio <= 1.0:
            raise ConfigError(
                f"compression-topk must lie in (0, 1] (1 sends every entry), "
                f"got {self.topk_ratio!r}"
            )
        if self.min_elements < 0:
            raise ConfigError(f"compression-min-elements must be >= 0, got {self.min_elements!r}")

    @property
    def enabled(self) -> bool:
        """True if updates are quantized or sparsified (else plain weights may be sent)."""
        return self.bits != 32 or self.topk_ratio < 1.0
