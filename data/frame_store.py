"""The node-local frame store: raw frames as JPEG files plus an SQLite index.

Frames never leave the node from here; the store only keeps them for local training
and for the uploader to pick hard cases from. Layout under ``root``::

    index.sqlite          frame rows (WAL mode)
    frames/YYYYMMDD/*.jpg one JPEG per stored frame
    tmp/                  JPEGs being written (removed on open)
    writer.lock           held by the one process that adds frames

Writes are crash-safe: a JPEG goes to ``tmp/``, is fsynced and renamed into ``frames/``,
and only then is its row inserted. Opening the store as a writer reconciles what a
crash left behind (temporary files, rows without a file, files without a row). The
store stays within ``budget_bytes`` by evicting the oldest frames first: ordinary frames
(unlabelled, suppressed) before hard cases that gave up (``failed``), and those before
frames waiting for upload (``pending``, ``sent``) or carrying a label. A disk that is
full raises ``StoreError`` and leaves every frame already stored intact.

The store is also the uploader's queue. A hard case moves

    pending ──mark_sent──▶ sent ──store_label──▶ labelled
       ▲                    │
       └── requeue / mark_attempt_failed (attempts < max) ◀┘   ──▶ failed (attempts = max)

and each row carries its attempt count, next-try time and last error. Only the moves in
``TRANSITIONS`` are allowed; any other raises ``StoreError``. Every method may be called
from several threads of one process (the pipeline's store stage and the uploader thread);
moves are single conditional ``UPDATE`` statements, so they are atomic across processes
too. Stores written by an older fedge gain the queue columns when opened (``ALTER
TABLE``). Labels are :class:`fedge.core.labels.FrameLabel` (typed and versioned).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import StoreError
from fedge.core.files import atomic_write
from fedge.core.labels import FrameLabel
from fedge.core.records import Detection, FrameResult, Person

__all__ = [
    "STORE_INDEX",
    "TRANSITIONS",
    "FrameStore",
    "LabelStatus",
    "ReconcileReport",
    "StoredFrame",
]

SCHEMA_VERSION = 2
STORE_INDEX = "index.sqlite"
"""The SQLite index that makes a folder a frame store."""
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BUDGET_BYTES = 2 * 1024**3
DEFAULT_MIN_FREE_BYTES = 32 * 1024**2
_EVICT_BATCH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          REAL    NOT NULL,
    source        TEXT    NOT NULL,
    frame_index   INTEGER NOT NULL,
    path          TEXT    NOT NULL UNIQUE,
    bytes         INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    detections    TEXT    NOT NULL,
    persons       TEXT    NOT NULL,
    hard          INTEGER NOT NULL DEFAULT 0,
    hard_reasons  TEXT    NOT NULL DEFAULT '[]',
    label_status  TEXT    NOT NULL DEFAULT 'unlabelled',
    label         TEXT,
    label_source  TEXT,
    labelled_at   REAL
);
CREATE INDEX IF NOT EXISTS frames_status ON frames (label_status, id);
CREATE INDEX IF NOT EXISTS frames_hard ON frames (hard, id);
"""

# Columns added by schema 2 (the upload queue); ALTER TABLE adds them to older stores.
_QUEUE_COLUMNS = (
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("next_try", "REAL NOT NULL DEFAULT 0"),
    ("sent_at", "REAL"),
    ("last_error", "TEXT"),
)
_QUEUE_INDEX = "CREATE INDEX IF NOT EXISTS frames_queue ON frames (label_status, next_try, id)"


class LabelStatus(StrEnum):
    """Where a stored frame stands on its way to a cloud label."""

    UNLABELLED = "unlabelled"  # an ordinary frame, not a hard case
    SUPPRESSED = "suppressed"  # qualified as hard, held back by rate limit or duplicate check
    PENDING = "pending"  # a hard case waiting for the uploader
    SENT = "sent"  # uploaded, waiting for the cloud's label
    LABELLED = "labelled"  # the cloud's label is stored
    FAILED = "failed"  # the cloud refused the case on every allowed attempt


TRANSITIONS: dict[LabelStatus, frozenset[LabelStatus]] = {
    LabelStatus.UNLABELLED: frozenset({LabelStatus.LABELLED}),
    LabelStatus.SUPPRESSED: frozenset({LabelStatus.PENDING, LabelStatus.LABELLED}),
    LabelStatus.PENDING: frozenset({LabelStatus.SENT, LabelStatus.LABELLED}),
    LabelStatus.SENT: frozenset({LabelStatus.PENDING, LabelStatus.LABELLED, LabelStatus.FAILED}),
    LabelStatus.LABELLED: frozenset(),
    LabelStatus.FAILED: frozenset({LabelStatus.PENDING, LabelStatus.LABELLED}),
}
"""The allowed moves between statuses; a labelled frame keeps its one label."""

# Eviction goes by this rank first (low first), then oldest first.
_EVICTION_RANK = (
    "CASE label_status"
    f" WHEN '{LabelStatus.FAILED.value}' THEN 1"
    f" WHEN '{LabelStatus.PENDING.value}' THEN 2"
    f" WHEN '{LabelStatus.SENT.value}' THEN 2"
    f" WHEN '{LabelStatus.LABELLED.value}' THEN 2"
    " ELSE 0 END"
)


@dataclass(frozen=True)
class StoredFrame:
    """One row of the store; ``path`` is the JPEG's absolute path."""

    id: int
    time: float
    source: str
    frame_index: int
    path: Path
    bytes: int
    width: int
    height: int
    detections: list[dict[str, Any]]
    persons: list[dict[str, Any]]
    hard: bool
    hard_reasons: list[str]
    label_status: LabelStatus
    label: Any
    label_source: str | None
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None

    @property
    def frame_label(self) -> FrameLabel | None:
        """The typed label (``None`` when unlabelled).

        Raises ``fedge.core.labels.LabelError`` for a label of an unknown schema version
        or an untyped one written before the label schema (``label`` still holds its JSON).
        """
        return None if self.label is None else FrameLabel.from_json(self.label)

    def result(self) -> FrameResult:
        """The stored per-frame record as a ``FrameResult`` (timings are not kept)."""
        return FrameResult(
            frame=self.frame_index,
            time=self.time,
            source=self.source,
            persons=[
                Person(
                    landmarks=np.asarray(p["landmarks"], dtype=np.float32).reshape(-1, 4),
                    score=float(p["score"]),
                    box=tuple(float(v) for v in p["box"]),  # type: ignore[arg-type]
                )
                for p in self.persons
            ],
            detections=[
                Detection(
                    box=tuple(float(v) for v in d["box"]),  # type: ignore[arg-type]
                    label=str(d["label"]),
                    score=float(d["score"]),
                )
                for d in self.detections
            ],
            hard=self.hard,
            hard_reasons=list(self.hard_reasons),
        )

    def load_image(self) -> np.ndarray:
        """Decode and return the stored frame (BGR ``uint8``)."""
        import cv2

        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise StoreError(f"frame {self.id} is missing or unreadable at {self.path}")
        return image


@dataclass(frozen=True)
class ReconcileReport:
    """What opening the store cleaned up after a crash."""

    temp_files_removed: int = 0
    rows_without_file: int = 0
    files_without_row: int = 0

    @property
    def clean(self) -> bool:
        """Whether there was nothing to repair."""
        return not (self.temp_files_removed or self.rows_without_file or self.files_without_row)


class FrameStore:
    """JPEG frames plus an SQLite index, bounded by a disk budget.

    ``FrameStore(root)`` opens (or creates) the store as its single frame writer: it
    takes ``writer.lock``, reconciles crash leftovers (see ``recovery``) and accepts
    ``add``. ``FrameStore.open_reader(root)`` opens an existing store for the training
    side or the uploader: reading and labelling only, no lock, no reconciliation.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        *,
        jpeg_quality: int = 90,
        fsync: bool = True,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        writer: bool = True,
    ) -> None:
        if budget_bytes <= 0:
            raise StoreError(f"store budget must be positive, got {budget_bytes} bytes")
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.jpeg_quality = int(jpeg_quality)
        self.fsync = fsync
        self.min_free_bytes = int(min_free_bytes)
        self.writer = writer
        self.recovery = ReconcileReport()
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._seq = 0
        db_path = self.root / STORE_INDEX
        if not writer and not db_path.exists():
            raise StoreError(f"no frame store at {self.root}: run `fedge edge` to create one")
        try:
            if writer:
                (self.root / "frames").mkdir(parents=True, exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
                self._take_writer_lock()
            self._db = sqlite3.connect(db_path, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            if writer:
                self._db.executescript(_SCHEMA)
                self._db.commit()
            self._migrate()
            if writer:
                self.recovery = self._reconcile()
            self._jpeg_bytes = self._sum_jpeg_bytes()
        except (OSError, sqlite3.Error) as err:
            self._release_writer_lock()
            raise StoreError(f"cannot open frame store at {self.root}: {err}") from err

    @classmethod
    def open_reader(cls, root: str | os.PathLike[str]) -> FrameStore:
        """Open an existing store to read frames and set labels (no ``add``)."""
        return cls(root, writer=False)

    # -- writing -----------------------------------------------------------------------

    def add(self, image: np.ndarray, result: FrameResult) -> int:
        """Store ``image`` with its per-frame ``result``; return the new frame id.

        Raises ``StoreError`` when the frame cannot be written (disk full, budget
        smaller than one frame); frames stored earlier are not affected.
        """
        import cv2

        if not self.writer:
            raise StoreError("this frame store was opened read-only; open it as the writer")
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise StoreError(f"cannot encode frame {result.frame} as JPEG")
        data = encoded.tobytes()
        with self._lock:
            self._make_room(len(data))
            relative = self._next_name(result.time)
            final = self.root / relative
            self._write_file(final, data)
            try:
                cursor = self._db.execute(
                    "INSERT INTO frames (time, source, frame_index, path, bytes, width, height,"
                    " detections, persons, hard, hard_reasons, label_status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.time,
                        result.source,
                        result.frame,
                        relative.as_posix(),
                        len(data),
                        int(image.shape[1]),
                        int(image.shape[0]),
                        json.dumps([d.to_json() for d in result.detections]),
                        json.dumps([p.to_json() for p in result.persons]),
                        int(result.hard),
                        json.dumps(list(result.hard_reasons)),
                        _initial_status(result).value,
                    ),
                )
                self._db.commit()
            except sqlite3.Error as err:
                self._db.rollback()
                final.unlink(missing_ok=True)
                raise StoreError(f"cannot index frame in {self.root}: {err}") from err
            self._jpeg_bytes += len(data)
            frame_id = cursor.lastrowid
        assert frame_id is not None
        return int(frame_id)

    def set_label(self, frame_id: int, label: FrameLabel | Any, source: str) -> None:
        """Record ``label`` for a frame (any status that may become labelled).

        ``label`` is a :class:`FrameLabel` or its JSON form (validated: an unknown schema
        version raises ``LabelError``). Other JSON values are kept as untyped labels, as
        stores written before the label schema hold them. A frame keeps its first label:
        labelling it again raises ``StoreError``.
        """
        if isinstance(label, Mapping) and "schema_version" in label:
            label = FrameLabel.from_json(label)
        data = label.to_json() if isinstance(label, FrameLabel) else label
        self._move(
            frame_id,
            LabelStatus.LABELLED,
            "label = ?, label_source = ?, labelled_at = ?",
            (json.dumps(data), source, time.time()),
        )

    def set_label_status(self, frame_id: int, status: LabelStatus | str) -> None:
        """Move a frame to ``status``; ``StoreError`` when ``TRANSITIONS`` forbids it."""
        self._move(frame_id, LabelStatus(status), "", ())

    # -- the upload queue ----------------------------------------------------------------

    def due_for_upload(self, now: float, limit: int) -> list[StoredFrame]:
        """Pending hard cases whose next try is due at ``now``, oldest due first."""
        return self._select(
            "WHERE label_status = ? AND next_try <= ? ORDER BY next_try, id LIMIT ?",
            (LabelStatus.PENDING.value, float(now), int(limit)),
        )

    def next_due(self) -> float | None:
        """The earliest next-try time of a pending case (``None`` when none is pending)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_try) FROM frames WHERE label_status = ?",
                (LabelStatus.PENDING.value,),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, frame_id: int, now: float | None = None) -> None:
        """pending → sent: the uploader is shipping this case."""
        sent_at = time.time() if now is None else float(now)
        self._move(frame_id, LabelStatus.SENT, "sent_at = ?", (sent_at,))

    def requeue(self, frame_id: int, next_try: float, error: str | None = None) -> None:
        """sent → pending without counting an attempt (the cloud was unreachable or busy)."""
        self._move(frame_id, LabelStatus.PENDING, "next_try = ?, last_error = ?", (next_try, error))

    def mark_attempt_failed(
        self,
        frame_id: int,
        next_try: float,
        error: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> LabelStatus:
        """sent → pending with one more attempt counted, or → failed at ``max_attempts``.

        Returns the frame's new status.
        """
        if max_attempts < 1:
            raise StoreError(f"max_attempts must be 1 or more, got {max_attempts}")
        with self._lock:
            attempts = self._row_attempts(frame_id) + 1
            status = LabelStatus.FAILED if attempts >= max_attempts else LabelStatus.PENDING
            self._move(
                frame_id,
                status,
                "attempts = ?, next_try = ?, last_error = ?",
                (attempts, next_try, error),
            )
        return status

    def store_label(self, frame_id: int, label: FrameLabel) -> None:
        """sent → labelled: write the cloud's answer (``label.source`` is the source)."""
        if not isinstance(label, FrameLabel):
            raise StoreError(f"store_label needs a FrameLabel, got {type(label).__name__}")
        self._move(
            frame_id,
            LabelStatus.LABELLED,
            "label = ?, label_source = ?, labelled_at = ?",
            (json.dumps(label.to_json()), label.source, time.time()),
            allowed_from=(LabelStatus.SENT,),
        )

    def requeue_sent(self, next_try: float = 0.0) -> int:
        """Move every ``sent`` case back to ``pending`` (its sender is gone); return how many.

        The uploader calls this when it starts: a case sent by a process that died before
        the answer came is sent again (the cloud answers a retried case from its cache).
        """
        with self._lock:
            try:
                cursor = self._db.execute(
                    "UPDATE frames SET label_status = ?, next_try = ? WHERE label_status = ?",
                    (LabelStatus.PENDING.value, next_try, LabelStatus.SENT.value),
                )
                self._db.commit()
            except sqlite3.Error as err:
                self._db.rollback()
                raise StoreError(f"cannot requeue sent cases in {self.root}: {err}") from err
        return int(cursor.rowcount)

    def retry_failed(self) -> int:
        """Move every ``failed`` case back to ``pending`` with its attempts reset."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "UPDATE frames SET label_status = ?, attempts = 0, next_try = 0"
                    " WHERE label_status = ?",
                    (LabelStatus.PENDING.value, LabelStatus.FAILED.value),
                )
                self._db.commit()
            except sqlite3.Error as err:
                self._db.rollback()
                raise StoreError(f"cannot retry failed cases in {self.root}: {err}") from err
        return int(cursor.rowcount)

    def status_counts(self) -> dict[LabelStatus, int]:
        """How many frames are in each status (every status present, zeros included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT label_status, COUNT(*) FROM frames GROUP BY label_status"
            ).fetchall()
        counts = dict.fromkeys(LabelStatus, 0)
        for status, count in rows:
            counts[LabelStatus(status)] = int(count)
        return counts

    # -- reading -----------------------------------------------------------------------

    def get(self, frame_id: int) -> StoredFrame:
        """Return one stored frame; ``StoreError`` when there is no such id."""
        rows = self._select("WHERE id = ?", (frame_id,))
        if not rows:
            raise StoreError(f"no frame {frame_id} in {self.root} (evicted or never stored)")
        return rows[0]

    def iter_frames(
        self,
        *,
        labelled_only: bool = False,
        hard_only: bool = False,
        since_id: int = 0,
        batch: int = 256,
    ) -> Iterator[StoredFrame]:
        """Yield stored frames oldest first, optionally only labelled or hard ones."""
        clauses = ["id > ?"]
        if labelled_only:
            clauses.append(f"label_status = '{LabelStatus.LABELLED.value}'")
        if hard_only:
            clauses.append("hard = 1")
        where = "WHERE " + " AND ".join(clauses)
        last = since_id
        while True:
            rows = self._select(f"{where} ORDER BY id LIMIT {int(batch)}", (last,))
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].id

    def hard_cases(
        self, status: LabelStatus | str | None = LabelStatus.PENDING, limit: int | None = None
    ) -> list[StoredFrame]:
        """Return hard cases oldest first, those in ``status`` only unless it is ``None``."""
        sql = "WHERE hard = 1"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " AND label_status = ?"
            params = (LabelStatus(status).value,)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._select(sql, params)

    def usage_bytes(self) -> int:
        """Bytes the store occupies: JPEGs plus the live pages of the index."""
        with self._lock:
            return self._jpeg_bytes + self._db_live_bytes()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0])

    def close(self) -> None:
        """Close the index and release the writer lock."""
        with self._lock:
            try:
                self._db.close()
            finally:
                self._release_writer_lock()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _take_writer_lock(self) -> None:
        fd = os.open(self.root / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise StoreError(
                f"frame store {self.root} is in use by another edge agent; "
                "stop it or use another --store-dir"
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _reconcile(self) -> ReconcileReport:
        temp_removed = 0
        for leftover in (self.root / "tmp").iterdir():
            leftover.unlink(missing_ok=True)
            temp_removed += 1
        known: set[str] = set()
        missing: list[int] = []
        for frame_id, relative in self._db.execute("SELECT id, path FROM frames"):
            if (self.root / relative).is_file():
                known.add(relative)
            else:
                missing.append(frame_id)
        if missing:
            self._db.executemany("DELETE FROM frames WHERE id = ?", [(i,) for i in missing])
            self._db.commit()
        orphans = 0
        for path in (self.root / "frames").rglob("*.jpg"):
            if path.relative_to(self.root).as_posix() not in known:
                path.unlink(missing_ok=True)
                orphans += 1
        return ReconcileReport(temp_removed, len(missing), orphans)

    def _sum_jpeg_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0])

    def _db_live_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _make_room(self, incoming: int) -> None:
        """Evict oldest frames until ``incoming`` more bytes fit in the budget."""
        if incoming + self._db_live_bytes() > self.budget_bytes:
            raise StoreError(
                f"one frame ({incoming} bytes) does not fit the store budget of "
                f"{self.budget_bytes} bytes; raise --store-budget-mb"
            )
        while self._jpeg_bytes + self._db_live_bytes() + incoming > self.budget_bytes:
            rows = self._db.execute(
                f"SELECT id, path, bytes FROM frames ORDER BY {_EVICTION_RANK} ASC, id ASC LIMIT ?",
                (_EVICT_BATCH,),
            ).fetchall()
            if not rows:
                return
            need = self._jpeg_bytes + self._db_live_bytes() + incoming - self.budget_bytes
            victims = []
            for row in rows:
                victims.append(row)
                need -= row[2]
                if need <= 0:
                    break
            self._db.executemany("DELETE FROM frames WHERE id = ?", [(v[0],) for v in victims])
            self._db.commit()
            for _, relative, size in victims:
                (self.root / relative).unlink(missing_ok=True)
                self._jpeg_bytes -= size

    def _next_name(self, frame_time: float) -> Path:
        self._seq += 1
        stamp = time.strftime("%Y%m%d", time.localtime(frame_time))
        name = f"{int(frame_time * 1000):013d}-{os.getpid()}-{self._seq:06d}.jpg"
        return Path("frames") / stamp / name

    def _write_file(self, final: Path, data: bytes) -> None:
        """Write ``data`` to ``final`` atomically: temp file, fsync, rename."""
        free = shutil.disk_usage(self.root).free
        if free - len(data) < self.min_free_bytes:
            raise StoreError(
                f"disk holding {self.root} is full ({free // 1024**2} MiB free, "
                f"{self.min_free_bytes // 1024**2} MiB kept in reserve); free space or "
                "lower --store-budget-mb"
            )
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(final, data, tmp_dir=self.root / "tmp", fsync=self.fsync)
        except OSError as err:
            raise StoreError(
                f"cannot write frame to {self.root}: {err.strerror or err}; "
                "free disk space or lower --store-budget-mb"
            ) from err

    def _move(
        self,
        frame_id: int,
        target: LabelStatus,
        set_sql: str,
        params: tuple[Any, ...],
        allowed_from: tuple[LabelStatus, ...] | None = None,
    ) -> None:
        """Move one frame to ``target`` (and set more columns) if ``TRANSITIONS`` allow it.

        One conditional ``UPDATE``: the check and the move are atomic.
        """
        sources = [s for s, targets in TRANSITIONS.items() if target in targets]
        if allowed_from is not None:
            sources = [s for s in sources if s in allowed_from]
        assignments = "label_status = ?" + (f", {set_sql}" if set_sql else "")
        marks = ", ".join("?" * len(sources))
        sql = f"UPDATE frames SET {assignments} WHERE id = ? AND label_status IN ({marks})"
        with self._lock:
            try:
                cursor = self._db.execute(
                    sql, (target.value, *params, frame_id, *(s.value for s in sources))
                )
                self._db.commit()
                if cursor.rowcount:
                    return
                row = self._db.execute(
                    "SELECT label_status FROM frames WHERE id = ?", (frame_id,)
                ).fetchone()
            except sqlite3.Error as err:
                self._db.rollback()
                raise StoreError(f"cannot update frame {frame_id} in {self.root}: {err}") from err
        if row is None:
            raise StoreError(f"no frame {frame_id} in {self.root} (evicted or never stored)")
        allowed = ", ".join(s.value for s in sources) or "nothing"
        raise StoreError(
            f"frame {frame_id} cannot move from {row[0]} to {target.value} (only from {allowed})"
        )

    def _row_attempts(self, frame_id: int) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM frames WHERE id = ?", (frame_id,)
            ).fetchone()
        if row is None:
            raise StoreError(f"no frame {frame_id} in {self.root} (evicted or never stored)")
        return int(row[0])

    def _migrate(self) -> None:
        """Bring the index to ``SCHEMA_VERSION`` (add the queue columns of schema 2)."""
        with self._lock:
            version = self._schema_version()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"frame store {self.root} has schema {version}, newer than this fedge "
                    f"({SCHEMA_VERSION}); upgrade fedge"
                )
            if version == SCHEMA_VERSION and not self._missing_columns():
                return
            if self._db.in_transaction:
                self._db.commit()
            self._db.execute("BEGIN IMMEDIATE")  # one migrating process at a time
            try:
                for name, declaration in self._missing_columns():
                    self._db.execute(f"ALTER TABLE frames ADD COLUMN {name} {declaration}")
                self._db.execute(_QUEUE_INDEX)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    def _schema_version(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _missing_columns(self) -> list[tuple[str, str]]:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(frames)")}
        return [(name, decl) for name, decl in _QUEUE_COLUMNS if name not in present]

    def _select(self, tail: str, params: tuple[Any, ...]) -> list[StoredFrame]:
        sql = (
            "SELECT id, time, source, frame_index, path, bytes, width, height, detections,"
            " persons, hard, hard_reasons, label_status, label, label_source, attempts,"
            " next_try, last_error FROM frames " + tail
        )
        with self._lock:
            try:
                rows = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"cannot read frame store {self.root}: {err}") from err
        return [self._row_to_frame(row) for row in rows]

    def _row_to_frame(self, row: tuple[Any, ...]) -> StoredFrame:
        return StoredFrame(
            id=row[0],
            time=row[1],
            source=row[2],
            frame_index=row[3],
            path=self.root / row[4],
            bytes=row[5],
            width=row[6],
            height=row[7],
            detections=json.loads(row[8]),
            persons=json.loads(row[9]),
            hard=bool(row[10]),
            hard_reasons=json.loads(row[11]),
            label_status=LabelStatus(row[12]),
            label=json.loads(row[13]) if row[13] is not None else None,
            label_source=row[14],
            attempts=int(row[15]),
            next_try=float(row[16]),
            last_error=row[17],
        )


def _initial_status(result: FrameResult) -> LabelStatus:
    if result.hard:
        return LabelStatus.PENDING
    if result.hard_reasons:
        return LabelStatus.SUPPRESSED
    return LabelStatus.UNLABELLED
