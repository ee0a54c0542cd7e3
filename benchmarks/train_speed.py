"""Local training speed of the Fashion-MNIST CNN: a naive Keras client vs ``LocalTrainer``.

Modes (one function each, registered in ``MODES``):

- **keras-fit-naive**: what a naive Flower client does every round: build the model,
  load the weights, ``compile`` (SGD with momentum) and ``model.fit``;
- **keras-fit-reused** (optional): the same model compiled once, ``model.fit`` per round;
- **local-trainer**: ``models.training.LocalTrainer.fit``, trainer built once.

Settings are process layouts, ``PxT`` = P concurrent worker processes with T intra-op
threads each (and one inter-op thread; T = 0: TensorFlow's defaults), optionally ``-eigen``:
oneDNN off, TensorFlow's default on CPUs without AVX-512 (such as this AMD EPYC).
``1x0-eigen`` is a plain TensorFlow process; ``2x0`` is what the Flower simulation
runs on two cores (two client processes, default threads), ``2x1`` the same with one
thread per client. Every process trains on the same data.

Every setting runs in its own worker processes, all started up front; the parent then
runs round 0 (warm-up: tracing, compiling; reported as "first round") and rounds
1..R, each round going through every setting and every mode in turn, so all figures
come from the same run, interleaved in time, and other load on the machine hits
them alike. Per round and process: samples/s = samples x epochs / seconds of the
round (for keras-fit-naive including build and compile, as the client pays it).
Aggregate = processes x samples x epochs / the slowest process's seconds (a
synchronous FL round waits for the slowest client). Per CPU-second = samples x epochs
/ the process's CPU time (all threads), which the machine's other load disturbs less
than wall time. Reported: medians over rounds (and processes), min-max, GFLOP/s
(training FLOPs of the model x aggregate samples/s), ratios to the first setting's
first mode, and the 1-minute load average.

Usage::

    python benchmarks/train_speed.py [--full] [--batch-size 32] [--epochs 1] [--rounds 3]
        [--settings 1x0-eigen,1x0,1x1,2x1,2x0] [--modes keras-fit-naive,local-trainer]

Results: a rich table and ``benchmarks/results/train_speed.{md,csv}``. To add a mode,
write a ``ModeFactory`` and register it in ``MODES``; figures measured elsewhere (the
simulation's ``samples-per-second`` metric) can be added as ``Measurement`` rows
before ``write_reports``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from machine import cpu_model  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = [
    "MODES",
    "BenchConfig",
    "Measurement",
    "RoundOutcome",
    "Setting",
    "main",
    "run_benchmark",
    "training_flops_per_sample",
    "write_reports",
]

OUT_DIR = REPO / "benchmarks" / "results"
DEFAULT_SETTINGS = "1x0-eigen,1x0,1x1,2x1,2x0"
DEFAULT_MODES = "keras-fit-naive,local-trainer"
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"  # the same name as models.training.ONEDNN_ENV


# -- configuration -------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """What every mode trains on, and how."""

    full: bool = False
    max_samples: int = 0
    batch_size: int = 32
    epochs: int = 1
    rounds: int = 3
    learning_rate: float = 0.05
    momentum: float = 0.9


@dataclass(frozen=True)
class Setting:
    """A process layout: ``processes`` workers, ``threads`` intra-op threads, oneDNN."""

    processes: int
    threads: int
    onednn: bool = True

    @classmethod
    def parse(cls, text: str) -> Setting:
        """``"2x1"``, ``"1x0-eigen"`` (0 threads: TensorFlow's default)."""
        spec = text.strip().lower()
        onednn = not spec.endswith("-eigen")
        spec = spec.removesuffix("-eigen")
        try:
            processes, threads = (int(part) for part in spec.split("x"))
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"setting {text!r} is not PxT or PxT-eigen (e.g. 2x1, 1x0-eigen)"
            ) from err
        if processes < 1 or threads < 0:
            raise argparse.ArgumentTypeError(f"setting {text!r}: need P >= 1 and T >= 0")
        return cls(processes, threads, onednn)

    @property
    def label(self) -> str:
        """Short name, as given on the command line."""
        return f"{self.processes}x{self.threads}" + ("" if self.onednn else "-eigen")

    @property
    def description(self) -> str:
        """Readable description for the table."""
        threads = "default threads" if self.threads == 0 else f"{self.threads} thread(s)"
        procs = f"{self.processes} process" + ("es" if self.processes > 1 else "")
        return f"{procs} x {threads}, " + ("oneDNN" if self.onednn else "Eigen (TF default)")


# -- modes (run inside a worker process) ------------------------------------------------
@dataclass(frozen=True)
class RoundOutcome:
    """What a mode reports about one round besides its time."""

    loss: float
    accuracy: float


RoundRunner = Callable[[int], RoundOutcome]
ModeFactory = Callable[[Any, Any, BenchConfig], RoundRunner]


def _keras_compile(model: Any, cfg: BenchConfig) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _keras_outcome(history: Any) -> RoundOutcome:
    return RoundOutcome(float(history.history["loss"][-1]), float(history.history["accuracy"][-1]))


def keras_fit_naive(x: Any, y: Any, cfg: BenchConfig) -> RoundRunner:
    """Per round: build the CNN, set the weights, compile, ``fit`` (a naive client)."""
    from models.cnn import build_cnn

    weights = build_cnn(0).get_weights()

    def run(round_index: int) -> RoundOutcome:
        nonlocal weights
        model = build_cnn(0)
        model.set_weights(weights)
        _keras_compile(model, cfg)
        history = model.fit(
            x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True, verbose=0
        )
        weights = model.get_weights()
        return _keras_outcome(history)

    return run


def keras_fit_reused(x: Any, y: Any, cfg: BenchConfig) -> RoundRunner:
    """The CNN built and compiled once; per round only ``model.fit``."""
    from models.cnn import build_cnn

    model = build_cnn(0)
    _keras_compile(model, cfg)

    def run(round_index: int) -> RoundOutcome:
        history = model.fit(
            x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True, verbose=0
        )
        return _keras_outcome(history)

    return run


def local_trainer(x: Any, y: Any, cfg: BenchConfig) -> RoundRunner:
    """``LocalTrainer`` built once; per round ``fit`` with a round-dependent seed."""
    from models.cnn import build_cnn
    from models.training import LocalTrainer

    trainer = LocalTrainer(lambda: build_cnn(0), momentum=cfg.momentum)

    def run(round_index: int) -> RoundOutcome:
        result = trainer.fit(
            x,
            y,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=round_index,
        )
        return RoundOutcome(result.loss, result.accuracy)

    return run


MODES: dict[str, ModeFactory] = {
    "keras-fit-naive": keras_fit_naive,
    "keras-fit-reused": keras_fit_reused,
    "local-trainer": local_trainer,
}


def training_flops_per_sample(model: Any) -> float:
    """FLOPs to train on one sample: forward, weight gradients, input gradients.

    Counts multiply-adds (x2) of ``Conv2D`` and ``Dense`` layers only; the input
    gradient of the first layer is not needed and not counted.
    """
    forward: list[float] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, out_h, out_w, out_c = layer.output.shape
            kh, kw, in_c, _ = layer.kernel.shape
            forward.append(2.0 * out_h * out_w * out_c * kh * kw * in_c)
        elif kind == "Dense":
            in_f, out_f = layer.kernel.shape
            forward.append(2.0 * in_f * out_f)
    if not forward:
        return 0.0
    # forward + weight gradients (as many FLOPs as forward) + input gradients but the first
    return 2.0 * sum(forward) + sum(forward[1:])


# -- worker side -----------------------------------------------------------------------
def _load_data(cfg: BenchConfig) -> tuple[Any, Any]:
    import numpy as np

    from data.fashion_mnist import load_fashion_mnist
    from models.training import to_model_input

    data = load_fashion_mnist("" if cfg.full else "sample")
    count = cfg.max_samples or len(data.x_train)
    return to_model_input(data.x_train[:count]), data.y_train[:count].astype(np.int32)


def worker_main(setting: Setting, cfg: BenchConfig, modes: list[str]) -> int:
    """Serve ``{"mode", "round"}`` requests on stdin with JSON timings on stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the protocol
    from models.training import onednn_enabled, set_cpu_threads

    if setting.threads:
        set_cpu_threads(setting.threads)
    import tensorflow as tf

    from models.cnn import build_cnn

    x, y = _load_data(cfg)
    runners = {name: MODES[name](x, y, cfg) for name in modes}
    ready = {
        "onednn": onednn_enabled(),
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "samples": len(x),
        "flops_per_sample": training_flops_per_sample(build_cnn(0)),
        "tensorflow": tf.__version__,
    }
    reply.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        cpu, started = time.process_time(), time.perf_counter()
        outcome = runners[request["mode"]](int(request["round"]))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        reply.write(json.dumps({"seconds": seconds, "cpu": cpu_seconds, **asdict(outcome)}))
        reply.write("\n")
    return 0


# -- parent side -----------------------------------------------------------------------
@dataclass
class Measurement:
    """One (setting, mode): per-round figures and their summary."""

    setting: str
    description: str
    mode: str
    processes: int
    threads: str
    onednn: bool
    samples: int
    epochs: int
    batch_size: int
    first_round_s: float = 0.0
    per_process: list[float] = field(default_factory=list)  # samples/s, every round x proc
    per_cpu_second: list[float] = field(default_factory=list)  # samples per CPU second
    aggregate: list[float] = field(default_factory=list)  # samples/s, every round
    loss: float = float("nan")
    accuracy: float = float("nan")

    @property
    def per_process_median(self) -> float:
        """Median samples/s of one process over rounds and processes."""
        return statistics.median(self.per_process) if self.per_process else 0.0

    @property
    def per_cpu_second_median(self) -> float:
        """Median samples per second of CPU time (all threads) of one process."""
        return statistics.median(self.per_cpu_second) if self.per_cpu_second else 0.0

    @property
    def aggregate_median(self) -> float:
        """Median over rounds of all processes' samples/s together."""
        return statistics.median(self.aggregate) if self.aggregate else 0.0


class WorkerGroup:
    """The worker processes of one setting, driven round by round."""

    def __init__(self, setting: Setting, cfg: BenchConfig, modes: list[str], log_dir: Path):
        env = dict(os.environ, **{ONEDNN_ENV: "1" if setting.onednn else "0"})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            json.dumps({"setting": asdict(setting), "config": asdict(cfg), "modes": modes}),
        ]
        self.setting = setting
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[str]] = []
        for index in range(setting.processes):
            log_path = log_dir / f"{setting.label}-{index}.log"
            self.logs.append(log_path)
            with open(log_path, "w", encoding="utf-8") as log:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                        env=env,
                        cwd=REPO,
                    )  # fmt: skip
                )
        self.info: list[dict[str, Any]] = []

    def _read(self, proc: subprocess.Popen[str], index: int) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            tail = self.logs[index].read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"worker {self.setting.label}#{index} died:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def wait_ready(self) -> None:
        """Block until every worker has loaded data and built its modes."""
        self.info = [self._read(proc, i) for i, proc in enumerate(self.procs)]

    def run(self, mode: str, round_index: int) -> list[dict[str, Any]]:
        """Run one round of ``mode`` in all workers at once; return their replies."""
        request = json.dumps({"mode": mode, "round": round_index}) + "\n"
        for proc in self.procs:
            stdin: IO[str] | None = proc.stdin
            assert stdin is not None
            stdin.write(request)
            stdin.flush()
        return [self._read(proc, i) for i, proc in enumerate(self.procs)]

    def close(self) -> None:
        """Ask the workers to quit and wait for them."""
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(json.dumps({"quit": True}) + "\n")
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class BenchRun:
    """Everything one benchmark run measured."""

    measurements: list[Measurement]
    loads: list[float]  # 1-min load average at the start and after every round
    flops_per_sample: float
    tensorflow: str


def run_benchmark(
    cfg: BenchConfig,
    settings: list[Setting],
    modes: list[str],
    progress: Callable[[str], None] = print,
) -> BenchRun:
    """Measure every (setting, mode), rounds interleaved."""
    loads: list[float] = [os.getloadavg()[0]]
    results: dict[tuple[str, str], Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        groups = [WorkerGroup(s, cfg, modes, Path(tmp)) for s in settings]
        try:
            for group in groups:
                group.wait_ready()
                info, s = group.info[0], group.setting
                for mode in modes:
                    results[(s.label, mode)] = Measurement(
                        setting=s.label,
                        description=s.description,
                        mode=mode,
                        processes=s.processes,
                        threads=f"{info['threads']}" + ("" if s.threads else " (default)"),
                        onednn=bool(info["onednn"]),
                        samples=int(info["samples"]),
                        epochs=cfg.epochs,
                        batch_size=cfg.batch_size,
                    )
            for round_index in range(cfg.rounds + 1):
                for group in groups:
                    for mode in modes:
                        _record(
                            results[(group.setting.label, mode)],
                            group.run(mode, round_index),
                            round_index,
                        )
                loads.append(os.getloadavg()[0])
                label = "warm-up" if round_index == 0 else f"round {round_index}/{cfg.rounds}"
                progress(f"{label} done, 1-min load {loads[-1]:.2f}")
        finally:
            for group in groups:
                group.close()
    info = groups[0].info[0]
    return BenchRun(
        list(results.values()), loads, float(info["flops_per_sample"]), str(info["tensorflow"])
    )


def _record(m: Measurement, replies: list[dict[str, Any]], round_index: int) -> None:
    """Add one round's worker replies to ``m`` (round 0 only sets the first-round time)."""
    seconds = [float(r["seconds"]) for r in replies]
    work = m.samples * m.epochs
    if round_index == 0:
        m.first_round_s = max(seconds)
    else:
        m.per_process.extend(work / s for s in seconds)
        m.per_cpu_second.extend(work / max(float(r["cpu"]), 1e-9) for r in replies)
        m.aggregate.append(work * len(seconds) / max(seconds))
    m.loss = statistics.fmean(float(r["loss"]) for r in replies)
    m.accuracy = statistics.fmean(float(r["accuracy"]) for r in replies)


# -- reports ---------------------------------------------------------------------------
def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


COLUMNS = [
    "setting",
    "mode",
    "oneDNN",
    "threads",
    "samples/s per process",
    "min-max",
    "per CPU-second",
    "aggregate samples/s",
    "x baseline",
    "GFLOP/s",
    "first round s",
    "loss",
    "acc",
]


def _rows(results: list[Measurement], flops: float) -> list[list[str]]:
    baseline = results[0].aggregate_median if results else 0.0
    rows = []
    for m in results:
        spread = f"{min(m.per_process):.0f}-{max(m.per_process):.0f}" if m.per_process else ""
        ratio = m.aggregate_median / baseline if baseline else 0.0
        rows.append(
            [
                m.setting,
                m.mode,
                "on" if m.onednn else "off",
                m.threads,
                f"{m.per_process_median:.0f}",
                spread,
                f"{m.per_cpu_second_median:.0f}",
                f"{m.aggregate_median:.0f}",
                f"{ratio:.2f}",
                f"{m.aggregate_median * flops / 1e9:.1f}",
                f"{m.first_round_s:.2f}",
                f"{m.loss:.3f}",
                f"{m.accuracy:.3f}",
            ]
        )
    return rows


def _pairs(results: list[Measurement]) -> list[str]:
    """Within each setting: every other mode against the setting's first mode."""
    lines = []
    by_setting: dict[str, list[Measurement]] = {}
    for m in results:
        by_setting.setdefault(m.setting, []).append(m)
    for label, group in by_setting.items():
        first = group[0]
        for other in group[1:]:
            if first.aggregate_median:
                ratio = other.aggregate_median / first.aggregate_median
                lines.append(f"{label}: {other.mode} / {first.mode} = {ratio:.2f}x")
    return lines


NOTES = (
    "Settings: `PxT` = P concurrent processes with T intra-op threads each, `-eigen` = "
    "oneDNN off (TensorFlow's default on CPUs without AVX-512). Samples/s = samples x "
    "epochs per second of a whole round (for keras-fit-naive including building and "
    "compiling the model); *per CPU-second* divides by the process's CPU time instead "
    "(all its threads), which other load on the machine disturbs less. Medians over the "
    "measured rounds (and processes); the warm-up round is excluded and shown as *first "
    "round s* (tracing, compiling). *Aggregate* = all processes of a setting together, "
    "bounded by the slowest; *x baseline* compares aggregates with the first row. "
    "GFLOP/s = aggregate x training FLOPs per sample. All settings and modes ran "
    "interleaved round by round in one run."
)


def write_reports(run: BenchRun, header: str, out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    """Write ``train_speed.md`` and ``train_speed.csv``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _rows(run.measurements, run.flops_per_sample)
    csv_path = out_dir / "train_speed.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [*COLUMNS, "samples", "epochs", "batch size", "per-process rounds", "aggregate rounds"]
        )
        for row, m in zip(rows, run.measurements, strict=True):
            writer.writerow(
                [
                    *row,
                    m.samples,
                    m.epochs,
                    m.batch_size,
                    " ".join(f"{v:.0f}" for v in m.per_process),
                    " ".join(f"{v:.0f}" for v in m.aggregate),
                ]
            )
    md_path = out_dir / "train_speed.md"
    lines = [
        "# Local training speed: Fashion-MNIST CNN",
        "",
        header,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * (len(COLUMNS) - 4)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *(f"- {line}" for line in _pairs(run.measurements)),
        "",
        NOTES,
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return md_path, csv_path


def print_table(run: BenchRun, header: str) -> None:
    """Print the results as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Local training speed (Fashion-MNIST CNN)", caption=header)
    for column in COLUMNS:
        left = column in ("setting", "mode", "threads")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "mode")
    for row in _rows(run.measurements, run.flops_per_sample):
        table.add_row(*row)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    for line in _pairs(run.measurements):
        console.print(line)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, serve as one worker process)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full 60k Fashion-MNIST")
    parser.add_argument("--max-samples", type=int, default=0, help="cap training samples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (>= 3)")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument(
        "--settings",
        default=DEFAULT_SETTINGS,
        help=f"process layouts PxT[-eigen], comma-separated (default {DEFAULT_SETTINGS})",
    )
    parser.add_argument(
        "--modes", default=DEFAULT_MODES, help=f"comma-separated, of: {', '.join(MODES)}"
    )
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        return worker_main(
            Setting(**spec["setting"]), BenchConfig(**spec["config"]), list(spec["modes"])
        )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1 (3 or more for a meaningful median)")
    settings = [Setting.parse(s) for s in args.settings.split(",") if s.strip()]
    cfg = BenchConfig(
        full=args.full,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        epochs=args.epochs,
        rounds=args.rounds,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
    )
    started = time.strftime("%Y-%m-%d %H:%M")
    run = run_benchmark(cfg, settings, modes)
    data = "full Fashion-MNIST" if cfg.full else "committed Fashion-MNIST slice"
    header = (
        f"{_machine()}; TensorFlow {run.tensorflow}; {data}, "
        f"{run.measurements[0].samples} samples x {cfg.epochs} epoch(s) per round, batch "
        f"{cfg.batch_size}, SGD lr {cfg.learning_rate} momentum {cfg.momentum}; "
        f"{cfg.rounds} measured rounds after 1 warm-up; training "
        f"{run.flops_per_sample / 1e6:.2f} MFLOP/sample; 1-min load average "
        f"{run.loads[0]:.2f} at start, median {statistics.median(run.loads):.2f}, max "
        f"{max(run.loads):.2f}; run {started}"
    )
    print_table(run, header)
    md_path, csv_path = write_reports(run, header, args.out_dir)
    print(f"wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
