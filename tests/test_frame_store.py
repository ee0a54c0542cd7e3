"""Frame store: budget eviction, labels, crash safety (SIGKILL) and a full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.frame_store import FrameStore, LabelStatus
from fedge.core.errors import StoreError
from fedge.core.records import Detection, FrameResult

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Twenty 320x240 frames of the sample clip."""
    cap = cv2.VideoCapture(str(CLIP))
    images = [cv2.resize(cap.read()[1], (320, 240)) for _ in range(20)]
    cap.release()
    return images


def _result(index: int, hard: bool = False, reasons: list[str] | None = None) -> FrameResult:
    return FrameResult(
        frame=index,
        time=1_700_000_000.0 + index,
        source="test",
        detections=[Detection((10.0, 20.0, 50.0, 80.0), "face", 0.42)],
        hard=hard,
        hard_reasons=reasons if reasons is not None else (["uncertain_score"] if hard else []),
    )


def test_add_and_read_back_round_trips_frame_and_record(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    with FrameStore(tmp_path / "store", 10**8) as store:
        frame_id = store.add(frames[0], _result(0, hard=True))
        stored = store.get(frame_id)

    assert stored.detections == [{"box": [10.0, 20.0, 50.0, 80.0], "label": "face", "score": 0.42}]
    assert stored.hard and stored.hard_reasons == ["uncertain_score"]
    assert stored.label_status is LabelStatus.PENDING
    assert stored.load_image().shape == (240, 320, 3)
    assert (stored.width, stored.height) == (320, 240)


def test_eviction_keeps_store_within_budget_oldest_first(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    budget = 400_000
    with FrameStore(tmp_path / "store", budget, fsync=False) as store:
        ids = []
        for i in range(60):
            ids.append(store.add(frames[i % len(frames)], _result(i)))
            assert store.usage_bytes() <= budget
        kept = [f.id for f in store.iter_frames()]
        on_disk = sorted((tmp_path / "store" / "frames").rglob("*.jpg"))

    assert 0 < len(kept) < 60
    assert kept == ids[-len(kept) :]  # the newest survive
    assert len(on_disk) == len(kept)


def test_eviction_spares_hard_and_labelled_frames_while_it_can(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    with FrameStore(tmp_path / "store", 600_000, fsync=False) as store:
        hard_id = store.add(frames[0], _result(0, hard=True))
        labelled_id = store.add(frames[1], _result(1))
        store.set_label(labelled_id, {"boxes": []}, "cloud")
        for i in range(2, 40):
            store.add(frames[i % len(frames)], _result(i))
        kept = {f.id for f in store.iter_frames()}

    assert {hard_id, labelled_id} <= kept
    assert 3 not in kept


def test_frame_larger_than_budget_raises_store_error(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    with FrameStore(tmp_path / "store", 50_000) as store:
        with pytest.raises(StoreError, match="does not fit the store budget"):
            store.add(frames[0], _result(0))


def test_labels_flow_from_pending_to_labelled(tmp_path: Path, frames: list[np.ndarray]) -> None:
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store:
        plain = store.add(frames[0], _result(0))
        hard = store.add(frames[1], _result(1, hard=True))
        held = store.add(frames[2], _result(2, reasons=["uncertain_score", "suppressed:duplicate"]))
        assert [f.id for f in store.hard_cases()] == [hard]
        store.set_label_status(hard, "sent")
        assert store.hard_cases() == []
        assert [f.id for f in store.hard_cases(LabelStatus.SENT)] == [hard]
        store.set_label(hard, {"boxes": [[1, 2, 3, 4]], "labels": ["person"]}, "cloud-v1")

    with FrameStore.open_reader(tmp_path / "store") as reader:
        labelled = list(reader.iter_frames(labelled_only=True))
        statuses = {f.id: f.label_status for f in reader.iter_frames()}
        with pytest.raises(StoreError, match="read-only"):
            reader.add(frames[0], _result(3))

    assert [f.id for f in labelled] == [hard]
    assert labelled[0].label == {"boxes": [[1, 2, 3, 4]], "labels": ["person"]}
    assert labelled[0].label_source == "cloud-v1"
    assert statuses[plain] is LabelStatus.UNLABELLED
    assert statuses[held] is LabelStatus.SUPPRESSED


def test_unknown_frame_id_raises_store_error(tmp_path: Path) -> None:
    with FrameStore(tmp_path / "store", 10**8) as store:
        with pytest.raises(StoreError, match="no frame 42"):
            store.set_label(42, "x", "cloud")


def test_second_writer_is_refused_while_first_holds_the_store(tmp_path: Path) -> None:
    with FrameStore(tmp_path / "store", 10**8):
        with pytest.raises(StoreError, match="in use by another edge agent"):
            FrameStore(tmp_path / "store", 10**8)


def test_opening_reconciles_leftovers_of_a_crash(tmp_path: Path, frames: list[np.ndarray]) -> None:
    root = tmp_path / "store"
    with FrameStore(root, 10**8, fsync=False) as store:
        keep = store.add(frames[0], _result(0))
        gone = store.add(frames[1], _result(1))
        store.get(gone).path.unlink()  # row without its file
    (root / "tmp" / "half-written.jpg.tmp").write_bytes(b"\xff\xd8 partial")
    (root / "frames" / "orphan.jpg").write_bytes(b"\xff\xd8 no row")

    with FrameStore(root, 10**8) as store:
        report = store.recovery
        ids = [f.id for f in store.iter_frames()]

    assert (report.temp_files_removed, report.rows_without_file, report.files_without_row) == (
        1,
        1,
        1,
    )
    assert ids == [keep]
    assert not (root / "frames" / "orphan.jpg").exists()


# A writer that adds frames until it reaches a crash point, then says so on stdout and
# blocks there for ever; the test kills it with SIGKILL only after that line, so the kill
# lands exactly at the crash point. The crash points wrap the calls the store makes:
#   jpeg-written  the Nth fsync: a JPEG is complete in tmp/, not yet renamed
#   jpeg-renamed  the Nth rename: the JPEG is in frames/, its row not yet inserted
#   evicting      the Nth unlink of a frame: evicted rows are deleted, their files not yet
_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import cv2
    from data.frame_store import FrameStore
    from fedge.core.records import FrameResult

    root, clip, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cap = cv2.VideoCapture(clip)
    images = [cv2.resize(cap.read()[1], (320, 240)) for _ in range(8)]
    frames_dir = os.path.join(root, "frames") + os.sep
    frame = calls = 0
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def crash_point(where):
        global calls
        calls += 1
        if calls == nth:
            print("blocked", frame, where, flush=True)
            while True:
                signal.pause()

    def fsync(fd):
        real_fsync(fd)
        if point == "jpeg-written":
            crash_point(os.readlink(f"/proc/self/fd/{fd}"))

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        if point == "jpeg-renamed":
            crash_point(os.fspath(dst))

    def unlink(path, **kwargs):
        if point == "evicting" and os.fspath(path).startswith(frames_dir):
            crash_point(os.fspath(path))
        real_unlink(path, **kwargs)

    os.fsync, os.replace, os.unlink = fsync, replace, unlink
    store = FrameStore(root, int(sys.argv[5]))
    for frame in range(10 * nth + 200):
        hard = frame % 5 == 0
        reasons = ["uncertain_score"] if hard else []
        result = FrameResult(frame=frame, time=1.7e9 + frame, source="k", hard=hard,
                             hard_reasons=reasons)
        store.add(images[frame % 8], result)
    print("finished without reaching", point, flush=True)
    """
)
_KILL_BUDGET = 600_000  # about 30 frames: the writer evicts long before it is killed


@pytest.mark.parametrize(
    ("point", "nth"), [("jpeg-written", 60), ("jpeg-renamed", 60), ("evicting", 1)]
)
def test_sigkill_mid_write_leaves_a_readable_consistent_store(
    tmp_path: Path, point: str, nth: int
) -> None:
    # Prepare: a writer blocked at the crash point, then killed there.
    root = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(CLIP), point, str(nth), str(_KILL_BUDGET)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().rstrip("\n").split(" ", 2)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate()
    assert line[:1] == ["blocked"], (line, stderr)
    in_progress, where = int(line[1]), Path(line[2])

    # Execute: reopen as the writer, which reconciles what the kill left behind.
    with FrameStore(root, _KILL_BUDGET) as store:
        report = store.recovery
        stored = list(store.iter_frames())
        images = [f.load_image() for f in stored]
        usage = store.usage_bytes()
        hard = store.hard_cases(status=None)
    on_disk = sorted((root / "frames").rglob("*.jpg"))

    # Assert: exactly the leftover of the crash point was repaired ...
    if point == "jpeg-written":
        assert where.name.endswith(".jpg.tmp") and where.parent == root / "tmp"
        assert (report.temp_files_removed, report.rows_without_file) == (1, 0)
        assert report.files_without_row == 0
    elif point == "jpeg-renamed":
        assert where.parent.parent == root / "frames"
        assert (report.temp_files_removed, report.rows_without_file) == (0, 0)
        assert report.files_without_row == 1
    else:
        assert where.parent.parent == root / "frames"
        assert (report.temp_files_removed, report.rows_without_file) == (0, 0)
        assert report.files_without_row >= 1  # the batch of evicted frames
    assert not where.exists()
    # ... every frame added before the kill that was not evicted is whole, the one being
    # written is not there, and the store is back within its budget.
    indices = [f.frame_index for f in stored]
    assert indices == sorted(indices) and indices[-1] == in_progress - 1
    assert 1 not in indices  # the writer had evicted frames before it was killed
    assert all(image.shape == (240, 320, 3) for image in images)
    assert len(on_disk) == len(stored)
    assert list((root / "tmp").iterdir()) == []
    assert usage <= _KILL_BUDGET
    assert hard and all(f.frame_index % 5 == 0 for f in hard)


def test_disk_reserve_refuses_frame_and_keeps_what_is_stored(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    root = tmp_path / "store"
    with FrameStore(root, 10**8, fsync=False) as store:
        first = store.add(frames[0], _result(0))
        store.min_free_bytes = 1 << 60  # the disk now looks full
        with pytest.raises(StoreError, match="is full"):
            store.add(frames[1], _result(1))
        assert [f.id for f in store.iter_frames()] == [first]
        assert store.get(first).load_image().shape == (240, 320, 3)


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, cv2
    from fedge.core.records import FrameResult
    from data.frame_store import FrameStore
    from fedge.core.errors import StoreError
    image = cv2.resize(cv2.VideoCapture(sys.argv[2]).read()[1], (320, 240))
    store = FrameStore(sys.argv[1], 10**8)
    for i in range(3):
        store.add(image, FrameResult(frame=i, time=1.7e9 + i, source="full"))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        store.add(image, FrameResult(frame=3, time=1.7e9 + 3, source="full"))
    except StoreError as err:
        print("StoreError:", err)
    """
)


def test_write_failure_raises_store_error_and_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(root), str(CLIP)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("StoreError: cannot write frame"), done.stdout

    with FrameStore(root, 10**8) as store:
        assert [f.frame_index for f in store.iter_frames()] == [0, 1, 2]
        assert all(f.load_image().shape == (240, 320, 3) for f in store.iter_frames())
        assert store.recovery.clean
