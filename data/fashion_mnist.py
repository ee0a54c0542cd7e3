"""Fashion-MNIST from the standard IDX ``.gz`` files.

Which files are read is set by ``data_dir`` (the run config's ``data-dir``):

============  ==================================================================
``"auto"``    ``$FEDGE_DATA_DIR`` if set, else the committed slice (the default)
``"sample"``  the 4k/1k slice committed with fedge (``data/samples/fashion-mnist``)
a path        that directory, and nothing else
``""``        the full set: ``$FEDGE_DATA_DIR``, else the Debian package location
              ``/usr/share/datasets/fashion-mnist`` (``apt-get install
              dataset-fashion-mnist``), else the Keras cache ``~/.keras/datasets/fashion-mnist``
============  ==================================================================

``FEDGE_DATA_DIR`` is read by the process that loads the data (each client and the
server resolve it themselves), so it must be set where those processes start.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from data.samples import sample_path
from fedge.core.errors import DatasetNotFoundError

__all__ = [
    "AUTO",
    "DEBIAN_DIR",
    "ENV_VAR",
    "FILES",
    "KERAS_CACHE_DIR",
    "SAMPLE",
    "DataSource",
    "FashionMnist",
    "load_fashion_mnist",
    "locate_fashion_mnist",
    "read_idx",
]

AUTO = "auto"
SAMPLE = "sample"
ENV_VAR = "FEDGE_DATA_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_NEEDED = ", ".join(FILES.values())


@dataclass(frozen=True)
class DataSource:
    """Where a data set was found: the folder, the ``data-dir`` asked for, and why.

    ``found_by`` is ``data-dir`` (a keyword or path given explicitly), ``FEDGE_DATA_DIR``,
    ``default`` (``auto`` with ``FEDGE_DATA_DIR`` unset: the committed slice), or the
    search place that held the files (``Debian package``, ``Keras cache``).
    """

    directory: Path
    data_dir: str
    found_by: str

    @property
    def name(self) -> str:
        """``sample`` for the committed slice, else the folder's absolute path."""
        is_sample = self.data_dir == SAMPLE or self.found_by == "default"
        return SAMPLE if is_sample else str(self.directory)

    def describe(self) -> str:
        """``sample (data-dir='auto', FEDGE_DATA_DIR unset)``, ``/data (data-dir='auto', from
        FEDGE_DATA_DIR)``, …"""
        reason = {"data-dir": "", "default": f", {ENV_VAR} unset"}.get(
            self.found_by, f", from {self.found_by}"
        )
        return f"{self.name} (data-dir={self.data_dir!r}{reason})"


@dataclass(frozen=True)
class FashionMnist:
    """Images as uint8 ``(n, 28, 28)`` and labels as uint8 ``(n,)`` (read-only arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: DataSource

    def summary(self) -> dict[str, Any]:
        """What a run records about its data (the ``data`` entry of ``config.json``)."""
        return {
            "data-set": self.source.name,
            "data-dir": self.source.data_dir,
            "found-by": self.source.found_by,
            "train-samples": len(self.y_train),
            "test-samples": len(self.y_test),
        }

    def describe(self) -> str:
        """One line for a log: which data set, how it was chosen, how many samples."""
        return (
            f"Fashion-MNIST {self.source.describe()}: {len(self.y_train)} train / "
            f"{len(self.y_test)} test samples"
        )


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


def locate_fashion_mnist(data_dir: str | os.PathLike[str] = AUTO) -> DataSource:
    """Return where ``data_dir`` (see the module docstring) finds the four files.

    Raises
    ------
    DatasetNotFoundError
        If the chosen place lacks them; the message names every place tried.
    """
    asked = str(data_dir)
    env_dir = os.environ.get(ENV_VAR, "")
    if asked == SAMPLE or (asked == AUTO and not env_dir):
        found_by = "data-dir" if asked == SAMPLE else "default"
        return DataSource(sample_path("fashion-mnist", tuple(FILES.values())), asked, found_by)
    if asked == AUTO:
        directory = Path(env_dir).expanduser().resolve()
        if not _has_all_files(directory):
            raise DatasetNotFoundError(
                f"{ENV_VAR}={env_dir} does not hold Fashion-MNIST (need {_NEEDED}); point it "
                "at the folder with those files, or unset it to train on the committed slice"
            )
        return DataSource(directory, asked, ENV_VAR)
    if asked:
        directory = Path(asked).expanduser().resolve()
        if not _has_all_files(directory):
            raise DatasetNotFoundError(
                f"data-dir {asked} does not hold Fashion-MNIST (need {_NEEDED}); give the "
                f'folder with those files, data-dir="" to search {ENV_VAR}, {DEBIAN_DIR} and '
                f"{KERAS_CACHE_DIR}, or data-dir=sample for the committed slice"
            )
        return DataSource(directory, asked, "data-dir")
    candidates = [(ENV_VAR, Path(env_dir).expanduser())] if env_dir else []
    candidates += [("Debian package", DEBIAN_DIR), ("Keras cache", KERAS_CACHE_DIR)]
    for label, directory in candidates:
        if _has_all_files(directory):
            return DataSource(directory.resolve(), asked, label)
    tried = "; ".join(f"{label}: {path}" for label, path in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (need {_NEEDED}). Tried {tried}. Set {ENV_VAR}, run "
        "`apt-get install dataset-fashion-mnist`, give data-dir a folder, or use "
        "data-dir=sample for the committed slice."
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str] | DataSource = AUTO) -> FashionMnist:
    """Load the train and test splits chosen by ``data_dir`` (or an already located source).

    The files are read once per process and source; the arrays are read-only.
    """
    source = data_dir if isinstance(data_dir, DataSource) else locate_fashion_mnist(data_dir)
    return _read(source)


@lru_cache(maxsize=2)
def _read(source: DataSource) -> FashionMnist:
    arrays = {key: read_idx(source.directory / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DatasetNotFoundError(
                f"{source.directory}: {split} images and labels differ in count"
            )
    return FashionMnist(source=source, **arrays)
