"""``fedge cloud``: real gRPC servers on loopback, real TLS, a real (cheap) teacher, real JPEGs."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedge.core.errors import ConfigError
from fedge.core.proto import cloud_pb2, cloud_pb2_grpc
from fedge.core.records import Detection
from server.cloud.cases import CaseError, CaseLimits, DecodedCase, decode_case, jpeg_dimensions
from server.cloud.limits import MAX_TRACKED_NODES, RateLimiter
from server.cloud.service import CloudServer, ServerConfig, TlsConfig
from server.cloud.teacher import build_teacher
from server.cloud.tokens import TokenTable

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "data" / "samples" / "vtest_clip.mp4"
FACE = ROOT / "tests" / "assets" / "face_messi5_crop.jpg"
TOKENS = {"node-a": "token-of-node-a-0123456789", "node-b": "token-of-node-b-9876543210"}
StatusCode = grpc.StatusCode


# --- real inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_frame() -> np.ndarray:
    """The first frame of the sample clip (BGR)."""
    capture = cv2.VideoCapture(str(CLIP))
    ok, frame = capture.read()
    capture.release()
    assert ok, f"cannot read {CLIP}"
    return frame


@pytest.fixture(scope="module")
def frame_jpeg(clip_frame: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", clip_frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def _bomb_jpeg(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose start-of-frame marker declares ``width`` x ``height``."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _undecodable(jpeg: bytes) -> bytes:
    """A JPEG cut before its scan: the header (and size) is intact, the pixels are gone."""
    return jpeg[: jpeg.index(b"\xff\xda")]


def _pose(x: float, y: float, height: float) -> cloud_pb2.Person:
    """A standing person's 33 landmarks (BlazePose order, roughly placed) at (x, y)."""
    rows = np.linspace(0.0, 1.0, 33)
    landmarks = [
        cloud_pb2.Landmark(
            x=x + (i % 2 - 0.5) * 0.25 * height, y=y + r * height, z=0.0, visibility=0.9
        )
        for i, r in enumerate(rows)
    ]
    box = cloud_pb2.Box(x1=x - 0.125 * height, y1=y, x2=x + 0.125 * height, y2=y + height)
    return cloud_pb2.Person(landmarks=landmarks, score=0.8, box=box)


def _case(
    frame_id: int, node: str = "node-a", mode: str = "landmarks", **pixels: object
) -> cloud_pb2.HardCase:
    modes = {
        "landmarks": cloud_pb2.PRIVACY_MODE_LANDMARKS,
        "crops": cloud_pb2.PRIVACY_MODE_CROPS,
        "frames": cloud_pb2.PRIVACY_MODE_FRAMES,
    }
    return cloud_pb2.HardCase(
        node_id=node,
        frame_id=frame_id,
        capture_time=1_700_000_000.0 + frame_id,
        privacy_mode=modes[mode],
        model_version="ssd-test/1",
        frame_width=640,
        frame_height=480,
        persons=[_pose(200.0, 100.0, 220.0)],
        detections=[
            cloud_pb2.Detection(
                box=cloud_pb2.Box(x1=170, y1=95, x2=230, y2=325), label="person", score=0.7
            )
        ],
        hard_reasons=["low-confidence"],
        **pixels,
    )


def _face_crop(data: bytes | None = None) -> cloud_pb2.Crop:
    data = FACE.read_bytes() if data is None else data
    width, height = jpeg_dimensions(data)
    return cloud_pb2.Crop(jpeg=data, x=100, y=50, width=width, height=height)


# --- real servers ------------------------------------------------------------------------


class CountingTeacher:
    """The real teacher, counting the cases it is asked about."""

    def __init__(self, teacher: object) -> None:
        self.inner = teacher
        self.version = teacher.version  # type: ignore[attr-defined]
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def detect(self, case: DecodedCase) -> list[Detection]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "test never released the teacher"
        return self.inner.detect(case)  # type: ignore[attr-defined]


class ManualClock:
    """A monotonic clock the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def real_teacher() -> object:
    """The teacher ensemble with its cheapest member only (HOG), so tests stay fast."""
    return build_teacher(members=["hog"])


@dataclass
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca_cert = _certificate("fedge test CA", ca_key, ca=True)
    server_key = _key()
    server_cert = _certificate(
        "fedge cloud",
        server_key,
        ca_cert.subject,
        ca_key,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _key()
    client_cert = _certificate("node-a", client_key, ca_cert.subject, ca_key)
    pem = serialization.Encoding.PEM
    (folder / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (folder / "server.key").write_bytes(_pem_key(server_key))
    return Pki(
        ca=ca_cert.public_bytes(pem),
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=client_cert.public_bytes(pem),
        client_key=_pem_key(client_key),
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start CloudServers for one test; all are stopped at its end."""
    servers: list[CloudServer] = []

    def start(teacher: object, **options: object) -> CloudServer:
        clock = options.pop("clock", time.monotonic)
        config = ServerConfig(
            **{"insecure": True, "audit_log": tmp_path / "audit.jsonl", **options}
        )
        server = CloudServer(config, teacher, clock=clock)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def _stub(channel: grpc.Channel) -> cloud_pb2_grpc.CloudStub:
    return cloud_pb2_grpc.CloudStub(channel)


def _auth(node: str = "node-a") -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[node]}")]


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- decoding a case ---------------------------------------------------------------------


def test_jpeg_dimensions_reads_the_size_decoding_would_give(frame_jpeg: bytes) -> None:
    # Prepare
    face = FACE.read_bytes()

    # Execute
    sizes = [jpeg_dimensions(frame_jpeg), jpeg_dimensions(face)]

    # Assert
    decoded = [
        cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR) for d in (frame_jpeg, face)
    ]
    assert sizes == [(img.shape[1], img.shape[0]) for img in decoded]


def test_decompression_bomb_is_refused_from_its_header_before_decoding() -> None:
    # Prepare: 16x16 of data claiming 60000x60000 (3.6 G pixels, 10.8 GB as BGR)
    bomb = _bomb_jpeg(60000, 60000)
    case = _case(1, mode="frames", frame_jpeg=bomb)
    case.frame_width, case.frame_height = 60000, 60000

    # Execute
    with pytest.raises(CaseError) as refused:
        decode_case(case, CaseLimits(max_pixels=4096 * 4096))

    # Assert
    assert len(bomb) < 1000
    assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "60000x60000" in str(refused.value)


def test_decoded_case_holds_the_frame_crops_and_persons(frame_jpeg: bytes) -> None:
    # Execute
    frames = decode_case(_case(5, mode="frames", frame_jpeg=frame_jpeg))
    crops = decode_case(_case(6, mode="crops", crops=cloud_pb2.CropSet(crops=[_face_crop()])))

    # Assert
    assert frames.mode == "frames" and frames.frame is not None
    assert frames.frame.shape == (480, 640, 3) and frames.crops == ()
    assert crops.mode == "crops" and crops.frame is None
    assert [(c.x, c.y, c.image.shape) for c in crops.crops] == [(100, 50, (128, 128, 3))]
    assert crops.persons[0].landmarks.shape == (33, 4)
    assert crops.detections[0].label == "person"


def test_token_table_maps_tokens_to_nodes_and_rejects_weak_files(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "tokens"
    path.write_text("# node  token\nnode-a token-of-node-a-0123456789  # the lab camera\n\n")
    weak = tmp_path / "weak"
    weak.write_text("node-a short\n")

    # Execute
    table = TokenTable.load(path)

    # Assert
    assert table.node_for("token-of-node-a-0123456789") == "node-a"
    assert table.node_for("token-of-node-a-012345678") is None
    assert table.node_for(None) is None and table.node_for("") is None
    with pytest.raises(ConfigError, match="shorter than 16"):
        TokenTable.load(weak)


def test_rate_limiter_refills_with_the_injected_clock() -> None:
    # Prepare
    clock = ManualClock()
    limiter = RateLimiter(2, clock=clock)

    # Execute
    burst = [limiter.allow("node-a") for _ in range(3)]
    other = limiter.allow("node-b")
    clock.now += 30.0  # half a minute: one of the two tokens back
    refilled = [limiter.allow("node-a"), limiter.allow("node-a")]

    # Assert
    assert burst == [True, True, False]
    assert other is True
    assert refilled == [True, False]


def test_rate_limiter_forgets_refilled_buckets_of_many_nodes() -> None:
    # Prepare: ever new node ids (callers without tokens can name any)
    clock = ManualClock()
    limiter = RateLimiter(60, clock=clock)
    for i in range(MAX_TRACKED_NODES):
        limiter.allow(f"node-{i}")

    # Execute
    clock.now += 60.0  # every bucket refilled
    limiter.allow("one-more")

    # Assert
    assert limiter.tracked_nodes == 1


# --- the service -------------------------------------------------------------------------


def test_round_trip_over_tls_with_a_token(serve, pki: Pki, real_teacher, frame_jpeg: bytes) -> None:
    # Prepare
    tls = TlsConfig.load(pki.server_cert, pki.server_key)
    server = serve(real_teacher, insecure=False, tls=tls, tokens=TokenTable(TOKENS))
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    case = _case(11, mode="frames", frame_jpeg=frame_jpeg)

    # Execute
    with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        result = _stub(channel).Infer(case, metadata=_auth(), timeout=60)

    # Assert
    assert (result.node_id, result.frame_id) == ("node-a", 11)
    assert result.schema_version == 1 and result.fusion_method == "mean"
    assert result.teacher_version == real_teacher.version and not result.cached
    assert len(result.teacher_detections) >= 1  # HOG finds people on the sample clip
    assert len(result.boxes) >= len(result.teacher_detections)  # fused: both sources' boxes
    for box in result.boxes:
        assert 0.0 <= box.score <= 1.0
        assert box.has_edge or box.has_cloud


def test_tls_key_that_does_not_belong_to_the_certificate_is_a_config_error(
    pki: Pki, tmp_path: Path
) -> None:
    # Prepare
    other_key = tmp_path / "client.key"
    other_key.write_bytes(pki.client_key)

    # Execute / Assert
    with pytest.raises(ConfigError, match="does not belong"):
        TlsConfig.load(pki.server_cert, other_key)


def test_mutual_tls_refuses_a_client_without_a_certificate(serve, pki: Pki, real_teacher) -> None:
    # Prepare
    tls = TlsConfig.load(pki.server_cert, pki.server_key, client_ca=None)
    tls = TlsConfig(tls.certificate_chain, tls.private_key, client_ca=pki.ca)
    server = serve(real_teacher, insecure=False, tls=tls)
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert
    )

    # Execute
    with grpc.secure_channel(f"127.0.0.1:{server.port}", anonymous) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _stub(channel).Infer(_case(1), timeout=10)
    with grpc.secure_channel(f"127.0.0.1:{server.port}", with_cert) as channel:
        result = _stub(channel).Infer(_case(1), timeout=30)

    # Assert
    assert refused.value.code() == StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert result.frame_id == 1


def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    serve, real_teacher, frame_jpeg: bytes, tmp_path: Path
) -> None:
    # Prepare: a 1 MiB message limit and a limit of 200 000 decoded pixels (640x480 is over)
    server = serve(
        real_teacher,
        tokens=TokenTable(TOKENS),
        max_message_bytes=1024 * 1024,
        max_pixels=200_000,
        rate_per_minute=0,
    )
    unspecified = _case(7)
    unspecified.privacy_mode = cloud_pb2.PRIVACY_MODE_UNSPECIFIED
    none_mode = _case(8)
    none_mode.privacy_mode = cloud_pb2.PRIVACY_MODE_NONE
    few_landmarks = _case(9)
    del few_landmarks.persons[0].landmarks[10:]
    frame_off = _case(10, mode="crops", crops=cloud_pb2.CropSet(crops=[_face_crop()]))
    frame_off.crops.crops[0].x = 600
    cases = [
        ("no token", _case(1), [], StatusCode.UNAUTHENTICATED),
        (
            "wrong token",
            _case(1),
            [("authorization", "Bearer " + "x" * 26)],
            StatusCode.UNAUTHENTICATED,
        ),
        ("other node's case", _case(1, node="node-b"), _auth(), StatusCode.PERMISSION_DENIED),
        (
            "oversized message",
            _case(2, mode="frames", frame_jpeg=frame_jpeg + bytes(2 * 1024 * 1024)),
            _auth(),
            StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "over the pixel limit",
            _case(3, mode="frames", frame_jpeg=frame_jpeg),
            _auth(),
            StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "undecodable JPEG",
            _case(
                4,
                mode="crops",
                crops=cloud_pb2.CropSet(crops=[_face_crop(_undecodable(FACE.read_bytes()))]),
            ),
            _auth(),
            StatusCode.INVALID_ARGUMENT,
        ),
        (
            "not a JPEG",
            _case(4, mode="frames", frame_jpeg=b"GIF89a" + bytes(100)),
            _auth(),
            StatusCode.INVALID_ARGUMENT,
        ),
        ("no node id", _case(5, node=""), _auth(), StatusCode.INVALID_ARGUMENT),
        ("no frame id", _case(0), _auth(), StatusCode.INVALID_ARGUMENT),
        ("unspecified mode", unspecified, _auth(), StatusCode.INVALID_ARGUMENT),
        ("mode none", none_mode, _auth(), StatusCode.INVALID_ARGUMENT),
        (
            "landmarks with pixels",
            _case(6, frame_jpeg=frame_jpeg),
            _auth(),
            StatusCode.INVALID_ARGUMENT,
        ),
        ("frames without a frame", _case(6, mode="frames"), _auth(), StatusCode.INVALID_ARGUMENT),
        ("crops without crops", _case(6, mode="crops"), _auth(), StatusCode.INVALID_ARGUMENT),
        ("23 landmarks", few_landmarks, _auth(), StatusCode.INVALID_ARGUMENT),
        ("crop outside the frame", frame_off, _auth(), StatusCode.INVALID_ARGUMENT),
    ]

    # Execute
    codes = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = _stub(channel)
        for name, case, metadata, _ in cases:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Infer(case, metadata=metadata, timeout=30)
            codes[name] = refused.value.code()
        good = stub.Infer(
            _case(20, mode="crops", crops=cloud_pb2.CropSet(crops=[_face_crop()])),
            metadata=_auth(),
            timeout=30,
        )

    # Assert
    assert codes == {name: code for name, _, _, code in cases}
    assert good.frame_id == 20 and not good.cached
    lines = _audit(tmp_path / "audit.jsonl")
    # every request has its line, except the oversized one gRPC refuses before any handler
    assert len(lines) == len(cases)
    assert [line["status"] for line in lines] == [
        code.name for name, _, _, code in cases if name != "oversized message"
    ] + ["OK"]
    assert lines[0]["caller"] is None and lines[2]["caller"] == "node-a"


def test_rate_limit_refuses_a_node_over_its_rate_until_time_passes(serve, real_teacher) -> None:
    # Prepare
    clock = ManualClock()
    server = serve(real_teacher, tokens=TokenTable(TOKENS), rate_per_minute=2, clock=clock)

    # Execute
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = _stub(channel)
        first = [stub.Infer(_case(i), metadata=_auth(), timeout=30).frame_id for i in (1, 2)]
        with pytest.raises(grpc.RpcError) as refused:
            stub.Infer(_case(3), metadata=_auth(), timeout=30)
        other_node = stub.Infer(_case(1, node="node-b"), metadata=_auth("node-b"), timeout=30)
        clock.now += 30.0
        later = stub.Infer(_case(3), metadata=_auth(), timeout=30)

    # Assert
    assert first == [1, 2]
    assert refused.value.code() == StatusCode.RESOURCE_EXHAUSTED
    assert "per minute" in refused.value.details()
    assert other_node.node_id == "node-b"
    assert later.frame_id == 3


def test_retried_frame_is_answered_from_the_store_without_rerunning_the_teacher(
    serve, real_teacher, tmp_path: Path
) -> None:
    # Prepare
    teacher = CountingTeacher(real_teacher)
    state = tmp_path / "state"
    case = _case(42, mode="crops", crops=cloud_pb2.CropSet(crops=[_face_crop()]))
    server = serve(teacher, state_dir=state)

    # Execute
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        first = _stub(channel).Infer(case, timeout=30)
        retried = _stub(channel).Infer(case, timeout=30)
    server.stop(0)
    restarted = serve(teacher, state_dir=state)  # the same state dir after a restart
    with grpc.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
        after_restart = _stub(channel).Infer(case, timeout=30)

    # Assert
    assert teacher.calls == 1
    assert not first.cached and retried.cached and after_restart.cached
    retried.cached = after_restart.cached = False
    assert retried == first and after_restart == first


def test_infer_stream_answers_a_bad_case_with_its_status_and_goes_on(
    serve, real_teacher, frame_jpeg: bytes
) -> None:
    # Prepare
    server = serve(real_teacher)
    crops = cloud_pb2.CropSet(crops=[_face_crop()])
    cases = [
        _case(1, mode="crops", crops=crops),
        _case(2, mode="frames", frame_jpeg=_undecodable(frame_jpeg)),
        _case(3),
        _case(1, mode="crops", crops=crops),
    ]

    # Execute
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        replies = list(_stub(channel).InferStream(iter(cases), timeout=60))

    # Assert
    assert [(r.frame_id, r.code) for r in replies] == [
        (1, 0),
        (2, StatusCode.INVALID_ARGUMENT.value[0]),
        (3, 0),
        (1, 0),
    ]
    assert "JPEG" in replies[1].message and not replies[1].HasField("result")
    assert [r.result.cached for r in replies] == [False, False, False, True]


def test_health_reports_serving_then_not_serving_while_draining(serve, real_teacher) -> None:
    # Prepare: a case held inside the teacher until the test lets it go
    teacher = CountingTeacher(real_teacher)
    teacher.release.clear()
    server = serve(teacher)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="fedge.cloud.v1.Cloud")
    before = health.Check(request, timeout=10).status
    watch = health.Watch(request, timeout=60)
    first_seen = next(watch).status
    in_flight = _stub(channel).Infer.future(_case(1), timeout=60)
    assert teacher.entered.wait(30)

    # Execute
    stopper = threading.Thread(target=server.stop, args=(30,))
    stopper.start()
    during_drain = next(watch).status
    watch.cancel()  # an open Watch is an in-flight call too: let the drain end
    teacher.release.set()
    result = in_flight.result(timeout=60)
    stopper.join(60)
    channel.close()

    # Assert
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert before == first_seen == serving
    assert during_drain == not_serving
    assert result.frame_id == 1  # the in-flight case finished during the drain
    assert not stopper.is_alive()


def test_excess_concurrent_calls_are_refused_at_once(serve, real_teacher) -> None:
    # Prepare: one call may run; it is held inside the teacher
    teacher = CountingTeacher(real_teacher)
    teacher.release.clear()
    server = serve(teacher, max_concurrency=1)

    # Execute
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        held = _stub(channel).Infer.future(_case(1), timeout=60)
        assert teacher.entered.wait(30)
        with pytest.raises(grpc.RpcError) as refused:
            _stub(channel).Infer(_case(2), timeout=30)
        teacher.release.set()
        held_result = held.result(timeout=60)
        after = _stub(channel).Infer(_case(2), timeout=30)

    # Assert
    assert refused.value.code() == StatusCode.RESOURCE_EXHAUSTED
    assert held_result.frame_id == 1 and after.frame_id == 2


def test_keep_uploads_writes_the_received_jpegs_only_when_asked(
    serve, real_teacher, tmp_path: Path
) -> None:
    # Prepare
    kept = tmp_path / "uploads"
    crops = cloud_pb2.CropSet(crops=[_face_crop()])
    keeping = serve(real_teacher, keep_uploads=kept)
    not_keeping = serve(real_teacher)

    # Execute
    for server in (keeping, not_keeping):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            _stub(channel).Infer(_case(3, mode="crops", crops=crops), timeout=30)

    # Assert
    files = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
    assert files == ["node-a/3/crop-0-x100-y50.jpg"]
    assert (kept / files[0]).read_bytes() == FACE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "uploads"]


# --- the command -------------------------------------------------------------------------


def test_fedge_cloud_without_tls_or_insecure_is_a_one_line_error(capsys) -> None:
    # Prepare
    from fedge.cli import main

    # Execute
    code = main(["cloud", "--port", "0"])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[0]] and "--insecure" in err[0]


def test_fedge_cloud_process_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    # Prepare
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{node} {token}\n" for node, token in TOKENS.items()))
    audit = tmp_path / "audit.jsonl"
    command = [
        sys.executable,
        "-m",
        "fedge.cli",
        "cloud",
        "--insecure",
        "--port",
        "0",
        "--tokens",
        str(tokens),
        "--audit-log",
        str(audit),
        "--grace",
        "60",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), (line, process.stderr.read())
        port = int(line.rpartition(":")[2])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = _stub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Infer(_case(1), timeout=60)
        answered = stub.Infer(_case(1), metadata=_auth(), timeout=60)
        # a stream that stays open across SIGTERM: an in-flight call
        outbox: list[cloud_pb2.HardCase | None] = [_case(2)]
        more = threading.Event()

        def requests() -> Iterator[cloud_pb2.HardCase]:
            yield outbox.pop()
            more.wait(60)
            while outbox:
                case = outbox.pop()
                if case is None:
                    return
                yield case

        stream = stub.InferStream(requests(), metadata=_auth(), timeout=120)
        before_term = next(stream)

        # Execute
        process.send_signal(signal.SIGTERM)
        while "draining" not in (drain_line := process.stderr.readline()):
            assert drain_line, "fedge cloud exited without draining"
        outbox.extend([None, _case(3, mode="crops", crops=cloud_pb2.CropSet(crops=[_face_crop()]))])
        more.set()
        after_term = next(stream)
        assert list(stream) == []
        exit_code = process.wait(timeout=60)
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # Assert
    assert refused.value.code() == StatusCode.UNAUTHENTICATED
    assert answered.frame_id == 1 and answered.teacher_version
    assert (before_term.frame_id, before_term.code) == (2, 0)
    assert (after_term.frame_id, after_term.code) == (3, 0)
    assert exit_code == 0
    lines = _audit(audit)
    assert [(x["frame"], x["status"]) for x in lines] == [
        (1, "UNAUTHENTICATED"),
        (1, "OK"),
        (2, "OK"),
        (3, "OK"),
    ]
    assert lines[3]["pixel_bytes"] == len(FACE.read_bytes()) and lines[1]["pixel_bytes"] == 0
