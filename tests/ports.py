"""Whether a loopback port accepts connections, and the processes a test started (by
port, FLWR_HOME or path); whether a port is free: ``fedge.core.ports.port_is_free``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

__all__ = [
    "accepts_connections",
    "deployment_processes",
    "processes_mentioning",
    "start_as_background_job",
]


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def deployment_processes(
    work_dir: Path, ports: list[int], *, work_dir_in_args: bool = False
) -> list[str]:
    """Live processes started for a deployment: by ``FLWR_HOME`` under ``work_dir`` or by
    one of its ports on the command line (and, with ``work_dir_in_args``, by ``work_dir``
    anywhere on the command line)."""
    found = []
    marker = f"FLWR_HOME={work_dir}/".encode()
    port_words = {str(p) for p in ports} | {f"127.0.0.1:{p}" for p in ports}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue  # gone, or not ours to read
        named = work_dir_in_args and any(str(work_dir) in a for a in args)
        if marker in environ or port_words & set(args) or named:
            found.append(f"{entry.name}: {' '.join(args)}")
    return found


def processes_mentioning(path: Path) -> list[str]:
    """Live processes whose command line, working directory or environment name ``path``."""
    marker = str(path.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().split()[2] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            seen = marker in cmdline or marker in (entry / "environ").read_bytes()
            seen = seen or str(path.resolve()) in os.readlink(entry / "cwd")
        except OSError:
            continue
        if seen:
            words = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {words}")
    return found


def start_as_background_job(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``argv`` as a background job of a non-interactive shell would be: SIGINT
    ignored (so the command must install its own handler to stop on Ctrl-C), stdout
    discarded, stderr piped as text."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
