"""Crash-safe file writes: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(
    path: Path | str,
    data: bytes | Callable[[BinaryIO], object],
    *,
    tmp_dir: Path | str | None = None,
    fsync: bool = True,
) -> None:
    """Write ``data`` (bytes, or a function that writes to the open handle) to ``path``.

    The bytes go to ``<tmp_dir or path's folder>/<name>.tmp``, are flushed and fsynced,
    then renamed over ``path``, so a crash leaves either the old file or the new one,
    never a torn one. ``tmp_dir`` must be on the same file system as ``path``. On error the
    temporary file is removed and the ``OSError`` propagates.
    """
    final = Path(path)
    temp = Path(tmp_dir or final.parent) / (final.name + ".tmp")
    try:
        with open(temp, "wb") as handle:
            if isinstance(data, bytes | bytearray | memoryview):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
