"""Heavy inference on one decoded hard case: the teacher, then confidence fusion.

``infer_case`` is a plain function: it runs the teacher ensemble on what the case
carries, fuses the teacher's person boxes with the node's (``server.cloud.fusion``) and
returns the ``CloudResult`` the node writes into its store as the frame's label.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from fedge.core.proto import cloud_pb2
from fedge.core.records import Detection
from server.cloud.calibration import Calibration
from server.cloud.cases import DecodedCase
from server.cloud.fusion import FusedBox, case_looked, edge_person_detections, fuse_detections

__all__ = ["SCHEMA_VERSION", "Teacher", "infer_case", "to_wire_box"]

SCHEMA_VERSION = 1
"""Version of the label a ``CloudResult`` describes (``CloudResult.schema_version``)."""


class Teacher(Protocol):
    """What the service needs of a teacher ensemble (``server.cloud.teacher``)."""

    version: str

    def detect(self, case: DecodedCase) -> list[Detection]:
        """Return person boxes in frame pixels, scores 0..1."""
        ...


def to_wire_box(box: Sequence[float]) -> cloud_pb2.Box:
    """Return a ``[x1, y1, x2, y2]`` box as the wire's ``Box``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return cloud_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)


def _wire_fused(box: FusedBox) -> cloud_pb2.FusedBox:
    return cloud_pb2.FusedBox(
        box=to_wire_box(box.box),
        label=box.label,
        score=float(box.score),
        has_edge=box.edge_score is not None,
        edge_score=float(box.edge_score or 0.0),
        has_cloud=box.cloud_score is not None,
        cloud_score=float(box.cloud_score or 0.0),
    )


def infer_case(
    case: DecodedCase,
    teacher: Teacher,
    fusion_method: str,
    *,
    calibration: Calibration | None = None,
) -> cloud_pb2.CloudResult:
    """Run the teacher on ``case`` and fuse its boxes with the node's.

    Parameters
    ----------
    case:
        A validated, decoded hard case.
    teacher:
        The teacher ensemble (``server.cloud.teacher.build_teacher``).
    fusion_method:
        One of ``server.cloud.fusion.FUSION_METHODS``.
    calibration:
        Per-source temperatures for ``logit`` fusion.
    """
    started = time.perf_counter()
    cloud = teacher.detect(case)
    fused = fuse_detections(
        edge_person_detections(case),
        cloud,
        fusion_method,
        calibration=calibration,
        looked=case_looked(case),
    )
    return cloud_pb2.CloudResult(
        node_id=case.node_id,
        frame_id=case.frame_id,
        boxes=[_wire_fused(box) for box in fused],
        teacher_detections=[
            cloud_pb2.Detection(box=to_wire_box(d.box), label=d.label, score=float(d.score))
            for d in cloud
        ],
        fusion_method=fusion_method,
        teacher_version=teacher.version,
        schema_version=SCHEMA_VERSION,
        cached=False,
        cloud_seconds=time.perf_counter() - started,
    )
