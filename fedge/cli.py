"""The ``fedge`` command: one entry point, one module per subcommand.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` (a callable taking the parsed namespace and returning
an exit code). Heavy imports (TensorFlow, Flower, OpenCV) stay inside the handlers so
that ``fedge --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedge.core.errors import FedgeError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "fedge.commands.simulate",
    "fedge.commands.models",
    "fedge.commands.edge",
    "fedge.commands.compare",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedge", description="Federated learning for privacy-sensitive edge cameras."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # a subcommand that is not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; errors become one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FedgeError as err:
        print(f"fedge {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
