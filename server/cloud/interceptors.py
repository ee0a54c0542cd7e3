"""Server interceptors: what every call of the ``Cloud`` service goes through.

In the order the server installs them (outermost first):

``AuditInterceptor``
    One JSON line per case (``InferStream`` writes one per reply) and one per call
    refused before a case was answered, with the status code that went back.
``AuthInterceptor``
    ``authorization: Bearer <token>`` metadata mapped to a node id through the token
    table; a call without a known token is refused with UNAUTHENTICATED before any case is
    read. The node id is put in the call's context (``current_caller``).
``ConcurrencyInterceptor``
    At most N calls served at once; the next one is refused at once with
    RESOURCE_EXHAUSTED, never queued.

The health service (``grpc.health.v1``) is not intercepted: load balancers may probe it
without a token, and it must answer while the service is busy. gRPC runs every call (its
interceptors and its handler) in its own ``contextvars.Context``, so the caller set here
is seen by that call only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc

from fedge.core.proto import cloud_pb2
from server.cloud.audit import AuditEntry, AuditLog
from server.cloud.case_service import pixel_bytes
from server.cloud.cases import MODE_NAMES
from server.cloud.limits import ConcurrencyLimit
from server.cloud.tokens import TokenTable, bearer_token

__all__ = [
    "CLOUD_SERVICE",
    "AuditInterceptor",
    "AuthInterceptor",
    "ConcurrencyInterceptor",
    "current_caller",
]

CLOUD_SERVICE = cloud_pb2.DESCRIPTOR.services_by_name["Cloud"].full_name
"""``fedge.cloud.v1.Cloud``."""

_CLOUD_PREFIX = f"/{CLOUD_SERVICE}/"
_CALLER: ContextVar[str | None] = ContextVar("fedge_cloud_caller", default=None)

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Wrapper = Callable[[Behavior], Behavior]


def current_caller() -> str | None:
    """The node id of the current call's bearer token (``None`` without tokens)."""
    return _CALLER.get()


def _is_cloud(details: grpc.HandlerCallDetails) -> bool:
    return details.method.startswith(_CLOUD_PREFIX)


def _rpc_name(details: grpc.HandlerCallDetails) -> str:
    return details.method.rpartition("/")[2]


def _wrap(
    handler: grpc.RpcMethodHandler | None, unary: Wrapper, stream: Wrapper
) -> grpc.RpcMethodHandler | None:
    """Return ``handler`` with its unary-unary or stream-stream behavior wrapped."""
    if handler is None:
        return None
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **options)
    if not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
    raise TypeError(f"{CLOUD_SERVICE} has only unary-unary and stream-stream methods")


def _refusal(code: grpc.StatusCode, message: str) -> Wrapper:
    def wrapper(_behavior: Behavior) -> Behavior:
        def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, message)

        return refuse

    return wrapper


class AuthInterceptor(grpc.ServerInterceptor):
    """Maps the call's bearer token to a node id; no or an unknown token: UNAUTHENTICATED.

    Parameters
    ----------
    tokens:
        The token table; ``None`` accepts every call (the case's node id is trusted).
    """

    def __init__(self, tokens: TokenTable | None) -> None:
        self.tokens = tokens

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if self.tokens is None or not _is_cloud(handler_call_details):
            return handler
        token = bearer_token(dict(handler_call_details.invocation_metadata or ()))
        node = self.tokens.node_for(token)
        if node is None:
            message = (
                "no bearer token: send 'authorization: Bearer <token>' metadata"
                if token is None
                else "unknown bearer token: use the token the cloud's operator gave this node"
            )
            refusal = _refusal(grpc.StatusCode.UNAUTHENTICATED, message)
            return _wrap(handler, refusal, refusal)
        _CALLER.set(node)
        return handler


class ConcurrencyInterceptor(grpc.ServerInterceptor):
    """Serves at most ``limit.limit`` calls at once; refuses the next with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self.limit = limit

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if not _is_cloud(handler_call_details):
            return handler
        return _wrap(handler, self._bounded_unary, self._bounded_stream)

    def _refuse(self, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the cloud is serving {self.limit.limit} calls already: retry later",
        )

    def _bounded_unary(self, behavior: Behavior) -> Behavior:
        def bounded(request: Any, context: grpc.ServicerContext) -> Any:
            if not self.limit.try_acquire():
                self._refuse(context)
            try:
                return behavior(request, context)
            finally:
                self.limit.release()

        return bounded

    def _bounded_stream(self, behavior: Behavior) -> Behavior:
        def bounded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            # the slot is taken on the first step, so a stream never started holds none
            if not self.limit.try_acquire():
                self._refuse(context)
            try:
                yield from behavior(requests, context)
            finally:
                self.limit.release()

        return bounded


def _case_fields(request: cloud_pb2.HardCase | None) -> dict[str, Any]:
    if request is None:
        return {"node": None, "frame": None, "mode": None, "pixel_bytes": 0}
    mode = MODE_NAMES.get(request.privacy_mode)
    if mode is None:
        try:
            mode = cloud_pb2.PrivacyMode.Name(request.privacy_mode)
        except ValueError:
            mode = str(request.privacy_mode)
    return {
        "node": request.node_id or None,
        "frame": int(request.frame_id),
        "mode": mode,
        "pixel_bytes": pixel_bytes(request),
    }


def _status(context: grpc.ServicerContext) -> tuple[str, str]:
    code = context.code()
    details = context.details()
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return (code.name if code is not None else "UNKNOWN"), details or ""


class AuditInterceptor(grpc.ServerInterceptor):
    """Writes one audit line per case and per refused call (``server.cloud.audit``)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not _is_cloud(handler_call_details):
            return handler
        rpc = _rpc_name(handler_call_details)
        return _wrap(
            handler,
            lambda behavior: self._audited_unary(rpc, behavior),
            lambda behavior: self._audited_stream(rpc, behavior),
        )

    def _write(
        self,
        rpc: str,
        request: cloud_pb2.HardCase | None,
        started: float,
        status: str,
        *,
        cached: bool = False,
        message: str = "",
    ) -> None:
        self.log.write(
            AuditEntry(
                rpc=rpc,
                caller=current_caller(),
                latency_ms=(time.perf_counter() - started) * 1000.0,
                status=status,
                cached=cached,
                message=message,
                **_case_fields(request),
            )
        )

    def _audited_unary(self, rpc: str, behavior: Behavior) -> Behavior:
        def audited(request: cloud_pb2.HardCase, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = behavior(request, context)
            except BaseException:
                status, message = _status(context)
                self._write(rpc, request, started, status, message=message)
                raise
            self._write(rpc, request, started, "OK", cached=bool(response.cached))
            return response

        return audited

    def _audited_stream(self, rpc: str, behavior: Behavior) -> Behavior:
        def audited(
            requests: Iterator[cloud_pb2.HardCase], context: grpc.ServicerContext
        ) -> Iterator[cloud_pb2.StreamReply]:
            call_started = time.perf_counter()
            received: deque[tuple[cloud_pb2.HardCase, float]] = deque()

            def recorded() -> Iterator[cloud_pb2.HardCase]:
                for request in requests:
                    received.append((request, time.perf_counter()))
                    yield request

            try:
                replies = behavior(recorded(), context)
                for reply in replies:  # one reply per case, in order
                    request, started = received.popleft() if received else (None, call_started)
                    self._write(
                        rpc,
                        request,
                        started,
                        _CODE_NAMES.get(reply.code, str(reply.code)),
                        cached=bool(reply.result.cached) if reply.code == 0 else False,
                        message=reply.message,
                    )
                    yield reply
            except GeneratorExit:
                raise
            except BaseException:
                request, started = received.popleft() if received else (None, call_started)
                status, message = _status(context)
                self._write(rpc, request, started, status, message=message)
                raise

        return audited
