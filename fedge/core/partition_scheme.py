"""A partitioning request (IID, Dirichlet label skew, #C classes per client) and its text form.

Validated here, in the core, so a run config can be checked before any data is loaded;
``data.partitioning`` does the splitting.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core.errors import ConfigError

__all__ = ["PARTITIONERS", "PartitionScheme", "parse_partition_scheme"]

PARTITIONERS = ("iid", "dirichlet", "classes")


@dataclass(frozen=True)
class PartitionScheme:
    """A partitioning request: ``name`` in ``PARTITIONERS`` and its parameter.

    ``param`` is the Dirichlet concentration α for ``dirichlet`` and the number of
    classes per client for ``classes``; ``iid`` ignores it.
    """

    name: str
    param: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in PARTITIONERS:
            raise ConfigError(
                f"unknown partitioner {self.name!r}; choose one of {', '.join(PARTITIONERS)}"
            )
        if self.name == "dirichlet" and not self.param > 0:
            raise ConfigError(f"Dirichlet alpha must be > 0, got {self.param}")
        if self.name == "classes" and (self.param < 1 or self.param != int(self.param)):
            raise ConfigError(f"classes-per-client must be a whole number >= 1, got {self.param}")

    @property
    def label(self) -> str:
        """Short text form, e.g. ``dirichlet:0.5`` (the inverse of the parser)."""
        if self.name == "iid":
            return "iid"
        if self.name == "classes":
            return f"classes:{int(self.param)}"
        return f"{self.name}:{self.param:g}"


def parse_partition_scheme(text: str) -> PartitionScheme:
    """Parse ``iid``, ``dirichlet:0.5`` or ``classes:2``."""
    name, _, param = text.strip().partition(":")
    try:
        value = float(param) if param else 0.0
    except ValueError as err:
        raise ConfigError(f"partition parameter must be a number in {text!r}") from err
    if name in ("dirichlet", "classes") and not param:
        raise ConfigError(
            f"{name} needs a parameter, e.g. {name}:{'0.5' if name == 'dirichlet' else 2}"
        )
    return PartitionScheme(name, value)
