"""Fashion-MNIST loading (which data set ``data-dir`` and ``FEDGE_DATA_DIR`` choose) and the
three partitioners."""

from __future__ import annotations

import gzip
import json
import logging
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import APP_DIR

from data.fashion_mnist import AUTO, FILES, load_fashion_mnist, locate_fashion_mnist
from data.partitioning import partition_indices
from fedge.core.errors import ConfigError, DatasetNotFoundError
from fedge.core.partition_scheme import PARTITIONERS, PartitionScheme, parse_partition_scheme
from fedge.core.run_config import RunConfig
from scripts.make_fashion_mnist_slice import write_idx


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_fashion_mnist("sample").y_train


def test_sample_slice_loads_with_matching_shapes_and_all_classes() -> None:
    data = load_fashion_mnist("sample")
    assert data.x_train.shape == (4000, 28, 28)
    assert data.x_test.shape == (1000, 28, 28)
    assert data.x_train.dtype == np.uint8
    assert set(np.unique(data.y_train)) == set(range(10))


def _write_data_set(directory: Path, n_train: int, n_test: int) -> Path:
    """A small Fashion-MNIST-shaped IDX data set, unlike the committed slice in size."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, name in FILES.items():
        write_idx(directory / name, arrays[key])
    return directory


@pytest.fixture
def env_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``FEDGE_DATA_DIR`` pointing at a generated 60/20-sample data set."""
    directory = _write_data_set(tmp_path / "env-data", 60, 20)
    monkeypatch.setenv("FEDGE_DATA_DIR", str(directory))
    return directory


def test_fedge_data_dir_is_used_when_data_dir_is_auto(env_data: Path) -> None:
    # Execute: "auto" is the default of load_fashion_mnist and of the run config
    data = load_fashion_mnist()
    # Assert
    assert (len(data.y_train), len(data.y_test)) == (60, 20)
    assert data.summary() == {
        "data-set": str(env_data),
        "data-dir": AUTO,
        "found-by": "FEDGE_DATA_DIR",
        "train-samples": 60,
        "test-samples": 20,
    }
    assert str(env_data) in data.describe() and "60 train / 20 test" in data.describe()
    assert RunConfig().data_dir == AUTO


def test_auto_without_fedge_data_dir_is_the_committed_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDGE_DATA_DIR", raising=False)
    data = load_fashion_mnist(AUTO)
    assert data.summary()["data-set"] == "sample"
    assert data.summary()["found-by"] == "default"
    assert len(data.y_train) == 4000
    assert "FEDGE_DATA_DIR unset" in data.describe()


def test_explicit_sample_and_folder_win_over_fedge_data_dir(env_data: Path, tmp_path: Path) -> None:
    # Prepare: a second data set, named explicitly
    other = _write_data_set(tmp_path / "other", 30, 10)
    # Execute
    sample = load_fashion_mnist("sample")
    folder = load_fashion_mnist(other)
    search = load_fashion_mnist("")
    # Assert
    assert (len(sample.y_train), sample.summary()["data-set"]) == (4000, "sample")
    assert (len(folder.y_train), folder.summary()["data-set"]) == (30, str(other))
    assert (len(search.y_train), search.summary()["found-by"]) == (60, "FEDGE_DATA_DIR")


def test_fedge_data_dir_without_the_files_is_an_error_not_the_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGE_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="FEDGE_DATA_DIR=.*empty.*unset it"):
        locate_fashion_mnist()


def test_a_folder_without_the_files_is_an_error_with_no_fallback(
    env_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(DatasetNotFoundError, match="data-dir .*given does not hold"):
        locate_fashion_mnist(tmp_path / "given")


def test_full_set_search_error_names_every_place_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr("data.fashion_mnist.DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr("data.fashion_mnist.KERAS_CACHE_DIR", tmp_path / "keras")
    with pytest.raises(DatasetNotFoundError) as err:
        locate_fashion_mnist("")
    message = str(err.value)
    for place in ("env", "debian", "keras", "FEDGE_DATA_DIR"):
        assert place in message


def test_full_set_search_finds_the_debian_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDGE_DATA_DIR", raising=False)
    debian = _write_data_set(tmp_path / "debian", 40, 10)
    monkeypatch.setattr("data.fashion_mnist.DEBIAN_DIR", debian)
    source = locate_fashion_mnist("")
    assert (source.directory, source.found_by) == (debian, "Debian package")


def test_run_config_without_data_dir_trains_and_evaluates_on_fedge_data_dir(
    env_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the app's own defaults (pyproject.toml), as `flwr run` merges them
    from clients.fashion_mnist_node import node_data_for
    from server.run_directory import prepare_run_directory

    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    cfg = RunConfig.from_mapping({**defaults["config"], "output-dir": str(tmp_path / "out")})
    # Execute
    run_dir = prepare_run_directory(cfg)
    with caplog.at_level(logging.WARNING):
        node = node_data_for(cfg, partition_id=0, num_partitions=2)
    # Assert: the server's record and the node's data both come from FEDGE_DATA_DIR
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["data"]["data-set"] == str(env_data)
    assert recorded["data"]["train-samples"] == 60
    assert recorded["config"]["data-dir"] == AUTO
    assert len(node.y_train) + len(node.y_val) == 30  # half of the 60 generated samples
    assert f"Fashion-MNIST {env_data}" in caplog.text


def test_explicit_sample_run_config_records_the_slice(env_data: Path, tmp_path: Path) -> None:
    from server.run_directory import prepare_run_directory

    cfg = RunConfig(data_dir="sample", output_dir=str(tmp_path), run_name="r")
    recorded = json.loads((prepare_run_directory(cfg) / "config.json").read_text())
    assert recorded["data"]["data-set"] == "sample"
    assert recorded["data"]["train-samples"] == 4000


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    sample = locate_fashion_mnist("sample").directory
    for name in FILES.values():
        (tmp_path / name).write_bytes((sample / name).read_bytes())
    raw = gzip.decompress((tmp_path / FILES["x_test"]).read_bytes())
    (tmp_path / FILES["x_test"]).write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetNotFoundError, match="truncated"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.5", "classes:2"])
def test_partitions_cover_every_sample_once_are_non_empty_and_deterministic(
    labels: np.ndarray, text: str
) -> None:
    scheme = parse_partition_scheme(text)
    parts = partition_indices(labels, 10, scheme, seed=3)
    again = partition_indices(labels, 10, scheme, seed=3)
    other = partition_indices(labels, 10, scheme, seed=4)
    joined = np.concatenate(parts)
    assert all(len(p) > 0 for p in parts)
    assert len(joined) == len(np.unique(joined))
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(parts, other, strict=True))
    if text == "iid":
        assert len(joined) == len(labels)


@pytest.mark.parametrize("name", PARTITIONERS)
def test_every_partitioner_the_run_config_accepts_is_implemented(
    labels: np.ndarray, name: str
) -> None:
    # a parameter valid for each: Dirichlet alpha 2, 2 classes per client, ignored by iid
    parts = partition_indices(labels, 10, PartitionScheme(name, 2.0), seed=0)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)


def test_classes_partitioner_gives_each_client_exactly_c_classes(labels: np.ndarray) -> None:
    parts = partition_indices(labels, 10, PartitionScheme("classes", 2), seed=0)
    assert [len(np.unique(labels[p])) for p in parts] == [2] * 10


def test_dirichlet_small_alpha_skews_labels_more_than_iid(labels: np.ndarray) -> None:
    def mean_classes(scheme: PartitionScheme) -> float:
        parts = partition_indices(labels, 10, scheme, seed=0)
        dominant = [np.bincount(labels[p]).max() / len(p) for p in parts]
        return float(np.mean(dominant))

    assert mean_classes(PartitionScheme("dirichlet", 0.1)) > 2 * mean_classes(
        PartitionScheme("iid")
    )


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_rejected(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        PartitionScheme("dirichlet", alpha)


def test_more_partitions_than_samples_is_rejected() -> None:
    with pytest.raises(ConfigError, match="larger than the number of samples"):
        partition_indices(np.arange(5) % 2, 6, PartitionScheme("iid"), seed=0)


def test_unknown_partitioner_and_missing_parameter_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown partitioner"):
        parse_partition_scheme("shards:3")
    with pytest.raises(ConfigError, match="needs a parameter"):
        parse_partition_scheme("dirichlet")


def test_resume_on_another_data_set_than_the_run_started_on_is_refused(
    env_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.run_directory import prepare_run_directory

    # Prepare: a run started with data-dir=auto while FEDGE_DATA_DIR named env_data
    cfg = RunConfig(output_dir=str(tmp_path), run_name="r")
    prepare_run_directory(cfg)
    resumed = RunConfig(output_dir=str(tmp_path), run_name="r", resume=True)
    prepare_run_directory(resumed)  # same data: fine
    # Execute / Assert: the same run config in a shell without FEDGE_DATA_DIR
    monkeypatch.delenv("FEDGE_DATA_DIR")
    with pytest.raises(ConfigError, match="started on data set"):
        prepare_run_directory(resumed)
