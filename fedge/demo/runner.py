"""``fedge demo``: the edge/cloud loop on one machine, round by round.

1. The source (a video or a folder of images) is read once at ``--size`` and cut into
   sites, stretches and held-out frames (``fedge.demo.plan``).
2. ``fedge cloud`` starts on loopback; the held-out frames are labelled by the same
   teacher for evaluation only (``fedge.demo.evaluation``).
3. One edge agent per site (``fedge.demo.site_agent``: whole-frame BlazePose in cold
   start, then top-down pose on the installed detector, BlazeFace, hard cases, frame
   store, uploader in ``--privacy`` mode) and one ``flower-supernode`` per site on that
   site's store, under one ``flower-superlink``.
4. Round ``r`` = 0..R: every site processes stretch ``r`` with the model it runs
   (hard-case rate measured on frames no model has seen), uploads its hard cases and
   stores the cloud's labels; the model each site runs is scored on its held-out
   frames; a line goes to ``DIR/rounds.jsonl``. Then (r < R) one Flower round of the
   ``person-detector`` task trains on the stores, the server exports int8 TFLite and
   sends it to every node, each SuperNode verifies and installs it, and each running
   agent swaps it in live.
5. ``DIR/report.md`` with plots (``fedge.demo.report``).

Every process it starts is stopped at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clients.capture import Capture, CaptureConfig
from clients.hard_cases import HardCasePolicy
from clients.model_installer import read_pointer
from export.artifact import DEFAULT_NAME, artifact_paths
from fedge.core.errors import ConfigError, FedgeError
from fedge.demo.evaluation import (
    HeldOut,
    ModelScore,
    label_held_out,
    pose_detect,
    read_frames,
    score_detect,
    score_installed,
)
from fedge.demo.plan import FINAL_STRETCH, DemoPlan, plan_sites
from fedge.demo.processes import ProcessGroup
from fedge.demo.services import DemoFederation, check_cloud, start_cloud
from fedge.demo.site_agent import SiteAgent, StageReport
from fedge.demo.staged_source import StagedFrame

__all__ = ["ROUND_KEYS", "DemoOptions", "DemoResult", "hard_case_policy", "run_demo"]

ROUND_KEYS = (
    "round",
    "model_version",
    "map50",
    "map50_mean",
    "persons_per_frame",
    "hard_case_rate",
    "upload_share",
    "bytes_up",
    "bytes_all_frames",
    "bytes_down",
    "model_bytes",
    "edge_fps",
    "edge_latency_ms",
)
"""Keys every line of ``rounds.jsonl`` has (more keys may follow)."""

JPEG_QUALITY = 90  # the frames' JPEGs, as the node's frame store keeps them


@dataclass
class DemoOptions:
    """Everything ``fedge demo`` takes (see ``fedge demo --help``)."""

    source: Path
    out: Path
    sites: int = 3
    rounds: int = 3
    privacy: str = "crops"
    fusion: str = "mean"
    size: tuple[int, int] | None = (640, 480)
    local_epochs: int = 15
    warm_start: bool = False
    schedule: str = "auto"
    batch_size: int = 4
    learning_rate: float = 0.01
    lr_decay: float = 0.5
    held_out_share: float = 0.2
    cold_start_share: float = 0.4
    final_frames: int = FINAL_STRETCH
    hard_per_minute: float = 60.0
    cold_start_per_minute: float = 600.0
    dedup_window_s: float = 300.0
    dedup_distance: int = 0
    track_iou: float = 0.3
    track_confirm: bool = True
    track_doubt: int = 3
    ask_labels: tuple[str, ...] = ("person",)  # (): every label
    place_iou: float = 0.5
    place_change: float = 8.0
    warm_worker: bool = True
    max_persons: int = 4
    seed: int = 0
    model_dir: str | None = None
    cloud: str | None = None  # a running `fedge cloud` (plain gRPC); None: start one
    app_dir: Path = field(default_factory=lambda: Path.cwd())
    round_timeout_s: float = 900.0
    stage_timeout_s: float = 300.0

    @property
    def cyclic(self) -> bool:
        """Whether the Flower rounds train the sites one after another (``--schedule``)."""
        from fedge.core.run_config import RunConfig

        return RunConfig(
            task="person-detector",
            train_schedule=self.schedule,
            detector_warm_start=self.warm_start,
        ).cyclic


@dataclass
class DemoResult:
    """What the demo wrote and measured."""

    out: Path
    rounds: list[dict[str, Any]]
    plan: DemoPlan
    seconds: float = 0.0


Progress = Callable[[str, float], None]
"""``(stage description, fraction of the whole run done)``."""


def hard_case_policy(options: DemoOptions) -> HardCasePolicy:
    """The hard-case policy the demo's site agents select with under ``options``."""
    policy = HardCasePolicy(
        max_per_minute=options.hard_per_minute,
        cold_start_per_minute=options.cold_start_per_minute,
        dedup_window_s=options.dedup_window_s,
        dedup_max_distance=options.dedup_distance,
        track_min_iou=options.track_iou,
        track_confirm=options.track_confirm,
        track_min_doubt=options.track_doubt,
        ask_labels=options.ask_labels,
        place_iou=options.place_iou,
        place_max_change=options.place_change,
    )
    checks = tuple(
        dataclasses.replace(c, max_posed=options.max_persons) if c.label == "person" else c
        for c in policy.disagreement
    )
    return dataclasses.replace(policy, disagreement=checks)


def check_options(options: DemoOptions) -> None:
    """Refuse bad options before anything starts (``ConfigError``: exit 2)."""
    from fedge.commands.edge_uplink import PRIVACY_CHOICES
    from server.cloud.fusion import FUSION_METHODS

    if options.privacy not in PRIVACY_CHOICES:
        raise ConfigError(f"--privacy must be one of {', '.join(PRIVACY_CHOICES)}")
    if options.privacy == "none":
        raise ConfigError(
            "--privacy none sends no hard case, so the cloud labels nothing and the detector "
            "has nothing to learn from: use landmarks, crops or frames"
        )
    if options.fusion not in FUSION_METHODS:
        raise ConfigError(f"--fusion must be one of {', '.join(FUSION_METHODS)}")
    if not 0.0 < options.lr_decay <= 1.0:
        raise ConfigError(f"--lr-decay must lie in (0, 1], got {options.lr_decay}")
    if options.dedup_distance < 0:
        raise ConfigError(f"--dedup-distance must be 0 or more, got {options.dedup_distance}")
    for name in ("track_iou", "place_iou"):
        value = getattr(options, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    if not 0.0 <= options.place_change <= 255.0:
        raise ConfigError(f"--place-change must lie in [0, 255], got {options.place_change}")
    for name in ("sites", "rounds", "local_epochs", "batch_size", "max_persons", "track_doubt"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be 1 or more")
    for name in ("hard_per_minute", "cold_start_per_minute", "dedup_window_s"):
        value = getattr(options, name)
        if not np.isfinite(value) or value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    options.cyclic  # noqa: B018 - --schedule cyclic with --warm-start raises ConfigError here
    if options.out.exists() and any(options.out.iterdir()):
        raise ConfigError(f"--out {options.out} is not empty: pick a new folder")
    if not (options.app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{options.app_dir} holds no Flower App (pyproject.toml): --app-dir")


def read_source(options: DemoOptions, folder: Path) -> tuple[dict[int, Path], float]:
    """Decode the source once into JPEGs ``folder/<index>.jpg``; return them and the fps."""
    capture = Capture(options.source, CaptureConfig(size=options.size))
    capture.start()  # a source that cannot be opened fails here, before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[int, Path] = {}
    with capture:
        fps = capture.fps or 10.0
        for frame in capture:
            path = folder / f"{frame.index:06d}.jpg"
            cv2.imwrite(str(path), frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            paths[frame.index] = path
    if capture.stats.error:
        raise FedgeError(f"{options.source}: {capture.stats.error}")
    if not paths:
        raise FedgeError(f"no frame could be decoded from {options.source}")
    return paths, fps


def _run_config(options: DemoOptions, out: Path) -> dict[str, Any]:
    return {
        "task": "person-detector",
        "strategy": "fedavg",
        "min-available-nodes": options.sites,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,  # the nodes' held-out score bins calibrate each version
        "local-epochs": options.local_epochs,
        "detector-warm-start": options.warm_start,
        "train-schedule": options.schedule,
        "detector-batch-size": options.batch_size,
        "detector-learning-rate": options.learning_rate,
        "detector-lr-decay": options.lr_decay,
        "detector-int8-eval-every": 0,  # the demo scores the installed int8 model itself
        "detector-export": "int8",
        # one thread: the same figures on every run of this CPU. (Two made a demo store's
        # 10 epochs alone 8% faster, but the demo's first round no faster, and changed its
        # figures, so sensitive is training to summation order: round 1's mAP 0.08, not 0.27)
        "cpu-threads": 1,
        "run-name": "demo",
        "seed": options.seed,
        "output-dir": str(out),
    }


def _installed_score(agent: SiteAgent, held: HeldOut) -> tuple[ModelScore, int] | None:
    """The site's installed model scored on its held-out frames, and the model's bytes;
    ``None`` when no version is installed yet (the site still runs BlazePose alone)."""
    pointer = read_pointer(agent.store_dir / "detector", DEFAULT_NAME)
    if pointer is None:
        return None
    folder = agent.store_dir / "detector" / DEFAULT_NAME / pointer.dir
    model, manifest = artifact_paths(folder, DEFAULT_NAME, pointer.version)
    return score_installed(model, manifest, held), model.stat().st_size


def _round_line(
    server_round: int,
    plan: DemoPlan,
    reports: list[StageReport],
    scores: list[ModelScore],
    held: list[HeldOut],
    all_frames_bytes: list[int],
    flower: dict[str, Any] | None,
    model_bytes: int,
    seconds: float,
) -> dict[str, Any]:
    names = [s.name for s in plan.sites]
    frames = sum(r.frames for r in reports)
    maps = {n: s.map50 for n, s in zip(names, scores, strict=True)}
    installed = len((flower or {}).get("model", {}).get("installed", {})) if flower else 0
    line: dict[str, Any] = {
        "round": server_round,
        "model_version": reports[0].model_version or "none (BlazePose, cold start)",
        "map50": maps,
        "map50_mean": float(np.mean(list(maps.values()))),
        "persons_per_frame": {
            "edge": float(np.mean([s.persons_per_frame for s in scores])),
            "teacher": float(np.mean([h.teacher_persons for h in held])),
            "per_site": {n: s.persons_per_frame for n, s in zip(names, scores, strict=True)},
        },
        "hard_case_rate": sum(r.hard_frames for r in reports) / max(1, frames),
        "hard_case_rate_per_site": {
            n: r.hard_frames / max(1, r.frames) for n, r in zip(names, reports, strict=True)
        },
        "frames_per_site": {n: r.frames for n, r in zip(names, reports, strict=True)},
        "upload_share": sum(r.sent for r in reports) / max(1, frames),
        "upload_share_per_site": {
            n: r.sent / max(1, r.frames) for n, r in zip(names, reports, strict=True)
        },
        "bytes_up": {n: r.bytes_up for n, r in zip(names, reports, strict=True)},
        "bytes_all_frames": dict(zip(names, all_frames_bytes, strict=True)),
        "bytes_down": model_bytes * installed,
        "model_bytes": model_bytes,
        "edge_fps": float(np.mean([r.fps for r in reports])),
        "edge_latency_ms": float(np.mean([r.latency_ms for r in reports])),
        "frames": frames,
        "labelled": sum(r.labelled for r in reports),
        "reasons": _sum_reasons(reports),
        "held_back": _sum_held_back(reports),
        "already_asked": sum(r.already_asked for r in reports),
        "already_confirmed": sum(r.already_confirmed for r in reports),
        "doubt_pending": sum(r.doubt_pending for r in reports),
        **_box_uncertainty(reports),
        "uncertainty_band": _band(reports),
        "seconds": seconds,
    }
    if flower is not None:
        line["flower"] = {
            "seconds": flower.get("flwr_run_seconds"),
            "round_seconds": flower.get("seconds"),
            "weights_bytes_down": flower.get("bytes_sent"),
            "weights_bytes_up": flower.get("bytes_received"),
            "installed_on": installed,
        }
    return line


def _sum_reasons(reports: list[StageReport]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for reason, count in report.reasons.items():
            total[reason] = total.get(reason, 0) + count
    return total


def _sum_held_back(reports: list[StageReport]) -> dict[str, int]:
    """Hard frames held back, by why (``duplicate``: a look-alike of a recent hard case;
    ``rate_limited``: the hard-case rate limit was spent), over the sites."""
    total = {"duplicate": 0, "rate_limited": 0}
    for report in reports:
        for kind, count in report.held_back.items():
            total[kind] = total.get(kind, 0) + count
    return total


def _band(reports: list[StageReport]) -> list[float] | None:
    """The running version's person uncertainty band ``[low, high]`` (``None`` in cold
    start or for an uncalibrated version; the sites run one version, the first says)."""
    band = next((r.band for r in reports if r.band is not None), None)
    return None if band is None else [float(band[0]), float(band[1])]


def _box_uncertainty(reports: list[StageReport]) -> dict[str, float | None]:
    """Per processed frame, over the sites running a calibrated version: person boxes in
    its uncertainty band, and box decisions its own calibration expects to be wrong
    (``None`` when no site ran one: cold start or an uncalibrated version)."""
    calibrated = [r for r in reports if r.calibrated]
    frames = sum(r.frames for r in calibrated)
    if not calibrated or not frames:
        return {"uncertain_boxes_per_frame": None, "expected_box_errors_per_frame": None}
    return {
        "uncertain_boxes_per_frame": sum(r.uncertain_boxes for r in calibrated) / frames,
        "expected_box_errors_per_frame": sum(r.expected_box_errors for r in calibrated) / frames,
    }


def run_demo(options: DemoOptions, progress: Progress | None = None) -> DemoResult:
    """Run the demo (module docstring); raise ``FedgeError`` with a one-line cause."""
    from server.cloud.teacher import build_teacher

    check_options(options)
    if options.cloud is not None:
        check_cloud(options.cloud)  # before anything starts
    began = time.perf_counter()
    say = progress or (lambda text, done: None)
    out = options.out.resolve()
    say("reading the source", 0.0)
    paths, fps = read_source(options, out / "frames")
    plan = plan_sites(
        len(paths),
        options.sites,
        options.rounds,
        options.held_out_share,
        options.cold_start_share,
        options.final_frames,
    )
    (out / "plan.json").write_text(json.dumps(dataclasses.asdict(plan), indent=1))
    epoch = time.time()
    keep = [s.stretches[r][len(s.stretches[r]) // 2] for s in plan.sites[:1] for r in (0,)]
    keep += [plan.sites[0].stretches[-1][len(plan.sites[0].stretches[-1]) // 2]]
    steps = 2 + 2 * (options.rounds + 1)
    rounds: list[dict[str, Any]] = []
    agents: list[SiteAgent] = []
    with ProcessGroup(out / "logs") as group:
        try:
            say("starting fedge cloud", 1 / steps)
            cloud = options.cloud or start_cloud(
                group, out, fusion=options.fusion, model_dir=options.model_dir
            )
            teacher = build_teacher(model_dir=_model_path(options.model_dir))
            from fedge.core.run_config import RunConfig

            floor = RunConfig.from_mapping({"task": "person-detector"}).detector_label_min_score
            held: list[HeldOut] = []
            for site in plan.sites:
                say(f"teacher labels {site.name}'s held-out frames (evaluation only)", 1 / steps)
                frames = read_frames([(i, paths[i]) for i in site.held_out])
                held.append(
                    label_held_out(
                        site.name, frames, out / "evaluation" / site.name, teacher, floor,
                        epoch, fps,
                    )
                )  # fmt: skip
            policy = hard_case_policy(options)
            for site in plan.sites:
                agent = SiteAgent(
                    site.name,
                    out / "sites" / site.name,
                    cloud=cloud,
                    privacy=options.privacy,
                    policy=policy,
                    model_dir=options.model_dir,
                    fps=fps,
                    epoch=epoch,
                    max_persons=options.max_persons,
                    keep_frames=keep if site.site == 0 else (),
                )
                agents.append(agent.start())
            federation = DemoFederation(
                group,
                out / "flower",
                options.app_dir.resolve(),
                [a.store_dir for a in agents],
                _run_config(options, out / "server"),
                warm_worker=options.warm_worker,
            )
            federation.start()
            pose = None
            model_bytes = 0
            flower: dict[str, Any] | None = None
            for server_round in range(options.rounds + 1):
                started = time.perf_counter()
                done = (2 + 2 * server_round) / steps
                say(f"round {server_round}: edge agents on their next stretch", done)
                stretches = [
                    [StagedFrame(i, paths[i]) for i in site.stretches[server_round]]
                    for site in plan.sites
                ]
                with ThreadPoolExecutor(len(agents)) as pool:
                    reports = list(
                        pool.map(
                            lambda pair: pair[0].run_stage(pair[1], options.stage_timeout_s),
                            zip(agents, stretches, strict=True),
                        )
                    )
                group.check()
                say(f"round {server_round}: scoring each site's model on held-out frames", done)
                # None: no version installed yet (round 0, or no round has trained yet)
                measured = [
                    _installed_score(a, h) if server_round else None
                    for a, h in zip(agents, held, strict=True)
                ]
                if pose is None and None in measured:
                    from clients.pose import create_pose_estimator

                    pose = create_pose_estimator("litert", options.model_dir, num_threads=1)
                scores = [
                    m[0] if m is not None else score_detect(pose_detect(pose), h)
                    for m, h in zip(measured, held, strict=True)
                ]
                model_bytes = next((m[1] for m in measured if m is not None), 0)
                all_bytes = [sum(paths[f.index].stat().st_size for f in s) for s in stretches]
                line = _round_line(
                    server_round, plan, reports, scores, held, all_bytes, flower,
                    model_bytes if server_round else 0, time.perf_counter() - started,
                )  # fmt: skip
                rounds.append(line)
                with open(out / "rounds.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
                say(_summary(line), done)
                if server_round == options.rounds:
                    break
                say(f"round {server_round + 1}: Flower training on the sites' stores", done)
                flower = federation.run_round(server_round + 1, options.round_timeout_s)
                if flower.get("aggregated", True):
                    for agent in agents:
                        agent.wait_for_version(server_round + 1, timeout=120.0)
                else:  # every node failed: no version was made; the sites keep theirs
                    say(
                        f"round {server_round + 1}: no site trained (see logs/supernode-*.log): "
                        "the sites keep the model they run",
                        done,
                    )
            for site, agent in zip(plan.sites, agents, strict=True):
                site_frames = agent.kept
                for index, image in site_frames.items():
                    cv2.imwrite(str(out / f"strip-{site.name}-{index:06d}.jpg"), image)
        finally:
            for agent in agents:
                agent.close()
    from fedge.demo.report import write_report

    result = DemoResult(out, rounds, plan, time.perf_counter() - began)
    write_report(result, options)
    say("done", 1.0)
    return result


def _summary(line: dict[str, Any]) -> str:
    return (
        f"round {line['round']}: mAP@0.5 {line['map50_mean']:.3f}, persons/frame "
        f"{line['persons_per_frame']['edge']:.2f} (teacher "
        f"{line['persons_per_frame']['teacher']:.2f}), hard-case rate "
        f"{100 * line['hard_case_rate']:.0f}%, uploaded {100 * line['upload_share']:.0f}%, "
        f"{line['edge_fps']:.1f} FPS"
    )


def _model_path(model_dir: str | None) -> Path | None:
    return Path(model_dir) if model_dir else None
