"""What the uplink tests share: a recording TCP proxy, the real ``fedge cloud`` as a
subprocess, a scriptable loopback gRPC cloud, and stores filled with sample-clip frames."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

from data.frame_store import FrameStore
from fedge.core.proto import cloud_pb2, cloud_pb2_grpc
from fedge.core.records import FrameResult, Person

__all__ = [
    "CLIP",
    "REPO",
    "CloudProcess",
    "RecordingCloud",
    "TcpRecorder",
    "clip_frames",
    "fill_store",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def clip_frames(indices: Sequence[int], size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """Frames of the sample clip at ``indices``, resized to ``size`` (width, height)."""
    cap = cv2.VideoCapture(str(CLIP))
    images = []
    for index in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = cap.read()
        assert ok, f"cannot read frame {index} of {CLIP}"
        images.append(cv2.resize(image, size))
    cap.release()
    return images


def fill_store(
    store: FrameStore, images: Sequence[np.ndarray], persons: Sequence[Sequence[Person]]
) -> list[int]:
    """Add each image as a hard case with its persons; return the frame ids."""
    return [
        store.add(
            image,
            FrameResult(
                frame=i,
                time=1_800_000_000.0 + i,
                source="test",
                persons=list(people),
                hard=True,
                hard_reasons=["pose_ssd_disagree"],
            ),
        )
        for i, (image, people) in enumerate(zip(images, persons, strict=True))
    ]


class TcpRecorder:
    """A loopback TCP proxy that records every byte a client sends upstream.

    With no upstream it accepts and closes each connection at once (a cloud that is
    down, as the client sees it). ``set_upstream`` points it at a server later.
    """

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.refused = 0
        self._up: list[bytearray] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def set_upstream(self, upstream: tuple[str, int] | None) -> None:
        """Forward new connections to ``upstream`` (``None``: refuse them)."""
        self.upstream = upstream

    @property
    def bytes_up(self) -> bytes:
        """Everything clients sent, all connections concatenated."""
        with self._lock:
            return b"".join(bytes(chunk) for chunk in self._up)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = self.upstream
            if upstream is None:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(upstream)
            except OSError:
                self.refused += 1
                client.close()
                continue
            self.connections += 1
            record = bytearray()
            with self._lock:
                self._up.append(record)
                self._sockets += [client, server]
            thread = threading.Thread(target=self._pump, args=(client, server, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, client: socket.socket, server: socket.socket, record: bytearray) -> None:
        peers = {client: server, server: client}
        try:
            while not self._closing.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            record.extend(data)
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closing.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CloudProcess:
    """The real ``fedge cloud`` as a subprocess on a free loopback port."""

    def __init__(self, tmp: Path, *extra: str, insecure: bool = True) -> None:
        self.audit_log = tmp / f"audit-{time.monotonic_ns()}.jsonl"
        command = [sys.executable, "-m", "fedge", "cloud", "--port", "0"]
        command += ["--audit-log", str(self.audit_log), *extra]
        if insecure:
            command.append("--insecure")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if not line.startswith("listening on "):
            self.stop()
            raise AssertionError(f"fedge cloud did not start: {line!r}")
        self.target = line.removeprefix("listening on ")
        host, _, port = self.target.rpartition(":")
        self.address = (host, int(port))

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's lines so far."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def stop(self) -> None:
        """SIGTERM, then wait (the service drains in-flight calls)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> CloudProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


Script = Callable[[cloud_pb2.HardCase], tuple[grpc.StatusCode, str]]


class RecordingCloud(cloud_pb2_grpc.CloudServicer):
    """A loopback gRPC ``Cloud`` that keeps every case it receives and answers by a script.

    ``script(case)`` returns the status for that case (``OK`` answers one person box
    from the case's first person, or an empty label).
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or (lambda case: (grpc.StatusCode.OK, ""))
        self.received: list[cloud_pb2.HardCase] = []
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cloud_pb2_grpc.add_CloudServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def _result(self, case: cloud_pb2.HardCase) -> cloud_pb2.CloudResult:
        result = cloud_pb2.CloudResult(
            node_id=case.node_id,
            frame_id=case.frame_id,
            fusion_method="mean",
            teacher_version="recording/1",
            schema_version=1,
        )
        for person in case.persons[:1]:
            result.boxes.add(
                box=person.box, label="person", score=0.5, has_cloud=True, cloud_score=0.5
            )
        return result

    def InferStream(  # noqa: N802 (the generated name)
        self, request_iterator: Iterator[cloud_pb2.HardCase], context: grpc.ServicerContext
    ) -> Iterator[cloud_pb2.StreamReply]:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        for case in request_iterator:
            with self._lock:
                self.received.append(case)
                self.metadata.append(metadata)
            code, message = self.script(case)
            reply = cloud_pb2.StreamReply(
                node_id=case.node_id, frame_id=case.frame_id, code=code.value[0], message=message
            )
            if code is grpc.StatusCode.OK:
                reply.result.CopyFrom(self._result(case))
            yield reply

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop(grace=None).wait()

    def __enter__(self) -> RecordingCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
