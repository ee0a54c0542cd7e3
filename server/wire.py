"""Bytes a message's content takes on the wire, as Flower serializes it."""

from __future__ import annotations

from flwr.app import Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

__all__ = ["content_bytes", "messages_bytes"]


def content_bytes(content: RecordDict) -> int:
    """Serialized size of a RecordDict and every object nested in it (arrays, records)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def messages_bytes(messages: list[Message]) -> int:
    """Total content bytes of ``messages``; a payload shared by several counts each time."""
    sizes: dict[int, int] = {}
    total = 0
    for message in messages:
        if not message.has_content():
            continue
        key = id(message.content)
        if key not in sizes:
            sizes[key] = content_bytes(message.content)
        total += sizes[key]
    return total
