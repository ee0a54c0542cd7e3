"""The app on real Flower processes: ``scripts/local-deployment.sh`` (SuperLink + 2 SuperNodes).

Each slow test runs the script once, in one mode, from a foreign working directory.
While the run is in progress the test probes the SuperLink's port itself: with TLS a
plain-HTTP client gets no answer and a TLS client that trusts only the script's CA
completes a verified handshake for 127.0.0.1; without TLS the same plain-HTTP probe
gets an HTTP answer (so the probe can tell the two apart). Afterwards no process of
the deployment may remain and its ports must be free again.
"""

from __future__ import annotations

import http.client
import math
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import APP_DIR
from ports import accepts_connections, deployment_processes

from fedge.core.ports import free_port_block, port_is_free
from server.metrics_log import read_metrics

SCRIPT = APP_DIR / "scripts" / "local-deployment.sh"
NUM_SUPERNODES = 2
RUN_TIMEOUT_S = 600


def _plain_http_status(port: int) -> int | None:
    """HTTP status of a plain (no TLS) request, or None when the server won't talk HTTP."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (http.client.HTTPException, OSError):
        return None
    finally:
        conn.close()


def _verified_tls_peer(port: int, ca_file: Path) -> dict:
    """Handshake trusting only ``ca_file`` and checking the name 127.0.0.1; peer cert."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


def _run_deployment(mode: str, tmp_path: Path) -> tuple[int, str, dict]:
    """Run the script and probe the SuperLink while it runs; (exit code, output, probe)."""
    work_dir = tmp_path / "work"
    port_base = free_port_block(NUM_SUPERNODES + 1)
    output = tmp_path / "script-output.txt"
    command = [
        str(SCRIPT),
        f"--{mode}",
        "--port-base",
        str(port_base),
        "--work-dir",
        str(work_dir),
        "--run-config",
        f'output-dir="{tmp_path / "outputs"}" run-name="{mode}"',
        # short and lean: 2 rounds on 300 samples per node, no federated evaluation
        "num-server-rounds=2",
        "max-train-samples=300",
        "fraction-evaluate=0.0",
    ]
    probe: dict = {}
    with output.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if not probe and accepts_connections(port_base):
                    probe["plain_http_status"] = _plain_http_status(port_base)
                    if mode == "tls":
                        probe["peer"] = _verified_tls_peer(port_base, work_dir / "certs/ca.crt")
                time.sleep(0.5)
            if proc.poll() is None:
                proc.terminate()  # the script's trap stops what it started
                proc.wait(timeout=60)
                pytest.fail(f"deployment did not finish in {RUN_TIMEOUT_S}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    probe["ports"] = [port_base + i for i in range(NUM_SUPERNODES + 1)]
    probe["work_dir"] = work_dir
    return proc.returncode, output.read_text(), probe


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["insecure", "tls"])
def test_app_trains_on_superlink_and_two_supernodes_and_leaves_no_process(
    mode: str, tmp_path: Path
) -> None:
    # Execute
    code, output, probe = _run_deployment(mode, tmp_path)
    # Assert: the run succeeded and trained on both partitions
    assert code == 0, output[-4000:]
    assert "finished:completed" in output
    rows = read_metrics(tmp_path / "outputs" / mode / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2], output[-4000:]
    for row in rows:
        assert len(row["clients"]) == NUM_SUPERNODES
        assert {c["partition_id"] for c in row["clients"]} == {0, 1}
    accuracy = rows[-1]["central"]["accuracy"]
    assert math.isfinite(accuracy) and accuracy > 0.15, accuracy  # chance is 0.1
    assert (tmp_path / "outputs" / mode / "final_weights.npz").exists()
    # Assert: the transport is what the mode says
    assert "plain_http_status" in probe, "the SuperLink port never accepted connections"
    if mode == "tls":
        assert probe["plain_http_status"] is None, "TLS SuperLink answered plain HTTP"
        san = probe["peer"]["subjectAltName"]
        assert ("IP Address", "127.0.0.1") in san, san
        assert (probe["work_dir"] / "certs" / "server.crt").exists()
    else:
        assert probe["plain_http_status"] is not None, "insecure SuperLink refused plain HTTP"
    # Assert: nothing the deployment started is left, its ports are free again
    pids = [int(p.read_text()) for p in (probe["work_dir"] / "pids").glob("*.pid")]
    assert len(pids) == 1 + NUM_SUPERNODES
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], pids
    assert deployment_processes(probe["work_dir"], probe["ports"]) == []
    for port in probe["ports"]:
        assert not accepts_connections(port), f"something still listens on {port}"
        assert port_is_free(port, reuse_address=True), port


def test_invalid_run_config_fails_before_any_process_starts(tmp_path: Path) -> None:
    # Execute
    result = subprocess.run(
        [str(SCRIPT), "--insecure", "--work-dir", str(tmp_path / "work"), "no-such-knob=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Assert
    assert result.returncode != 0
    assert "invalid run config" in result.stderr and "no-such-knob" in result.stderr
    assert not (tmp_path / "work" / "pids" / "superlink.pid").exists()
