"""Where a run writes its metrics, checkpoints and final model."""

from __future__ import annotations

import json
from pathlib import Path

from data.fashion_mnist import load_fashion_mnist
from fedge.core.files import atomic_write
from fedge.core.partition_scheme import PartitionScheme
from fedge.core.run_config import RunConfig
from fedge.core.run_names import default_run_name

__all__ = ["prepare_run_directory"]


def prepare_run_directory(cfg: RunConfig) -> Path:
    """Create ``<output-dir>/<run-name>`` and write ``config.json`` into it.

    ``config.json`` holds the run config, its training hash and ``data``: the data set
    the server resolved for ``data-dir`` (``sample`` or a folder, how it was found, and
    the numbers of train and test samples). Clients resolve ``data-dir`` in their own
    processes and log theirs.
    """
    scheme = PartitionScheme(cfg.partitioner, cfg.partitioner_param)
    name = cfg.run_name or default_run_name(cfg.strategy, scheme, cfg.seed)
    run_dir = Path(cfg.output_dir).expanduser().resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "config": cfg.to_mapping(),
        "config_hash": cfg.training_hash(),
        "data": load_fashion_mnist(cfg.data_dir).summary(),
    }
    atomic_write(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    return run_dir
