"""Capture: real files, folders and a real MJPEG stream that dies mid-stream."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.capture import Capture, CaptureConfig, SourceKind, classify_source
from fedge.core.errors import CaptureError, ConfigError

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
CLIP_FRAMES = 240
SERVER = Path(__file__).with_name("mjpeg_server.py")
NOBODY = 65534  # uid and gid of the unprivileged user "nobody"


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve 320x240 JPEG frames of the sample clip."""
    folder = tmp_path_factory.mktemp("jpegs")
    cap = cv2.VideoCapture(str(CLIP))
    for i in range(12):
        ok, frame = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.resize(frame, (320, 240)))
    cap.release()
    return folder


def _drain(capture: Capture) -> int:
    with capture:
        return sum(1 for _ in capture)


def test_classify_source_names_each_kind(tmp_path: Path) -> None:
    assert classify_source("0") is SourceKind.CAMERA
    assert classify_source(2) is SourceKind.CAMERA
    assert classify_source("rtsp://cam.local/stream") is SourceKind.URL
    assert classify_source("http://127.0.0.1:8080/video.mjpg") is SourceKind.URL
    assert classify_source(tmp_path) is SourceKind.FOLDER
    assert classify_source("clip.mp4") is SourceKind.FILE


def test_sample_clip_reads_every_frame_resized() -> None:
    capture = Capture(CLIP, CaptureConfig(size=(320, 240)))
    with capture:
        shapes = {frame.image.shape for frame in capture}
    assert shapes == {(240, 320, 3)}
    assert capture.stats.read == CLIP_FRAMES
    assert (capture.stats.dropped, capture.stats.corrupt, capture.stats.error) == (0, 0, None)


def test_max_frames_ends_the_source_early() -> None:
    capture = Capture(CLIP, CaptureConfig(max_frames=7))
    assert _drain(capture) == 7 == capture.stats.read


def test_loop_starts_a_folder_again_with_indices_counting_on(jpeg_dir: Path) -> None:
    capture = Capture(jpeg_dir, CaptureConfig(loop=True, max_frames=30))
    with capture:
        frames = list(capture)

    assert [f.index for f in frames] == list(range(30))
    assert capture.stats.read == 30 and capture.stats.error is None
    for frame in frames[12:]:  # 12 images: frame 12 is image 0 again, and so on
        np.testing.assert_array_equal(frame.image, frames[frame.index % 12].image)


def test_loop_starts_a_video_file_again_at_its_first_frame() -> None:
    capture = Capture(CLIP, CaptureConfig(size=(160, 120), loop=True, max_frames=CLIP_FRAMES + 3))
    with capture:
        frames = list(capture)

    assert [f.index for f in frames] == list(range(CLIP_FRAMES + 3))
    assert (capture.stats.corrupt, capture.stats.error) == (0, None)
    for k in range(3):
        np.testing.assert_array_equal(frames[CLIP_FRAMES + k].image, frames[k].image)


def test_loop_over_a_folder_without_one_good_image_ends(tmp_path: Path) -> None:
    (tmp_path / "000.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "001.jpg").write_bytes(b"")
    capture = Capture(tmp_path, CaptureConfig(loop=True))

    assert _drain(capture) == 0
    assert capture.stats.corrupt == 2


@pytest.mark.parametrize("source", ["0", "rtsp://cam.local/stream"])
def test_loop_is_refused_for_a_live_source(source: str) -> None:
    with pytest.raises(ConfigError, match="only a file or a folder"):
        Capture(source, CaptureConfig(loop=True))


def test_missing_file_raises_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="does not exist") as info:
        Capture(tmp_path / "nope.mp4").start()
    assert "\n" not in str(info.value)


def test_random_bytes_named_mp4_raises_capture_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(np.random.default_rng(0).bytes(64_000))
    with pytest.raises(CaptureError, match="cannot decode video file"):
        Capture(bogus).start()


def test_truncated_mp4_without_index_raises_capture_error(tmp_path: Path) -> None:
    data = CLIP.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # mp4v writes its index (moov) last
    with pytest.raises(CaptureError, match="truncated"):
        Capture(truncated).start()


def test_truncated_avi_ends_cleanly_and_counts_missing_frames(tmp_path: Path) -> None:
    avi = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    cap = cv2.VideoCapture(str(CLIP))
    for _ in range(40):
        writer.write(cv2.resize(cap.read()[1], (320, 240)))
    writer.release()
    cap.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: int(len(data) * 0.6)])

    capture = Capture(avi)
    read = _drain(capture)

    assert 0 < read < 40
    assert capture.stats.corrupt == 40 - read
    assert capture.stats.error is None


def test_corrupted_middle_skips_bad_frames_and_counts_them(tmp_path: Path) -> None:
    damaged = bytearray(CLIP.read_bytes())
    start = len(damaged) // 3
    for i in range(start, start + 200_000, 7):
        damaged[i] ^= 0xFF
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(damaged))

    capture = Capture(path)
    read = _drain(capture)

    assert read == capture.stats.read
    assert 0 < read < CLIP_FRAMES
    assert capture.stats.read + capture.stats.corrupt == CLIP_FRAMES


def test_folder_skips_corrupt_empty_and_vanished_images(jpeg_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(jpeg_dir.glob("*.jpg"))[:5]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "005.jpg").write_bytes(b"not a jpeg at all")
    (folder / "006.jpg").write_bytes(b"")
    capture = Capture(folder, CaptureConfig(queue_size=1))
    capture.start()
    first = capture.get(timeout=5)  # the reader now waits to hand over 002
    (folder / "004.jpg").unlink()  # removed after the folder was listed
    rest = sum(1 for _ in capture)
    capture.stop()

    assert first is not None and first.image.shape == (240, 320, 3)
    assert 1 + rest == capture.stats.read == 4
    assert capture.stats.corrupt == 3
    assert capture.stats.error is None


def test_empty_folder_raises_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="has no images"):
        Capture(tmp_path).start()


def test_missing_camera_raises_capture_error() -> None:
    with pytest.raises(CaptureError, match="cannot open camera 57"):
        Capture("57").start()


def test_realtime_source_drops_oldest_when_consumer_is_slow() -> None:
    capture = Capture(CLIP, CaptureConfig(realtime=True, queue_size=2))
    consumed = []
    with capture:
        for frame in capture:
            consumed.append(frame.index)
            time.sleep(0.25)  # 4 FPS against a 10 FPS source
            if len(consumed) == 6:
                break
    stats = capture.stats

    assert stats.dropped > 0
    assert consumed == sorted(consumed)
    assert consumed[-1] - consumed[0] > len(consumed)  # we skipped frames, newest kept
    assert stats.read >= len(consumed) + stats.dropped


def _start_server(port: int, folder: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), str(folder), "50"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc, int(line.split()[1])


def test_stream_killed_mid_stream_reconnects_and_continues(jpeg_dir: Path) -> None:
    server, port = _start_server(0, jpeg_dir)
    config = CaptureConfig(reconnect_initial_s=0.2, reconnect_max_s=0.4, read_timeout_s=2.0)
    capture = Capture(f"http://127.0.0.1:{port}/stream.mjpg", config)
    restarted = None
    try:
        capture.start()
        before = [capture.get(timeout=10) for _ in range(10)]
        server.kill()  # the camera dies mid-stream
        server.wait()
        time.sleep(1.0)  # a few reconnect attempts fail while it is down
        restarted, _ = _start_server(port, jpeg_dir)
        after = [capture.get(timeout=15) for _ in range(10)]
    finally:
        capture.stop()
        for proc in (server, restarted):
            if proc is not None:
                proc.kill()
                proc.wait()

    assert all(f is not None and f.image.shape == (240, 320, 3) for f in before + after)
    assert capture.stats.reconnects >= 1
    assert capture.stats.error is None
    indices = [f.index for f in before + after if f is not None]
    assert indices == sorted(indices)


def test_stream_that_stays_down_gives_up_with_an_error(jpeg_dir: Path) -> None:
    server, port = _start_server(0, jpeg_dir)
    config = CaptureConfig(reconnect_initial_s=0.05, reconnect_max_s=0.1, max_reconnects=3)
    capture = Capture(f"http://127.0.0.1:{port}/stream.mjpg", config)
    try:
        capture.start()
        assert capture.get(timeout=10) is not None
        server.kill()
        server.wait()
        deadline = time.monotonic() + 10
        while capture.get(timeout=10) is not None:  # drain what was queued, then end
            assert time.monotonic() < deadline
    finally:
        capture.stop()
        server.kill()
        server.wait()
    assert capture.stats.error is not None
    assert "could not reopen it after 3 attempts" in capture.stats.error


def test_unreachable_stream_raises_capture_error() -> None:
    with pytest.raises(CaptureError, match="cannot open stream"):
        Capture("http://127.0.0.1:9/stream.mjpg", CaptureConfig(open_timeout_s=1.0)).start()


def _try_to_start(source: str) -> str:
    """Return how ``Capture(source).start()`` ends: ``opened`` or the error as a line."""
    try:
        Capture(source).start().stop()
    except CaptureError as err:
        return f"CaptureError: {err}"
    except BaseException as err:
        return f"{type(err).__name__}: {err}"
    return "opened"


def _try_to_start_without_privileges(path: Path) -> str:
    """``_try_to_start`` for a user who may not read ``path``, also when run as root.

    Root reads every file, so as root the attempt runs in a forked child that drops to
    the user nobody first. The child opens ``path`` relative to its folder (its working
    directory), so the folders above need not be open to nobody.
    """
    if os.geteuid() != 0:
        return _try_to_start(str(path))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.chdir(path.parent)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = _try_to_start(path.name)
            if os.access(path.name, os.R_OK):
                outcome = f"still privileged: {outcome}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], 60.0)
        outcome = os.read(read_end, 4096).decode() if ready else "no answer from the child"
    finally:
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return outcome


def test_unreadable_file_raises_capture_error(tmp_path: Path) -> None:
    # Prepare: a valid clip nobody may read, in a folder anyone may enter.
    folder = tmp_path / "videos"
    folder.mkdir()
    folder.chmod(0o711)
    path = folder / "locked.mp4"
    path.write_bytes(CLIP.read_bytes())
    path.chmod(0)

    # Execute
    outcome = _try_to_start_without_privileges(path)

    # Assert
    assert outcome.startswith("CaptureError: video file "), outcome
    assert outcome.endswith("locked.mp4 is not readable (permission denied)"), outcome
