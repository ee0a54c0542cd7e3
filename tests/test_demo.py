"""``fedge demo``: the whole loop on real processes, its outputs, and its refusals.

The short demo runs the real thing on 60 frames of the sample clip: ``fedge cloud``, a
``flower-superlink`` and one ``flower-supernode`` per site, the edge agents, two Flower
rounds of ``person-detector`` with int8 export, install and live swap. Afterwards no
process it started may be left. Bad input ends with a one-line error and exit 2 before
anything starts.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
from ports import processes_mentioning, start_as_background_job

from export.score_calibration import calibrate_scores
from fedge.core.records import Detection, FrameResult
from fedge.demo.plan import plan_sites
from fedge.demo.report import PLOTS
from fedge.demo.runner import ROUND_KEYS
from fedge.demo.site_agent import StageReport, tally_results

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"


def _frames_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    capture = cv2.VideoCapture(str(CLIP))
    for index in range(count):
        ok, frame = capture.read()
        assert ok
        cv2.imwrite(str(folder / f"{index:04d}.jpg"), frame)
    capture.release()
    return folder


def _demo(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "demo", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("fedge demo: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- the plan -----------------------------------------------------------------------------


def test_sites_are_disjoint_time_segments_with_held_out_frames_never_streamed() -> None:
    plan = plan_sites(240, sites=3, rounds=3)
    seen: set[int] = set()
    for site in plan.sites:
        streamed = [i for stretch in site.stretches for i in stretch]
        assert len(site.stretches) == 4
        assert not set(streamed) & set(site.held_out)
        assert min(streamed + list(site.held_out)) >= site.start
        assert max(streamed + list(site.held_out)) < site.stop
        assert max(streamed) < min(site.held_out)  # held out after the streamed frames
        assert [len(s) for s in site.stretches] == [26, 12, 12, 20]  # the last from held-out
        assert len(site.held_out) == 10
        assert streamed == list(range(site.start, site.start + 70))  # no gap, no overlap
        assert not seen & (set(streamed) | set(site.held_out))
        seen |= set(streamed) | set(site.held_out)


@pytest.mark.parametrize(
    ("frames", "rounds", "final", "sizes", "held"),
    [
        (240, 3, 20, [26, 12, 12, 20], 10),  # the bundled clip: one question is 5%
        (240, 3, 0, [26, 12, 12, 14], 16),  # no floor: the division's rest goes last
        (240, 5, 20, [26, 7, 7, 7, 7, 18], 8),  # held-out frames keep half of theirs
        (240, 1, 20, [26, 38], 16),  # already long enough
        (795, 10, 20, [85] + [12] * 9 + [20], 52),  # vtest.avi
    ],
)
def test_the_last_stretch_borrows_held_out_frames_to_resolve_five_percent(
    frames: int, rounds: int, final: int, sizes: list[int], held: int
) -> None:
    plan = plan_sites(frames, sites=3, rounds=rounds, final_frames=final)
    equal = plan_sites(frames, sites=3, rounds=rounds, final_frames=0)
    for site, unlent in zip(plan.sites, equal.sites, strict=True):
        assert [len(s) for s in site.stretches] == sizes
        assert len(site.held_out) == held
        assert site.stretches[:-1] == unlent.stretches[:-1]  # what the sites train on
        assert set(site.held_out) <= set(unlent.held_out)  # held out stays the segment's end
        assert sum(sizes) + held == frames // 3  # every frame used once


# --- bad input: exit 2, one line, nothing started -----------------------------------------


def test_a_source_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    done = _demo("--source", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "missing.mp4" in _one_line_error(done.stderr)
    assert not (tmp_path / "out").exists()


def test_more_sites_than_the_source_allows_is_refused(tmp_path: Path) -> None:
    source = _frames_folder(tmp_path / "frames", 20)
    out = tmp_path / "out"
    done = _demo("--source", str(source), "--sites", "3", "--rounds", "2", "--out", str(out))
    assert done.returncode == 2
    message = _one_line_error(done.stderr)
    assert "20 frames" in message and "3 sites" in message
    assert not (out / "logs").exists()  # no process was started
    assert processes_mentioning(out) == []


def test_a_negative_final_stretch_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _demo("--final-frames", "-1", "--out", str(out))
    assert done.returncode == 2
    assert "--final-frames must be 0 or more" in _one_line_error(done.stderr)
    assert not (out / "logs").exists()  # no process was started
    assert processes_mentioning(out) == []


def test_a_cyclic_schedule_with_a_warm_start_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _demo("--schedule", "cyclic", "--warm-start", "--out", str(out))
    assert done.returncode == 2
    assert "detector-warm-start" in _one_line_error(done.stderr)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--track-iou", "-0.1", "--track-iou must lie in [0, 1], got -0.1"),
        ("--track-doubt", "0", "--track-doubt must be 1 or more"),
        ("--place-iou", "2", "--place-iou must lie in [0, 1], got 2.0"),
        ("--place-change", "300", "--place-change must lie in [0, 255], got 300.0"),
        ("--ask-labels", " , ", "--ask-labels needs a label or 'all'"),
    ],
)
def test_a_bad_selection_flag_is_refused(tmp_path: Path, flag: str, value: str, error: str) -> None:
    out = tmp_path / "out"
    done = _demo(flag, value, "--out", str(out))
    assert done.returncode == 2
    assert error in _one_line_error(done.stderr)
    assert not out.exists()


def test_an_unreachable_cloud_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from fedge.core.ports import free_port

    out = tmp_path / "out"
    done = _demo("--cloud", f"127.0.0.1:{free_port()}", "--out", str(out))
    assert done.returncode == 2
    assert "unreachable" in _one_line_error(done.stderr)
    assert not out.exists()


# --- what a stage's frames add up to -------------------------------------------------------


def _person(score: float) -> Detection:
    return Detection((10.0, 10.0, 50.0, 120.0), "person", score)


def test_a_stage_counts_hard_frames_what_held_them_back_and_how_unsure_the_boxes_were() -> None:
    # Prepare: a calibration operating from 0.5 with the band [0.3, 0.5) (as in
    # test_calibrated_uncertainty: bins 0.30-0.40 pooled to 35% precise, 0.50-0.55 90%)
    tp, fp = [0] * 20, [0] * 20
    for k, (t, f) in {2: (0, 40), 6: (4, 6), 7: (3, 7), 10: (18, 2), 16: (30, 0)}.items():
        tp[k], fp[k] = t, f
    calibration = calibrate_scores(tp, fp, references=70, frames=10)
    assert calibration is not None and calibration.operating_score == 0.5
    face = Detection((20.0, 20.0, 30.0, 30.0), "face", 0.4)  # not a person box: not counted
    results = [
        FrameResult(0, 0.0, "s", detections=[_person(0.31), _person(0.85), face], hard=True,
                    hard_reasons=["uncertain_score"], model_version="v3"),
        FrameResult(1, 0.1, "s", detections=[_person(0.32), _person(0.52)],
                    hard_reasons=["uncertain_score", "suppressed:rate_limited"]),
        FrameResult(2, 0.2, "s", detections=[_person(0.36)],
                    hard_reasons=["uncertain_score", "suppressed:duplicate"]),
        FrameResult(3, 0.3, "s", detections=[_person(0.9)]),
    ]  # fmt: skip
    report = StageReport(frames=4, calibrated=True)

    # Execute
    tally_results(report, results, calibration.operating_score, calibration)

    # Assert: 3 hard frames, 1 flagged, 1 held back by each suppression
    assert (report.hard_frames, report.flagged) == (3, 1)
    assert report.held_back == {"rate_limited": 1, "duplicate": 1}
    assert report.reasons == {"uncertain_score": 3}
    assert report.boxes == 3  # 0.85, 0.52, 0.9 from the operating score on
    assert report.uncertain_boxes == 3  # 0.31, 0.32, 0.36 in [0.3, 0.5)
    # dropped boxes at 0.31, 0.32, 0.36: persons 35% of the time each; kept 0.52: 10% false
    assert report.expected_box_errors == pytest.approx(3 * 0.35 + 0.1)
    assert report.model_version == "v3"


def test_a_stage_without_a_calibration_counts_no_box_uncertainty() -> None:
    report = StageReport(frames=1)
    tally_results(report, [FrameResult(0, 0.0, "s", detections=[_person(0.4)])], 0.5, None)
    assert (report.uncertain_boxes, report.expected_box_errors, report.boxes) == (0, 0.0, 0)


# --- the loop on real processes -----------------------------------------------------------


@pytest.mark.slow
def test_a_short_demo_writes_every_round_the_report_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    # Prepare: 60 frames, 2 sites x (stretches of 10, 7 and 10 frames + 3 held out)
    source = _frames_folder(tmp_path / "frames", 60)
    out = tmp_path / "out"

    # Execute
    done = _demo(
        "--source", str(source), "--sites", "2", "--rounds", "2", "--local-epochs", "1",
        "--out", str(out),
    )  # fmt: skip

    # Assert: one finite record per round with every key, the report, the plots
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert set(ROUND_KEYS) <= set(line)
        for key in ("map50_mean", "hard_case_rate", "upload_share", "edge_fps"):
            assert math.isfinite(line[key]), (key, line[key])
        assert set(line["map50"]) == {"site-0", "site-1"}
        assert all(math.isfinite(v) for v in line["persons_per_frame"]["per_site"].values())
        assert line["frames"] == 2 * (10, 7, 10)[line["round"]]  # the plan's stretches
        assert line["frames_per_site"] == {
            "site-0": line["frames"] // 2,
            "site-1": line["frames"] // 2,
        }
        for site, hard in line["hard_case_rate_per_site"].items():
            assert 0.0 <= line["upload_share_per_site"][site] <= hard <= 1.0  # sent ones are hard
        # every hard frame was either held back (by one suppression) or flagged, and only
        # flagged frames were sent
        held = line["held_back"]
        assert set(held) == {"duplicate", "rate_limited"} and min(held.values()) >= 0
        assert line["already_asked"] >= 0 and line["already_confirmed"] >= 0
        assert line["doubt_pending"] >= 0
        hard = round(line["hard_case_rate"] * line["frames"])
        assert sum(held.values()) + round(line["upload_share"] * line["frames"]) <= hard
        for key in ("uncertain_boxes_per_frame", "expected_box_errors_per_frame"):
            value = line[key]
            if line["round"] == 0:
                assert value is None, (key, value)  # cold start: no detector, no calibration
            else:
                assert value is None or (math.isfinite(value) and value >= 0), (key, value)
        band = line["uncertainty_band"]  # the running version's; none in cold start
        assert band is None if line["round"] == 0 else band is None or 0 <= band[0] <= band[1] <= 1
    assert lines[0]["model_version"].startswith("none")
    assert [line["model_version"] for line in lines[1:]] == [
        "person-detector-v1",
        "person-detector-v2",
    ]
    assert lines[2]["model_bytes"] > 0 and lines[2]["bytes_down"] == 2 * lines[2]["model_bytes"]
    assert lines[2]["flower"]["installed_on"] == 2
    # the Flower rounds trained the sites in turn (train-schedule auto: cyclic for the
    # detector), the first site of round 2 being the second of round 1
    flower = [json.loads(x) for x in (out / "server" / "demo" / "metrics.jsonl").open()]
    orders = [x["cyclic_order"] for x in flower]
    assert len(orders) == 2 and len(set(orders[0])) == 2 and orders[1] == orders[0][::-1]
    # where each round's time went: every stage, and each real ClientApp process's start
    for x in flower:
        stages = x["stage_seconds"]
        assert {"train", "evaluate", "export", "broadcast"} <= set(stages)
        assert sum(stages[s] for s in ("train", "evaluate")) <= x["seconds"] + 1e-6
        replies = [c[stage] for c in x["clients"] for stage in ("train", "eval") if stage in c]
        assert replies
        for reply in replies:
            assert 0.0 < reply["startup-seconds"] < stages["train"] + stages["evaluate"]
            assert 0.0 < reply["handler-seconds"] < x["seconds"]
    # each site's warm worker (clients.warm_worker) took its node's requests: round 1's
    # training was its first (a site may have had nothing to train on yet: no reply), and
    # round 2's came to the same, warm, process after round 1's training and evaluation
    assert flower[0]["clients"] and len(flower[1]["clients"]) == 2
    assert all(c["train"]["warm-worker-requests"] == 1.0 for c in flower[0]["clients"])
    assert all(c["train"]["warm-worker-requests"] >= 3.0 for c in flower[1]["clients"])
    # every hard case that left a site went through the cloud and came back as a label
    assert sum(line["labelled"] for line in lines) > 0
    report = (out / "report.md").read_text()
    assert "| 2 | person-detector-v2 |" in report
    for plot in PLOTS:
        assert (out / "plots" / plot).stat().st_size > 1000
    assert processes_mentioning(out) == []


def _interrupted_demo(
    tmp_path: Path, ready: Callable[[Path], bool], waiting_for: str, *args: str
) -> tuple[int, Path]:
    """Start a short demo as a background job, SIGINT it once ``ready(out)``; return its
    exit status and ``out``."""
    source = _frames_folder(tmp_path / "frames", 60)
    out = tmp_path / "out"
    # SIGINT ignored, as a background job of a non-interactive shell inherits it (CI runs
    # the suite that way): the demo must still stop on it
    demo = start_as_background_job(
        [sys.executable, "-m", "fedge", "demo", "--source", str(source), "--sites", "2",
         "--rounds", "2", "--out", str(out), *args],
        REPO,
    )  # fmt: skip
    try:
        # generous: under load the teacher labels the held-out frames slowly before the
        # SuperNodes start; the bound only keeps a hung demo from hanging the suite
        deadline = time.monotonic() + 1800
        while not ready(out):
            assert demo.poll() is None, demo.stderr.read() if demo.stderr else ""
            assert time.monotonic() < deadline, f"the demo never {waiting_for}"
            time.sleep(0.5)
        assert processes_mentioning(out)  # cloud, SuperLink, SuperNodes are up
        demo.send_signal(signal.SIGINT)
        return demo.wait(timeout=600), out
    finally:
        if demo.poll() is None:
            demo.kill()


@pytest.mark.slow
def test_ctrl_c_in_a_flower_round_stops_the_serverapp_too(tmp_path: Path) -> None:
    # The SuperLink starts the ServerApp through a SuperExec in a session of its own; an
    # interrupt mid-round used to leave that ServerApp running, retrying a gone SuperLink
    def serverapp_runs(out: Path) -> bool:
        return any("flwr-serverapp" in p for p in processes_mentioning(out))

    code, out = _interrupted_demo(
        tmp_path, serverapp_runs, "started a Flower round", "--local-epochs", "3"
    )
    assert code == 130
    assert processes_mentioning(out) == []


@pytest.mark.slow
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    code, out = _interrupted_demo(
        tmp_path,
        lambda out: (out / "logs" / "supernode-1.log").exists(),
        "started its SuperNodes",
    )
    assert code == 130
    assert not (out / "report.md").exists()  # stopped by the signal, not run to its end
    assert processes_mentioning(out) == []


def test_the_report_says_when_a_version_s_band_is_empty() -> None:
    from fedge.demo.report import _band_text

    assert _band_text(None) == "—"
    assert _band_text([0.25, 0.45]) == "0.25–0.45"
    assert _band_text([0.5, 0.5]) == "empty (0.5)"
