"""Fashion-MNIST from the standard IDX ``.gz`` files.

Where the files are looked for, in order:

1. ``data_dir`` given by the caller (the run config's ``data-dir``); the keyword
   ``"sample"`` names the small slice committed with fedge (``data/samples``);
2. the ``FEDGE_DATA_DIR`` environment variable;
3. the Debian package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. the Keras download cache ``~/.keras/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.samples import sample_path
from fedge.core.errors import DatasetNotFoundError

__all__ = [
    "DEBIAN_DIR",
    "FASHION_MNIST_CLASSES",
    "FILES",
    "KERAS_CACHE_DIR",
    "FashionMnist",
    "find_fashion_mnist_dir",
    "load_fashion_mnist",
    "read_idx",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
SAMPLE_KEYWORD = "sample"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class FashionMnist:
    """Images as uint8 ``(n, 28, 28)`` and labels as uint8 ``(n,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a NumPy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetNotFoundError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DatasetNotFoundError(
            f"{path} is truncated: header says {expected} bytes, file holds {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _has_all_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def find_fashion_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the first directory holding the four Fashion-MNIST files.

    Raises
    ------
    DatasetNotFoundError
        If no candidate directory holds them; the message names every place tried.
    """
    if data_dir is not None and str(data_dir) == SAMPLE_KEYWORD:
        return sample_path("fashion-mnist", tuple(FILES.values()))
    candidates: list[tuple[str, Path]] = []
    if data_dir:
        candidates.append(("run config data-dir", Path(data_dir).expanduser()))
    env_dir = os.environ.get("FEDGE_DATA_DIR")
    if env_dir:
        candidates.append(("FEDGE_DATA_DIR", Path(env_dir).expanduser()))
    candidates.append(("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    candidates.append(("Keras download cache", KERAS_CACHE_DIR))
    for _, directory in candidates:
        if _has_all_files(directory):
            return directory
    tried = "; ".join(f"{label}: {path}" for label, path in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (need {', '.join(FILES.values())}). Tried {tried}. "
        "Set run config data-dir or FEDGE_DATA_DIR, run `apt-get install "
        "dataset-fashion-mnist`, or use data-dir='sample' for the bundled slice."
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> FashionMnist:
    """Load Fashion-MNIST train and test splits from the first place that has them."""
    directory = find_fashion_mnist_dir(data_dir)
    arrays = {key: read_idx(directory / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DatasetNotFoundError(f"{directory}: {split} images and labels differ in count")
    return FashionMnist(source=directory, **arrays)
