"""Split a labelled data set among clients: IID, Dirichlet label skew, #C classes each.

The request itself (``PartitionScheme``) lives in ``fedge.core.partition_scheme``.

The splitting itself is done by flwr-datasets' partitioners on an in-memory
``datasets.Dataset`` of (index, label) rows; this module validates the request, makes
it deterministic by seed and returns plain index arrays.
"""

from __future__ import annotations

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.partition_scheme import PartitionScheme

__all__ = ["partition_indices"]


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: PartitionScheme, seed: int
) -> list[np.ndarray]:
    """Return one sorted index array per partition; every partition is non-empty.

    Raises
    ------
    ConfigError
        If ``num_partitions`` is not positive, exceeds the number of samples, or the
        scheme cannot give every partition at least one sample.
    """
    labels = np.asarray(labels)
    if num_partitions < 1:
        raise ConfigError(f"num-partitions must be >= 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ConfigError(
            f"num-partitions ({num_partitions}) is larger than the number of samples "
            f"({len(labels)}); use fewer partitions or more data"
        )
    num_classes = len(np.unique(labels))
    if scheme.name == "classes" and scheme.param > num_classes:
        raise ConfigError(
            f"classes-per-client ({int(scheme.param)}) exceeds the {num_classes} classes present"
        )
    partitioner = _make_partitioner(scheme, num_partitions, len(labels), seed)
    partitioner.dataset = _index_dataset(labels, seed)
    parts = [
        np.sort(np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64))
        for pid in range(num_partitions)
    ]
    empty = [pid for pid, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise ConfigError(
            f"{scheme.label} left partitions {empty} empty with {len(labels)} samples; "
            "use fewer partitions or a milder skew"
        )
    return parts


def _index_dataset(labels: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(len(labels))
    return Dataset.from_dict({"index": order, "label": labels[order].astype(np.int64)})


def _make_partitioner(scheme: PartitionScheme, num_partitions: int, num_samples: int, seed: int):  # type: ignore[no-untyped-def]
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if scheme.name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if scheme.name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=scheme.param,
            min_partition_size=min(10, num_samples // num_partitions),
            self_balancing=False,
            seed=seed,
        )
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=int(scheme.param),
        class_assignment_mode="first-deterministic",
        seed=seed,
    )
