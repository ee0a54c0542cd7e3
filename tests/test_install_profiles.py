"""Install profiles: the edge agent runs without the training stack; exactly one OpenCV.

The ``edge`` extra in pyproject.toml is what a Raspberry Pi installs. These tests run in
the development environment (everything installed) and prove the edge path does not
need the heavy packages by making their import fail in a subprocess;
``scripts/check-edge-install.sh`` proves it for real in a fresh virtualenv (CI).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import cv2
import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"

HEAVY_MODULES = ("tensorflow", "keras", "flwr", "flwr_datasets", "ray", "mediapipe", "matplotlib")
"""Top-level modules the edge agent must never import."""
HEAVY_DISTRIBUTIONS = frozenset(
    canonicalize_name(name)
    for name in (
        "tensorflow", "tensorflow-cpu", "keras", "flwr", "flwr-datasets", "ray",
        "mediapipe", "matplotlib",
    )
)  # fmt: skip
"""Distributions the ``edge`` extra must not name."""
OPENCV_DISTRIBUTIONS = frozenset(
    canonicalize_name(name)
    for name in (
        "opencv-python", "opencv-python-headless", "opencv-contrib-python",
        "opencv-contrib-python-headless",
    )
)  # fmt: skip
CHOSEN_OPENCV = canonicalize_name("opencv-contrib-python")

# Runs ``python -m fedge ARGS`` with a meta-path finder that makes every import of a
# blocked top-level module fail as if the package were not installed, and records each
# attempt (also those a caller catches) in the file named by argv[1].
BLOCKING_LAUNCHER = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    attempts_file, blocked = sys.argv[1], frozenset(sys.argv[2].split(","))

    class BlockHeavyPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top not in blocked:
                return None
            with open(attempts_file, "a") as attempts:
                attempts.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {top!r} (blocked)", name=top)

    sys.meta_path.insert(0, BlockHeavyPackages())
    sys.argv = ["fedge", *sys.argv[3:]]
    runpy.run_module("fedge", run_name="__main__", alter_sys=True)
    """
)


def _fedge_without_heavy_packages(
    tmp_path: Path, *args: str, timeout: float = 180
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``fedge ARGS`` with the heavy modules blocked; return it and the blocked imports."""
    attempts = tmp_path / "blocked-imports.txt"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKING_LAUNCHER, str(attempts), ",".join(HEAVY_MODULES), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tried = attempts.read_text().split() if attempts.exists() else []
    return done, tried


def _extras() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["project"]["optional-dependencies"]


def _profile_requirements(extra: str) -> list[Requirement]:
    """Base dependencies plus the extra's, with ``fedge[...]`` self-references expanded."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    pending, seen = [extra], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in extras[name]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def test_edge_agent_runs_on_the_sample_clip_with_heavy_packages_unimportable(
    tmp_path: Path, model_dir: Path
) -> None:
    jsonl = tmp_path / "frames.jsonl"

    done, tried = _fedge_without_heavy_packages(
        tmp_path, "edge", "--source", str(SAMPLE_CLIP), "--max-frames", "8",
        "--jsonl", str(jsonl), "--store-dir", str(tmp_path / "store"),
        "--model-dir", str(model_dir), "--quiet",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert tried == [], f"the edge path tried to import {sorted(set(tried))}"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(8))
    assert any(r["persons"] for r in records), "pose found nobody on the sample clip"


def test_models_fetch_and_help_work_with_heavy_packages_unimportable(
    tmp_path: Path, model_dir: Path
) -> None:
    # Prepare: the cache is filled (fixture), so fetch verifies it without downloading.

    fetched, tried_fetch = _fedge_without_heavy_packages(
        tmp_path, "models", "fetch", "--cache-dir", str(model_dir)
    )
    helped, tried_help = _fedge_without_heavy_packages(tmp_path, "--help")

    assert fetched.returncode == 0, fetched.stderr
    assert "pose_landmark_full.tflite" in fetched.stdout
    assert helped.returncode == 0, helped.stderr
    listed = {line.split()[0] for line in helped.stdout.splitlines() if line.startswith("    ")}
    assert {"simulate", "models", "edge", "compare"} <= listed
    assert tried_fetch == [] and tried_help == []


def test_tasks_backend_without_mediapipe_is_a_one_line_error(
    tmp_path: Path, model_dir: Path
) -> None:
    done, _ = _fedge_without_heavy_packages(
        tmp_path, "edge", "--source", str(SAMPLE_CLIP), "--max-frames", "2",
        "--store-dir", str(tmp_path / "store"), "--model-dir", str(model_dir),
        "--pose-backend", "tasks", "--quiet",
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "fedge[tasks]" in done.stderr


def test_a_blocked_package_really_fails_to_import(tmp_path: Path) -> None:
    """The blocker itself works: a command that needs Flower fails for want of it."""

    done, tried = _fedge_without_heavy_packages(tmp_path, "simulate", "--set", "strategy=fedavg")

    assert done.returncode != 0
    assert "flwr" in {name.partition(".")[0] for name in tried}


def test_edge_extra_names_no_training_simulation_or_mediapipe_package() -> None:
    requirements = _profile_requirements("edge")

    names = {canonicalize_name(r.name) for r in requirements}

    assert names, "the edge profile names no requirement"
    assert names & HEAVY_DISTRIBUTIONS == set()
    assert {"ai-edge-litert", "grpcio", "protobuf", "numpy", CHOSEN_OPENCV} <= names


def test_every_profile_names_the_same_single_opencv() -> None:
    for extra in _extras():
        names = {canonicalize_name(r.name) for r in _profile_requirements(extra)}

        assert names & OPENCV_DISTRIBUTIONS <= {CHOSEN_OPENCV}, extra


def test_dev_profile_installs_every_role() -> None:
    dev = {str(r) for r in _profile_requirements("dev")}

    for extra in ("edge", "cloud", "train", "sim", "tasks"):
        assert {str(r) for r in _profile_requirements(extra)} <= dev, extra


def test_mediapipe_requires_the_opencv_distribution_fedge_chose() -> None:
    required = importlib.metadata.requires("mediapipe") or []

    names = {canonicalize_name(Requirement(r).name) for r in required}

    assert names & OPENCV_DISTRIBUTIONS == {CHOSEN_OPENCV}


def test_exactly_one_installed_distribution_provides_cv2() -> None:
    providers = sorted(
        canonicalize_name(dist.metadata["Name"])
        for dist in importlib.metadata.distributions()
        if any(str(f).replace("\\", "/") == "cv2/__init__.py" for f in dist.files or ())
    )

    assert providers == [CHOSEN_OPENCV]


def test_installed_opencv_is_in_the_declared_range_and_has_what_fedge_uses(
    tmp_path: Path,
) -> None:
    declared = {
        Requirement(r).specifier
        for extra in _extras()
        for r in _extras()[extra]
        if canonicalize_name(Requirement(r).name) == CHOSEN_OPENCV
    }
    version = importlib.metadata.version(CHOSEN_OPENCV)

    capture = cv2.VideoCapture(str(SAMPLE_CLIP))
    ok, frame = capture.read()
    capture.release()
    encoded_ok, jpeg = cv2.imencode(".jpg", frame)
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    people = cv2.HOGDescriptor_getDefaultPeopleDetector()

    assert len(declared) == 1, f"extras declare different OpenCV ranges: {declared}"
    assert declared.pop().contains(version)
    assert cv2.__version__ == ".".join(version.split(".")[:3])
    assert ok and frame.ndim == 3
    assert encoded_ok and decoded.shape == frame.shape
    assert np.asarray(people).size > 0  # the cloud teacher's HOG people detector
    assert hasattr(cv2.utils.logging, "setLogLevel")  # capture silences FFmpeg with it
