"""``server.grid_exchange.send_and_receive``: push once, pull until every reply arrived.

The real SuperLink path runs in the deployment tests; here a Grid that answers each
message on a later pull checks the loop's bookkeeping, and the in-process test grid
checks the fallback to its own ``send_and_receive``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from loopback_grid import LoopbackGrid

from clients.client_app import app as client_app
from server import grid_exchange
from server.grid_exchange import send_and_receive


class _LateGrid(Grid):
    """Message ``i`` is answered on pull number ``i + 1``."""

    def __init__(self) -> None:
        self.pushed: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, message in enumerate(messages):
            ids.append(f"m{i}")
            self.pushed[f"m{i}"] = message
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        ready = [m for m in message_ids if int(m[1:]) < self.pulls]
        return [Message(RecordDict(), reply_to=_with_id(self.pushed[m], m)) for m in ready]

    def set_run(self, run: Any) -> None: ...  # noqa: D102

    @property
    def run(self) -> Any: ...  # noqa: D102

    def create_message(self, *args: Any, **kwargs: Any) -> Message: ...  # noqa: D102

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return [1, 2, 3]

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Iterable[Message]:  # noqa: D102
        raise AssertionError("the fast path must not call Flower's send_and_receive")


def _with_id(message: Message, message_id: str) -> Message:
    message.metadata.__dict__["_message_id"] = message_id
    return message


def _messages(count: int) -> list[Message]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp
    return [Message(RecordDict(), dst_node_id=n + 1, message_type="query") for n in range(count)]


def test_every_reply_is_collected_once_over_several_pulls() -> None:
    grid = _LateGrid()
    replies = send_and_receive(grid, _messages(3), timeout=30.0, poll_s=0.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == 3  # stops as soon as the last reply is in


def test_timeout_returns_what_arrived() -> None:
    grid = _LateGrid()
    replies = send_and_receive(grid, _messages(3), timeout=0.0, poll_s=0.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]


def test_no_messages_no_pull() -> None:
    grid = _LateGrid()
    assert send_and_receive(grid, [], timeout=1.0) == []
    assert grid.pulls == 0


def test_grid_without_push_falls_back_to_its_send_and_receive() -> None:
    grid = LoopbackGrid(client_app, 2, {"task": "fashion-mnist"})
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type="query.node_info")
        for node in grid.get_node_ids()
    ]
    replies = send_and_receive(grid, queries, timeout=10.0)
    assert len(replies) == 2 and grid.replies == replies


class _ScheduledGrid(_LateGrid):
    """Message ``m<i>`` is answered from pull number ``answer_at[i]`` on."""

    def __init__(self, answer_at: list[int]) -> None:
        super().__init__()
        self.answer_at = answer_at

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        ready = [m for m in message_ids if self.answer_at[int(m[1:])] <= self.pulls]
        return [Message(RecordDict(), reply_to=_with_id(self.pushed[m], m)) for m in ready]


def test_pauses_grow_while_nothing_arrives_and_reset_on_a_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the first reply on pull 7, the second on pull 8; sleeping is recorded only
    pauses: list[float] = []
    monkeypatch.setattr(grid_exchange.time, "sleep", pauses.append)
    grid = _ScheduledGrid([7, 8])

    # Execute
    replies = send_and_receive(grid, _messages(2), timeout=None, poll_s=0.2, max_poll_s=1.0)

    # Assert: x1.5 after each empty pull, capped at 1 s, back to 0.2 s after a reply
    assert len(replies) == 2 and grid.pulls == 8
    assert pauses == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0, 1.0, 0.2])
