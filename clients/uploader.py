"""The uploader: a background thread that drains the store's hard cases to ``fedge cloud``.

The frame store is the queue (``data.frame_store``): the uploader takes the pending cases
that are due, oldest first, builds each ``HardCase`` through the privacy filter, marks
them ``sent`` and ships them in batches over one ``InferStream`` call. Each answer is
written back into the store as the frame's typed label (``FrameLabel``, ``source
"cloud"``, with the ``coverage`` of the case it answers: what of the frame the cloud was
shown, ``clients.privacy_filter.case_coverage``), and the case becomes ``labelled``.
Nothing is kept in memory that the store does not also hold, so pending cases survive a
restart: on start, cases a dead process left ``sent`` go back to ``pending`` (the cloud
answers a retried case from its cache).

Errors, by gRPC status:

- **transient** (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``,
  ``ABORTED``, ``CANCELLED``, and ``UNAUTHENTICATED``, which a fixed token file cures):
  the case goes back to ``pending`` without counting an attempt, and the uploader backs
  off exponentially with jitter (``Backoff``) before it tries again; a cloud that is
  down, or starts after the node, only delays the cases.
- **every other status** (``INVALID_ARGUMENT``, ``PERMISSION_DENIED``, ...): the case
  counts an attempt and is retried later (backoff by its attempt count) until
  ``max_attempts``, then it is ``failed`` and kept in the store with its last error.

Clock and sleep are injectable, so tests drive the backoff without waiting.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from clients.privacy_filter import PrivacyError, PrivacyFilter, case_coverage
from data.frame_store import LabelStatus
from fedge.core.errors import ConfigError, StoreError
from fedge.core.labels import FrameLabel, LabelError
from fedge.core.proto import cloud_pb2, cloud_pb2_grpc

if TYPE_CHECKING:
    from clients.hard_cases import HardCaseFeed
    from data.frame_store import FrameStore, StoredFrame

__all__ = [
    "TRANSIENT_CODES",
    "Backoff",
    "Uploader",
    "UploaderConfig",
    "UplinkStats",
    "parse_target",
    "read_token_file",
]

TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
"""Statuses that retry without counting an attempt (see the module docstring)."""

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_RTT_WINDOW = 50


def parse_target(text: str) -> str:
    """Check a ``HOST:PORT`` cloud address and return it; ``ConfigError`` when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--cloud must look like HOST:PORT (e.g. cloud.local:50051), got {text!r}"
        )
    return text


def read_token_file(path: str | Path, node_id: str | None = None) -> tuple[str | None, str]:
    """Read a node's bearer token; return ``(node id or None, token)``.

    The file holds the token alone, or ``node_id token`` lines as in the cloud's token
    file (``#`` starts a comment); with several lines, the one of ``node_id`` is used.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read --token-file {path}: {err.strerror}") from None
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 1:
            entries.append((None, fields[0]))
        elif len(fields) == 2:
            entries.append((fields[0], fields[1]))
        elif fields:
            raise ConfigError(f"--token-file {path}: expected 'token' or 'node_id token' lines")
    if node_id is not None and len(entries) > 1:
        entries = [e for e in entries if e[0] in (None, node_id)]
    if len(entries) != 1:
        raise ConfigError(
            f"--token-file {path} must hold one token (or one 'node_id token' line for "
            f"node {node_id or '?'}), found {len(entries)}"
        )
    return entries[0]


class Backoff:
    """Exponential backoff with equal jitter: delay *n* lies in ``[b/2, b]``,
    ``b = min(maximum, initial * factor**n)``; ``reset()`` after a success."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 60.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ConfigError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.rng = rng or random.Random()
        self.failures = 0

    def bound(self, failures: int) -> float:
        """The upper bound of the delay after ``failures`` failures in a row (1 or more)."""
        return min(self.maximum, self.initial * self.factor ** max(0, failures - 1))

    def delay_for(self, failures: int) -> float:
        """A jittered delay for the ``failures``-th failure in a row."""
        bound = self.bound(failures)
        return bound / 2 + self.rng.uniform(0, bound / 2)

    def next_delay(self) -> float:
        """Count one more failure and return its delay."""
        self.failures += 1
        return self.delay_for(self.failures)

    def reset(self) -> None:
        """Forget the failures (after a success)."""
        self.failures = 0


@dataclass(frozen=True)
class UploaderConfig:
    """Where and how to send hard cases.

    ``root_cert`` (PEM bytes) or the system's roots are used for TLS unless ``insecure``.
    """

    target: str
    node_id: str
    token: str | None = None
    insecure: bool = False
    root_cert: bytes | None = None
    model_version: str = ""
    batch_size: int = 8
    max_attempts: int = 5
    rpc_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    idle_poll_s: float = 1.0
    max_message_bytes: int = 32 * 1024 * 1024


@dataclass
class UplinkStats:
    """What the uplink has done in this run (see the README's JSON-lines ``uplink`` key).

    ``sent``: cases the cloud answered (label or refusal); ``labelled``: labels written;
    ``failed``: cases that ended ``failed``; ``retries``: cases put back to wait;
    ``bytes_up``: serialized bytes of the answered cases; ``rtt_ms``: mean round trip
    (case handed to gRPC → its answer) of the last 50 answers; ``pending``: cases waiting
    in the store; ``state``: ``idle``, ``sending``, ``backoff`` or ``stopped``.
    """

    sent: int = 0
    labelled: int = 0
    failed: int = 0
    retries: int = 0
    bytes_up: int = 0
    rtt_ms: float | None = None
    pending: int = 0
    state: str = "idle"
    last_error: str | None = None
    _rtts: deque[float] = field(default_factory=lambda: deque(maxlen=_RTT_WINDOW), repr=False)

    def add_rtt(self, seconds: float) -> None:
        """Record one round trip."""
        self._rtts.append(seconds * 1000.0)
        self.rtt_ms = sum(self._rtts) / len(self._rtts)

    def to_json(self) -> dict[str, Any]:
        """The ``uplink`` object of a JSON-lines record."""
        return {
            "sent": self.sent,
            "labelled": self.labelled,
            "failed": self.failed,
            "retries": self.retries,
            "pending": self.pending,
            "bytes_up": self.bytes_up,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "state": self.state,
        }


@dataclass
class _Batch:
    frames: dict[int, StoredFrame]
    cases: list[cloud_pb2.HardCase]
    sent_at: dict[int, float] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    retry_delay: float | None = None  # set when a case met a transient error: back off


class Uploader:
    """Drain the store's pending hard cases to the cloud from a background thread.

    Parameters
    ----------
    store
        The frame store (the queue); shared with the pipeline's store stage.
    privacy
        Builds each case; in ``none`` mode the uploader never connects.
    config
        Target, credentials and knobs.
    clock
        Wall-clock seconds (next-try times are stored, so they outlive the process).
    sleep
        Waits between tries; returns early when the uploader stops (default).
    rng
        Jitter source.
    """

    def __init__(
        self,
        store: FrameStore,
        privacy: PrivacyFilter,
        config: UploaderConfig,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if config.batch_size < 1 or config.max_attempts < 1:
            raise ConfigError("uploader batch size and max attempts must be 1 or more")
        self.store = store
        self.privacy = privacy
        self.config = config
        # the detector version a case names; ``fedge edge --detector-dir`` sets it to the
        # version running (the store does not keep it per frame)
        self.model_version: Callable[[], str] = lambda: config.model_version
        self.clock = clock
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.sleep = sleep if sleep is not None else self._stopping.wait
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, rng=rng)
        self.stats = UplinkStats()
        self._channel: grpc.Channel | None = None
        self._stub: cloud_pb2_grpc.CloudStub | None = None
        self._thread: threading.Thread | None = None
        self._retry_delay: float | None = None
        self._metadata = (("authorization", f"Bearer {config.token}"),) if config.token else ()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Uploader:
        """Requeue cases a dead process left ``sent`` and start the thread."""
        self.store.requeue_sent(next_try=0.0)
        self._refresh_pending()
        if not self.privacy.mode.sends_cases:
            self.stats.state = "stopped"
            return self
        self._thread = threading.Thread(target=self._run, name="fedge-uploader", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the upload thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self, *_: object) -> None:
        """Look for due cases now (e.g. a new hard case was stored); a ``HardCaseFeed``
        callback."""
        self._wake.set()

    def watch(self, feed: HardCaseFeed) -> None:
        """Wake up for every hard case published on ``feed``."""
        feed.subscribe(self.wake)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until no case is pending or sent; return whether none is."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._refresh_pending()
            if self.stats.pending == 0:
                return True
            if not self.alive:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.wake()
            time.sleep(min(0.1, left))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (cases in flight go back to ``pending`` on the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._channel is not None:
            self._channel.close()  # cancels a call in flight
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_channel()
        self.stats.state = "stopped"

    def __enter__(self) -> Uploader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one round ---------------------------------------------------------------------

    def run_once(self) -> bool | None:
        """Send one batch of due cases and store the answers.

        Returns ``None`` when nothing was due, ``True`` when the cloud was reached and
        ``False`` after a transient failure (the caller backs off).
        """
        batch = self._next_batch()
        if batch is None:
            return None
        self.stats.state = "sending"
        self._retry_delay = None
        try:
            reached = self._send(batch)
        finally:
            self._refresh_pending()
        return reached

    def _next_batch(self) -> _Batch | None:
        now = self.clock()
        frames: dict[int, StoredFrame] = {}
        cases = []
        for frame in self.store.due_for_upload(now, self.config.batch_size):
            try:
                case = self.privacy.build_case(
                    frame, node_id=self.config.node_id, model_version=self.model_version()
                )
            except (PrivacyError, StoreError) as err:
                self._give_up(frame.id, str(err))
                continue
            except Exception as err:  # noqa: BLE001 - one bad frame must not block the queue
                self._give_up(frame.id, f"cannot build the case: {type(err).__name__}: {err}")
                continue
            if case is None:
                continue
            try:
                self.store.mark_sent(frame.id, now)
            except StoreError:
                continue  # evicted (or moved) since it was read
            frames[frame.id] = frame
            cases.append(case)
        return _Batch(frames, cases) if cases else None

    def _give_up(self, frame_id: int, error: str) -> None:
        """A case that cannot be built (image gone, faces not removable): fail it now."""
        try:
            self.store.mark_sent(frame_id)
            self.store.mark_attempt_failed(frame_id, self.clock(), error, max_attempts=1)
            self.stats.failed += 1
        except StoreError:
            pass  # evicted meanwhile: nothing left to send
        self.stats.last_error = error

    def _requests(self, batch: _Batch) -> Iterator[cloud_pb2.HardCase]:
        for case in batch.cases:
            batch.sent_at[case.frame_id] = time.perf_counter()
            yield case

    def _send(self, batch: _Batch) -> bool:
        stub = self._connect()
        try:
            replies = stub.InferStream(
                self._requests(batch),
                timeout=self.config.rpc_timeout_s,
                metadata=self._metadata,
            )
            for reply in replies:
                self._answer(batch, reply)
        except grpc.RpcError as err:
            code = err.code() if callable(getattr(err, "code", None)) else None
            detail = err.details() if callable(getattr(err, "details", None)) else str(err)
            code = code or grpc.StatusCode.UNKNOWN
            self._unanswered(batch, code, f"{code.name}: {detail}")
            if code in TRANSIENT_CODES:
                self._close_channel()  # the next try opens a fresh connection
                return False
            return True
        except ValueError as err:  # the channel was closed under us: we are stopping
            self._unanswered(batch, grpc.StatusCode.CANCELLED, f"CANCELLED: {err}")
            return False
        self._unanswered(batch, grpc.StatusCode.UNKNOWN, "UNKNOWN: the cloud sent no answer")
        if batch.retry_delay is not None:
            return False
        self.backoff.reset()
        return True

    def _answer(self, batch: _Batch, reply: cloud_pb2.StreamReply) -> None:
        frame = batch.frames.get(reply.frame_id)
        if frame is None or reply.frame_id in batch.answered:
            return  # not ours, or answered twice: keep the first answer
        batch.answered.add(reply.frame_id)
        started = batch.sent_at.get(reply.frame_id)
        if started is not None:
            self.stats.add_rtt(time.perf_counter() - started)
        case = next(c for c in batch.cases if c.frame_id == reply.frame_id)
        self.stats.sent += 1
        self.stats.bytes_up += case.ByteSize()
        code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
        if code is grpc.StatusCode.OK:
            try:
                label = FrameLabel.from_cloud_result(
                    reply.result,
                    frame_width=frame.width,
                    frame_height=frame.height,
                    coverage=case_coverage(case),  # what the cloud saw of the frame
                )
            except LabelError as err:
                self._retry(batch, frame.id, grpc.StatusCode.INVALID_ARGUMENT, f"bad label: {err}")
                return
            try:
                self.store.store_label(frame.id, label)
                self.stats.labelled += 1
            except StoreError as err:  # evicted while in flight, or labelled elsewhere
                self.stats.last_error = str(err)
            return
        self._retry(batch, frame.id, code, f"{code.name}: {reply.message}")

    def _unanswered(self, batch: _Batch, code: grpc.StatusCode, error: str) -> None:
        for frame_id in batch.frames:
            if frame_id not in batch.answered:
                self._retry(batch, frame_id, code, error)

    def _retry(self, batch: _Batch, frame_id: int, code: grpc.StatusCode, error: str) -> None:
        """Put a case back to wait (transient) or count an attempt (anything else)."""
        self.stats.last_error = error
        now = self.clock()
        try:
            if code in TRANSIENT_CODES:
                if batch.retry_delay is None:  # one backoff step per failed batch
                    batch.retry_delay = self.backoff.next_delay()
                    self._retry_delay = batch.retry_delay
                self.store.requeue(frame_id, now + batch.retry_delay, error)
                self.stats.retries += 1
                return
            attempts = self.store.get(frame_id).attempts + 1
            status = self.store.mark_attempt_failed(
                frame_id,
                now + self.backoff.delay_for(attempts),
                error,
                max_attempts=self.config.max_attempts,
            )
        except StoreError:
            return  # evicted while in flight
        if status is LabelStatus.FAILED:
            self.stats.failed += 1
        else:
            self.stats.retries += 1

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                reached = self.run_once()
            except Exception as err:  # noqa: BLE001 - keep the thread; report and back off
                self.stats.last_error = f"{type(err).__name__}: {err}"
                reached = False
            if self._stopping.is_set():
                break
            if reached is False:
                self.stats.state = "backoff"
                delay = self._retry_delay  # the step the failed cases were requeued by
                self.sleep(delay if delay is not None else self.backoff.next_delay())
            elif reached is None:
                self.stats.state = "idle"
                self._wait_for_work()
        self.stats.state = "stopped"

    def _wait_for_work(self) -> None:
        timeout = self.config.idle_poll_s
        due = self.store.next_due()
        if due is not None:
            timeout = max(0.0, min(timeout, due - self.clock()))
        self._wake.wait(timeout)
        self._wake.clear()

    def _refresh_pending(self) -> None:
        try:
            counts = self.store.status_counts()
        except StoreError:
            return
        self.stats.pending = counts[LabelStatus.PENDING] + counts[LabelStatus.SENT]

    def _connect(self) -> cloud_pb2_grpc.CloudStub:
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", int(self.config.backoff_max_s * 1000)),
            ]
            if self.config.insecure:
                self._channel = grpc.insecure_channel(self.config.target, options=options)
            else:
                credentials = grpc.ssl_channel_credentials(root_certificates=self.config.root_cert)
                self._channel = grpc.secure_channel(self.config.target, credentials, options)
            self._stub = cloud_pb2_grpc.CloudStub(self._channel)
        return self._stub

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None
