"""Cold ClientApp processes vs the node's warm worker (``clients.warm_worker``): the
seconds one person-detector train or evaluate request takes each way.

A **cold** request is what Flower 1.42 does for every message: a new Python process
that imports the task, builds the detector, traces its training step, does the work
and exits (here ``python -c`` calling ``task.train`` / ``task.evaluate``, the calls the
ClientApp makes; Flower's own start of the ClientApp process, ~1.4 s, is in neither
mode). A **warm** request goes through ``train_on_node`` / ``evaluate_on_node`` with
``warm-worker=true``: the first starts the worker and is cold too, later ones find it
warm. Requests alternate cold and warm, so other load on the machine hits both alike,
and every request does the same work: the same weights, store, epochs and seed.

The store is synthetic (``--frames`` cloud-labelled 640x480 frames with a bright
person-sized block each): what a request costs depends on the frame count and the input
size, not on what the frames show.

Usage::

    python benchmarks/warm_worker.py [--frames 30] [--epochs 5] [--requests 3]

Results: a table on stdout and ``benchmarks/results/warm_worker.{md,csv}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import cpu_model  # noqa: E402
from tables import write_table  # noqa: E402

OUT_DIR = REPO / "benchmarks" / "results"
_COLD = """
import json, sys, time
import numpy as np
from clients.tasks import get_task
from fedge.core.run_config import RunConfig
cfg = RunConfig.from_mapping(json.loads(sys.argv[1]))
task = get_task(cfg.task)
node = task.node_setup(cfg, {"store-dir": sys.argv[2]})
weights = list(np.load(sys.argv[3]).values())
if sys.argv[4] == "train":
    task.train(cfg, node, weights, server_round=1, proximal_mu=0.0, correction=None)
else:
    task.evaluate(cfg, node, weights, server_round=1)
"""


def synthetic_store(folder: Path, frames: int, seed: int = 0) -> Path:
    """``frames`` cloud-labelled frames, each a bright person-sized block on dark."""
    from data.frame_store import FrameStore
    from fedge.core.labels import FrameLabel, LabelBox
    from fedge.core.records import FrameResult

    rng = np.random.default_rng(seed)
    with FrameStore(folder, fsync=False) as store:
        for i in range(frames):
            x, y = int(rng.integers(20, 560)), int(rng.integers(20, 300))
            image = np.full((480, 640, 3), 30, np.uint8)
            image[y : y + 150, x : x + 60] = 220
            box = LabelBox(box=(x, y, x + 60, y + 150), label="person", score=0.9, cloud_score=0.9)
            label = FrameLabel(
                boxes=(box,), source="cloud", fusion_method="synthetic",
                teacher_version="synthetic/1", frame_width=640, frame_height=480,
            )  # fmt: skip
            result = FrameResult(frame=i, time=1000.0 + i, source="synthetic")
            store.set_label(store.add(image, result), label, "cloud")
    return folder


def measure(frames: int, epochs: int, requests: int, work: Path) -> list[dict[str, object]]:
    """One row per request: op, mode, its index in that mode, seconds."""
    from clients.tasks import get_task
    from clients.warm_worker import WORKER_KEY, evaluate_on_node, train_on_node, worker_files
    from fedge.core.run_config import RunConfig

    cfg = RunConfig(
        task="person-detector", local_epochs=epochs, detector_batch_size=4,
        validation_share=0.2, seed=0,
    )  # fmt: skip
    store = synthetic_store(work / "store", frames)
    task = get_task(cfg.task)
    weights = task.initial_weights(cfg)
    np.savez(work / "weights.npz", *weights)
    node = task.node_setup(cfg, {"store-dir": str(store), WORKER_KEY: True})
    rows: list[dict[str, object]] = []

    def cold(op: str) -> None:
        subprocess.run(
            [sys.executable, "-c", _COLD, json.dumps(cfg.to_mapping()), str(store),
             str(work / "weights.npz"), op],
            check=True, cwd=REPO, capture_output=True,
        )  # fmt: skip

    def warm(op: str) -> None:
        if op == "train":
            out = train_on_node(
                task, cfg, node, weights, server_round=1, proximal_mu=0.0, correction=None
            )
        else:
            out = evaluate_on_node(task, cfg, node, weights, server_round=1)
        if "warm-worker-requests" not in out.metrics:
            raise SystemExit("the warm worker did not answer (see its log)")

    try:
        for index in range(requests):
            for op in ("train", "evaluate"):
                for mode, run in (("cold", cold), ("warm", warm)):
                    began = time.perf_counter()
                    run(op)
                    seconds = time.perf_counter() - began
                    rows.append({"op": op, "mode": mode, "request": index + 1, "seconds": seconds})
                    print(f"{op:8s} {mode} #{index + 1}: {seconds:6.1f} s", flush=True)
    finally:
        socket = str(worker_files(cfg, node).socket)
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and socket in (entry / "cmdline").read_text():
                    os.kill(int(entry.name), signal.SIGTERM)
            except OSError:
                continue
    return rows


def summary(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per op: cold median, warm first and median of the later requests, saving, ratio."""
    out = []
    for op in ("train", "evaluate"):
        cold = [float(r["seconds"]) for r in rows if r["op"] == op and r["mode"] == "cold"]  # type: ignore[arg-type]
        warm = [float(r["seconds"]) for r in rows if r["op"] == op and r["mode"] == "warm"]  # type: ignore[arg-type]
        if not cold or len(warm) < 2:
            continue
        cold_s, warm_s = statistics.median(cold), statistics.median(warm[1:])
        out.append(
            {
                "request": op,
                "cold_s": round(cold_s, 2),
                "warm_first_s": round(warm[0], 2),
                "warm_later_s": round(warm_s, 2),
                "saved_s": round(cold_s - warm_s, 2),
                "warm_vs_cold": round(warm_s / cold_s, 3),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and write the table (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames in the store")
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per train")
    parser.add_argument("--requests", type=int, default=3, help="requests per op and mode")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.requests < 2:
        parser.error("--requests must be at least 2 (the first warm request is cold)")
    with tempfile.TemporaryDirectory(prefix="fedge-warm-worker-") as work:
        began = time.strftime("%Y-%m-%d %H:%M")
        rows = measure(args.frames, args.epochs, args.requests, Path(work))
    table = summary(rows)
    header = (
        f"{cpu_model()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; run {began}; "
        f"person-detector, {args.frames} synthetic frames (20% held out), {args.epochs} local "
        f"epochs, batch 4; {args.requests} requests per op and mode, alternating. Seconds per "
        "request: *cold* a fresh process per request (median), *warm first* the request "
        "that starts the worker, *warm later* the median of the others; *saved* cold - "
        "warm later. Regenerate: `python benchmarks/warm_worker.py`"
    )
    columns = list(table[0]) if table else ["request"]
    _, md = write_table(
        table, columns, args.out_dir, "warm_worker",
        "A warm worker per node vs a cold ClientApp process per message", header,
    )  # fmt: skip
    print(md.read_text())


if __name__ == "__main__":
    main()
