"""Video capture for the edge node: one reader thread feeding a small drop-oldest queue.

Sources are a camera index (``"0"``), a video file, an RTSP/HTTP URL or a folder of
images. The reader thread never waits for inference: when frames of a live source
arrive faster than they are consumed, the oldest queued frame is dropped and counted.
Files and folders are read as fast as they are consumed instead (nothing is dropped)
unless ``realtime=True`` paces them at their native frame rate like a camera.

A live source (camera, URL) that stops delivering frames is reopened with exponential
backoff; a file or folder ends cleanly at its end. Frames that cannot be decoded are
skipped and counted. A source that cannot be opened raises ``CaptureError``. With
``loop=True`` a file or folder starts again at its first frame when it ends (frame indices
keep increasing), for a recording that stands in for a camera.

Example::

    with Capture("data/samples/vtest_clip.mp4", CaptureConfig(size=(640, 480))) as cap:
        for frame in cap:
            ...
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedge.core.errors import CaptureError, ConfigError

__all__ = [
    "Capture",
    "CaptureConfig",
    "CaptureStats",
    "Frame",
    "SourceKind",
    "classify_source",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# Consecutive failed reads after which a file is considered finished (FFmpeg may fail a
# handful of reads while it resynchronises after a damaged packet, then carry on).
FILE_FAILURE_STREAK_END = 25


class SourceKind(StrEnum):
    """What kind of video source a ``--source`` string names."""

    CAMERA = "camera"
    FILE = "file"
    URL = "url"
    FOLDER = "folder"

    @property
    def live(self) -> bool:
        """Whether the source delivers frames in real time (and may drop out)."""
        return self in (SourceKind.CAMERA, SourceKind.URL)


@dataclass(frozen=True)
class Frame:
    """One captured frame: ``image`` is BGR ``uint8`` (H, W, 3).

    ``time`` is the wall-clock capture time (Unix seconds), ``started`` the
    ``time.perf_counter()`` reading when the read began, ``capture_ms`` the time spent
    reading, decoding and resizing it.
    """

    index: int
    time: float
    image: np.ndarray
    source: str
    capture_ms: float
    started: float


@dataclass
class CaptureStats:
    """Counters of a capture run (updated by the reader thread, read by anyone)."""

    read: int = 0
    dropped: int = 0
    corrupt: int = 0
    reconnects: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a plain dict."""
        return {
            "read": self.read,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
            "reconnects": self.reconnects,
            "error": self.error,
        }


@dataclass(frozen=True)
class CaptureConfig:
    """How to read a source.

    ``size`` resizes every frame to (width, height). ``drop_oldest`` chooses the queue
    policy when the consumer is slower than the source: ``None`` means drop for live
    sources and wait for files and folders. ``realtime`` paces files and folders at
    ``folder_fps`` or their native rate. Reconnection waits ``reconnect_initial_s``,
    doubling up to ``reconnect_max_s``; ``max_reconnects`` (``None`` = forever) bounds the
    attempts in a row before the capture gives up with an error. ``max_frames`` ends the
    source after that many frames (0: no limit). ``loop`` starts a file or folder again
    at its first frame when it ends, indices counting on (a live source never loops).
    """

    size: tuple[int, int] | None = None
    queue_size: int = 2
    drop_oldest: bool | None = None
    realtime: bool = False
    folder_fps: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    max_reconnects: int | None = None
    max_frames: int = 0
    loop: bool = False
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0


def classify_source(source: str | int | Path) -> SourceKind:
    """Return the kind of ``source`` without opening it."""
    if isinstance(source, int):
        return SourceKind.CAMERA
    text = str(source)
    if text.isdigit():
        return SourceKind.CAMERA
    if text.lower().startswith(URL_SCHEMES):
        return SourceKind.URL
    if Path(text).is_dir():
        return SourceKind.FOLDER
    return SourceKind.FILE


# ok: a frame; corrupt: an undecodable frame (skipped, counted); retry: a failed read of a
# file that may still recover; end: the source is finished; lost: a live source dropped.
_ReadStatus = Literal["ok", "corrupt", "retry", "end", "lost"]


def _quiet_opencv() -> None:
    """Keep OpenCV and FFmpeg from writing warnings to stderr (we count and report them)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class _VideoReader:
    """A camera, file or URL read through ``cv2.VideoCapture``."""

    def __init__(self, source: str, kind: SourceKind, config: CaptureConfig) -> None:
        self.source = source
        self.kind = kind
        self._config = config
        self._cap: Any = None
        self._failures = 0
        self._decoded = 0
        self.fps = 0.0

    def open(self) -> None:
        import cv2

        _quiet_opencv()
        if self.kind is SourceKind.CAMERA:
            cap = cv2.VideoCapture(int(self.source))
        elif self.kind is SourceKind.URL:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self._config.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self._config.read_timeout_s * 1000),
            ]
            cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(_open_failure_message(self.source, self.kind))
        self._cap = cap
        self._failures = 0
        self._decoded = 0
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> tuple[_ReadStatus, np.ndarray | None]:
        import cv2

        ok, image = self._cap.read()
        if ok and image is not None and image.size > 0:
            self._failures = 0
            self._decoded += 1
            return "ok", image
        if ok:
            return "corrupt", None
        if self.kind.live:
            return "lost", None
        self._failures += 1
        position = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
        total = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if total <= 0 or position >= total or self._failures >= FILE_FAILURE_STREAK_END:
            return "end", None
        return "retry", None

    def frames_missing(self) -> int:
        """Frames the file announced but that could not be decoded (files only)."""
        import cv2

        if self._cap is None or self.kind.live:
            return 0
        total = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return max(0, total - self._decoded) if total > 0 else 0

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class _FolderReader:
    """A folder of still images, read in sorted name order."""

    def __init__(self, source: str, config: CaptureConfig) -> None:
        self.source = source
        self.kind = SourceKind.FOLDER
        self._paths: deque[Path] = deque()
        self.fps = config.folder_fps

    def open(self) -> None:
        folder = Path(self.source)
        try:
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as err:
            raise CaptureError(f"cannot read folder {folder}: {err.strerror}") from err
        if not paths:
            raise CaptureError(
                f"folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._paths = deque(paths)

    def read(self) -> tuple[_ReadStatus, np.ndarray | None]:
        import cv2

        if not self._paths:
            return "end", None
        path = self._paths.popleft()
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError:
            return "corrupt", None  # removed or unreadable since the folder was listed
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None or image.size == 0:
            return "corrupt", None
        return "ok", image

    def frames_missing(self) -> int:
        return 0

    def close(self) -> None:
        self._paths.clear()


def _open_failure_message(source: str, kind: SourceKind) -> str:
    if kind is SourceKind.CAMERA:
        return f"cannot open camera {source}: check that it is connected and not in use"
    if kind is SourceKind.URL:
        return f"cannot open stream {source}: check the URL and that the camera is reachable"
    path = Path(source)
    if not path.exists():
        return f"video file {source} does not exist"
    if not os.access(path, os.R_OK):
        return f"video file {source} is not readable (permission denied)"
    return f"cannot decode video file {source}: not a video OpenCV can read, or truncated"


class Capture:
    """Read frames from a source in a background thread; iterate to consume them.

    ``start()`` opens the source synchronously (raising ``CaptureError``) and starts the
    reader thread. ``get()`` returns the next frame or ``None`` at the end of the
    source. ``stop()`` ends the reader; a capture is also a context manager.
    """

    def __init__(self, source: str | int | Path, config: CaptureConfig | None = None) -> None:
        self.source = str(source)
        self.kind = classify_source(source)
        self.config = config or CaptureConfig()
        if self.config.loop and self.kind.live:
            raise ConfigError(
                f"cannot loop {self.kind.value} {self.source}: only a file or a folder "
                "starts again at its end (drop --loop)"
            )
        self.stats = CaptureStats()
        self._reader: _VideoReader | _FolderReader = (
            _FolderReader(self.source, self.config)
            if self.kind is SourceKind.FOLDER
            else _VideoReader(self.source, self.kind, self.config)
        )
        drop = self.config.drop_oldest
        self._drop_oldest = (self.kind.live or self.config.realtime) if drop is None else drop
        self._frames: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._finished = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fps(self) -> float:
        """The source's nominal frame rate (0 when unknown)."""
        return self._reader.fps

    def start(self) -> Capture:
        """Open the source and start the reader thread."""
        if self._thread is not None:
            return self
        self._reader.open()
        self._thread = threading.Thread(target=self._run, name="fedge-capture", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """Return the next frame, or ``None`` when the source has ended or stopped.

        Raises ``queue.Empty`` when ``timeout`` passes with no frame.
        """
        with self._ready:
            while not self._frames and not self._finished:
                if not self._ready.wait(timeout):
                    raise queue.Empty
            if self._frames:
                frame = self._frames.popleft()
                self._ready.notify_all()
                return frame
            return None

    def stop(self) -> None:
        """Stop the reader thread and release the source."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.config.read_timeout_s + 1.0)
        self._reader.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.get()) is not None:
            yield frame

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reader thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read_loop()
        except CaptureError as err:
            self.stats.error = str(err)
        except Exception as err:  # never let the reader die silently
            self.stats.error = f"capture failed: {type(err).__name__}: {err}"
        finally:
            with self._ready:
                self._finished = True
                self._ready.notify_all()

    def _read_loop(self) -> None:
        period = 1.0 / self.fps if self.config.realtime and self.fps > 0 else 0.0
        next_due = time.monotonic()
        index = 0
        pass_start = 0  # the index of the first frame of this pass over the source
        while not self._stop.is_set():
            started = time.perf_counter()
            status, image = self._reader.read()
            if status == "end":
                self.stats.corrupt += self._reader.frames_missing()
                if not self.config.loop or index == pass_start:  # a pass without a frame
                    return
                self._reader.close()
                self._reader.open()
                pass_start = index
                continue
            if status == "lost":
                self._reconnect()
                continue
            if status == "retry":
                continue
            if status == "corrupt" or image is None:
                self.stats.corrupt += 1
                continue
            if (
                self.config.size is not None
                and (
                    image.shape[1],
                    image.shape[0],
                )
                != self.config.size
            ):
                import cv2

                image = cv2.resize(image, self.config.size, interpolation=cv2.INTER_AREA)
            frame = Frame(
                index=index,
                time=time.time(),
                image=image,
                source=self.source,
                capture_ms=(time.perf_counter() - started) * 1000.0,
                started=started,
            )
            index += 1
            self.stats.read += 1
            self._put(frame)
            if self.config.max_frames and index >= self.config.max_frames:
                return
            if period:
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_due = time.monotonic()

    def _put(self, frame: Frame) -> None:
        with self._ready:
            while len(self._frames) >= self.config.queue_size:
                if self._drop_oldest:
                    self._frames.popleft()
                    self.stats.dropped += 1
                elif self._stop.is_set():
                    return
                else:
                    self._ready.wait(0.1)
            self._frames.append(frame)
            self._ready.notify_all()

    def _reconnect(self) -> None:
        """Reopen a live source with exponential backoff until it works or we give up."""
        self._reader.close()
        delay = self.config.reconnect_initial_s
        attempts = 0
        while not self._stop.is_set():
            if self.config.max_reconnects is not None and attempts >= self.config.max_reconnects:
                raise CaptureError(
                    f"lost {self.kind.value} {self.source} and could not reopen it after "
                    f"{attempts} attempts"
                )
            if self._stop.wait(delay):
                return
            attempts += 1
            try:
                self._reader.open()
            except CaptureError:
                delay = min(delay * 2.0, self.config.reconnect_max_s)
                continue
            self.stats.reconnects += 1
            return
