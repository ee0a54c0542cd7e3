"""``fedge cloud``'s gRPC server: the ``Cloud`` servicer and its bootstrap.

Read it like gRPC's route_guide: the ``.proto`` (``fedge/core/proto/cloud.proto``) is the
contract, ``CloudServicer`` is a thin class that hands each case to
``CaseService.answer`` (authorization, rate limit, idempotency, decoding, teacher,
fusion), and the cross-cutting concerns of every call (audit log, bearer tokens, bounded
concurrency) are server interceptors (``server.cloud.interceptors``). ``CloudServer``
wires them together with TLS, message-size limits and the standard health service.

A refused ``Infer`` call ends with ``context.abort(code, message)``; on ``InferStream`` a
refused case becomes a ``StreamReply`` with that code and message and the stream goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedge.core.errors import ConfigError
from fedge.core.proto import cloud_pb2, cloud_pb2_grpc
from server.cloud.audit import AuditLog
from server.cloud.calibration import Calibration
from server.cloud.case_service import CaseService
from server.cloud.cases import CaseError, CaseLimits
from server.cloud.fusion import FUSION_METHODS
from server.cloud.inference import Teacher
from server.cloud.interceptors import (
    CLOUD_SERVICE,
    AuditInterceptor,
    AuthInterceptor,
    ConcurrencyInterceptor,
    current_caller,
)
from server.cloud.limits import Clock, ConcurrencyLimit, RateLimiter
from server.cloud.results import ResultStore
from server.cloud.tokens import TokenTable

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "CloudServer",
    "CloudServicer",
    "ServerConfig",
    "TlsConfig",
]

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Largest message either way (8 MiB); gRPC answers RESOURCE_EXHAUSTED above it."""

SPARE_WORKERS = 4
"""Threads beyond ``max_concurrency`` that answer health checks and refusals at once."""


class CloudServicer(cloud_pb2_grpc.CloudServicer):
    """The ``fedge.cloud.v1.Cloud`` service: each case goes to ``CaseService.answer``."""

    def __init__(self, cases: CaseService) -> None:
        self.cases = cases

    def Infer(  # noqa: N802 (the name is the RPC's)
        self, request: cloud_pb2.HardCase, context: grpc.ServicerContext
    ) -> cloud_pb2.CloudResult:
        """Answer one hard case, or abort the call with the case's status."""
        try:
            return self.cases.answer(request, current_caller())
        except CaseError as err:
            context.abort(err.code, err.message)
            raise  # not reached: abort raises

    def InferStream(  # noqa: N802 (the name is the RPC's)
        self, request_iterator: Iterator[cloud_pb2.HardCase], context: grpc.ServicerContext
    ) -> Iterator[cloud_pb2.StreamReply]:
        """Answer each case in order; a refused case is a reply with its code and message."""
        for request in request_iterator:
            reply = cloud_pb2.StreamReply(node_id=request.node_id, frame_id=request.frame_id)
            try:
                reply.result.CopyFrom(self.cases.answer(request, current_caller()))
            except CaseError as err:
                reply.ClearField("result")
                reply.code = err.code.value[0]
                reply.message = err.message
            yield reply


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes of the server's certificate chain and key, and of the client CA (mTLS)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> TlsConfig:
        """Read PEM files and check that the key belongs to the certificate.

        Raises
        ------
        ConfigError
            When a file cannot be read or parsed, or the key does not match.
        """
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
        except ImportError as err:  # TLS only: --insecure runs without it
            raise ConfigError(
                "TLS needs the 'cryptography' package: pip install 'fedge[cloud]'"
            ) from err
        texts = {}
        for name, path in (("--tls-cert", cert), ("--tls-key", key), ("--client-ca", client_ca)):
            if path is None:
                continue
            try:
                texts[name] = Path(path).read_bytes()
            except OSError as err:
                raise ConfigError(f"cannot read {name} {path}: {err.strerror}") from err
        try:
            certificate = x509.load_pem_x509_certificate(texts["--tls-cert"])
        except ValueError as err:
            raise ConfigError(f"--tls-cert {cert} is not a PEM certificate") from err
        try:
            private = serialization.load_pem_private_key(texts["--tls-key"], password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"--tls-key {key} is not an unencrypted PEM private key: {err}"
            ) from err
        raw = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if private.public_key().public_bytes(pem, raw) != certificate.public_key().public_bytes(
            pem, raw
        ):
            raise ConfigError(f"--tls-key {key} does not belong to --tls-cert {cert}")
        if client_ca is not None:
            try:
                x509.load_pem_x509_certificates(texts["--client-ca"])
            except ValueError as err:
                raise ConfigError(f"--client-ca {client_ca} holds no PEM certificate") from err
        return cls(texts["--tls-cert"], texts["--tls-key"], texts.get("--client-ca"))

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials; with a client CA, clients must present a certificate it signed."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``fedge cloud``'s flags set (see the README's cloud section).

    ``tls`` is required unless ``insecure`` is set explicitly; ``tokens=None`` trusts the
    node id each case names (fine on a private network, not on the internet).
    """

    host: str = "127.0.0.1"
    port: int = 0
    tls: TlsConfig | None = None
    insecure: bool = False
    tokens: TokenTable | None = None
    fusion_method: str = "mean"
    calibration: Calibration | None = None
    audit_log: Path | None = None
    keep_uploads: Path | None = None
    state_dir: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_pixels: int = CaseLimits.max_pixels
    rate_per_minute: float = 600.0
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.tls is None and not self.insecure:
            raise ConfigError(
                "no TLS certificate: pass --tls-cert and --tls-key, or --insecure for plaintext"
            )
        if self.tls is not None and self.insecure:
            raise ConfigError("--insecure contradicts --tls-cert/--tls-key: choose one")
        if self.fusion_method not in FUSION_METHODS:
            raise ConfigError(
                f"unknown fusion method {self.fusion_method!r}: use one of "
                f"{', '.join(FUSION_METHODS)}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max message size {self.max_message_bytes} B is below 1 KiB")
        if self.max_pixels < 1:
            raise ConfigError(f"max pixels {self.max_pixels} is below 1")
        if self.rate_per_minute < 0:
            raise ConfigError(f"rate {self.rate_per_minute} per minute is negative (0: no limit)")
        if self.max_concurrency < 1:
            raise ConfigError(f"max concurrency {self.max_concurrency} is below 1")

    @property
    def address(self) -> str:
        """``host:port`` as gRPC binds it (IPv6 literals in brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


class CloudServer:
    """The running service: ``start()``, ``port``, ``stop(grace)``.

    Parameters
    ----------
    config:
        Address, TLS, tokens, limits and outputs.
    teacher:
        The teacher ensemble (``server.cloud.teacher.build_teacher(...)``).
    clock:
        Monotonic seconds for the rate limiter (tests inject their own).
    """

    def __init__(
        self, config: ServerConfig, teacher: Teacher, *, clock: Clock = time.monotonic
    ) -> None:
        self.config = config
        self.teacher = teacher
        self.audit = AuditLog(config.audit_log)
        self.results = ResultStore(config.state_dir)
        self.cases = CaseService(
            teacher,
            config.fusion_method,
            results=self.results,
            rate=RateLimiter(config.rate_per_minute, clock=clock),
            limits=CaseLimits(max_pixels=config.max_pixels),
            calibration=config.calibration,
            keep_uploads=config.keep_uploads,
        )
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._port: int | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (the chosen one when the config asked for port 0)."""
        if self._port is None:
            raise RuntimeError("the server is not started: call start() first")
        return self._port

    def start(self) -> int:
        """Bind, start serving and report SERVING; return the bound port.

        Raises
        ------
        ConfigError
            When the address cannot be bound (in use, or not an address of this machine).
        """
        config = self.config
        workers = config.max_concurrency + SPARE_WORKERS
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedge-cloud"),
            interceptors=[
                AuditInterceptor(self.audit),
                AuthInterceptor(config.tokens),
                ConcurrencyInterceptor(ConcurrencyLimit(config.max_concurrency)),
            ],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
            ],
            # calls beyond the worker threads are refused (RESOURCE_EXHAUSTED), not queued
            maximum_concurrent_rpcs=workers,
        )
        cloud_pb2_grpc.add_CloudServicer_to_server(CloudServicer(self.cases), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if config.tls is None:
                port = server.add_insecure_port(config.address)
            else:
                port = server.add_secure_port(config.address, config.tls.credentials())
        except RuntimeError as err:
            raise ConfigError(
                f"cannot listen on {config.address}: the port is in use or the address is not "
                "this machine's (choose another --port or --host)"
            ) from err
        if port == 0:
            raise ConfigError(f"cannot listen on {config.address}: in use or not this machine's")
        server.start()
        for service in ("", CLOUD_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._port = server, port
        return port

    def stop(self, grace: float | None = 10.0) -> None:
        """Report NOT_SERVING, finish in-flight calls for up to ``grace`` s, then close."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.audit.close()
        self.results.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` s); ``True`` once it has stopped."""
        if self._server is None:
            raise RuntimeError("the server is not started: call start() first")
        return self._server.wait_for_termination(timeout)
