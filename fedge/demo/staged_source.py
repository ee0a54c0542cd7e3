"""A camera that the demo feeds stretch by stretch: the edge agent keeps running between.

:class:`StagedSource` stands where ``clients.capture.Capture`` stands in a
``clients.pipeline.Pipeline`` (``start``, ``get``, ``stop``, ``stats``). The demo
releases each round's stretch of frames (JPEG files on the site's disk, decoded when
the pipeline takes them); in between the source waits, so the agent, its frame store,
its uploader and its detector follower stay up across rounds, and a new model version is
swapped in while it runs. A frame's ``time`` is its time in the video
(``epoch + index / fps``): the hard-case rate limit runs on it (``Pipeline(frame_clock=True)``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from clients.capture import CaptureStats, Frame, SourceKind

__all__ = ["StagedFrame", "StagedSource"]


@dataclass(frozen=True)
class StagedFrame:
    """A frame of the source: its index and the JPEG that holds it."""

    index: int
    path: Path


class StagedSource:
    """Frames released in stretches (module docstring); ``finish()`` ends the source."""

    kind = SourceKind.FILE

    def __init__(self, name: str, fps: float, epoch: float) -> None:
        self.source = name
        self._fps = fps
        self.epoch = epoch
        self.stats = CaptureStats()
        self._pending: deque[StagedFrame] = deque()
        self._ready = threading.Condition()
        self._finished = False

    @property
    def fps(self) -> float:
        """The source's frame rate."""
        return self._fps

    def start(self) -> StagedSource:
        """Nothing to open: frames come with :meth:`release`."""
        return self

    def release(self, frames: Sequence[StagedFrame]) -> None:
        """Let the pipeline take ``frames``, in order."""
        with self._ready:
            self._pending.extend(frames)
            self._ready.notify_all()

    def finish(self) -> None:
        """No more stretches: ``get`` returns ``None`` once the released frames are taken."""
        with self._ready:
            self._finished = True
            self._ready.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next released frame, ``None`` at the end; ``queue.Empty`` after ``timeout``.

        A JPEG that cannot be decoded is counted in ``stats.corrupt`` and skipped.
        """
        while True:
            with self._ready:
                while not self._pending and not self._finished:
                    if not self._ready.wait(timeout):
                        raise queue.Empty
                if not self._pending:
                    return None
                staged = self._pending.popleft()
            started = time.perf_counter()
            image = cv2.imread(str(staged.path), cv2.IMREAD_COLOR)
            if image is None:
                self.stats.corrupt += 1
                continue
            self.stats.read += 1
            return Frame(
                index=staged.index,
                time=self.epoch + staged.index / self._fps,
                image=image,
                source=self.source,
                capture_ms=(time.perf_counter() - started) * 1000.0,
                started=started,
            )

    def stop(self) -> None:
        """End the source now (pending frames are dropped)."""
        with self._ready:
            self._pending.clear()
            self._finished = True
            self._ready.notify_all()
