"""A warm worker per node: one long-lived process that keeps TensorFlow, the task's model
and its traced graphs from one Flower message to the next.

Flower 1.42 starts a new ClientApp process for every message. For the person detector
each such process imports TensorFlow, builds the model and traces its training step
before it trains a single batch, and the nodes of a cyclic round pay that one after
another (``benchmarks/warm_worker.py`` measures it). With the node config
``warm-worker=true`` the ClientApp hands its task's ``train`` and ``evaluate`` to the
node's worker instead: the first message starts it (``python -m clients.warm_worker``),
later ones find it. The worker runs the same task code from the same installed app, on
the same arguments, so a reply is the same either way (the task resets its optimizer
and weights on every call; ``tests/test_warm_worker.py`` checks the weights are equal).

- **One worker per** app code folder, owner process, node config and ``cpu-threads``.
  The owner is the process that starts ClientApps (the SuperNode's ``flower-superexec``
  for a ``flwr-clientapp`` process), else the calling process itself. The worker exits
  when its owner does (checked every second), after ``warm-worker-idle-s`` seconds
  (default 900) without a request, or on SIGTERM; it is in its starter's process group,
  so stopping a SuperNode's group stops it too.
- **The wire**: a Unix socket in a private folder (mode 0700) under the temp folder, and
  a random key (a 0600 file) that both ends prove with ``multiprocessing.connection``'s
  HMAC handshake. A request and its reply are a JSON header and NumPy arrays in one
  ``.npz`` (``allow_pickle=False``): no pickles.
- **Failures**: an error of the task (a bad config, no examples yet) is raised again in
  the ClientApp as the same ``fedge`` error; a worker that cannot start or dies is
  logged (its log sits beside the socket) and the ClientApp runs the task itself. The
  log and lock of a worker that left are removed a week after its last log line
  (``STALE_AFTER_S``), the next time any worker's files are looked up.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

from clients.tasks.base import EvaluateOutcome, NodeSetup, Task, TrainOutcome
from fedge.core.errors import ConfigError, FedgeError
from fedge.core.process_age import process_start_ticks
from fedge.core.run_config import RunConfig

__all__ = [
    "IDLE_KEY",
    "REQUESTS_METRIC",
    "STALE_AFTER_S",
    "WORKER_KEY",
    "WorkerTaskError",
    "WorkerUnavailableError",
    "evaluate_on_node",
    "main",
    "train_on_node",
    "wants_worker",
    "worker_files",
    "worker_hello",
]

log = logging.getLogger(__name__)

STALE_AFTER_S = 7 * 24 * 3600.0
"""A worker's log and lock are removed this long after its last line once it has left."""

WORKER_KEY = "warm-worker"
IDLE_KEY = "warm-worker-idle-s"
DEFAULT_IDLE_S = 900.0
REQUESTS_METRIC = "warm-worker-requests"
START_TIMEOUT_S = 120.0
"""How long a starting worker may take to listen (it listens before importing TensorFlow)."""
_CODE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding clients/, fedge/, ...


class WorkerUnavailableError(FedgeError):
    """The node's warm worker could not be started or reached, or died during a request."""


class WorkerTaskError(FedgeError):
    """The task failed in the worker with an error that is not a ``fedge`` error."""


def wants_worker(node_config: Mapping[str, Any]) -> bool:
    """Whether the node config asks for a warm worker (``warm-worker``: true, 1, yes)."""
    value = node_config.get(WORKER_KEY, False)
    if isinstance(value, str):
        value = value.strip().lower()
        if value not in ("true", "1", "yes", "false", "0", "no", ""):
            raise ConfigError(f"{WORKER_KEY}={value!r}: use true or false")
        return value in ("true", "1", "yes")
    return bool(value)


def _idle_s(node_config: Mapping[str, Any]) -> float:
    try:
        idle = float(node_config.get(IDLE_KEY, DEFAULT_IDLE_S))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{IDLE_KEY} must be a number of seconds: {err}") from None
    if not idle > 0:
        raise ConfigError(f"{IDLE_KEY} must be > 0, not {idle}")
    return idle


# ---- the messages: a JSON header and arrays in one .npz -----------------------------


def _pack(header: Mapping[str, Any], arrays: Mapping[str, Sequence[np.ndarray]]) -> bytes:
    counts = {group: len(items) for group, items in arrays.items()}
    named = {
        f"{group}_{i}": np.asarray(a)
        for group, items in arrays.items()
        for i, a in enumerate(items)
    }
    text = json.dumps({**header, "_arrays": counts}, default=_plain).encode()
    buffer = io.BytesIO()
    np.savez(buffer, _header=np.frombuffer(text, np.uint8), **named)
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in a header as plain numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot go into a warm-worker header")


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        header = json.loads(npz["_header"].tobytes().decode())
        counts = header.pop("_arrays")
        arrays = {g: [npz[f"{g}_{i}"] for i in range(int(n))] for g, n in counts.items()}
    return header, arrays


# ---- where a node's worker lives ------------------------------------------------------


@dataclass(frozen=True)
class WorkerFiles:
    """The socket, key, lock and log of one worker (all in one private folder)."""

    socket: Path
    key: Path
    lock: Path
    log: Path


def _owner_pid() -> int:
    """The process whose life the worker shares (module docstring)."""
    return os.getppid() if sys.argv[0].endswith("flwr-clientapp") else os.getpid()


def _private_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"fedge-workers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise WorkerUnavailableError(f"{folder} is not private to this user: no worker")
    _prune_stale(folder)
    return folder


def _prune_stale(folder: Path, now: float | None = None) -> None:
    """Remove the lock and log of workers that left (no socket) over ``STALE_AFTER_S`` ago:
    a worker removes its socket and key when it leaves, and every owner process (each run
    of a SuperNode) has workers of its own, so their files would pile up."""
    cutoff = (time.time() if now is None else now) - STALE_AFTER_S
    for log_file in folder.glob("*.log"):
        socket = log_file.with_suffix(".sock")
        try:
            if socket.exists() or log_file.stat().st_mtime >= cutoff:
                continue
            log_file.unlink(missing_ok=True)
            log_file.with_suffix(".lock").unlink(missing_ok=True)
        except OSError:  # another process pruned it first
            continue


def worker_files(cfg: RunConfig, node: NodeSetup, owner: int | None = None) -> WorkerFiles:
    """The files of the worker that serves this node (module docstring: one worker per)."""
    pid = _owner_pid() if owner is None else owner
    who = {
        "code": str(_CODE_ROOT),
        "owner": [pid, process_start_ticks(pid)],
        "node": {str(k): node.config[k] for k in sorted(node.config)},
        "cpu-threads": cfg.cpu_threads,
    }
    name = hashlib.sha256(json.dumps(who, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = _private_folder()
    return WorkerFiles(*(folder / f"{name}.{ext}" for ext in ("sock", "key", "lock", "log")))


# ---- the ClientApp's side ----------------------------------------------------------


def _connect(files: WorkerFiles) -> Connection | None:
    try:
        return Client(str(files.socket), "AF_UNIX", authkey=files.key.read_bytes())
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # not started, or gone (a stale socket file)


def _start(files: WorkerFiles, owner: int, idle_s: float) -> Connection:
    """Start the worker and connect (the caller holds the lock)."""
    key = secrets.token_bytes(32)
    files.socket.unlink(missing_ok=True)
    files.key.unlink(missing_ok=True)
    descriptor = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_CODE_ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "clients.warm_worker",
        "--socket", str(files.socket), "--key-file", str(files.key),
        "--owner-pid", str(owner), "--idle-s", str(idle_s),
    ]  # fmt: skip
    with os.fdopen(os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WorkerUnavailableError(
                f"the warm worker exited with {process.returncode} on start (log: {files.log})"
            )
        if files.socket.exists():
            connection = _connect(files)
            if connection is not None:
                log.info("started the warm worker %d (log: %s)", process.pid, files.log)
                return connection
        time.sleep(0.05)
    process.terminate()
    raise WorkerUnavailableError(f"the warm worker did not listen within {START_TIMEOUT_S:.0f} s")


def _call(
    cfg: RunConfig, node: NodeSetup, header: dict[str, Any], arrays: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """Send one request to the node's worker (starting it when needed); its reply."""
    owner = _owner_pid()
    request = _pack(
        {
            **header,
            "run_config": cfg.to_mapping(),
            "node": [node.partition_id, node.num_partitions, dict(node.config)],
        },
        arrays,
    )
    try:
        files = worker_files(cfg, node, owner)  # OSError: no private folder to be had
        with os.fdopen(os.open(files.lock, os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; requests queue
            connection = _connect(files) or _start(files, owner, _idle_s(node.config))
            with connection:
                connection.send_bytes(request)
                reply = connection.recv_bytes()
    except (OSError, EOFError, AuthenticationError) as err:
        raise WorkerUnavailableError(f"warm worker: {type(err).__name__}: {err}") from err
    header, arrays = _unpack(reply)
    if "error" in header:
        raise _error(header["error"])
    return header, arrays


def _error(error: Mapping[str, str]) -> Exception:
    """The worker's task error as the same ``fedge`` error type, else a generic one."""
    try:
        kind = getattr(importlib.import_module(error["module"]), error["type"])
    except (ImportError, AttributeError, KeyError):
        kind = None
    if isinstance(kind, type) and issubclass(kind, FedgeError):
        return kind(error["message"])
    return WorkerTaskError(f"{error.get('type')}: {error.get('message')}")


def train_on_node(
    task: Task,
    cfg: RunConfig,
    node: NodeSetup,
    weights: Sequence[np.ndarray],
    *,
    server_round: int,
    proximal_mu: float,
    correction: Sequence[np.ndarray] | None,
) -> TrainOutcome:
    """``task.train`` in the node's warm worker when the node config asks for one, else
    (or when the worker is unavailable) in this process."""
    if wants_worker(node.config):
        try:
            header, arrays = _call(
                cfg,
                node,
                {"op": "train", "server_round": server_round, "proximal_mu": proximal_mu,
                 "correction": correction is not None},
                {"weights": list(weights), "correction": list(correction or [])},
            )  # fmt: skip
            return TrainOutcome(
                arrays["weights"], header["metrics"], header["num_examples"], header["steps"]
            )
        except WorkerUnavailableError as err:
            log.warning("%s: training in this process", err)
    return task.train(
        cfg,
        node,
        weights,
        server_round=server_round,
        proximal_mu=proximal_mu,
        correction=correction,
    )


def evaluate_on_node(
    task: Task,
    cfg: RunConfig,
    node: NodeSetup,
    weights: Sequence[np.ndarray],
    *,
    server_round: int,
) -> EvaluateOutcome:
    """``task.evaluate``, in the node's warm worker when asked for (see ``train_on_node``)."""
    if wants_worker(node.config):
        try:
            header, _ = _call(
                cfg,
                node,
                {"op": "evaluate", "server_round": server_round},
                {"weights": list(weights)},
            )
            return EvaluateOutcome(header["metrics"], header["num_examples"])
        except WorkerUnavailableError as err:
            log.warning("%s: evaluating in this process", err)
    return task.evaluate(cfg, node, weights, server_round=server_round)


def worker_hello(cfg: RunConfig, node: NodeSetup) -> dict[str, int]:
    """The pid of the node's worker and the requests it has taken, this one included
    (starting it when needed; ``WorkerUnavailableError`` when it cannot)."""
    header, _ = _call(cfg, node, {"op": "hello"}, {})
    return {"pid": int(header["pid"]), "requests": int(header["requests"])}


# ---- the worker's side ---------------------------------------------------------------


_served = [0]  # requests this worker has answered


def _handle(request: bytes) -> bytes:
    """Run one request's task call; its reply (the task's error as a header).

    A reply's metrics gain ``warm-worker-requests``: how many requests this worker has
    taken, this one included (above 1: the process was warm)."""
    from clients.tasks import get_task

    _served[0] += 1
    served = {REQUESTS_METRIC: float(_served[0])}
    try:
        header, arrays = _unpack(request)
        if header["op"] == "hello":
            return _pack({"pid": os.getpid(), "requests": _served[0]}, {})
        cfg = RunConfig.from_mapping(header["run_config"])
        partition, count, config = header["node"]
        node = NodeSetup(partition, count, config)
        task = get_task(cfg.task)
        if header["op"] == "train":
            outcome = task.train(
                cfg,
                node,
                arrays["weights"],
                server_round=int(header["server_round"]),
                proximal_mu=float(header["proximal_mu"]),
                correction=arrays["correction"] if header["correction"] else None,
            )
            return _pack(
                {"metrics": {**outcome.metrics, **served}, "num_examples": outcome.num_examples,
                 "steps": outcome.steps},
                {"weights": outcome.weights},
            )  # fmt: skip
        if header["op"] == "evaluate":
            result = task.evaluate(
                cfg, node, arrays["weights"], server_round=int(header["server_round"])
            )
            metrics = {**result.metrics, **served}
            return _pack({"metrics": metrics, "num_examples": result.num_examples}, {})
        raise ConfigError(f"unknown warm-worker request {header['op']!r}")
    except Exception as err:  # the task's error goes back to the ClientApp
        log.exception("request failed")
        kind = type(err)
        return _pack(
            {"error": {"module": kind.__module__, "type": kind.__qualname__, "message": str(err)}},
            {},
        )


def serve(socket: Path, key: bytes, owner: int, idle_s: float) -> None:
    """Answer requests one at a time until the owner exits or ``idle_s`` pass idle."""
    born = process_start_ticks(owner)
    listener = Listener(str(socket), "AF_UNIX", backlog=16, authkey=key)
    last = [time.monotonic()]
    busy = threading.Event()

    def leave(*_: Any) -> None:
        socket.unlink(missing_ok=True)
        socket.with_suffix(".key").unlink(missing_ok=True)
        os._exit(0)  # the main thread may be inside TensorFlow or accept()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if born is None or process_start_ticks(owner) != born:
                log.info("owner %d is gone: leaving", owner)
                leave()
            if not busy.is_set() and time.monotonic() - last[0] > idle_s:
                log.info("idle for %.0f s: leaving", idle_s)
                leave()

    signal.signal(signal.SIGTERM, leave)
    threading.Thread(target=watch, name="owner-watch", daemon=True).start()
    log.info("listening on %s for owner %d", socket, owner)
    while True:
        try:
            connection = listener.accept()
        except (OSError, EOFError, AuthenticationError) as err:  # e.g. a wrong key
            log.warning("refused a connection: %s", err)
            continue
        busy.set()
        try:
            with connection:
                began = time.perf_counter()
                connection.send_bytes(_handle(connection.recv_bytes()))
                log.info("answered a request in %.1f s", time.perf_counter() - began)
        except (OSError, EOFError) as err:
            log.warning("lost a request: %s", err)
        finally:
            last[0] = time.monotonic()
            busy.clear()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m clients.warm_worker --socket S --key-file K --owner-pid P``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s warm-worker {os.getpid()} %(message)s"
    )
    serve(args.socket, args.key_file.read_bytes(), args.owner_pid, args.idle_s)


if __name__ == "__main__":
    main()
