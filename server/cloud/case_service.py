"""What the service does with one hard case, whichever RPC brought it.

``CaseService.answer`` applies, in order:

1. the case names a node (INVALID_ARGUMENT otherwise) and, when the call carried a bearer
   token, the token's node (PERMISSION_DENIED otherwise);
2. the node's rate limit (RESOURCE_EXHAUSTED when its bucket is empty);
3. idempotency by (node id, frame id): a case answered before gets the stored result
   with ``cached=true``, without decoding or running the teacher again;
4. validation and decoding (``server.cloud.cases.decode_case``);
5. the received JPEG bytes are written to ``keep_uploads`` when the operator asked for
   it (and nowhere otherwise);
6. the teacher and fusion (``server.cloud.inference.infer_case``); the result is stored.

Every refusal is a ``CaseError`` with its gRPC status; the servicer turns it into an
aborted call (``Infer``) or a failed ``StreamReply`` (``InferStream``).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import traceback
from pathlib import Path

import grpc

from fedge.core.files import atomic_write
from fedge.core.proto import cloud_pb2
from server.cloud.calibration import Calibration
from server.cloud.cases import (
    MAX_NODE_ID_LENGTH,
    CaseError,
    CaseLimits,
    DecodedCase,
    decode_case,
)
from server.cloud.inference import Teacher, infer_case
from server.cloud.limits import RateLimiter
from server.cloud.results import ResultStore

__all__ = ["CaseService", "UploadKeeper", "pixel_bytes"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def pixel_bytes(message: cloud_pb2.HardCase) -> int:
    """JPEG bytes a wire case carries (0 in landmarks mode)."""
    return len(message.frame_jpeg) + sum(len(crop.jpeg) for crop in message.crops.crops)


class UploadKeeper:
    """Writes the JPEG bytes of received cases under ``root/<node>/<frame id>/``.

    The bytes are written as received (never re-encoded): ``frame.jpg`` for a frames case,
    ``crop-<i>-x<X>-y<Y>.jpg`` for each crop. A node id that is not a plain file name
    (letters, digits, ``._-``) gets the folder ``node-<sha256 prefix>`` instead.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, node_id: str, frame_id: int) -> Path:
        """Return the folder a case's pixels are kept in."""
        name = (
            node_id
            if _SAFE_NAME.match(node_id)
            else ("node-" + hashlib.sha256(node_id.encode("utf-8")).hexdigest()[:16])
        )
        return self.root / name / str(int(frame_id))

    def keep(self, message: cloud_pb2.HardCase) -> list[Path]:
        """Write the case's JPEGs; return the files written (none in landmarks mode)."""
        files: list[tuple[Path, bytes]] = []
        folder = self.folder(message.node_id, message.frame_id)
        if message.frame_jpeg:
            files.append((folder / "frame.jpg", message.frame_jpeg))
        for i, crop in enumerate(message.crops.crops):
            files.append((folder / f"crop-{i}-x{crop.x}-y{crop.y}.jpg", crop.jpeg))
        if files:
            folder.mkdir(parents=True, exist_ok=True)
        for path, data in files:
            atomic_write(path, data)
        return [path for path, _ in files]


class CaseService:
    """Answers hard cases: authorization, rate limit, idempotency, decoding, inference.

    Parameters
    ----------
    teacher:
        The teacher ensemble; its ``detect`` runs under a lock (one case at a time).
    fusion_method:
        One of ``server.cloud.fusion.FUSION_METHODS``.
    results:
        Where answered cases are stored by (node id, frame id).
    rate:
        Cases per node per minute.
    limits:
        Pixel limits for decoding.
    calibration:
        Per-source temperatures for ``logit`` fusion.
    keep_uploads:
        Folder to keep the received pixels in; ``None`` keeps nothing.
    """

    def __init__(
        self,
        teacher: Teacher,
        fusion_method: str,
        *,
        results: ResultStore,
        rate: RateLimiter,
        limits: CaseLimits,
        calibration: Calibration | None = None,
        keep_uploads: Path | None = None,
    ) -> None:
        self.teacher = teacher
        self.fusion_method = fusion_method
        self.results = results
        self.rate = rate
        self.limits = limits
        self.calibration = calibration
        self.uploads = None if keep_uploads is None else UploadKeeper(keep_uploads)
        self._teacher_lock = threading.Lock()

    def answer(self, message: cloud_pb2.HardCase, caller: str | None) -> cloud_pb2.CloudResult:
        """Return the ``CloudResult`` of one wire case.

        Parameters
        ----------
        message:
            The case as received.
        caller:
            The node id of the call's bearer token; ``None`` when the service runs
            without tokens.

        Raises
        ------
        CaseError
            With the status to answer (see the module docstring).
        """
        node = message.node_id
        if not node or len(node) > MAX_NODE_ID_LENGTH:
            raise CaseError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node_id is missing or longer than {MAX_NODE_ID_LENGTH} characters",
            )
        if caller is not None and node != caller:
            raise CaseError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token belongs to node {caller!r}, not {node!r}: send each node's cases "
                "with its own token",
            )
        if not self.rate.allow(node):
            raise CaseError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {node!r} is over {self.rate.per_minute:g} cases per minute: retry in "
                f"{self.rate.retry_after(node):.1f} s",
            )
        if message.frame_id <= 0:
            raise CaseError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"frame_id {message.frame_id} is missing: send the frame's store id (1 or more)",
            )
        with self.results.claim(node, message.frame_id):
            stored = self.results.get(node, message.frame_id)
            if stored is not None:
                stored.cached = True
                return stored
            case = decode_case(message, self.limits)
            if self.uploads is not None:
                self.uploads.keep(message)
            result = self._infer(case)
            self.results.put(result)
            return result

    def _infer(self, case: DecodedCase) -> cloud_pb2.CloudResult:
        try:
            with self._teacher_lock:
                return infer_case(
                    case, self.teacher, self.fusion_method, calibration=self.calibration
                )
        except Exception as err:  # a teacher or fusion bug must not take the server down
            traceback.print_exc(file=sys.stderr)
            raise CaseError(
                grpc.StatusCode.INTERNAL,
                f"the cloud failed on frame {case.frame_id}: {type(err).__name__}: {err}",
            ) from err
