"""Run the fedge Flower App on a local simulation federation and clean up after it.

``flwr run .`` talks to a SuperLink named in the Flower config (``$FLWR_HOME/config.toml``).
``LocalFederation`` writes that config for a private ``FLWR_HOME`` (so the user's own
``~/.flwr`` is never edited), picks free loopback ports for the managed local
SuperLink, runs the app with ``--stream`` and, on ``close()``, stops the SuperLink that
``flwr run`` left running in the background.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.ports import free_port

__all__ = ["LocalFederation", "format_run_config", "processes_of_flwr_home"]

CONNECTION = "fedge-sim"
SUPERLINK_START_FAILURE = "Failed to start local SuperLink"


def format_run_config(values: Mapping[str, Any]) -> str:
    """Format values for ``--run-config``: ``num-server-rounds=3 strategy="fedavg"``."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class LocalFederation:
    """A private Flower home with a simulation connection of ``num_supernodes`` nodes."""

    def __init__(
        self,
        flwr_home: Path,
        num_supernodes: int,
        client_cpus: int = 1,
    ) -> None:
        if num_supernodes < 1:
            raise FedgeError(f"num-supernodes must be >= 1, got {num_supernodes}")
        self.flwr_home = Path(flwr_home).resolve()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.num_supernodes = num_supernodes
        self.http_port = free_port()
        self.control_port = free_port()
        (self.flwr_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            'address = ":local:"\n'
            f"options.num-supernodes = {num_supernodes}\n"
            f"options.backend.client-resources.num-cpus = {int(client_cpus)}\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment for ``flwr``: the private home, its ports, no dependency install."""
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(self.http_port),
            FLWR_LOCAL_CONTROL_API_PORT=str(self.control_port),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
            # flwr starts `flower-superlink` by name: find the one of this environment
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        # flwr's Ray backend imports TensorFlow in every client actor before the app
        # loads, too early for models.training to switch oneDNN on: it must come from
        # the environment (2-5x faster convolutions on this kind of CPU).
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        return env

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        *,
        timeout: float = 1800.0,
        log_path: Path | None = None,
        echo: bool = False,
        start_attempts: int = 3,
    ) -> str:
        """Run the app to completion and return its log; a failed run → ``FedgeError``.

        ``flwr`` gives its managed SuperLink 15 s to start; on a loaded machine that can
        be too short, so a run that failed only because of that is retried.
        """
        for attempt in range(1, start_attempts + 1):
            code, log = self._run_once(app_dir, run_config, timeout, echo)
            if SUPERLINK_START_FAILURE not in log or attempt == start_attempts:
                break
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(log)
        # `flwr run --stream` exits 0 even when the ServerApp fails: read the log too
        failed = code != 0 or "An unhandled exception occurred" in log or "Exit Code:" in log
        if failed:
            tail = "\n".join(log.splitlines()[-15:])
            raise FedgeError(f"`flwr run` failed (exit {code}):\n{tail}")
        return log

    def _run_once(
        self, app_dir: Path, run_config: Mapping[str, Any], timeout: float, echo: bool
    ) -> tuple[int, str]:
        flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
        command = [flwr, "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", format_run_config(run_config)]
        lines: list[str] = []
        with subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            deadline = time.monotonic() + timeout
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    sys.stdout.write(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    break
            code = proc.wait()
        return code, "".join(lines)

    def superlink_pids(self) -> list[int]:
        """PIDs of ``flower-superlink`` processes serving this federation's ports."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in cmdline]
            if any(a.endswith("flower-superlink") for a in args) and str(self.http_port) in args:
                pids.append(int(entry.name))
        return pids

    def leftover_pids(self) -> list[int]:
        """PIDs of every live process started for this home (SuperLink, simulation, Ray)."""
        return processes_of_flwr_home(self.flwr_home)

    def close(self, grace: float = 10.0) -> None:
        """Stop the managed SuperLink and everything it started for this home."""
        for pid in self.superlink_pids():
            _terminate_group(pid, grace)
        for pid in self.leftover_pids():
            _terminate_group(pid, grace)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def processes_of_flwr_home(flwr_home: Path) -> list[int]:
    """PIDs of live processes whose environment sets ``FLWR_HOME`` to ``flwr_home``.

    Ray's workers are re-parented away from the SuperLink's process tree, so they are
    found by the ``FLWR_HOME`` they inherited instead.
    """
    marker = f"FLWR_HOME={Path(flwr_home).resolve()}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and not _is_zombie(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _terminate_group(pid: int, grace: float) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    target = pgid if pgid == pid else None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if target is not None:
                os.killpg(target, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return
            time.sleep(0.2)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return True
