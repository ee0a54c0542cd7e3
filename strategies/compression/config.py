"""What the client does to its update before sending it: the ``compression-*`` run-config keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge.errors import ConfigError

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

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> CompressionConfig:
        """Read the ``compression-*`` keys of a run config; other keys are ignored.

        Raises
        ------
        ConfigError
            A value has the wrong type or lies out of range.
        """
        defaults = cls()
        return cls(
            bits=_as_int(values, "compression-bits", defaults.bits),
            topk_ratio=_as_float(values, "compression-topk", defaults.topk_ratio),
            min_elements=_as_int(values, "compression-min-elements", defaults.min_elements),
            error_feedback=_as_bool(values, "compression-error-feedback", defaults.error_feedback),
        )


def _as_int(values: Mapping[str, Any], key: str, default: int) -> int:
    value = values.get(key, default)
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    return int(float(value))


def _as_float(values: Mapping[str, Any], key: str, default: float) -> float:
    value = values.get(key, default)
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key} must be a number, got {value!r}") from err


def _as_bool(values: Mapping[str, Any], key: str, default: bool) -> bool:
    value = values.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key} must be true or false, got {value!r}")
