"""The committed gRPC stubs match ``fedge/core/proto/cloud.proto``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_service_is_fedge_cloud_v1() -> None:
    from fedge.core.proto import cloud_pb2

    service = cloud_pb2.DESCRIPTOR.services_by_name["Cloud"]
    assert service.full_name == "fedge.cloud.v1.Cloud"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"Infer": (False, False), "InferStream": (True, True)}
