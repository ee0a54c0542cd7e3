"""Calibrated uncertainty of the person detector, per model version.

Known answers of the calibration from synthetic score-bin counts; the node's counting of
true and false positives per bin; the server's sum over node replies; artifacts with and
without a calibration; the hard-case selector with a calibrated band; and a real agent
pipeline whose selector's band changes when a calibrated version is swapped in.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_detectors import tiny_artifact, tiny_person_ssd

from clients.hard_cases import HardCasePolicy, HardCaseSelector, Reason, ScoreBand
from clients.tasks.detector_data import DetectorExample
from clients.tasks.detector_eval import (
    FP_BINS_KEY,
    TP_BINS_KEY,
    FrameDetections,
    calibration_from_metrics,
    score_bin_counts,
)
from export.artifact import ModelArtifact, read_manifest, write_artifact
from export.score_calibration import (
    SCORE_BINS,
    ScoreCalibration,
    calibrate_scores,
    isotonic_precision,
    score_bin,
)
from fedge.core.errors import ModelError
from fedge.core.records import Detection, Person

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
WIDTH, HEIGHT = 640, 480
BOX = (130 / WIDTH, 138 / HEIGHT, 152 / WIDTH, 198 / HEIGHT)  # a person of frame 0
TINY_SCORE = 0.45  # the tiny detectors' box: in the default band [0.3, 0.6)


def _bins(**cells: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Counts with ``b<k>=(tp, fp)`` in bin ``k`` and zero elsewhere."""
    tp, fp = [0] * SCORE_BINS, [0] * SCORE_BINS
    for name, (t, f) in cells.items():
        k = int(name[1:])
        tp[k], fp[k] = t, f
    return tp, fp


# bins of 0.05: b2 = [0.10, 0.15), b6 = [0.30, 0.35), b7, b10 = [0.50, 0.55), b16
KNOWN_TP, KNOWN_FP = _bins(b2=(0, 40), b6=(4, 6), b7=(3, 7), b10=(18, 2), b16=(30, 0))


def _calibration(operating_band: tuple[float, float, float]) -> ScoreCalibration:
    """A calibration whose operating score and band are ``(operating, low, high)``."""
    operating, low, high = operating_band
    return ScoreCalibration(
        true_positives=tuple([1] * SCORE_BINS),
        false_positives=tuple([1] * SCORE_BINS),
        references=20,
        frames=4,
        nodes=2,
        precision=tuple(np.linspace(0.0, 1.0, SCORE_BINS)),
        operating_score=operating,
        uncertain_low=low,
        uncertain_high=high,
    )


# --- the calibration: known answers -----------------------------------------------------


def test_scores_fall_in_bins_of_a_twentieth_with_one_in_the_last() -> None:
    assert [score_bin(s) for s in (0.0, 0.05, 0.2999, 0.3, 0.35, 0.999, 1.0)] == [
        0,
        1,
        5,
        6,
        7,
        19,
        19,
    ]


def test_isotonic_precision_pools_violators_and_fills_empty_bins() -> None:
    precision = isotonic_precision(KNOWN_TP, KNOWN_FP)
    # b6 (0.4) > b7 (0.3) violates monotonicity: pooled to 7/20; b3-b5 linear from b2's 0,
    # b8-b9 linear to b10's 0.9, b11-b15 to b16's 1.0, flat above
    expected = np.array(
        [0, 0, 0, 0.0875, 0.175, 0.2625, 0.35, 0.35, 0.35 + 0.55 / 3, 0.35 + 1.1 / 3, 0.9]
        + [0.9 + 0.1 * k / 6 for k in range(1, 6)]
        + [1.0] * 4
    )
    np.testing.assert_allclose(precision, expected, atol=1e-9)


def test_isotonic_precision_is_zero_below_the_lowest_scored_box() -> None:
    tp, fp = _bins(b6=(4, 6), b8=(19, 1))
    precision = isotonic_precision(tp, fp)
    assert list(precision[:6]) == [0.0] * 6
    assert precision[6] == pytest.approx(0.4) and precision[7] == pytest.approx(0.675)


def test_calibration_known_answer() -> None:
    calibration = calibrate_scores(KNOWN_TP, KNOWN_FP, references=70, frames=10, nodes=2)
    assert calibration is not None
    # F1 = 2 TP / (boxes + 70): from 0.80 60/100 = 0.60, from 0.50 96/120 = 0.80,
    # from 0.35 102/130 = 0.785, from 0.30 110/140 = 0.786, from 0.10 110/180 = 0.61
    assert calibration.operating_score == pytest.approx(0.5)
    # precision >= 0.3 from 0.30 (b6: 0.35); above the operating score > 0.7 from 0.50
    assert (calibration.uncertain_low, calibration.uncertain_high) == pytest.approx((0.3, 0.5))
    assert calibration.precision_at(0.52) == pytest.approx(0.9)
    assert calibration.uncertain(0.31) and not calibration.uncertain(0.5)
    assert (calibration.references, calibration.frames, calibration.nodes) == (70, 10, 2)


def test_the_error_probability_is_a_miss_below_the_operating_score_and_a_false_box_above() -> None:
    calibration = calibrate_scores(KNOWN_TP, KNOWN_FP, references=70, frames=10, nodes=2)
    assert calibration is not None and calibration.operating_score == pytest.approx(0.5)
    # b6 (4/10) and b7 (3/10) pool to 7/20: a dropped box there is a person 35% of the time
    assert calibration.error_probability(0.31) == pytest.approx(0.35)
    assert calibration.error_probability(0.12) == pytest.approx(0.0)  # b2: never a person
    assert calibration.error_probability(0.52) == pytest.approx(0.1)  # kept, 90% precise
    assert calibration.error_probability(0.85) == pytest.approx(0.0)  # b16: all persons
    # the band is where the error probability reaches the floor
    for score in np.arange(0.0, 1.0, 0.05) + 0.01:
        at_risk = calibration.error_probability(score) >= calibration.error_floor
        assert at_risk == calibration.uncertain(score), score


def test_the_operating_score_is_capped_and_the_band_follows_it() -> None:
    calibration = calibrate_scores(KNOWN_TP, KNOWN_FP, references=70, frames=10, max_operating=0.4)
    assert calibration is not None
    assert calibration.operating_score == pytest.approx(0.4)
    # from 0.40 on, precision > 0.7 first at b9 (0.717)
    assert (calibration.uncertain_low, calibration.uncertain_high) == pytest.approx((0.3, 0.45))


def test_an_under_confident_model_operates_where_its_f1_peaks() -> None:
    # Prepare: most people score 0.30-0.35 (75% precise), a few 0.50-0.55 (all people)
    tp, fp = _bins(b6=(30, 10), b10=(5, 0))

    # Execute
    calibration = calibrate_scores(tp, fp, references=50, frames=10)

    # Assert: F1 from 0.50 is 2*5/(5+50) = 0.18, from 0.30 2*35/(45+50) = 0.74; a 90%
    # precision target would have kept 0.5 and found 5 of 50 people
    assert calibration is not None
    assert calibration.operating_score == pytest.approx(0.3)
    assert calibration.to_json()["operating_rule"] == "f1"


def test_an_imprecise_model_operates_where_its_f1_peaks_with_a_wide_band() -> None:
    tp, fp = _bins(b6=(14, 26), b12=(12, 8))  # 0.35, then 0.6 at most
    calibration = calibrate_scores(tp, fp, references=40, frames=8)
    assert calibration is not None
    # F1 from 0.60: 2*12/(20+40) = 0.40; from 0.30: 2*26/(60+40) = 0.52
    assert calibration.operating_score == pytest.approx(0.3)
    # plausible (>= 0.3) from 0.30 on; never sure (> 0.7): every box from 0.30 is uncertain
    assert (calibration.uncertain_low, calibration.uncertain_high) == pytest.approx((0.3, 1.0))


def test_the_band_never_closes_at_the_operating_score() -> None:
    # Prepare: precision steps from 0.2 (b7 = [0.35, 0.40)) to 0.8 (b8 = [0.40, 0.45))
    tp, fp = _bins(b2=(0, 30), b7=(2, 8), b8=(16, 4))

    # Execute
    calibration = calibrate_scores(tp, fp, references=20, frames=5)

    # Assert: F1 from 0.40 is 2*16/(20+20) = 0.8, from 0.35 2*18/(30+20) = 0.72; no bin's
    # error reaches 0.3 (b7: a miss 20% of the time, b8: a false box 20%), so the band is
    # the bin on either side of the decision instead of empty
    assert calibration is not None
    assert calibration.operating_score == pytest.approx(0.4)
    assert all(calibration.error_probability(s) < 0.3 for s in (0.12, 0.37, 0.42))
    assert (calibration.uncertain_low, calibration.uncertain_high) == pytest.approx((0.35, 0.45))
    assert calibration.uncertain(0.36) and calibration.uncertain(0.44)
    assert not calibration.uncertain(0.3) and not calibration.uncertain(0.45)


def test_too_little_evidence_gives_no_calibration() -> None:
    tp, fp = _bins(b10=(9, 30))  # 9 true positives < 10
    assert calibrate_scores(tp, fp, references=9, frames=3) is None
    tp, fp = _bins(b10=(12, 0))  # 12 boxes < 30
    assert calibrate_scores(tp, fp, references=12, frames=3) is None


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="equal"):
        calibrate_scores([1, 2], [1], references=0, frames=0)
    with pytest.raises(ValueError, match="negative"):
        calibrate_scores([1, -2], [1, 1], references=0, frames=0)


# --- the node counts, the server sums ---------------------------------------------------


def _example(boxes: list[list[float]], ignore: list[list[float]] = ()) -> DetectorExample:  # type: ignore[assignment]
    return DetectorExample(
        frame_id=1,
        path=Path("unused.jpg"),
        width=WIDTH,
        height=HEIGHT,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        weights=np.ones(len(boxes), np.float32),
        ignore=np.asarray(ignore, np.float32).reshape(-1, 4),
        background=True,
        source="cloud",
    )


def test_the_node_counts_true_and_false_positives_per_score_bin() -> None:
    person_a, person_b = [10, 10, 60, 130], [200, 50, 240, 150]
    crowd = [400, 300, 450, 400]
    example = _example([person_a, person_b], ignore=[crowd])
    found = FrameDetections(
        np.asarray(
            [
                person_a,  # 0.92: true
                [12, 12, 62, 128],  # 0.41: a duplicate of person a (taken): false
                crowd,  # 0.33: on a crowd region: neither
                [500, 10, 560, 90],  # 0.31: nothing there: false
                person_b,  # 0.07: true (low, but right)
            ],
            np.float32,
        ),
        np.array([0.92, 0.41, 0.33, 0.31, 0.07], np.float32),
    )
    counts = score_bin_counts(
        [example, _example([])], [found, FrameDetections(np.zeros((0, 4)), np.zeros(0))]
    )
    expected_tp, expected_fp = _bins(b18=(1, 0), b8=(0, 1), b6=(0, 1), b1=(1, 0))
    assert counts.true_positives == expected_tp
    assert counts.false_positives == expected_fp
    assert (counts.references, counts.frames) == (2, 2)
    assert counts.metrics() == {TP_BINS_KEY: expected_tp, FP_BINS_KEY: expected_fp}


def test_the_server_sums_the_nodes_counts_into_one_calibration() -> None:
    half_tp = [t // 2 for t in KNOWN_TP]
    half_fp = [f // 2 for f in KNOWN_FP]
    rest_tp = [t - h for t, h in zip(KNOWN_TP, half_tp, strict=True)]
    rest_fp = [f - h for f, h in zip(KNOWN_FP, half_fp, strict=True)]
    replies = [
        {TP_BINS_KEY: half_tp, FP_BINS_KEY: half_fp, "eval-people": 30.0, "eval-frames": 4.0},
        {TP_BINS_KEY: rest_tp, FP_BINS_KEY: rest_fp, "eval-people": 40.0, "eval-frames": 6.0},
        {"eval_map50": 0.5},  # a node without counts (an older fedge) is left out
    ]
    calibration = calibration_from_metrics(replies)
    assert calibration is not None
    assert list(calibration.true_positives) == KNOWN_TP
    assert list(calibration.false_positives) == KNOWN_FP
    assert (calibration.references, calibration.frames, calibration.nodes) == (70, 10, 2)
    assert calibration == calibrate_scores(KNOWN_TP, KNOWN_FP, references=70, frames=10, nodes=2)
    assert calibration_from_metrics(replies[2:]) is None
    assert calibration_from_metrics([]) is None


# --- the artifact -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> bytes:
    return tiny_person_ssd(BOX, score=TINY_SCORE)


def _with_calibration(artifact: ModelArtifact, calibration: ScoreCalibration) -> ModelArtifact:
    manifest = dataclasses.replace(artifact.manifest, calibration=calibration)
    return ModelArtifact(artifact.model, manifest)


def test_an_artifact_keeps_its_calibration_and_one_without_loads_with_none(
    tmp_path: Path, tiny_model: bytes
) -> None:
    calibration = calibrate_scores(KNOWN_TP, KNOWN_FP, references=70, frames=10, nodes=2)
    assert calibration is not None
    _, with_path = write_artifact(
        tmp_path, _with_calibration(tiny_artifact(tiny_model, 2), calibration)
    )
    _, without_path = write_artifact(tmp_path, tiny_artifact(tiny_model, 1))

    loaded = read_manifest(with_path)
    assert loaded.calibration is not None
    assert loaded.calibration.true_positives == calibration.true_positives
    assert loaded.calibration.operating_score == calibration.operating_score
    assert (loaded.calibration.uncertain_low, loaded.calibration.uncertain_high) == (0.3, 0.5)
    np.testing.assert_allclose(loaded.calibration.precision, calibration.precision, atol=1e-4)
    assert read_manifest(without_path).calibration is None
    # an artifact written before the field existed has no "calibration" key at all
    old = json.loads(without_path.read_text())
    del old["calibration"]
    without_path.write_text(json.dumps(old))
    assert read_manifest(without_path).calibration is None


def test_a_manifest_with_a_broken_calibration_is_a_model_error(
    tmp_path: Path, tiny_model: bytes
) -> None:
    calibration = _calibration((0.5, 0.3, 0.5))
    _, path = write_artifact(tmp_path, _with_calibration(tiny_artifact(tiny_model, 1), calibration))
    data = json.loads(path.read_text())
    data["calibration"]["uncertain_low"] = 0.8  # above uncertain_high
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="calibration band"):
        read_manifest(path)
    data["calibration"] = {"precision": [0.5]}
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="invalid model manifest"):
        read_manifest(path)


# --- the selector -------------------------------------------------------------------------


def _person(box: tuple[float, float, float, float], score: float) -> Detection:
    return Detection(box=box, label="person", score=score)


def _pose(box: tuple[float, float, float, float]) -> Person:
    return Person(landmarks=np.zeros((33, 4), np.float32), score=0.9, box=box)


def _selector(**options: object) -> HardCaseSelector:
    clock = iter(range(0, 100_000, 60))  # a minute between frames: never rate limited
    return HardCaseSelector(
        HardCasePolicy(),
        detector_labels=("person", "face"),
        clock=lambda: float(next(clock)),
        **options,  # type: ignore[arg-type]
    )


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_a_calibrated_band_flags_a_box_in_it_and_not_confident_boxes() -> None:
    selector = _selector(bands={"person": ScoreBand(0.3, 0.4)})
    confident = (10.0, 10.0, 60.0, 130.0)
    other = (200.0, 50.0, 240.0, 150.0)
    posed = [_pose(confident), _pose(other)]

    in_band = selector.decide(_frame(1), posed, [_person(confident, 0.9), _person(other, 0.35)])
    only_confident = selector.decide(
        _frame(2), posed, [_person(confident, 0.9), _person(other, 0.45)]
    )
    # a face keeps the policy's band [0.3, 0.6)
    face = selector.decide(
        _frame(3),
        posed,
        [_person(confident, 0.9), _person(other, 0.45), Detection((20, 20, 40, 40), "face", 0.5)],
    )

    assert in_band.reasons == (Reason.UNCERTAIN_SCORE,) and in_band.hard
    assert only_confident.reasons == ()  # 0.45 is in the default band but not the version's
    assert face.reasons == (Reason.UNCERTAIN_SCORE,)
    # without a band the same frame is hard: the default band [0.3, 0.6) holds 0.45
    plain = _selector()
    assert plain.decide(
        _frame(2), posed, [_person(confident, 0.9), _person(other, 0.45)]
    ).reasons == (Reason.UNCERTAIN_SCORE,)


def test_set_band_replaces_and_clears_a_band_while_decisions_run() -> None:
    selector = _selector()
    box = (10.0, 10.0, 60.0, 130.0)
    frames = [_frame(i) for i in range(4)]
    verdicts: list[tuple[str, ...]] = []

    def decide_many() -> None:
        for i in range(400):
            verdicts.append(
                selector.decide(frames[i % 4], [_pose(box)], [_person(box, 0.45)]).reasons
            )

    worker = threading.Thread(target=decide_many)
    worker.start()
    for _ in range(200):  # the follower thread's swaps, while the store thread decides
        selector.set_band("person", ScoreBand(0.5, 0.7))
        selector.set_band("person", None)
    worker.join()
    assert len(verdicts) == 400
    assert set(verdicts) <= {(), (Reason.UNCERTAIN_SCORE,)}  # one band or the other, whole

    selector.set_band("person", ScoreBand(0.5, 0.7))
    assert selector.bands == {"person": ScoreBand(0.5, 0.7)}
    assert selector.decide(frames[0], [_pose(box)], [_person(box, 0.45)]).reasons == ()
    selector.set_band("person", None)
    assert selector.bands == {}
    assert selector.decide(frames[1], [_pose(box)], [_person(box, 0.45)]).reasons == (
        Reason.UNCERTAIN_SCORE,
    )


def test_a_band_must_lie_within_zero_and_one() -> None:
    with pytest.raises(ValueError, match="score band"):
        ScoreBand(0.6, 0.3)


# --- the edge: a swap changes the band and the operating score ------------------------------


def _install(directory: Path, artifact: ModelArtifact) -> None:
    from clients.model_installer import install_model

    install_model(directory, artifact.model, artifact.manifest, smoke_frame=None)


def test_a_version_brings_its_operating_score_and_band(
    tmp_path: Path, tiny_model: bytes, model_dir: Path
) -> None:
    from clients.hot_swap import DetectorFollower, apply_version, person_detector_loader
    from clients.pose import PoseLandmarker, TopDownPoseEstimator

    _install(
        tmp_path, _with_calibration(tiny_artifact(tiny_model, 1), _calibration((0.4, 0.2, 0.4)))
    )
    follower = DetectorFollower(tmp_path, load=person_detector_loader(0.3), copies=1)
    loaded = follower.load_current()
    assert loaded is not None and loaded.operating_score == pytest.approx(0.4)
    assert loaded.band == ScoreBand(0.2, 0.4)
    # the detector keeps boxes down to the band's bottom, below the agent's floor of 0.3
    assert loaded.detectors[0].spec.score_threshold == pytest.approx(0.2)
    estimator = TopDownPoseEstimator(
        PoseLandmarker.from_cache(model_dir, num_threads=1), loaded.detectors[0]
    )
    selector = _selector()

    apply_version(loaded, [estimator], selector)

    assert estimator.min_box_score == pytest.approx(0.4)
    assert selector.bands == {"person": ScoreBand(0.2, 0.4)}


def test_swapping_in_a_calibrated_version_changes_the_agents_band(
    tmp_path: Path, tiny_model: bytes, model_dir: Path
) -> None:
    from clients.capture import Capture, CaptureConfig
    from clients.hot_swap import DetectorFollower, person_detector_loader, swap_into
    from clients.pipeline import Pipeline
    from clients.pose import PoseLandmarker, TopDownPoseEstimator

    # Prepare: v1 (no calibration: band [0.3, 0.6) holds the box's 0.45) is serving
    _install(tmp_path, tiny_artifact(tiny_model, 1))
    follower = DetectorFollower(tmp_path, load=person_detector_loader(0.3), copies=1)
    loaded = follower.load_current()
    assert loaded is not None and loaded.operating_score == pytest.approx(0.5)
    estimators = [
        TopDownPoseEstimator(
            PoseLandmarker.from_cache(model_dir, num_threads=1), loaded.detectors[0], max_persons=1
        )
    ]
    selector = HardCaseSelector(HardCasePolicy(), detector_labels=("person",))
    capture = Capture(CLIP, CaptureConfig(size=(WIDTH, HEIGHT), max_frames=30))
    results = []

    # Execute: at frame 5 v2 arrives, the same box but calibrated: operating 0.4, band [0.3, 0.4)
    with Pipeline(
        capture, pose=estimators, selector=selector, model_version=follower.version
    ) as pipeline:
        follower.on_swap = swap_into(pipeline, estimators, selector=selector)
        for output in pipeline:
            results.append(output.result)
            if output.result.frame == 5:
                v2 = _with_calibration(tiny_artifact(tiny_model, 2), _calibration((0.4, 0.3, 0.4)))
                _install(tmp_path, v2)
                assert follower.poll() is not None

    # Assert: v1's frames are uncertain, v2's are not, and the switch is at one frame
    versions = [r.model_version for r in results]
    uncertain = [Reason.UNCERTAIN_SCORE in r.hard_reasons for r in results]
    assert [r.frame for r in results] == list(range(30))
    assert versions[0] == "person-detector-v1" and versions[-1] == "person-detector-v2"
    assert all(uncertain[:6])
    assert not any(uncertain[-10:])
    assert selector.bands == {"person": ScoreBand(0.3, 0.4)}
