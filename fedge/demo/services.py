"""The demo's cloud side, started for real on loopback: ``fedge cloud`` and Flower.

- :func:`start_cloud`: ``fedge cloud`` (the teacher ensemble and confidence fusion) on a
  free loopback port, plain gRPC (loopback only; the deployment script uses TLS);
- :class:`DemoFederation`: one ``flower-superlink`` and one ``flower-supernode`` per
  site, each told its site's frame store with ``--node-config store-dir=...`` (the
  SuperNode trains on it and installs each exported model into ``<store>/detector``,
  where the site's agent follows it). Each demo round is one ``flwr run`` of the
  ``person-detector`` task that resumes the previous round's checkpoint, so the edge
  stage can run between two Flower rounds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError
from fedge.core.ports import free_port
from fedge.demo.processes import ProcessGroup, log_tail, wait_for_port
from fedge.local_federation import format_run_config

__all__ = ["CONNECTION", "DemoFederation", "check_cloud", "start_cloud"]

CONNECTION = "fedge-demo"
START_TIMEOUT_S = 120.0


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FedgeError(f"'{name}' not found: install fedge with its 'all' extra")
    return found


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        **extra,
    )
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    return env


def start_cloud(
    group: ProcessGroup,
    work: Path,
    *,
    fusion: str,
    model_dir: str | None,
    teacher_models: Sequence[Path] = (),
) -> str:
    """Start ``fedge cloud`` on a free loopback port; return its ``host:port``."""
    port = free_port()
    command = [sys.executable, "-m", "fedge", "cloud", "--port", str(port), "--insecure"]
    command += ["--fusion", fusion, "--state-dir", str(work / "cloud")]
    command += ["--audit-log", str(work / "cloud" / "audit.jsonl")]
    for path in teacher_models:
        command += ["--teacher-model", str(path)]
    (work / "cloud").mkdir(parents=True, exist_ok=True)
    env = _env(FEDGE_MODEL_DIR=str(model_dir)) if model_dir else _env()
    started = group.start("fedge-cloud", command, env=env)
    wait_for_port(port, started, START_TIMEOUT_S)
    return f"127.0.0.1:{port}"


def check_cloud(target: str, timeout: float = 5.0) -> None:
    """Raise ``FedgeError`` unless ``fedge cloud`` at ``target`` answers its health check
    as SERVING (plain gRPC)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service="fedge.cloud.v1.Cloud")
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code().name if callable(getattr(err, "code", None)) else "UNKNOWN"
            raise FedgeError(
                f"the cloud at {target} is unreachable ({code} after {timeout:g} s): start "
                "`fedge cloud --insecure` there, or drop --cloud to let the demo start one"
            ) from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise FedgeError(f"the cloud at {target} is not serving (health status {reply.status})")


class DemoFederation:
    """A SuperLink and one SuperNode per site, and one ``flwr run`` per round."""

    def __init__(
        self,
        group: ProcessGroup,
        work: Path,
        app_dir: Path,
        store_dirs: Sequence[Path],
        run_config: Mapping[str, Any],
        *,
        warm_worker: bool = True,
    ) -> None:
        self.group = group
        self.warm_worker = warm_worker
        self.work = work
        self.app_dir = app_dir
        self.store_dirs = list(store_dirs)
        self.run_config = dict(run_config)
        self.port = free_port()
        self.flwr_home = work / "flwr-cli"
        self.runs: list[dict[str, Any]] = []

    def start(self) -> None:
        """Start the SuperLink and the SuperNodes; write the flwr CLI's connection."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n"
        )
        home = self.work / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        link = self.group.start(
            "superlink",
            [
                _tool("flower-superlink"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--insecure",
                "--disable-runtime-dependency-installation",
            ],
            env=_env(FLWR_HOME=str(home)),
            cwd=home,
        )
        wait_for_port(self.port, link, START_TIMEOUT_S)
        count = len(self.store_dirs)
        for i, store in enumerate(self.store_dirs):
            home = self.work / f"supernode-{i}"
            home.mkdir(parents=True, exist_ok=True)
            node_config = f'partition-id={i} num-partitions={count} store-dir="{store}"'
            if self.warm_worker:  # train in one process per node (clients.warm_worker)
                node_config += " warm-worker=true"
            self.group.start(
                f"supernode-{i}",
                [
                    _tool("flower-supernode"),
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--insecure",
                    "--max-wait-time",
                    "60",
                    "--node-config",
                    node_config,
                ],
                env=_env(FLWR_HOME=str(home)),
                cwd=home,
            )

    def run_round(self, server_round: int, timeout: float) -> dict[str, Any]:
        """Run Flower round ``server_round`` (resuming the last); return its metrics line."""
        values = {**self.run_config, "num-server-rounds": server_round, "resume": True}
        command = [_tool("flwr"), "run", str(self.app_dir), CONNECTION, "--stream"]
        command += ["--run-config", format_run_config(values)]
        log = self.group.log_dir / f"flwr-run-{server_round}.log"
        began = time.perf_counter()
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(FLWR_HOME=str(self.flwr_home)),
                cwd=self.app_dir,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise FedgeError(
                    f"Flower round {server_round} did not finish in {timeout:.0f} s; log: {log}"
                ) from None
            finally:
                if process.poll() is None:
                    process.kill()
        text = log.read_text(errors="replace")
        if code != 0 or "An unhandled exception occurred" in text or "Exit Code:" in text:
            self.group.check()
            raise FedgeError(
                f"Flower round {server_round} failed (flwr run exit {code}); last lines of "
                f"{log}:\n{log_tail(log)}"
            )
        line = self._metrics_line(server_round)
        line["flwr_run_seconds"] = time.perf_counter() - began
        match = re.search(r"run[ _-]?id[^0-9]*([0-9]+)", text, flags=re.IGNORECASE)
        line["flwr_run_id"] = int(match.group(1)) if match else None
        self.runs.append(line)
        return line

    @property
    def run_dir(self) -> Path:
        """The ServerApp's run directory (checkpoints, metrics, exported models)."""
        return Path(self.run_config["output-dir"]) / str(self.run_config["run-name"])

    def _metrics_line(self, server_round: int) -> dict[str, Any]:
        path = self.run_dir / "metrics.jsonl"
        try:
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as err:
            raise FedgeError(f"no metrics for round {server_round} in {path}: {err}") from None
        for line in reversed(lines):
            if line.get("round") == server_round:
                return dict(line)
        raise FedgeError(f"{path} has no line for round {server_round}")
