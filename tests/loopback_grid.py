"""An in-process Grid: delivers each message straight to the real ClientApp.

The strategy matrix and guard tests use it so that a dozen strategies can run real
rounds (real ClientApp, real training, real Flower strategies and records) in seconds,
without starting a SuperLink per strategy; the full transport is covered by the
``flwr run`` and deployment tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LoopbackGrid", "run_loopback_rounds"]


class LoopbackGrid(Grid):
    """``num_nodes`` nodes, node ``i`` with ``partition-id=i`` plus ``node_configs[i]``
    (e.g. a ``store-dir``); replies in node order, every message kept in ``sent`` and every
    reply in ``replies``."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, Any],
        node_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        self._app = client_app
        self.replies: list[Message] = []
        self.sent: list[Message] = []
        extra = node_configs or [{} for _ in range(num_nodes)]
        TaskIdentity.run_id = 1  # what a real ServerApp process has set
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
        self._contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes, **extra[i]},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }

    def set_run(self, run: Any) -> None:  # noqa: D102
        raise NotImplementedError

    @property
    def run(self) -> Any:  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        """The node ids (1000, 1001, …)."""
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Run the ClientApp on every message and return its replies; an exception it
        raises becomes an error reply, as a SuperNode makes one."""
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            try:
                reply = self._app(message, self._contexts[node_id])
            except Exception as err:  # noqa: BLE001 - what Flower's runtime catches too
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(err).__name__}: {err}")
                reply = Message(error, reply_to=message)
            replies.append(reply)
        self.replies.extend(replies)
        return replies


def run_loopback_rounds(
    run_config: Any,
    num_nodes: int,
    rounds: int,
    grid: LoopbackGrid | None = None,
    *,
    central: bool = True,
    warm_start_round: int | None = None,
) -> tuple[list[Any], list[Any], list[Any], Any]:
    """Run ``rounds`` real rounds of the app's ClientApp and strategy over a LoopbackGrid
    (``grid``, or a new one of ``num_nodes``), with the run config's train schedule;
    ``central``: evaluate the global model centrally after each round.

    Returns (initial weights, final weights, round reports, the strategy).
    """
    from flwr.app import ConfigRecord

    from clients.client_app import app as client_app
    from server.central_evaluation import CentralEvaluator
    from server.rounds import run_rounds
    from server.server_app import configured_strategy

    grid = grid or LoopbackGrid(client_app, num_nodes, run_config.to_mapping())
    strategy = configured_strategy(run_config, grid)
    evaluator = CentralEvaluator(run_config)
    initial = evaluator.initial_arrays()
    reports: list[Any] = []
    final = run_rounds(
        strategy,
        grid,
        initial,
        first_round=1,
        last_round=rounds,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluator if central else None,
        on_round_end=reports.append,
        cyclic=run_config.cyclic,
        warm_start_round=warm_start_round,
    )
    return initial.to_numpy_ndarrays(), final.to_numpy_ndarrays(), reports, strategy
