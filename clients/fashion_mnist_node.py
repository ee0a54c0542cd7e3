"""A Fashion-MNIST training node: its data partition and its cached trainer.

Built once per process and partition, reused every round (the simulation keeps its
worker processes alive across rounds), so TensorFlow graphs are traced only once. The
node resolves its data set itself (run config or node config ``data-dir``, and this
process's ``FEDGE_DATA_DIR``; see ``data.fashion_mnist``) and logs which one it uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from data.fashion_mnist import DataSource, FashionMnist, load_fashion_mnist, locate_fashion_mnist
from data.partitioning import partition_indices
from fedge.core.errors import ConfigError
from fedge.core.partition_scheme import PartitionScheme
from fedge.core.run_config import RunConfig
from models.cnn import build_cnn
from models.training import LocalTrainer, set_cpu_threads, to_model_input

__all__ = ["NodeData", "get_trainer", "load_node_data", "node_data_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeData:
    """One partition: training and local validation arrays (model input form)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@lru_cache(maxsize=4)
def _partitioned(
    source: DataSource, scheme: PartitionScheme, num_partitions: int, seed: int
) -> tuple[FashionMnist, list[np.ndarray]]:
    """The data set and every partition's indices, computed once per process."""
    dataset = load_fashion_mnist(source)
    log.warning("node data: %s", dataset.describe())
    return dataset, partition_indices(dataset.y_train, num_partitions, scheme, seed)


# One worker process serves many partitions in a simulation: keep them all (a full
# Fashion-MNIST partition of 10 is ~20 MB in model-input form).
@lru_cache(maxsize=64)
def load_node_data(
    source: DataSource,
    scheme: PartitionScheme,
    partition_id: int,
    num_partitions: int,
    seed: int,
    max_train_samples: int = 0,
    validation_share: float = 0.2,
) -> NodeData:
    """Load the data set at ``source``, partition it and return partition ``partition_id``.

    The last ``validation_share`` of the (shuffled) partition is kept for local
    evaluation (0: the client evaluates on its training data). ``max_train_samples`` > 0
    caps the training part.
    """
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1} (num-partitions)"
        )
    dataset, parts = _partitioned(source, scheme, num_partitions, seed)
    own = np.random.default_rng(seed + partition_id).permutation(parts[partition_id])
    n_val = int(len(own) * validation_share) if len(own) >= 5 else 0
    train_idx, val_idx = own[: len(own) - n_val], own[len(own) - n_val :]
    if max_train_samples > 0:
        train_idx = train_idx[:max_train_samples]
    if len(val_idx) == 0:  # tiny partitions validate on their training data
        val_idx = train_idx
    x = dataset.x_train
    y = dataset.y_train.astype(np.int32)
    return NodeData(
        to_model_input(x[train_idx]),
        y[train_idx],
        to_model_input(x[val_idx]),
        y[val_idx],
    )


@lru_cache(maxsize=2)
def get_trainer(task: str, momentum: float, cpu_threads: int = 0) -> LocalTrainer:
    """The process-wide trainer for ``task`` (built and traced once).

    ``cpu_threads`` > 0 fixes TensorFlow's intra-op pool first (one per client process
    is fastest when the simulation runs one client per core); it must be the first
    TensorFlow use in the process.
    """
    if task != "fashion-mnist":
        raise ConfigError(f"unknown task {task!r}")
    if cpu_threads:
        try:
            set_cpu_threads(cpu_threads)
        except RuntimeError as err:
            raise ConfigError(f"cpu-threads={cpu_threads}: {err}") from err
    return LocalTrainer(lambda: build_cnn(seed=0), momentum=momentum)


def node_data_for(cfg: RunConfig, partition_id: int, num_partitions: int) -> NodeData:
    """``load_node_data`` with the run config's data settings.

    ``data-dir`` is resolved on every call (cheap), so the cache is keyed by the folder
    actually used, never by a keyword whose meaning depends on the environment.
    """
    scheme = PartitionScheme(cfg.partitioner, cfg.partitioner_param)
    return load_node_data(
        locate_fashion_mnist(cfg.data_dir),
        scheme,
        partition_id,
        num_partitions,
        cfg.seed,
        cfg.max_train_samples,
        cfg.validation_share,
    )
