"""Sets of frame stores on one machine: one store per simulated site.

A simulation of the person-detector task (``fedge simulate``) has no edge agent per node,
so its nodes train on stores written before, e.g. by ``fedge demo`` (``OUT/sites/site-<i>/
store``) or by ``fedge edge --store-dir`` on several cameras. A **store root** is a folder
whose children are those stores: a child counts when it is a frame store itself
(``index.sqlite`` in it) or holds one in ``store/`` (the demo's layout). Children are
taken in name order, so the node of ``partition-id`` ``i`` gets the ``i``-th store.
"""

from __future__ import annotations

import os
from pathlib import Path

from data.frame_store import STORE_INDEX
from fedge.core.errors import ConfigError

__all__ = ["find_frame_stores", "store_for_partition"]


def find_frame_stores(root: str | os.PathLike[str]) -> list[Path]:
    """The frame stores under ``root`` (module docstring), in name order.

    Raises
    ------
    ConfigError
        ``root`` is not a folder, or no child of it is (or holds) a frame store.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError(f"store root {folder} is not a folder")
    stores = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (child / STORE_INDEX).is_file():
            stores.append(child)
        elif (child / "store" / STORE_INDEX).is_file():
            stores.append(child / "store")
    if not stores:
        raise ConfigError(
            f"store root {folder} holds no frame store (a child folder with {STORE_INDEX}, "
            f"or with store/{STORE_INDEX} as `fedge demo` writes under OUT/sites)"
        )
    return stores


def store_for_partition(
    root: str | os.PathLike[str], partition_id: int, num_partitions: int | None = None
) -> Path:
    """The store of the node with ``partition_id`` among ``num_partitions`` nodes.

    Raises
    ------
    ConfigError
        There are fewer stores than nodes, or ``partition_id`` is out of range.
    """
    stores = find_frame_stores(root)
    nodes = len(stores) if num_partitions is None else int(num_partitions)
    if nodes > len(stores):
        raise ConfigError(
            f"store root {root} holds {len(stores)} frame stores for {nodes} nodes; "
            "give every node one (fewer --num-supernodes, or more stores)"
        )
    if not 0 <= partition_id < nodes:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{nodes - 1}")
    return stores[partition_id]
