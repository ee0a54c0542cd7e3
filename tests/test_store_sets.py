"""Frame stores of simulated nodes: ``detector-store-root`` (``data.store_sets``), how a
node and its model installs find their store, and ``fedge simulate``'s checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APP_DIR

from clients.model_updates import node_store_config
from clients.tasks import get_task
from data.frame_store import FrameStore
from data.store_sets import find_frame_stores, store_for_partition
from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig


def _stores(root: Path, layout: dict[str, str]) -> None:
    """Make child ``name`` of ``root`` a store (``"store"``), hold one in ``store/``
    (``"demo"``) or stay an ordinary folder (``"plain"``)."""
    for name, kind in layout.items():
        target = {"store": root / name, "demo": root / name / "store"}.get(kind)
        if target is None:
            (root / name).mkdir(parents=True)
            continue
        FrameStore(target, fsync=False).close()


def test_stores_are_found_in_both_layouts_in_name_order_and_other_folders_are_skipped(
    tmp_path: Path,
) -> None:
    # Prepare: the demo's site-<i>/store beside a bare store and a folder that is neither
    _stores(tmp_path, {"site-1": "demo", "a-camera": "store", "notes": "plain", "site-0": "demo"})
    (tmp_path / "README.txt").write_text("not a folder")
    # Execute
    found = find_frame_stores(tmp_path)
    # Assert
    assert found == [
        tmp_path / "a-camera",
        tmp_path / "site-0" / "store",
        tmp_path / "site-1" / "store",
    ]
    assert store_for_partition(tmp_path, 1, 3) == tmp_path / "site-0" / "store"


@pytest.mark.parametrize(
    ("layout", "partition", "nodes", "message"),
    [
        ({}, 0, 1, "holds no frame store"),
        ({"x": "plain"}, 0, 1, "holds no frame store"),
        ({"site-0": "demo"}, 0, 2, "holds 1 frame stores for 2 nodes"),
        ({"site-0": "demo", "site-1": "demo"}, 2, 2, "partition-id 2 is outside 0..1"),
        ({"site-0": "demo"}, -1, None, "partition-id -1 is outside 0..0"),
    ],
)
def test_a_root_that_cannot_serve_the_node_says_why(
    tmp_path: Path, layout: dict[str, str], partition: int, nodes: int | None, message: str
) -> None:
    _stores(tmp_path, layout)
    with pytest.raises(ConfigError, match=message):
        store_for_partition(tmp_path, partition, nodes)


def test_a_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        find_frame_stores(tmp_path / "nowhere")


def test_a_simulated_node_trains_on_its_store_and_installs_into_a_folder_of_its_run(
    tmp_path: Path,
) -> None:
    # Prepare
    _stores(tmp_path, {"site-0": "demo", "site-1": "demo"})
    cfg = RunConfig.from_mapping({"task": "person-detector", "detector-store-root": str(tmp_path)})
    simulated = {"partition-id": 1, "num-partitions": 2}
    # Execute
    node = get_task("person-detector").node_setup(cfg, simulated)
    run = {"detector-store-root": str(tmp_path), "output-dir": str(tmp_path / "out")}
    install = node_store_config(simulated, run, run_id=7)
    # Assert: training and the smoke test read site-1's store; the model goes to the run's
    # own folder for this node (not the user's cache, not the store's real detector/)
    assert node.config["store-dir"] == str(tmp_path / "site-1" / "store")
    assert node.partition_id == 1
    assert install["store-dir"] == str(tmp_path / "site-1" / "store")
    expected = tmp_path / "out" / "simulated-nodes" / "run-7" / "node-1" / "detector"
    assert install["detector-dir"] == str(expected)


def test_a_real_nodes_own_store_dir_wins_over_the_root(tmp_path: Path) -> None:
    _stores(tmp_path, {"site-0": "demo"})
    own = {"store-dir": "/var/lib/fedge/store", "partition-id": 0}
    cfg = RunConfig.from_mapping({"task": "person-detector", "detector-store-root": str(tmp_path)})
    assert get_task("person-detector").node_setup(cfg, own).config["store-dir"] == own["store-dir"]
    assert node_store_config(own, {"detector-store-root": str(tmp_path)}, run_id=1) == own
    assert node_store_config({"partition-id": 0}, {}) == {"partition-id": 0}


def test_a_node_with_neither_store_dir_nor_root_is_told_both_ways_to_get_one() -> None:
    cfg = RunConfig.from_mapping({"task": "person-detector"})
    with pytest.raises(ConfigError, match="store-dir.*detector-store-root"):
        get_task("person-detector").node_setup(cfg, {"partition-id": 0})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs --set detector-store-root=DIR"),
        (["--set", "detector-store-root=ROOT"], "holds 1 frame stores for 2 simulated nodes"),
    ],
)
def test_fedge_simulate_refuses_a_detector_run_without_a_store_per_node(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    # Prepare
    _stores(tmp_path / "root", {"site-0": "demo"})
    args = [a.replace("ROOT", str(tmp_path / "root")) for a in extra]
    # Execute: nothing starts (no Flower home is written)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "simulate",
            "--app-dir",
            str(APP_DIR),
            "--flwr-home",
            str(tmp_path / "home"),
            "--num-supernodes",
            "2",
            "--set",
            "task=person-detector",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Assert
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "home").exists()
