"""The one rule that names a run: ``<strategy>_<partitioning>_s<seed>``."""

from __future__ import annotations

from fedge.core.partition_scheme import PartitionScheme

__all__ = ["default_run_name"]


def default_run_name(strategy: str, scheme: PartitionScheme, seed: int) -> str:
    """File-safe run name, e.g. ``fedavg_dirichlet-0.5_s0`` (also a ``fedge compare`` cell id)."""
    return f"{strategy}_{scheme.label.replace(':', '-')}_s{seed}"
