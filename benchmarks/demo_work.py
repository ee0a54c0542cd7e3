"""What the benchmarks that read a finished ``fedge demo``'s ``--out`` folder share: its
plan and each person-detector version's calibrated uncertainty band."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from clients.hard_cases import ScoreBand
from fedge.core.records import Detection, Person

__all__ = ["MODELS", "read_plan", "stored_detections", "stored_persons", "version_bands"]

MODELS = Path("server") / "demo" / "models"
"""Where a demo's folder keeps the versions the server exported (relative to it)."""


def read_plan(parser: argparse.ArgumentParser, work: Path) -> dict[str, Any]:
    """``work/plan.json``; ``parser.error`` (exit 2) when ``work`` is no demo's folder."""
    plan_path = work / "plan.json"
    if not plan_path.exists():
        parser.error(f"{work} holds no plan.json: not a fedge demo's --out folder")
    return dict(json.loads(plan_path.read_text()))


def version_bands(work: Path, rounds: int) -> list[ScoreBand | None]:
    """Versions 1..``rounds``' person uncertainty bands (``None``: uncalibrated)."""
    from export.artifact import artifact_paths, read_manifest

    bands: list[ScoreBand | None] = []
    for version in range(1, rounds + 1):
        manifest = artifact_paths(work / MODELS, "person-detector", version)[1]
        calibration = read_manifest(manifest).calibration
        bands.append(
            None
            if calibration is None
            else ScoreBand(calibration.uncertain_low, calibration.uncertain_high)
        )
    return bands


def stored_detections(boxes: list[dict[str, Any]]) -> list[Detection]:
    """A frame record's ``detections`` column (parsed JSON) as detections."""
    return [Detection(tuple(b["box"]), b["label"], float(b["score"])) for b in boxes]


def stored_persons(poses: list[dict[str, Any]]) -> list[Person]:
    """A frame record's ``persons`` column (parsed JSON) as persons."""
    return [
        Person(np.asarray(p["landmarks"], np.float64), p["score"], tuple(p["box"])) for p in poses
    ]
