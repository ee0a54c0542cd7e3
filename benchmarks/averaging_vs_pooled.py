"""Why the demo's student stayed weak: federated averaging against pooled training, offline.

Reads the sites' frame stores and the held-out evaluation stores that a ``fedge demo`` run
left in its ``--out`` folder (``--work``; default: run the demo's defaults on the bundled
clip with ``--schedule parallel`` into a temporary folder first), then trains the person
detector the demo's way (Adam at 0.01, batch 4, augmentation, 15 epochs a round,
``clients.tasks.person_detector.DetectorTrainer``) on the stores' final training frames:

- ``pooled``: every site's training frames in one set (what a federation approximates at
  best), scored after 15 and 30 epochs;
- ``fedavg``: 3 rounds; each site trains from the global model on its own frames, the
  global model is their average weighted by training frames;
- ``warm-start``: the same, but round 1 keeps the model of the site with the most frames
  (``detector-warm-start``);
- ``cyclic`` (``--modes cyclic``; ``train-schedule=cyclic``): each round the sites train
  one after another, each from the model the previous one returned (the first site of a
  round rotates), and the round's model is the last one.

Each global model (and each site's model) is scored as the demo's nodes do before they
measure: batch-norm statistics re-estimated on the pooled training frames, then mAP@0.5
(pycocotools) of the float model on every site's teacher-labelled held-out frames.
Writes ``averaging_vs_pooled.md`` and ``.csv`` to ``--out-dir`` (default
``benchmarks/results/``); with other ``--rounds``/``--epochs`` (e.g. more, shorter rounds
for the same training) ``averaging_vs_pooled_<R>x<E>.md``/``.csv``.

Usage::

    python benchmarks/averaging_vs_pooled.py                   # runs the default demo first
    python benchmarks/averaging_vs_pooled.py --work demo-out   # a finished demo's folder
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from machine import cpu_model  # noqa: E402

__all__ = ["main"]

CLIP = REPO / "data" / "samples" / "vtest_clip.mp4"
OUT_DIR = REPO / "benchmarks" / "results"
LEARNING_RATE = 0.01
BATCH = 4
EPOCHS = 15
ROUNDS = 3
COLUMNS = ("mode", "stage", "global_map50", "site_map50")


def _stores(work: Path) -> tuple[list[list[Any]], list[Any]]:
    """Each site's training examples and all sites' cloud-labelled held-out examples."""
    from clients.tasks.detector_data import list_examples
    from clients.tasks.person_detector import _rules
    from fedge.core.run_config import RunConfig

    train_rules = _rules(RunConfig.from_mapping({"task": "person-detector"}))
    every = _rules(RunConfig.from_mapping({"task": "person-detector", "validation-share": 0.0}))
    sites = sorted(p for p in (work / "sites").iterdir() if (p / "store").is_dir())
    train = [list_examples(p / "store", train_rules).train for p in sites]
    held = [
        e
        for p in sites
        for e in list_examples(work / "evaluation" / p.name, every).train
        if e.source == "cloud"
    ]
    return train, held


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (module docstring); print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="a finished `fedge demo --out` folder")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="federated rounds (3)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="local epochs a round (15)")
    parser.add_argument("--pooled-epochs", default="15,30", help="pooled scores after these")
    parser.add_argument("--modes", default="fedavg,warm-start", help="federated modes to run")
    parser.add_argument("--lr-decay", type=float, default=1.0,
                        help="round r trains at learning-rate * lr-decay^(r-1) (1.0)")  # fmt: skip
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help=f"Adam's learning rate ({LEARNING_RATE})")  # fmt: skip
    args = parser.parse_args(argv)
    default = (args.rounds, args.epochs) == (ROUNDS, EPOCHS)
    name = "averaging_vs_pooled" + ("" if default else f"_{args.rounds}x{args.epochs}")
    if args.learning_rate != LEARNING_RATE:
        name += f"_lr{args.learning_rate:g}"
    if args.lr_decay != 1.0:
        name += f"_decay{args.lr_decay:g}"
    if args.modes != "fedavg,warm-start":
        name += "_" + args.modes.replace(",", "_")
    work = args.work
    if work is None:
        from fedge.demo.runner import DemoOptions, run_demo

        work = Path(tempfile.mkdtemp(prefix="fedge-averaging-")) / "demo"
        # the parallel schedule: the run whose stores the committed tables were measured on
        run_demo(DemoOptions(source=CLIP, out=work, app_dir=REPO, schedule="parallel"))

    from clients.tasks.detector_batches import StoreBatches
    from clients.tasks.detector_eval import map50, predict_float
    from clients.tasks.person_detector import _node_trainer
    from models.person_detector import build_person_detector

    began = time.perf_counter()
    sites, held = _stores(work)
    pooled = [e for s in sites for e in s]
    trainer = _node_trainer(0)
    initial = build_person_detector(trainer.spec, seed=0).get_weights()

    def score(weights: list[Any]) -> float:
        trainer.set_weights(weights)
        trainer.recompute_statistics(pooled)
        return map50(held, predict_float(trainer.model, held, trainer.spec))

    def fit(
        weights: list[Any], examples: list[Any], epochs: int, seed: int, server_round: int = 1
    ) -> list[Any]:
        trainer.set_weights(weights)
        batches = StoreBatches(examples, trainer.spec, batch_size=BATCH, augmentation=True,
                               seed=seed)  # fmt: skip
        rate = args.learning_rate * args.lr_decay ** (server_round - 1)
        trainer.fit(batches, epochs=epochs, learning_rate=rate, proximal_mu=0.0)
        trainer.recompute_statistics(examples)
        return trainer.get_weights()

    rows: list[dict[str, Any]] = []

    def row(mode: str, stage: str, global_map: float, site_maps: list[float]) -> None:
        rows.append({"mode": mode, "stage": stage, "global_map50": round(global_map, 3),
                     "site_map50": " / ".join(f"{m:.3f}" for m in site_maps)})  # fmt: skip
        print(f"{mode:10s} {stage:22s} global {global_map:.3f}  sites {rows[-1]['site_map50']}",
              flush=True)  # fmt: skip

    weights, done = initial, 0
    for target in [int(x) for x in args.pooled_epochs.split(",") if x.strip()]:
        weights = fit(weights, pooled, target - done, seed=done)
        done = target
        row("pooled", f"{done} epochs", score(weights), [])
    largest = max(range(len(sites)), key=lambda i: (len(sites[i]), -i))
    for mode in [m for m in args.modes.split(",") if m]:
        weights = initial
        for server_round in range(1, args.rounds + 1):
            stage = f"round {server_round} ({server_round * args.epochs} epochs)"
            if mode == "cyclic":
                visits = []
                for j in range(len(sites)):
                    i = (server_round - 1 + j) % len(sites)
                    weights = fit(weights, sites[i], args.epochs, server_round * 10 + i,
                                  server_round)  # fmt: skip
                    visits.append(score(weights))
                row(mode, stage, visits[-1], visits)
                continue
            chosen = [largest] if mode == "warm-start" and server_round == 1 else range(len(sites))
            models = [
                fit(weights, sites[i], args.epochs, server_round * 10 + i, server_round)
                for i in chosen
            ]
            sizes = [len(sites[i]) for i in chosen]
            weights = [
                sum(n * m[k] for n, m in zip(sizes, models, strict=True)) / sum(sizes)
                for k in range(len(initial))
            ]
            row(mode, stage, score(weights), [score(m) for m in models])
    seconds = time.perf_counter() - began

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Federated averaging against pooled training: the demo's student, offline",
        "",
        f"Written by `python benchmarks/averaging_vs_pooled.py{_flags(args, default)}` on "
        f"{cpu_model()}, in "
        f"{seconds / 60:.1f} min. The final stores of `fedge demo --schedule parallel` on the "
        f"bundled clip: {len(sites)} sites with {'/'.join(str(len(s)) for s in sites)} "
        f"training frames, {len(held)} teacher-labelled held-out frames "
        f"({sum(len(e.boxes) for e in held)} people). Adam {args.learning_rate:g}, batch {BATCH}, "
        f"augmentation, {args.epochs} epochs a round; mAP@0.5 of the float model after "
        "re-estimating batch-norm statistics on the pooled frames. `site_map50`: each "
        "site's own model of that round, before averaging (warm-start round 1: the "
        "largest site's alone; cyclic: the model after each site's turn, in training "
        "order, the last one being the round's model).",
        "",
        "| mode | stage | global mAP@0.5 | sites' own models |",
        "|---|---|---:|---|",
        *(
            f"| {r['mode']} | {r['stage']} | {r['global_map50']:.3f} | {r['site_map50'] or '—'} |"
            for r in rows
        ),  # fmt: skip
    ]
    (args.out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out_dir / f'{name}.md'}")
    return 0


def _flags(args: argparse.Namespace, default: bool) -> str:
    """The options that differ from the defaults, as typed (for the result's header)."""
    rate = "" if args.learning_rate == LEARNING_RATE else f" --learning-rate {args.learning_rate:g}"
    if args.lr_decay != 1.0:
        rate += f" --lr-decay {args.lr_decay:g}"
    if default and args.pooled_epochs == "15,30" and args.modes == "fedavg,warm-start":
        return rate
    return (
        f" --rounds {args.rounds} --epochs {args.epochs} --pooled-epochs "
        f"'{args.pooled_epochs}' --modes {args.modes}{rate}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
