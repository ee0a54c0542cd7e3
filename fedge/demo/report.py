"""The demo's report: ``report.md`` with a table per round and PNG plots.

Plots (``DIR/plots/``): ``map_and_hard_cases.png`` (mAP@0.5 of each site's model on its
held-out frames, and the hard-case and upload rates, per round), ``persons.png``
(persons found per held-out frame: BlazePose alone in round 0, then the student, beside
the cloud teacher), ``bytes.png`` (bytes each site sent against sending every frame)
and ``strip.png`` (an annotated frame of site 0 in round 0 and in the last round).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from fedge.demo.runner import DemoOptions, DemoResult

__all__ = ["PLOTS", "write_report"]

PLOTS = ("map_and_hard_cases.png", "persons.png", "bytes.png", "strip.png")


def write_report(result: DemoResult, options: DemoOptions) -> Path:
    """Write ``report.md`` and the plots into ``result.out``; return the report's path."""
    plots = result.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _plot_map(result.rounds, plots / PLOTS[0])
    _plot_persons(result.rounds, plots / PLOTS[1])
    _plot_bytes(result.rounds, plots / PLOTS[2])
    _strip(result.out, plots / PLOTS[3])
    path = result.out / "report.md"
    path.write_text(_markdown(result, options), encoding="utf-8")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_map(rounds: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    x = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for site in rounds[0]["map50"]:
        left.plot(x, [r["map50"][site] for r in rounds], marker=".", alpha=0.5, label=site)
    left.plot(x, [r["map50_mean"] for r in rounds], marker="o", color="k", label="mean")
    left.set(xlabel="round (0: BlazePose alone)", ylabel="mAP@0.5 on held-out frames")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    right.plot(x, [100 * r["hard_case_rate"] for r in rounds], marker="o", label="hard cases")
    right.plot(x, [100 * r["upload_share"] for r in rounds], marker="s", label="uploaded")
    right.axhline(5, color="grey", linestyle=":", label="5%")
    right.set(xlabel="round", ylabel="% of the stretch's frames")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_persons(rounds: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    x = [r["round"] for r in rounds]
    fig, axis = plt.subplots(figsize=(6, 3.6))
    axis.plot(x, [r["persons_per_frame"]["edge"] for r in rounds], marker="o", label="edge")
    axis.plot(
        x, [r["persons_per_frame"]["teacher"] for r in rounds], linestyle="--", label="teacher"
    )
    axis.set(xlabel="round (0: BlazePose alone, then the student)", ylabel="persons per frame")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bytes(rounds: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    sites = list(rounds[0]["bytes_up"])
    sent = [sum(r["bytes_up"][s] for r in rounds) for s in sites]
    every = [sum(r["bytes_all_frames"][s] for r in rounds) for s in sites]
    fig, axis = plt.subplots(figsize=(6, 3.6))
    at = np.arange(len(sites))
    axis.bar(at - 0.2, [max(v, 1) for v in every], 0.4, label="every frame (JPEG)")
    axis.bar(at + 0.2, [max(v, 1) for v in sent], 0.4, label="hard cases sent")
    axis.set_yscale("log")
    axis.set_xticks(at, sites)
    axis.set(ylabel="bytes up, all rounds")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _strip(out: Path, path: Path) -> None:
    images = [cv2.imread(str(p)) for p in sorted(out.glob("strip-*.jpg"))]
    images = [i for i in images if i is not None]
    if not images:
        images = [np.zeros((240, 320, 3), np.uint8)]
    height = min(i.shape[0] for i in images)
    row = [cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), height)) for i in images]
    cv2.imwrite(str(path), cv2.hconcat(row))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _site_upload(line: dict[str, Any], site: str) -> str:
    """``site-0 5.0%``, with the site's frames and hard-case rate where the round has them
    (a hard frame the rate limit or a look-alike held back is hard and not sent)."""
    text = f"{site} {_pct(line['upload_share_per_site'][site])}"
    frames = line.get("frames_per_site", {}).get(site)
    hard = line.get("hard_case_rate_per_site", {}).get(site)
    if frames is not None and hard is not None:
        text += f" of {frames} frames (hard {_pct(hard)})"
    return text


def _per_frame(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _band_text(band: list[float] | None) -> str:
    """``0.25–0.45``, ``empty (0.5)`` or ``—`` (cold start, no calibration)."""
    if band is None:
        return "—"
    low, high = band
    return f"empty ({low:g})" if high <= low else f"{low:g}–{high:g}"


def _selection_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Why frames were hard, held back or uploaded, and how unsure the model running was."""
    lines = [
        "### Hard cases, held back and uploaded",
        "",
        "A frame is a hard case when any box on it is uncertain (for a calibrated version: "
        "a person box in its uncertainty band, where its own calibration says the node's "
        "decision is wrong with probability 0.3 or more), or pose and boxes disagree; round 0 "
        "(no detector yet) sends a cold-start sample instead. With tracking (`--track-iou`) "
        "an uncertain box of an object the cloud has already been shown (on a frame sent "
        "before) is no reason: *already asked* counts the frames that only such boxes would "
        "have made hard, and an in-band box of an object the version running was sure of on "
        "an earlier frame (a dip of a person it has found) is none either: *already "
        "confirmed* counts the frames that only such boxes (and asked ones) would have made "
        "hard; nor is an object the version has been unsure of on fewer than `--track-doubt` "
        "frames (3) yet: *doubt pending* counts the frames that only such boxes (and the "
        "above) would have made hard. A hard frame is then held back "
        "when it looks like a recent hard case or when the rate limit is spent. *In-band "
        "boxes* and *expected wrong boxes* are per processed frame, for the version running "
        "(— in cold start): the second sums, over a frame's person boxes, the chance its "
        "calibration gives that the node's keep-or-drop decision on the box is wrong (people "
        "with no box at all are not counted). *Band*: the version's uncertainty band; "
        "where it is empty, no score could make a frame hard, so that round's hard-case "
        "rate says nothing about how sure the version was.",
        "",
        "| round | band | frames | already asked | already confirmed | doubt pending | hard "
        "| held back: look-alike | held back: rate limit | uploaded | in-band boxes "
        "| expected wrong boxes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        held = r.get("held_back") or {}
        frames = r["frames"]
        lines.append(
            f"| {r['round']} | {_band_text(r.get('uncertainty_band'))} | {frames} | "
            f"{r.get('already_asked', 0)} | "
            f"{r.get('already_confirmed', 0)} | {r.get('doubt_pending', 0)} | "
            f"{round(r['hard_case_rate'] * frames)} | "
            f"{held.get('duplicate', 0)} | {held.get('rate_limited', 0)} | "
            f"{round(r['upload_share'] * frames)} | "
            f"{_per_frame(r.get('uncertain_boxes_per_frame'))} | "
            f"{_per_frame(r.get('expected_box_errors_per_frame'))} |"
        )
    return lines


def _markdown(result: DemoResult, options: DemoOptions) -> str:
    rounds = result.rounds
    first, last = rounds[1] if len(rounds) > 1 else rounds[0], rounds[-1]
    lines = [
        "# fedge demo",
        "",
        f"Source `{options.source}`: {result.plan.describe()}. Privacy `{options.privacy}`, "
        f"fusion `{options.fusion}`, {options.rounds} Flower rounds of `person-detector` "
        f"(FedAvg, {'cyclic' if options.cyclic else 'parallel'} rounds, "
        f"{options.local_epochs} local epochs, Adam {options.learning_rate:g} x "
        f"{options.lr_decay:g}^(round-1)"
        f"{', warm start' if options.warm_start else ''}), seed {options.seed}; "
        f"{result.seconds / 60:.1f} min.",
        "",
        "mAP@0.5 and persons per frame are measured on each site's held-out frames, labelled "
        "by the cloud's teacher for evaluation only (no site stores, uploads or trains on "
        "them). Round 0 is BlazePose alone (no detector installed yet: cold start); round "
        "r >= 1 is the int8 student version r each site installed and swapped in. Hard-case "
        "and upload rates are over the frames each site processed in that round (a stretch "
        "no model had seen).",
        "",
        "| round | model | mAP@0.5 | persons/frame (edge / teacher) | hard cases | uploaded "
        "| bytes up | model bytes | edge FPS | latency ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {r['model_version']} | {r['map50_mean']:.3f} | "
            f"{r['persons_per_frame']['edge']:.2f} / {r['persons_per_frame']['teacher']:.2f} | "
            f"{_pct(r['hard_case_rate'])} | {_pct(r['upload_share'])} | "
            f"{sum(r['bytes_up'].values()):,} | {r['model_bytes']:,} | {r['edge_fps']:.1f} | "
            f"{r['edge_latency_ms']:.0f} |"
        )
    lines += ["", *_selection_table(rounds)]
    sent = sum(sum(r["bytes_up"].values()) for r in rounds)
    every = sum(sum(r["bytes_all_frames"].values()) for r in rounds)
    lines += [
        "",
        "## Did the loop work?",
        "",
        f"- student mAP@0.5 from round {first['round']} to {last['round']}: "
        f"{first['map50_mean']:.3f} → {last['map50_mean']:.3f} "
        f"({'rose' if last['map50_mean'] > first['map50_mean'] else 'did NOT rise'})",
        f"- hard-case rate from round {first['round']} to {last['round']}: "
        f"{_pct(first['hard_case_rate'])} → {_pct(last['hard_case_rate'])} "
        f"({'fell' if last['hard_case_rate'] < first['hard_case_rate'] else 'did NOT fall'})",
        "- uploads in the last round per site: "
        + ", ".join(_site_upload(last, s) for s in last["upload_share_per_site"])
        + (
            " (all at most 5%)"
            if max(last["upload_share_per_site"].values()) <= 0.05
            else " (NOT all at most 5%)"
        ),
        *(
            [
                f"- the last version's uncertainty band is empty: no score could make a "
                f"frame hard in round {last['round']}"
            ]
            if _band_text(last.get("uncertainty_band")).startswith("empty")
            else []
        ),
        f"- bytes sent by all sites: {sent:,} B, against {every:,} B to send every frame "
        f"({_pct(sent / every if every else 0.0)})",
        "",
        *(f"![{p}](plots/{p})" for p in PLOTS),
        "",
    ]
    return "\n".join(lines)
