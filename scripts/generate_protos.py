"""Regenerate the committed gRPC stubs of ``fedge/core/proto/cloud.proto`` (grpcio-tools).

    python scripts/generate_protos.py           # write the stubs
    python scripts/generate_protos.py --check   # exit 1 if the committed stubs are stale
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("fedge/core/proto/cloud.proto")
OUTPUTS = ("cloud_pb2.py", "cloud_pb2.pyi", "cloud_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on the proto; return the generated files under ``out_root``."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    return [out_root / PROTO.parent / name for name in OUTPUTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = ROOT / PROTO.parent / path.name
            if args.check:
                if not committed.exists() or committed.read_bytes() != path.read_bytes():
                    stale.append(str(committed.relative_to(ROOT)))
            else:
                shutil.copyfile(path, committed)
    if stale:
        print(f"stale stubs (run python scripts/generate_protos.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
