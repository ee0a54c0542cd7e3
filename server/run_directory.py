"""Where a run writes its metrics, checkpoints and final model."""

from __future__ import annotations

import json
from pathlib import Path

from data.fashion_mnist import load_fashion_mnist
from fedge.core.errors import ConfigError
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
    data = load_fashion_mnist(cfg.data_dir).summary()
    if cfg.resume:
        _check_same_data(run_dir / "config.json", data)
    config = {"config": cfg.to_mapping(), "config_hash": cfg.training_hash(), "data": data}
    atomic_write(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    return run_dir


_DATA_IDENTITY = ("data-set", "train-samples", "test-samples")


def _check_same_data(config_file: Path, data: dict[str, object]) -> None:
    """Refuse to resume a run on another data set than the one it started on.

    ``data-dir=auto`` resolves through ``FEDGE_DATA_DIR``, so the same run config can name
    other data in another shell; the settings hash cannot see that, ``config.json`` can.
    """
    if not config_file.exists():
        return
    before = json.loads(config_file.read_text()).get("data")
    if before is None:
        return
    old = {k: before.get(k) for k in _DATA_IDENTITY}
    new = {k: data.get(k) for k in _DATA_IDENTITY}
    if old != new:
        raise ConfigError(
            f"this run started on data set {old}, resuming it would use {new}; "
            "set data-dir (or FEDGE_DATA_DIR) as when it started, or use a new run-name"
        )
