"""``fedge simulate``: run the Flower App on a local simulation federation.

Equivalent to ``flwr run . <connection> --stream`` with a private Flower config written
for you (``--flwr-home``, default ``.flwr-home`` in the app directory); the managed
SuperLink is stopped when the run ends.

``--set task=person-detector`` trains the person detector on frame stores written before
(no edge agent runs): ``--set detector-store-root=DIR`` names a folder of stores, one per
simulated node in name order (e.g. ``fedge demo``'s ``OUT/sites``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.core.errors import ConfigError

if TYPE_CHECKING:
    from fedge.core.run_config import RunConfig

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    """Handler of ``fedge simulate``."""
    from data.fashion_mnist import locate_fashion_mnist
    from fedge.core.run_config import RunConfig, parse_set_pairs
    from fedge.local_federation import LocalFederation
    from strategies.registry import build_strategy

    values = parse_set_pairs(args.set or [])
    values.setdefault("output-dir", str(Path(args.app_dir, "outputs").resolve()))
    if values.get("detector-store-root"):  # the simulated nodes do not share our directory
        values["detector-store-root"] = str(Path(str(values["detector-store-root"])).resolve())
    # fail fast, before Flower starts: RunConfig checks every key and value, the strategy
    # its hyperparameters; the data set is resolved with the environment the simulated
    # clients and the ServerApp inherit (FEDGE_DATA_DIR)
    cfg = RunConfig.from_mapping(values)
    build_strategy(cfg)
    if cfg.task == "person-detector":
        print(f"fedge simulate: {_detector_stores(cfg, args.num_supernodes)}")
    else:
        data = locate_fashion_mnist(cfg.data_dir)
        print(f"fedge simulate: data set {data.describe()}")
    flwr_home = Path(args.flwr_home or Path(args.app_dir) / ".flwr-home")
    with LocalFederation(flwr_home, args.num_supernodes, args.client_cpus) as federation:
        federation.run(Path(args.app_dir), values, echo=True, timeout=args.timeout)
    print(f"fedge simulate: results in {values['output-dir']}")
    return 0


def _detector_stores(cfg: RunConfig, nodes: int) -> str:
    """Check that ``detector-store-root`` gives each simulated node a frame store."""
    from data.store_sets import find_frame_stores

    if not cfg.detector_store_root:
        raise ConfigError(
            "task person-detector in simulation needs --set detector-store-root=DIR, a folder "
            "of frame stores (one per node; e.g. the sites/ folder `fedge demo` writes)"
        )
    stores = find_frame_stores(Path(cfg.detector_store_root).resolve())
    if len(stores) < nodes:
        raise ConfigError(
            f"detector-store-root {cfg.detector_store_root} holds {len(stores)} frame stores "
            f"for {nodes} simulated nodes; use --num-supernodes {len(stores)} or add stores"
        )
    return f"{nodes} nodes on the frame stores {', '.join(str(p) for p in stores[:nodes])}"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fedge simulate``."""
    parser = subparsers.add_parser(
        "simulate",
        help="run federated training on a local simulation federation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--app-dir", default=".", help="the Flower App (default: .)")
    parser.add_argument("--num-supernodes", type=int, default=4, help="simulated clients")
    parser.add_argument("--client-cpus", type=int, default=1, help="CPUs per client actor")
    parser.add_argument("--flwr-home", default=None, help="private Flower home")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="run-config override, e.g. --set strategy=fedyogi --set num-server-rounds=5",
    )
    parser.set_defaults(handler=run)
