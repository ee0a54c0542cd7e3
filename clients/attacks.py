"""Byzantine client behaviour for robustness experiments (simulation only).

A malicious client trains honestly, then corrupts the update it sends:
``sign-flip`` sends ``w_g - s (w - w_g)``, ``scale`` sends ``w_g + s (w - w_g)``,
``noise`` adds Gaussian noise with std ``s``, ``nan`` sends NaN weights and ``inf``
sends +Inf. ``s`` is the run config's ``attack-scale``. A new attack is one more entry
in ``ATTACKS`` and its name in ``fedge.core.run_config.ATTACKS``, which validates run
configs (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedge.core.errors import ConfigError

__all__ = ["ATTACKS", "apply_attack", "is_malicious"]

Weights = list[np.ndarray]
Attack = Callable[[Weights, Weights, float, np.random.Generator], Weights]

ATTACKS: dict[str, Attack] = {
    "sign-flip": lambda new, old, s, rng: [o - s * (n - o) for n, o in zip(new, old, strict=True)],
    "scale": lambda new, old, s, rng: [o + s * (n - o) for n, o in zip(new, old, strict=True)],
    "noise": lambda new, old, s, rng: [
        n + rng.normal(0.0, s, n.shape).astype(n.dtype) for n in new
    ],
    "nan": lambda new, old, s, rng: [np.full_like(n, np.nan) for n in new],
    "inf": lambda new, old, s, rng: [np.full_like(n, np.inf) for n in new],
}


def is_malicious(partition_id: int, num_partitions: int, fraction: float) -> bool:
    """The first ``round(fraction * num_partitions)`` partitions are malicious."""
    return partition_id < round(fraction * num_partitions)


def apply_attack(
    name: str, new: Weights, old: Weights, scale: float, rng: np.random.Generator
) -> Weights:
    """Return the corrupted update for attack ``name``."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return [
        np.asarray(w, dtype=n.dtype)
        for w, n in zip(ATTACKS[name](new, old, scale, rng), new, strict=True)
    ]
