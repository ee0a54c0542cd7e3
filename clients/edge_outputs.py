"""Where ``fedge edge`` writes what it sees: JSON lines, annotated video, a window."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedge.core.errors import ConfigError
from fedge.core.records import FrameResult

__all__ = ["JsonlSink", "VideoSink", "WindowSink"]


class JsonlSink:
    """Append one ``FrameResult.to_json()`` object per line to a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise ConfigError(f"cannot write --jsonl {self.path}: {err.strerror}") from err

    def write(self, result: FrameResult, uplink: dict[str, Any] | None = None) -> None:
        """Write one record and flush it (a crash loses at most the current line).

        ``uplink`` (the uploader's counters, with ``--cloud``) is added as the ``uplink`` key.
        """
        record = result.to_json()
        if uplink is not None:
            record["uplink"] = uplink
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class VideoSink:
    """Write annotated frames to an MP4 (``mp4v``) file, sized by the first frame."""

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = Path(path)
        self.fps = fps if fps > 0 else 10.0
        self._writer: Any = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot write --out {self.path}: {err.strerror}") from err

    def write(self, image: np.ndarray) -> None:
        """Append one BGR frame."""
        import cv2

        if self._writer is None:
            size = (int(image.shape[1]), int(image.shape[0]))
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, size
            )
            if not self._writer.isOpened():
                raise ConfigError(f"cannot open --out {self.path} for MP4 writing")
        self._writer.write(image)

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class WindowSink:
    """Show frames in an OpenCV window; ``q`` or Esc asks to stop."""

    def __init__(self, title: str = "fedge edge") -> None:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise ConfigError("--show needs a display (DISPLAY is not set); use --out instead")
        self.title = title

    def show(self, image: np.ndarray) -> bool:
        """Display ``image``; return ``False`` when the user asked to stop."""
        import cv2

        try:
            cv2.imshow(self.title, image)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as err:
            raise ConfigError(
                "--show needs an OpenCV build with GUI support; use --out instead"
            ) from err
        return key not in (ord("q"), 27)

    def close(self) -> None:
        """Close the window."""
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
