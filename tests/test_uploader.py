"""The uploader: backoff while the cloud is away, labels back into the store, errors by
status, TLS with a token, and a node killed with SIGKILL that delivers every case once.

Real gRPC on loopback: the real ``fedge cloud`` subprocess, a recording TCP proxy that
stands where the cloud is (refusing connections while it is "down"), and a scripted
loopback gRPC cloud for statuses the real one has no reason to send.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clients.privacy_filter import PrivacyFilter
from clients.uploader import (
    TRANSIENT_CODES,
    Backoff,
    Uploader,
    UploaderConfig,
    parse_target,
    read_token_file,
)
from data.frame_store import FrameStore, LabelStatus
from fedge.core.errors import ConfigError
from fedge.core.records import FrameResult
from tests.fake_clock import FakeClock
from tests.uplink_support import (
    REPO,
    CloudProcess,
    RecordingCloud,
    TcpRecorder,
    clip_frames,
    wait_until,
)

TOKEN_A = "node-a-token-0123456789abcdef"


def _fill(store: FrameStore, count: int) -> list[int]:
    """``count`` hard cases of clip frames (no persons: landmarks cases are tiny)."""
    images = clip_frames([10 * i for i in range(count)], (320, 240))
    return [
        store.add(
            image,
            FrameResult(
                frame=i, time=1.8e9 + i, source="t", hard=True, hard_reasons=["uncertain_score"]
            ),
        )
        for i, image in enumerate(images)
    ]


def _uploader(store: FrameStore, target: str, **options: object) -> Uploader:
    clock = options.pop("clock", None)
    sleep = options.pop("sleep", None)
    node_id = str(options.pop("node_id", "node-a"))
    config = UploaderConfig(target=target, node_id=node_id, insecure=True, **options)  # type: ignore[arg-type]
    extra = {"clock": clock} if clock else {}
    return Uploader(
        store, PrivacyFilter("landmarks"), config, sleep=sleep, rng=random.Random(0), **extra
    )  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with FrameStore(tmp_path / "store", 10**8, fsync=False) as opened:
        yield opened


# -- pieces ---------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(1))

    delays = [backoff.next_delay() for _ in range(7)]
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    backoff.reset()
    after_reset = backoff.next_delay()

    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True))
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not a fixed cap
    assert 0.25 <= after_reset <= 0.5


def test_token_file_holds_a_token_or_the_nodes_line(tmp_path: Path) -> None:
    alone, lines, bad = tmp_path / "alone", tmp_path / "lines", tmp_path / "bad"
    alone.write_text("# my token\n" + TOKEN_A + "\n")
    lines.write_text(f"node-a {TOKEN_A}\nnode-b other-token-0123456789\n")
    bad.write_text("a b c\n")

    assert read_token_file(alone) == (None, TOKEN_A)
    assert read_token_file(lines, "node-b") == ("node-b", "other-token-0123456789")
    with pytest.raises(ConfigError, match="found 2"):
        read_token_file(lines)
    with pytest.raises(ConfigError, match="'node_id token' lines"):
        read_token_file(bad)
    with pytest.raises(ConfigError, match="cannot read --token-file"):
        read_token_file(tmp_path / "missing")


@pytest.mark.parametrize("target", ["cloud", "cloud:", ":50051", "cloud:http", "cloud:70000"])
def test_malformed_cloud_address_is_a_config_error(target: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_target(target)


# -- the cloud away -----------------------------------------------------------------------


def test_cases_wait_in_the_store_while_the_cloud_is_down(store: FrameStore) -> None:
    # Prepare: nothing answers where the cloud should be; time runs on a fake clock that
    # the uploader's sleep moves on
    ids = _fill(store, 3)
    clock = FakeClock(start=1000.0)
    delays: list[float] = []
    enough = __import__("threading").Event()

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        clock.advance(seconds)
        if len(delays) >= 6:
            enough.set()

    with TcpRecorder() as down:
        uploader = _uploader(
            store, down.address, clock=clock, sleep=sleep, backoff_initial_s=0.5, backoff_max_s=4
        )

        # Execute
        uploader.start()
        assert enough.wait(60), delays
        uploader.stop()
        refused = down.refused

    # Assert: backoff grew (with jitter) up to its cap; nothing was lost or counted
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=False))
    assert refused >= 1
    frames = [store.get(i) for i in ids]
    assert [f.label_status for f in frames] == [LabelStatus.PENDING] * 3
    assert [f.attempts for f in frames] == [0, 0, 0]
    # UNAVAILABLE while connecting; a try that stop() cut short ends CANCELLED, and one
    # slowed by a loaded machine DEADLINE_EXCEEDED: all transient, none counted
    transient = tuple(code.name for code in TRANSIENT_CODES)
    assert all((f.last_error or "").startswith(transient) for f in frames), [
        f.last_error for f in frames
    ]
    assert uploader.stats.labelled == 0 and uploader.stats.sent == 0


def test_a_cloud_that_starts_after_the_node_labels_every_case(
    store: FrameStore, tmp_path: Path
) -> None:
    # Prepare: the node starts first and is refused at least once
    ids = _fill(store, 4)
    with TcpRecorder() as proxy:
        uploader = _uploader(store, proxy.address, backoff_initial_s=0.1, backoff_max_s=1.0)
        uploader.start()
        try:
            wait_until(lambda: proxy.refused >= 1, 60, "the uploader to try the cloud")
            assert uploader.stats.pending == 4

            # Execute: the cloud comes up where the node looks for it
            with CloudProcess(tmp_path) as cloud:
                proxy.set_upstream(cloud.address)
                drained = uploader.drain(120)
                audit = cloud.audit()
        finally:
            uploader.stop()

    # Assert: every case labelled once, the label typed and from the cloud
    assert drained, uploader.stats
    frames = [store.get(i) for i in ids]
    assert all(f.label_status is LabelStatus.LABELLED for f in frames)
    assert all(f.label_source == "cloud" for f in frames)
    labels = [f.frame_label for f in frames]
    assert all(label is not None and label.teacher_version for label in labels)
    assert sorted(e["frame"] for e in audit if e["status"] == "OK") == ids
    assert uploader.stats.labelled == 4 and uploader.stats.bytes_up > 0
    assert uploader.stats.rtt_ms is not None and uploader.stats.rtt_ms > 0


# -- statuses -----------------------------------------------------------------------------


def _run_until_idle(uploader: Uploader, clock: FakeClock, rounds: int = 20) -> None:
    """Drive ``run_once`` by hand, moving the fake clock past every next-try time."""
    for _ in range(rounds):
        if uploader.run_once() is None:
            due = uploader.store.next_due()
            if due is None:
                return
            clock.now = max(clock.now, due)
    raise AssertionError("the queue did not settle")


def test_permanent_error_counts_attempts_until_the_case_fails(store: FrameStore) -> None:
    ids = _fill(store, 3)
    bad = ids[1]
    clock = FakeClock(start=1000.0)

    def script(case):  # type: ignore[no-untyped-def]
        if case.frame_id == bad:
            return grpc.StatusCode.INVALID_ARGUMENT, "undecodable"
        return grpc.StatusCode.OK, ""

    with RecordingCloud(script) as cloud:
        uploader = _uploader(store, cloud.target, clock=clock, max_attempts=3)
        _run_until_idle(uploader, clock)
        uploader.stop()
        received = Counter(case.frame_id for case in cloud.received)

    failed = store.get(bad)
    assert failed.label_status is LabelStatus.FAILED
    assert failed.attempts == 3 and "INVALID_ARGUMENT: undecodable" in (failed.last_error or "")
    assert received == {ids[0]: 1, bad: 3, ids[2]: 1}
    assert [store.get(i).label_status for i in (ids[0], ids[2])] == [LabelStatus.LABELLED] * 2
    assert uploader.stats.failed == 1 and uploader.stats.labelled == 2


def test_transient_error_retries_without_counting_an_attempt(store: FrameStore) -> None:
    (frame_id,) = _fill(store, 1)
    clock = FakeClock(start=1000.0)
    refusals = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE]

    def script(case):  # type: ignore[no-untyped-def]
        return (refusals.pop(0), "busy") if refusals else (grpc.StatusCode.OK, "")

    with RecordingCloud(script) as cloud:
        uploader = _uploader(store, cloud.target, clock=clock, max_attempts=1)
        _run_until_idle(uploader, clock)
        uploader.stop()
        received = len(cloud.received)

    frame = store.get(frame_id)
    assert frame.label_status is LabelStatus.LABELLED and frame.attempts == 0
    assert received == 3 and uploader.stats.retries == 2


def test_the_real_cloud_refuses_another_nodes_case_and_it_ends_failed(
    store: FrameStore, tmp_path: Path
) -> None:
    # Prepare: node-b sends with node-a's token
    ids = _fill(store, 2)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"node-a {TOKEN_A}\n")
    with CloudProcess(tmp_path, "--tokens", str(tokens)) as cloud:
        uploader = _uploader(store, cloud.target, node_id="node-b", token=TOKEN_A, max_attempts=2)
        uploader.backoff.initial = 0.05

        # Execute
        uploader.start()
        drained = uploader.drain(120)
        uploader.stop()
        audit = cloud.audit()

    # Assert
    assert drained
    frames = [store.get(i) for i in ids]
    assert [f.label_status for f in frames] == [LabelStatus.FAILED] * 2
    assert all(f.attempts == 2 and "PERMISSION_DENIED" in (f.last_error or "") for f in frames)
    assert Counter(e["frame"] for e in audit if e["status"] == "PERMISSION_DENIED") == {
        ids[0]: 2,
        ids[1]: 2,
    }


def test_an_unknown_token_keeps_the_cases_waiting(store: FrameStore, tmp_path: Path) -> None:
    ids = _fill(store, 2)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"node-a {TOKEN_A}\n")
    with CloudProcess(tmp_path, "--tokens", str(tokens)) as cloud:
        uploader = _uploader(store, cloud.target, token="not-the-token-0123456789")

        reached = uploader.run_once()
        uploader.stop()

    assert reached is False  # transient: the uploader backs off and tries again later
    frames = [store.get(i) for i in ids]
    assert [f.label_status for f in frames] == [LabelStatus.PENDING] * 2
    assert all(f.attempts == 0 and "UNAUTHENTICATED" in (f.last_error or "") for f in frames)


# -- TLS ------------------------------------------------------------------------------------


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer, ca: bool
) -> x509.Certificate:  # type: ignore[no-untyped-def]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256())


def test_round_trip_over_tls_with_a_token(store: FrameStore, tmp_path: Path) -> None:
    # Prepare: a CA, the cloud's certificate, the cloud with tokens over TLS
    pem = serialization.Encoding.PEM
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("fedge test CA", ca_key, None, ca_key, ca=True)
    server = _certificate("fedge cloud", server_key, ca, ca_key, ca=False)
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    tokens = tmp_path / "tokens"
    tokens.write_text(f"node-a {TOKEN_A}\n")
    ids = _fill(store, 2)
    extra = ["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key")]
    with CloudProcess(tmp_path, *extra, "--tokens", str(tokens), insecure=False) as cloud:
        config = UploaderConfig(
            target=cloud.target, node_id="node-a", token=TOKEN_A, root_cert=ca.public_bytes(pem)
        )
        uploader = Uploader(store, PrivacyFilter("landmarks"), config)

        # Execute
        uploader.start()
        drained = uploader.drain(120)
        uploader.stop()
        audit = cloud.audit()

    # Assert
    assert drained
    assert [store.get(i).label_status for i in ids] == [LabelStatus.LABELLED] * 2
    assert {e["caller"] for e in audit} == {"node-a"}


# -- fedge edge -----------------------------------------------------------------------------


def _fedge_edge(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedge", "edge", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cloud", "127.0.0.1:9"], "--cloud needs --privacy"),
        (["--cloud", "127.0.0.1:9", "--privacy", "landmarks", "--no-store"], "drop --no-store"),
        (["--cloud", "nowhere", "--privacy", "landmarks"], "HOST:PORT"),
        (["--privacy", "frames"], "--privacy need --cloud"),
        (
            ["--cloud", "127.0.0.1:9", "--privacy", "crops", "--token-file", "/nonexistent"],
            "cannot read --token-file",
        ),
    ],
)
def test_bad_uplink_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(_fedge_edge(*args), cwd=REPO, capture_output=True, text=True, timeout=120)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def _faces_folder(folder: Path, count: int) -> None:
    """Clip frames with a real face pasted at a different place in each: hard cases (the
    face detector is unsure of it, or finds it where the pose finds nobody) when the node
    judges every frame on its own (``--track-iou 0``: with tracking, a face that jumps
    elsewhere on every frame is a new object each time, never in doubt for 3 frames)."""
    face = cv2.imread(str(REPO / "tests" / "assets" / "face_messi5_crop.jpg"))
    folder.mkdir(parents=True)
    for k, image in enumerate(clip_frames([20 * i for i in range(count)])):
        scale = 2.0 + 0.25 * (k % 3)
        pasted = cv2.resize(face, None, fx=scale, fy=scale)
        x = 40 + (k * 97) % (640 - pasted.shape[1] - 40)
        y = (k * 53) % (480 - pasted.shape[0])
        image[y : y + pasted.shape[0], x : x + pasted.shape[1]] = pasted
        cv2.imwrite(str(folder / f"{k:04d}.jpg"), image)


def test_killed_node_delivers_every_hard_case_once_when_the_cloud_comes_back(
    tmp_path: Path, model_dir: Path
) -> None:
    # Prepare: frames that make hard cases; the cloud's address answers nothing yet
    _faces_folder(tmp_path / "first", 12)
    _faces_folder(tmp_path / "second", 3)
    store_dir = tmp_path / "store"
    common = [
        "--store-dir", str(store_dir), "--model-dir", str(model_dir), "--pose-workers", "1",
        "--hard-per-minute", "60000", "--quiet", "--privacy", "landmarks", "--insecure",
        "--node-id", "node-a", "--track-iou", "0",
    ]  # fmt: skip
    with TcpRecorder() as proxy:
        first_jsonl = tmp_path / "first.jsonl"
        node = subprocess.Popen(
            _fedge_edge(
                "--source",
                str(tmp_path / "first"),
                "--jsonl",
                str(first_jsonl),
                "--cloud",
                proxy.address,
                "--drain-timeout",
                "600",
                *common,
            ),  # fmt: skip
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            # Execute 1: every frame processed, the uploader refused, then SIGKILL
            wait_until(
                lambda: first_jsonl.exists() and len(first_jsonl.read_text().splitlines()) == 12,
                300,
                "the first run to process its frames",
            )
            wait_until(lambda: proxy.refused >= 2, 120, "the uploader to try the cloud")
            assert node.poll() is None, "the node should still wait for its queue to drain"
            node.send_signal(signal.SIGKILL)
            node.wait(timeout=30)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            if node.stderr:
                node.stderr.close()
        with FrameStore.open_reader(store_dir) as reader:
            waiting = [f.id for f in reader.hard_cases(status=None)]
            statuses = {f.label_status for f in reader.hard_cases(status=None)}
        assert len(waiting) >= 3
        assert statuses <= {LabelStatus.PENDING, LabelStatus.SENT}

        # Execute 2: the cloud is up; the node restarts on a short source and drains
        with CloudProcess(tmp_path) as cloud:
            proxy.set_upstream(cloud.address)
            second_jsonl = tmp_path / "second.jsonl"
            done = subprocess.run(
                _fedge_edge(
                    "--source",
                    str(tmp_path / "second"),
                    "--jsonl",
                    str(second_jsonl),
                    "--cloud",
                    proxy.address,
                    "--drain-timeout",
                    "300",
                    *common,
                ),  # fmt: skip
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            audit = cloud.audit()

    # Assert: every hard case of both runs labelled, each frame in the audit log once
    assert done.returncode == 0, done.stderr
    with FrameStore.open_reader(store_dir) as reader:
        hard = reader.hard_cases(status=None)
    assert {f.id for f in hard} >= set(waiting)
    assert all(f.label_status is LabelStatus.LABELLED for f in hard)
    assert all(f.frame_label is not None and f.frame_label.source == "cloud" for f in hard)
    seen = Counter((e["node"], e["frame"]) for e in audit)
    assert set(seen.values()) == {1}
    assert set(seen) == {("node-a", f.id) for f in hard}
    last = json.loads(second_jsonl.read_text().splitlines()[-1])
    assert set(last["uplink"]) >= {"sent", "labelled", "failed", "bytes_up", "rtt_ms"}
    summary = " ".join(done.stderr.split())  # the console may wrap lines
    assert f"{len(hard)} sent, {len(hard)} labelled, 0 failed" in summary
    assert all(isinstance(last["uplink"][k], int) for k in ("sent", "labelled", "bytes_up"))
    assert 0 <= last["uplink"]["labelled"] <= len(hard)
