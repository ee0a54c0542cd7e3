"""Write the committed Fashion-MNIST slice (``data/samples/fashion-mnist``).

Usage: ``python scripts/make_fashion_mnist_slice.py [SRC_DIR] [--train N] [--test N]``.
Takes the first N training and test images of the full data set (by default from
Debian's ``dataset-fashion-mnist``) and writes them in the same IDX ``.gz`` format.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from data.fashion_mnist import DEBIAN_DIR, FILES, read_idx

OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "samples" / "fashion-mnist"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (mtime 0 for reproducible bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    """Parse arguments and write the slice."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", nargs="?", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    counts = {"train": args.train, "t10k": args.test}
    for name in FILES.values():
        array = read_idx(args.src / name)[: counts[name.split("-")[0]]]
        write_idx(OUT_DIR / name, array)
        print(f"{OUT_DIR / name}: {array.shape}")


if __name__ == "__main__":
    main()
