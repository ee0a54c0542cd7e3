"""The person-detector loop on real processes: ``scripts/local-deployment.sh --task
person-detector`` (SuperLink, 2 SuperNodes, ``fedge cloud`` and 2 sites' ``fedge edge``).

The slow test runs the script once over TLS, 2 sites, 2 rounds, from a foreign working
directory, and then reads what the processes left behind: the ServerApp's metrics (every
round's model installed on both sites), each agent's frame records (the last one names
the last round's model version), each site's frame store (frames the cloud labelled,
with people in them) and model directory (both versions, the last one current), and the
cloud's audit log (both sites authenticated by their own token). Afterwards no process
of the deployment may remain and its ports must be free again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import APP_DIR
from ports import accepts_connections, deployment_processes

from fedge.core.ports import free_port_block, port_is_free

SCRIPT = APP_DIR / "scripts" / "local-deployment.sh"
SITES = 2
ROUNDS = 2
MIN_LABELLED = 3  # the script's default --min-labelled
RUN_TIMEOUT_S = 1200  # a hang guard: about 320 s alone, 510 s beside another test file (2 cores)
LAST_LABEL = f"person-detector-v{ROUNDS}"  # clients.model_installer.version_label


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict:
    """Run the script once; its exit code, output, work dir, ports and run time.

    The agents and the cloud use the pretrained models of ``model_dir`` (fetched once).
    """
    tmp_path = tmp_path_factory.mktemp("detector-deployment")
    work_dir = tmp_path / "work"
    ports = SITES + 2  # SuperLink, SuperNodes, fedge cloud
    port_base = free_port_block(ports)
    command = [
        str(SCRIPT), "--tls", "--task", "person-detector", "--sites", str(SITES),
        "--rounds", str(ROUNDS), "--port-base", str(port_base),
        "--work-dir", str(work_dir),
    ]  # fmt: skip
    output = tmp_path / "script-output.txt"
    began = time.monotonic()
    with output.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "FEDGE_MODEL_DIR": str(model_dir)},
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the script's trap stops what it started
            proc.wait(timeout=60)
            pytest.fail(f"deployment did not finish in {RUN_TIMEOUT_S}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "code": proc.returncode,
        "output": output.read_text(),
        "work_dir": work_dir,
        "ports": [port_base + i for i in range(ports)],
        "seconds": time.monotonic() - began,
    }


@pytest.mark.slow
def test_every_round_trains_on_both_sites_and_reaches_both_nodes(deployment: dict) -> None:
    from server.metrics_log import read_metrics

    assert deployment["code"] == 0, deployment["output"][-6000:]
    assert "finished:completed" in deployment["output"]
    rows = read_metrics(deployment["work_dir"] / "outputs" / "deployment" / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    for row in rows:
        assert {c["partition_id"] for c in row["clients"]} == set(range(SITES))
        model = row["model"]
        assert model["version"] == row["round"]
        assert sorted(model["installed"].values()) == [row["round"]] * SITES, model
        assert model["rejected"] == {} and model["failed"] == []
        # each site trained in its warm worker (no federated evaluation here): round r's
        # request was its r-th, so round 2 found the process round 1 started
        for client in row["clients"]:
            assert client["train"]["warm-worker-requests"] == row["round"], client


@pytest.mark.slow
def test_every_agent_ends_on_the_last_model_version(deployment: dict) -> None:
    assert deployment["code"] == 0, deployment["output"][-6000:]
    for site in range(SITES):
        records = _records(deployment["work_dir"] / f"site-{site}" / "frames.jsonl")
        assert records, f"site-{site}'s agent wrote no frame record"
        versions = [r.get("model_version", "") for r in records]
        assert versions[-1] == LAST_LABEL, (site, versions[-5:])
        # one process: cold start (no detector installed before training), then each
        # installed version swapped in live, forward only
        assert versions[0] == "", versions[0]
        assert set(versions) <= {""} | {f"person-detector-v{v}" for v in range(1, ROUNDS + 1)}
        numbers = [int(v.rsplit("-v", 1)[1]) if v else 0 for v in versions]
        assert numbers == sorted(numbers), (site, sorted(set(versions)))
        frames = [r["frame"] for r in records]  # a looping agent's frame numbers count on
        assert all(a < b for a, b in zip(frames, frames[1:], strict=False)), frames


@pytest.mark.slow
def test_each_site_stores_cloud_labels_and_installs_every_version(deployment: dict) -> None:
    from clients.model_installer import read_pointer
    from data.frame_store import FrameStore, LabelStatus
    from export.artifact import DEFAULT_NAME, artifact_paths

    assert deployment["code"] == 0, deployment["output"][-6000:]
    for site in range(SITES):
        store_dir = deployment["work_dir"] / f"site-{site}" / "store"
        with FrameStore.open_reader(store_dir) as store:
            labelled = store.hard_cases(status=LabelStatus.LABELLED)
            with_people = [
                f for f in labelled if any(b.label == "person" for b in f.frame_label.boxes)
            ]
            assert len(with_people) >= MIN_LABELLED, (site, len(labelled), len(with_people))
            assert len(store) > len(labelled)
        model_dir = store_dir / "detector"
        pointer = read_pointer(model_dir)
        assert pointer is not None and pointer.version == ROUNDS
        assert list(pointer.history) == list(range(1, ROUNDS + 1))
        for version in range(1, ROUNDS + 1):
            folder = model_dir / DEFAULT_NAME / f"v{version:06d}"
            model_path, manifest_path = artifact_paths(folder, DEFAULT_NAME, version)
            assert model_path.stat().st_size > 0 and manifest_path.exists()


@pytest.mark.slow
def test_the_cloud_labelled_both_sites_each_under_its_own_token(deployment: dict) -> None:
    assert deployment["code"] == 0, deployment["output"][-6000:]
    audit = _records(deployment["work_dir"] / "cloud" / "audit.jsonl")
    answered = [a for a in audit if a["status"] == "OK"]
    assert {a["node"] for a in answered} == {f"site-{i}" for i in range(SITES)}
    assert all(a["caller"] == a["node"] for a in audit)  # each site's token names it
    assert {a["mode"] for a in answered} == {"crops"}  # the script's default --privacy
    tokens = (deployment["work_dir"] / "cloud" / "tokens").read_text().split()
    assert tokens[0::2] == [f"site-{i}" for i in range(SITES)]
    assert len(set(tokens[1::2])) == SITES


@pytest.mark.slow
def test_no_process_of_the_deployment_survives(deployment: dict) -> None:
    work_dir = deployment["work_dir"]
    pid_files = sorted(p.stem for p in (work_dir / "pids").glob("*.pid"))
    expected = ["cloud", "superlink"] + [
        f"{kind}-{i}" for kind in ("agent", "supernode") for i in range(SITES)
    ]
    assert pid_files == sorted(expected)
    pids = [int((work_dir / "pids" / f"{name}.pid").read_text()) for name in pid_files]
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], pids
    assert deployment_processes(work_dir, deployment["ports"], work_dir_in_args=True) == []
    for port in deployment["ports"]:
        assert not accepts_connections(port), f"something still listens on {port}"
        assert port_is_free(port, reuse_address=True), port
    print(f"detector deployment: {deployment['seconds']:.0f} s")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (['detector-export="none"'], "detector-export=none"),
        (["--privacy", "none"], "--privacy takes landmarks, crops or frames"),
        (["--clip", "/nonexistent.mp4"], "is not a readable file"),
    ],
)
def test_a_bad_detector_option_fails_before_any_process_starts(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # Execute
    result = subprocess.run(
        [str(SCRIPT), "--insecure", "--task", "person-detector", "--work-dir",
         str(tmp_path / "work"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    # Assert
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not list((tmp_path / "work" / "pids").glob("*.pid"))
