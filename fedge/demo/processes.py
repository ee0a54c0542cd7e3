"""Processes the demo starts (``fedge cloud``, ``flower-superlink``, ``flower-supernode``s)
and stops, every one of them, on success, on error and on Ctrl-C.

Each process runs in its own session (process group) with its output in a log file;
:meth:`ProcessGroup.close` sends SIGTERM to every process in those sessions and in the
sessions their descendants opened, waits a grace period, then SIGKILLs what is left.
Children in a session of their own matter: flwr 1.42's SuperLink starts its SuperExec in
a new session, and the SuperExec the ServerApp, so signalling the SuperLink's group
alone left a ServerApp interrupted mid-round running, retrying a SuperLink that was gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedge.core.errors import FedgeError

__all__ = ["ProcessGroup", "Started", "log_tail", "wait_for_port"]


@dataclass
class Started:
    """A started process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        """Whether it still runs."""
        return self.process.poll() is None


def log_tail(path: Path, lines: int = 12) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ProcessGroup:
    """The demo's processes (module docstring)."""

    def __init__(self, log_dir: Path, grace_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.started: list[Started] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        """Start ``command`` in its own process group, output to ``<log_dir>/<name>.log``."""
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                list(command),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def check(self) -> None:
        """Raise ``FedgeError`` naming the first process that has exited."""
        for item in self.started:
            if not item.alive:
                raise FedgeError(
                    f"{item.name} exited with status {item.process.returncode}; last lines of "
                    f"{item.log}:\n{log_tail(item.log)}"
                )

    def close(self) -> None:
        """Stop every process (module docstring): SIGTERM, then SIGKILL after the grace
        period, to every process in the started ones' sessions and their descendants'."""
        roots = [item.process.pid for item in self.started]
        sessions = _sessions_below(roots)
        _signal_sessions(sessions, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for item in reversed(self.started):
            try:
                item.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # sessions opened during the grace period too, and whatever a session still holds
        _signal_sessions(sessions | _sessions_below(roots), signal.SIGKILL)
        for item in self.started:
            try:
                item.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        self.started.clear()

    def pids(self) -> list[int]:
        """PIDs of the processes still running."""
        return [item.process.pid for item in self.started if item.alive]

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _process_table() -> list[tuple[int, int, int]]:
    """``(pid, parent pid, session id)`` of every process (Linux ``/proc``; else none)."""
    table = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table.append((int(name), int(fields[1]), int(fields[3])))
    return table


def _sessions_below(roots: Sequence[int]) -> set[int]:
    """The sessions of ``roots`` (each leads its own) and of all their descendants."""
    table = _process_table()
    children: dict[int, list[tuple[int, int]]] = {}
    for pid, parent, session in table:
        children.setdefault(parent, []).append((pid, session))
    sessions, todo = set(roots), list(roots)
    while todo:
        for pid, session in children.get(todo.pop(), ()):
            sessions.add(session)
            todo.append(pid)
    sessions.discard(os.getsid(0))  # never this process's own session
    return sessions


def _signal_sessions(sessions: set[int], sig: signal.Signals) -> None:
    """Send ``sig`` to every process of ``sessions`` (the groups too where ``/proc`` is
    missing: each started process leads its own)."""
    own = os.getpid()
    for pid, _, session in _process_table():
        if session in sessions and pid != own:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    for leader in sessions:
        try:
            os.killpg(leader, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for_port(port: int, started: Started, timeout: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    Raises ``FedgeError`` when ``started`` exits first or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not started.alive:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    state = "exited" if not started.alive else f"did not listen within {timeout:.0f} s"
    raise FedgeError(
        f"{started.name} {state} (port {port}); last lines of {started.log}:\n"
        f"{log_tail(started.log)}"
    )
