"""Follow the installed person detector in the running agent and swap new versions in.

``fedge edge --detector-dir DIR`` runs the version that ``DIR``'s ``current`` pointer
names (``clients.model_installer``). A :class:`DetectorFollower` thread looks at the
pointer file every ``poll_s`` seconds (one ``stat``; the file is read only when it was
replaced). When it names another version, the follower verifies it (sha256 against its
manifest, LiteRT load, smoke inference), loads one detector per pose worker, all off the
frame path, then hands them over (``on_swap``; the agent calls
``Pipeline.swap_pose``): frames taken after that use the new version, frames in flight
finish on the old one, none is dropped and nothing restarts. A version that fails is
logged once and skipped; the old one keeps serving. A rollback moves the pointer too,
and is followed the same way.

Each version brings what its scores mean (the manifest's ``calibration``, measured on the
nodes' held-out frames in the round that produced it, ``export.score_calibration``):
with it the pose workers count boxes as persons from the version's operating score on
(``min_box_score``) and the hard-case selector's person band becomes the version's
uncertainty band (:func:`apply_version`, also on every swap); a version without it gets
the defaults (``min_box_score`` 0.5, the policy's band).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.detector import Detector, DetectorSpec
from clients.hard_cases import ScoreBand
from clients.model_installer import POINTER_FILE, CurrentPointer, read_pointer, version_label
from export.artifact import (
    DEFAULT_NAME,
    ModelManifest,
    artifact_paths,
    read_manifest,
    verify_artifact,
)
from export.score_calibration import DEFAULT_OPERATING_SCORE, ScoreCalibration
from fedge.core.errors import ModelError

__all__ = [
    "DetectorFollower",
    "DetectorLoader",
    "LoadedVersion",
    "apply_version",
    "person_detector_loader",
    "swap_into",
]

log = logging.getLogger(__name__)

PERSON_LABEL = "person"

DetectorLoader = Callable[[Path, ModelManifest], Any]
"""``(model path, manifest) -> detector``; called once per pose worker for each version."""


def person_detector_loader(
    score_threshold: float, num_threads: int | None = None
) -> DetectorLoader:
    """A loader giving a :class:`Detector` fed as the manifest says, keeping boxes down
    to ``score_threshold`` (the agent's hard-case uncertainty floor), or lower to the
    bottom of the version's calibrated uncertainty band."""

    def load(path: Path, manifest: ModelManifest) -> Detector:
        floor = score_threshold
        if manifest.calibration is not None:
            floor = min(floor, manifest.calibration.uncertain_low)
        spec = DetectorSpec(
            labels=tuple(manifest.detector.labels),
            score_threshold=floor,
            input_mean=manifest.input.mean,
            input_std=manifest.input.std,
            max_detections=manifest.detector.max_detections,
        )
        return Detector(path, spec, num_threads=num_threads)

    return load


def swap_into(
    pipeline: Any,
    estimators: Sequence[Any],
    *,
    first_estimator: Callable[[Any], Any] | None = None,
    selector: Any = None,
) -> Callable[[LoadedVersion], None]:
    """An ``on_swap`` giving ``pipeline``'s pose workers their detector of each new version.

    ``estimators`` are the pipeline's pose models (one per worker, in order). Top-down ones
    keep their landmark model and get the new version's detector
    (``TopDownPoseEstimator.with_person_detector``) from the next frame taken on.

    An agent that started before any version was installed runs whole-frame pose in cold
    start: ``first_estimator(detector)`` then builds each worker's top-down estimator, and
    ``selector`` (a ``HardCaseSelector``) leaves cold start: from that frame on it selects
    by the detector's uncertainty, its person boxes taking part in the pose/box check.

    Every version's operating score and uncertainty band are applied
    (:func:`apply_version`): the new models get the operating score before they serve,
    the selector the band right after the swap (the few frames in flight then are judged
    with the new band).
    """
    current = list(estimators)

    def swap(loaded: LoadedVersion) -> None:
        top_down = all(hasattr(e, "with_person_detector") for e in current)
        if not top_down and first_estimator is None:
            raise ModelError("the agent runs whole-frame pose and cannot take a person detector")
        models = [
            e.with_person_detector(d) if top_down else first_estimator(d)  # type: ignore[misc]
            for e, d in zip(current, loaded.detectors, strict=True)
        ]
        apply_version(loaded, models)
        pipeline.swap_pose(models, loaded.label)
        current[:] = models
        if selector is not None:
            apply_version(loaded, (), selector)
        if selector is not None and selector.cold_start:
            labels = tuple(selector.detector_labels or ())
            selector.detector_labels = labels + (() if "person" in labels else ("person",))
            selector.cold_start = False

    return swap


def apply_version(loaded: LoadedVersion, models: Sequence[Any], selector: Any = None) -> None:
    """Give ``models`` (top-down pose estimators built for ``loaded``; others are left
    alone) the version's operating score as ``min_box_score``, and ``selector`` (a
    ``HardCaseSelector``) its person uncertainty band (the policy's band when the version
    has no calibration)."""
    for model in models:
        if hasattr(model, "min_box_score"):
            model.min_box_score = loaded.operating_score
    if selector is not None:
        selector.set_band(PERSON_LABEL, loaded.band)


@dataclass(frozen=True)
class LoadedVersion:
    """A verified version and its loaded detectors (one per pose worker), with its
    calibration (``None``: the manifest has none) and the operating score it implies."""

    label: str
    version: int
    sha256: str
    detectors: tuple[Any, ...]
    calibration: ScoreCalibration | None = None

    @property
    def operating_score(self) -> float:
        """The score from which a box counts as a person (0.5 when uncalibrated)."""
        cal = self.calibration
        return DEFAULT_OPERATING_SCORE if cal is None else cal.operating_score

    @property
    def band(self) -> ScoreBand | None:
        """The calibrated person uncertainty band (``None``: uncalibrated version)."""
        cal = self.calibration
        return None if cal is None else ScoreBand(cal.uncertain_low, cal.uncertain_high)


class DetectorFollower:
    """Load the current detector version and follow the pointer (module docstring).

    Parameters
    ----------
    detector_dir
        The node's detector directory.
    load
        Builds one detector from a verified model file (:func:`person_detector_loader`).
    copies
        Detectors per version (one per pose worker: interpreters are not shared).
    on_swap
        Called from the follower's thread with each new :class:`LoadedVersion`.
    poll_s
        Seconds between looks at the pointer.
    smoke_frame
        A frame for the smoke inference (mid-grey when ``None``).
    """

    def __init__(
        self,
        detector_dir: str | os.PathLike[str],
        *,
        load: DetectorLoader,
        copies: int = 1,
        on_swap: Callable[[LoadedVersion], None] | None = None,
        poll_s: float = 1.0,
        smoke_frame: np.ndarray | None = None,
        name: str = DEFAULT_NAME,
    ) -> None:
        if copies < 1:
            raise ValueError(f"copies must be 1 or more, got {copies}")
        self.detector_dir = Path(detector_dir).expanduser()
        self.load = load
        self.copies = copies
        self.on_swap = on_swap
        self.poll_s = poll_s
        self.smoke_frame = smoke_frame
        self.name = name
        self.active: LoadedVersion | None = None
        self.rejected: dict[tuple[int, str], str] = {}
        self._seen: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str:
        """The label of the version serving now (``""`` before one is loaded)."""
        active = self.active
        return active.label if active is not None else ""

    def load_current(self, *, required: bool = True) -> LoadedVersion | None:
        """Load the version the pointer names now (the agent's start).

        With ``required=False`` a directory with no version installed yet gives ``None``
        (the agent starts in cold start and :meth:`poll` swaps the first version in).

        Raises
        ------
        ModelError
            No version is installed (``required``), or the current one fails verification.
        """
        self._seen = self._stat()
        pointer = read_pointer(self.detector_dir, self.name)
        if pointer is None and not required:
            return None
        if pointer is None:
            raise ModelError(
                f"no {self.name} is installed in {self.detector_dir}: the SuperNode installs "
                "one after the first federated round (or pass --person-model FILE)"
            )
        self.active = self._load(pointer)
        return self.active

    def poll(self) -> LoadedVersion | None:
        """Look at the pointer once; swap in and return a new version, else ``None``."""
        seen = self._stat()
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            pointer = read_pointer(self.detector_dir, self.name)
        except ModelError as err:
            log.error("%s; keeping %s", err, self.version or "no detector")
            return None
        if pointer is None:
            return None
        key = (pointer.version, pointer.sha256)
        active = self.active
        if active is not None and (active.version, active.sha256) == key:
            return None
        if key in self.rejected:
            return None
        try:
            loaded = self._load(pointer)
        except ModelError as err:
            self.rejected[key] = str(err)
            log.error(
                "%s version %d rejected by the running agent: %s; keeping %s",
                self.name,
                pointer.version,
                err,
                self.version or "no detector",
            )
            return None
        if self.on_swap is not None:
            self.on_swap(loaded)  # raises: the old version stays active
        self.active = loaded
        log.warning("swapped in %s", loaded.label)
        return loaded

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = (self.detector_dir / self.name / POINTER_FILE).stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _load(self, pointer: CurrentPointer) -> LoadedVersion:
        folder = self.detector_dir / self.name / pointer.dir
        model_path, manifest_path = artifact_paths(folder, self.name, pointer.version)
        manifest = read_manifest(manifest_path)
        if manifest.sha256 != pointer.sha256 or manifest.version != pointer.version:
            raise ModelError(
                f"{folder} holds version {manifest.version} ({manifest.sha256[:12]}...), not "
                f"the pointer's {pointer.version} ({pointer.sha256[:12]}...); reinstall it"
            )
        verify_artifact(model_path, manifest, frame=self.smoke_frame)
        detectors = tuple(self.load(model_path, manifest) for _ in range(self.copies))
        return LoadedVersion(
            version_label(self.name, pointer.version),
            pointer.version,
            pointer.sha256,
            detectors,
            calibration=manifest.calibration,
        )

    # -- the watcher thread ------------------------------------------------------------

    def start(self) -> DetectorFollower:
        """Start polling in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="fedge-detector-follower", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def __enter__(self) -> DetectorFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the agent keeps running on its current model
                log.exception("following %s failed; keeping %s", self.name, self.version)
