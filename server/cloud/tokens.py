"""Per-node bearer tokens: the file format and a constant-time lookup.

The token file has one ``node_id token`` pair per line; blank lines and everything after a
``#`` are ignored. A node sends its token as ``authorization: Bearer <token>`` metadata;
the service maps it to the node id and refuses a case that names another node.

Lookup compares the SHA-256 digest of the presented token with every stored digest using
``hmac.compare_digest`` and never stops early, so neither the time it takes nor its
length reveals which node (or how much of a token) matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from fedge.core.errors import ConfigError

__all__ = ["MIN_TOKEN_LENGTH", "TokenTable", "bearer_token"]

MIN_TOKEN_LENGTH = 16
"""Shortest token accepted in a token file (16 characters; use ``secrets.token_urlsafe``)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(metadata: Mapping[str, str | bytes]) -> str | None:
    """Return the token of an ``authorization: Bearer <token>`` metadata entry, or ``None``."""
    value = metadata.get("authorization")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenTable:
    """Node ids by bearer token, compared in constant time.

    Parameters
    ----------
    tokens:
        ``{node_id: token}``; every token at least ``MIN_TOKEN_LENGTH`` characters and
        used by one node only.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ConfigError("the token table is empty: add one 'node_id token' line per node")
        seen: dict[bytes, str] = {}
        for node, token in tokens.items():
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"token of node {node!r} is shorter than {MIN_TOKEN_LENGTH} characters: "
                    "generate one with python -c 'import secrets; print(secrets.token_urlsafe())'"
                )
            digest = _digest(token)
            if digest in seen:
                raise ConfigError(
                    f"nodes {seen[digest]!r} and {node!r} share a token: give each its own"
                )
            seen[digest] = node
        self._entries: tuple[tuple[bytes, str], ...] = tuple(seen.items())

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node ids in the table."""
        return tuple(node for _, node in self._entries)

    def node_for(self, token: str | None) -> str | None:
        """Return the node id a token belongs to, or ``None``; constant time over the table."""
        presented = _digest(token or "")
        found: str | None = None
        for digest, node in self._entries:
            if hmac.compare_digest(presented, digest) and token:
                found = node
        return found

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Read a token file (``node_id token`` per line, ``#`` comments).

        Raises
        ------
        ConfigError
            When the file is missing or a line is not ``node_id token``.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read the token file {path}: {err.strerror}") from err
        tokens: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if len(words) != 2:
                raise ConfigError(
                    f"{path}:{number}: expected 'node_id token', found {len(words)} words"
                )
            node, token = words
            if node in tokens:
                raise ConfigError(f"{path}:{number}: node {node!r} is listed twice")
            tokens[node] = token
        if not tokens:
            raise ConfigError(f"{path} lists no tokens: add one 'node_id token' line per node")
        return cls(tokens)
