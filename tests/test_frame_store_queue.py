"""The frame store as the uploader's queue: transitions, retries, eviction order,
migration of older stores and use from several threads."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from data.frame_store import _SCHEMA, FrameStore, LabelStatus
from fedge.core.errors import StoreError
from fedge.core.labels import FrameLabel, LabelBox, LabelError
from fedge.core.records import Detection, FrameResult


def _image(seed: int, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A noisy frame (noise keeps the JPEG large enough for budget tests)."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _result(index: int, hard: bool) -> FrameResult:
    return FrameResult(
        frame=index,
        time=1_700_000_000.0 + index,
        source="test",
        detections=[Detection((10.0, 20.0, 50.0, 80.0), "face", 0.42)],
        hard=hard,
        hard_reasons=["uncertain_score"] if hard else [],
    )


def _label(source: str = "cloud") -> FrameLabel:
    return FrameLabel(
        boxes=(LabelBox((10.0, 20.0, 50.0, 120.0), "person", 0.85, 0.8, 0.9),),
        source=source,
        fusion_method="mean",
        teacher_version="test/1",
        frame_width=320,
        frame_height=240,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FrameStore]:
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as opened:
        yield opened


def test_hard_case_goes_pending_sent_labelled(store: FrameStore) -> None:
    frame_id = store.add(_image(0), _result(0, hard=True))

    due = store.due_for_upload(now=0.0, limit=10)
    store.mark_sent(frame_id, now=5.0)
    sent = store.get(frame_id).label_status
    store.store_label(frame_id, _label())
    stored = store.get(frame_id)

    assert [f.id for f in due] == [frame_id]
    assert sent is LabelStatus.SENT
    assert stored.label_status is LabelStatus.LABELLED
    assert stored.label_source == "cloud"
    assert stored.frame_label == _label()
    assert store.due_for_upload(now=1e12, limit=10) == []


@pytest.mark.parametrize(
    ("hard", "moves", "bad"),
    [
        (True, [], lambda s, i: s.store_label(i, _label())),  # pending: never sent
        (False, [], lambda s, i: s.mark_sent(i)),  # an ordinary frame is no hard case
        (True, ["sent", "labelled"], lambda s, i: s.mark_sent(i)),  # labelled is final
        (True, ["sent", "labelled"], lambda s, i: s.store_label(i, _label())),  # one label
        (True, [], lambda s, i: s.requeue(i, next_try=0.0)),  # pending → pending
        (True, [], lambda s, i: s.mark_attempt_failed(i, next_try=0.0)),  # not in flight
        (True, [], lambda s, i: s.set_label_status(i, "unlabelled")),  # no way back
    ],
)
def test_illegal_transition_raises_store_error_and_changes_nothing(
    store: FrameStore, hard: bool, moves: list[str], bad: object
) -> None:
    frame_id = store.add(_image(1), _result(1, hard=hard))
    for move in moves:
        if move == "sent":
            store.mark_sent(frame_id)
        else:
            store.store_label(frame_id, _label())
    before = store.get(frame_id)

    with pytest.raises(StoreError, match="cannot move from"):
        bad(store, frame_id)  # type: ignore[operator]

    assert store.get(frame_id) == before


def test_move_of_unknown_frame_names_it(store: FrameStore) -> None:
    with pytest.raises(StoreError, match="no frame 99"):
        store.mark_sent(99)


def test_failed_attempts_are_counted_until_the_case_fails(store: FrameStore) -> None:
    frame_id = store.add(_image(2), _result(2, hard=True))
    statuses = []

    for attempt in range(3):
        store.mark_sent(frame_id)
        statuses.append(
            store.mark_attempt_failed(
                frame_id, next_try=100.0 + attempt, error="INVALID_ARGUMENT", max_attempts=3
            )
        )
        if statuses[-1] is LabelStatus.PENDING:
            assert store.due_for_upload(now=99.0 + attempt, limit=5) == []  # not yet due
            assert [f.id for f in store.due_for_upload(now=100.0 + attempt, limit=5)] == [frame_id]
    failed = store.get(frame_id)

    assert statuses == [LabelStatus.PENDING, LabelStatus.PENDING, LabelStatus.FAILED]
    assert failed.attempts == 3 and failed.last_error == "INVALID_ARGUMENT"
    assert store.due_for_upload(now=1e12, limit=5) == []
    assert store.status_counts()[LabelStatus.FAILED] == 1
    assert store.retry_failed() == 1
    assert store.get(frame_id).label_status is LabelStatus.PENDING
    assert store.get(frame_id).attempts == 0


def test_requeue_retries_later_without_counting_an_attempt(store: FrameStore) -> None:
    frame_id = store.add(_image(3), _result(3, hard=True))

    store.mark_sent(frame_id)
    store.requeue(frame_id, next_try=50.0, error="UNAVAILABLE")
    requeued = store.get(frame_id)

    assert requeued.label_status is LabelStatus.PENDING
    assert requeued.attempts == 0 and requeued.next_try == 50.0
    assert store.next_due() == 50.0
    assert store.due_for_upload(now=49.9, limit=5) == []


def test_due_cases_come_oldest_due_first_up_to_the_limit(store: FrameStore) -> None:
    ids = [store.add(_image(i), _result(i, hard=True)) for i in range(4)]
    store.mark_sent(ids[0])
    store.requeue(ids[0], next_try=10.0)  # the oldest frame is due last now

    due = store.due_for_upload(now=10.0, limit=3)

    assert [f.id for f in due] == [ids[1], ids[2], ids[3]]


def test_cases_in_flight_when_the_node_died_are_requeued_on_restart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FrameStore(root, 10**8, fsync=False) as store:
        ids = [store.add(_image(i), _result(i, hard=True)) for i in range(3)]
        store.mark_sent(ids[0])
        store.mark_sent(ids[1])

    with FrameStore(root, 10**8, fsync=False) as store:
        requeued = store.requeue_sent()
        due = [f.id for f in store.due_for_upload(now=0.0, limit=10)]

    assert requeued == 2
    assert due == ids


def test_eviction_takes_ordinary_then_failed_then_queued_or_labelled(tmp_path: Path) -> None:
    image = _image(0)  # every frame the same JPEG size: one in, about one out
    rank = {"unlabelled": 0, "failed": 1}  # the documented order; all others rank 2
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as store:
        # oldest first: a labelled, a pending, a sent and a failed hard case, then ordinary
        labelled = store.add(image, _result(0, hard=True))
        store.mark_sent(labelled)
        store.store_label(labelled, _label())
        pending = store.add(image, _result(1, hard=True))
        sent = store.add(image, _result(2, hard=True))
        store.mark_sent(sent)
        failed = store.add(image, _result(3, hard=True))
        store.mark_sent(failed)
        store.mark_attempt_failed(failed, 0.0, max_attempts=1)
        ordinary = [store.add(image, _result(4 + i, hard=False)) for i in range(3)]
        store.budget_bytes = store.usage_bytes()
        evicted: list[int] = []
        for i in range(20):  # new hard cases push the old frames out
            before = {f.id: f.label_status.value for f in store.iter_frames()}
            store.add(image, _result(10 + i, hard=True))
            after = {f.id for f in store.iter_frames()}
            gone = sorted(set(before) - after, key=lambda k: (rank.get(before[k], 2), k))
            evicted.extend(gone)
            if sent in evicted:
                break

    assert evicted[:7] == [*ordinary, failed, labelled, pending, sent]


def test_typed_label_is_validated_on_the_way_in(store: FrameStore) -> None:
    frame_id = store.add(_image(4), _result(4, hard=True))
    data = _label().to_json() | {"schema_version": 7}

    with pytest.raises(LabelError, match="schema version 7"):
        store.set_label(frame_id, data, "cloud")

    assert store.get(frame_id).label_status is LabelStatus.PENDING


def test_label_of_unknown_version_in_the_index_is_an_error_on_read(store: FrameStore) -> None:
    frame_id = store.add(_image(5), _result(5, hard=True))
    store.set_label(frame_id, _label(source="manual"), "manual")
    data = _label().to_json() | {"schema_version": 7}
    store._db.execute("UPDATE frames SET label = ? WHERE id = ?", (json.dumps(data), frame_id))
    store._db.commit()

    stored = store.get(frame_id)

    assert stored.label == data  # the JSON is still there, untouched
    with pytest.raises(LabelError, match="upgrade fedge"):
        _ = stored.frame_label


def _make_schema_1_store(root: Path) -> int:
    """An index as fedge wrote it before the upload queue (schema 1), one hard case."""
    (root / "frames" / "20231114").mkdir(parents=True)
    (root / "tmp").mkdir()
    relative = "frames/20231114/old.jpg"
    import cv2

    cv2.imwrite(str(root / relative), _image(6))
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(_SCHEMA)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    cursor = db.execute(
        "INSERT INTO frames (time, source, frame_index, path, bytes, width, height, detections,"
        " persons, hard, hard_reasons, label_status, label, label_source)"
        " VALUES (1.7e9, 'old', 0, ?, ?, 320, 240, '[]', '[]', 1, '[\"uncertain_score\"]',"
        " 'labelled', ?, 'cloud-v0')",
        (relative, (root / relative).stat().st_size, json.dumps({"boxes": [[1, 2, 3, 4]]})),
    )
    db.commit()
    db.close()
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


def test_store_of_schema_1_gains_queue_columns_and_keeps_old_labels(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old_id = _make_schema_1_store(root)

    with FrameStore(root, 10**8, fsync=False) as store:
        old = store.get(old_id)
        new_id = store.add(_image(7), _result(7, hard=True))
        store.mark_sent(new_id)
        store.mark_attempt_failed(new_id, next_try=3.0)
        new = store.get(new_id)
    db = sqlite3.connect(root / "index.sqlite")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    db.close()

    assert old.label == {"boxes": [[1, 2, 3, 4]]} and old.label_source == "cloud-v0"
    assert old.attempts == 0 and old.next_try == 0.0
    with pytest.raises(LabelError, match="untyped label"):
        _ = old.frame_label
    assert new.attempts == 1 and new.next_try == 3.0
    assert version == "2"


def test_reader_migrates_a_schema_1_store_too(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old_id = _make_schema_1_store(root)

    with FrameStore.open_reader(root) as reader:
        old = reader.get(old_id)

    assert old.label_status is LabelStatus.LABELLED and old.attempts == 0


def test_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FrameStore(root, 10**8, fsync=False):
        pass
    db = sqlite3.connect(root / "index.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()

    with pytest.raises(StoreError, match="newer than this fedge"):
        FrameStore(root, 10**8)


def test_each_case_is_sent_once_when_two_threads_race_for_it(store: FrameStore) -> None:
    ids = [store.add(_image(i), _result(i, hard=True)) for i in range(40)]
    wins: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def grab(slot: int) -> None:
        start.wait()
        for frame_id in ids:
            try:
                store.mark_sent(frame_id)
            except StoreError:
                continue
            wins[slot].append(frame_id)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(wins[0] + wins[1]) == ids


def test_writer_and_reader_processes_cannot_both_label_a_case(tmp_path: Path) -> None:
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as writer:
        frame_id = writer.add(_image(8), _result(8, hard=True))
        writer.mark_sent(frame_id)
        with FrameStore.open_reader(tmp_path / "store") as reader:
            reader.store_label(frame_id, _label(source="other"))
            with pytest.raises(StoreError, match="cannot move from labelled"):
                writer.store_label(frame_id, _label())

        assert writer.get(frame_id).label_source == "other"


def test_store_stage_and_uploader_thread_share_the_store(store: FrameStore) -> None:
    errors: list[BaseException] = []
    added: list[int] = []
    labelled: list[int] = []
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        try:
            for i in range(60):
                added.append(store.add(_image(i % 7, (60, 80)), _result(i, hard=i % 2 == 0)))
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            producing.clear()

    def upload() -> None:
        try:
            while producing.is_set() or store.due_for_upload(1e12, 1):
                for frame in store.due_for_upload(now=1e12, limit=4):
                    store.mark_sent(frame.id)
                    store.store_label(frame.id, _label())
                    labelled.append(frame.id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=produce), threading.Thread(target=upload)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    hard_ids = [i for n, i in enumerate(added) if n % 2 == 0]
    assert sorted(labelled) == hard_ids
    assert store.status_counts()[LabelStatus.LABELLED] == 30
    assert store.status_counts()[LabelStatus.PENDING] == 0
