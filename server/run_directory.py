"""Where a run writes its metrics, checkpoints and final model."""

from __future__ import annotations

import json
from pathlib import Path

from fedge.core.partition_scheme import PartitionScheme
from fedge.core.run_config import RunConfig
from fedge.core.run_names import default_run_name as run_name_rule

__all__ = ["default_run_name", "prepare_run_directory"]


def default_run_name(cfg: RunConfig) -> str:
    """``<strategy>_<partitioning>_s<seed>``, e.g. ``fedavg_dirichlet-0.5_s0``."""
    scheme = PartitionScheme(cfg.partitioner, cfg.partitioner_param)
    return run_name_rule(cfg.strategy, scheme, cfg.seed)


def prepare_run_directory(cfg: RunConfig) -> Path:
    """Create ``<output-dir>/<run-name>`` and write the run's config into it."""
    run_dir = Path(cfg.output_dir).expanduser().resolve() / (cfg.run_name or default_run_name(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"config": cfg.to_mapping(), "config_hash": cfg.training_hash()}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir
