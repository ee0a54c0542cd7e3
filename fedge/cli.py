"""The ``fedge`` command: one entry point, one module per subcommand.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` (a callable taking the parsed namespace and returning
an exit code); the subcommand's name is the module's last name (``fedge.commands.edge``
→ ``fedge edge``). Only the chosen subcommand's module is imported (all of them for
``fedge --help``), and heavy imports (TensorFlow, Flower, OpenCV) stay inside the
handlers, so ``fedge --help`` is instant and ``fedge edge`` runs where only the ``edge``
extra is installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedge.core.errors import FedgeError

__all__ = ["COMMAND_MODULES", "build_parser", "command_name", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "fedge.commands.simulate",
    "fedge.commands.models",
    "fedge.commands.edge",
    "fedge.commands.compare",
    "fedge.commands.cloud",
    "fedge.commands.demo",
)
"""One module per subcommand, in ``fedge --help`` order; add a line to add a command."""


def command_name(module_name: str) -> str:
    """Return the subcommand a module in ``COMMAND_MODULES`` adds (its last name)."""
    return module_name.rpartition(".")[2]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand, or only with ``command``.

    Parameters
    ----------
    command
        Import and register only this subcommand's module (the others are not imported);
        ``None`` registers them all.
    """
    parser = argparse.ArgumentParser(
        prog="fedge", description="Federated learning for privacy-sensitive edge cameras."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        if command is not None and command_name(module_name) != command:
            continue
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
    words = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser takes no option but --help, so a command comes first.
    known = {command_name(m) for m in COMMAND_MODULES}
    chosen = words[0] if words and words[0] in known else None
    args = build_parser(chosen).parse_args(words)
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
