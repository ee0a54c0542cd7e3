"""Fashion-MNIST loading and the three partitioners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.fashion_mnist import FILES, find_fashion_mnist_dir, load_fashion_mnist
from data.partitioning import partition_indices
from fedge.core.errors import ConfigError, DatasetNotFoundError
from fedge.core.partition_scheme import PartitionScheme, parse_partition_scheme


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_fashion_mnist("sample").y_train


def test_sample_slice_loads_with_matching_shapes_and_all_classes() -> None:
    data = load_fashion_mnist("sample")
    assert data.x_train.shape == (4000, 28, 28)
    assert data.x_test.shape == (1000, 28, 28)
    assert data.x_train.dtype == np.uint8
    assert set(np.unique(data.y_train)) == set(range(10))


def test_missing_dataset_error_names_every_place_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr("data.fashion_mnist.DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr("data.fashion_mnist.KERAS_CACHE_DIR", tmp_path / "keras")
    with pytest.raises(DatasetNotFoundError) as err:
        find_fashion_mnist_dir(tmp_path / "given")
    message = str(err.value)
    for place in ("given", "env", "debian", "keras", "FEDGE_DATA_DIR"):
        assert place in message


def test_env_dir_is_used_when_no_data_dir_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = find_fashion_mnist_dir("sample")
    for name in FILES.values():
        (tmp_path / name).symlink_to(sample / name)
    monkeypatch.setenv("FEDGE_DATA_DIR", str(tmp_path))
    assert find_fashion_mnist_dir(None) == tmp_path


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    sample = find_fashion_mnist_dir("sample")
    for name in FILES.values():
        (tmp_path / name).write_bytes((sample / name).read_bytes())
    import gzip

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
