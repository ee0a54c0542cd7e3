"""FedNova (Wang et al., NeurIPS 2020): normalized averaging, on Flower's ``FedAvg``.

What is implemented
-------------------
The vanilla-SGD / SGD-with-momentum variant of NIID-Bench (``experiments.py``,
``train_net_fednova`` and the ``fednova`` branch of ``__main__``) and of Flower's
``baselines/niid_bench`` (``models.train_fednova``, ``strategy_fednova``). Node i trains
plain local SGD (momentum ρ = ``momentum``) from the global model x to y_i in τ_i steps
(batches × epochs; it differs between nodes with different data sizes) and reports, in
its reply's MetricRecord, ``local-steps`` = τ_i and ``fednova-a`` = a_i, the ℓ1 norm
of its momentum-weighted step sequence::

    a_i = [τ_i - ρ (1 - ρ^τ_i) / (1 - ρ)] / (1 - ρ)          (a_i = τ_i when ρ = 0)

The server normalizes each update by its a_i and rescales the weighted mean by the
effective number of steps, with p_i = n_i / Σ_S n_j (``num-examples``)::

    d_i = (x - y_i) / a_i
    τ_eff = Σ_S p_i a_i
    x ← x - τ_eff Σ_S p_i d_i

With equal a_i this is FedAvg of the y_i. NIID-Bench weights by the number of batches
of each node, the Flower baseline and this module by examples (the paper's p_i = n_i/n);
they differ only by the last partial batch. ``fednova-tau-eff`` (τ_eff) is added to the
round's train metrics. Weight decay (NIID-Bench's ``--reg``) is not part of fedge's
trainer.

State
-----
No server state survives a round: x is the ``arrays`` of ``configure_train``, so a
checkpoint (weights only) resumes FedNova exactly.

Other paths
-----------
- Compressed updates: y_i is decoded before aggregation, so d_i uses the decoded
  weights.
- NaN/Inf weights are rejected by the round loop; a reply whose a_i is not a finite
  number > 0 is logged and skipped here.
- Differential privacy is refused (``RunConfig``): FedNova scales each node's update by
  τ_eff p_i / a_i, so the DP wrappers' noise, calibrated to a mean of clipped updates,
  would not bound one node's influence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from fedge.core.run_config import RunConfig

__all__ = ["NORMALIZED_STEPS_KEY", "STEPS_KEY", "FedNova", "FedNovaClient", "normalized_steps"]

log = logging.getLogger(__name__)

STEPS_KEY = "local-steps"
"""Reply metric: τ_i, the node's number of local SGD steps."""
NORMALIZED_STEPS_KEY = "fednova-a"
"""Reply metric: a_i, the momentum-adjusted step count."""


def normalized_steps(steps: int, momentum: float) -> float:
    """a_i = [τ - ρ (1 - ρ^τ) / (1 - ρ)] / (1 - ρ) for τ = ``steps``, ρ = ``momentum``.

    Raises
    ------
    ValueError
        If ``steps`` < 1 or ``momentum`` is outside [0, 1).
    """
    if steps < 1:
        raise ValueError(f"FedNova needs at least one local step, got {steps}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


class FedNovaClient:
    """The node's half of FedNova: no correction; τ_i and a_i in the reply's metrics."""

    def __init__(self, momentum: float) -> None:
        self.momentum = float(momentum)

    @classmethod
    def start(
        cls, cfg: RunConfig, msg: Message, context: Context, global_weights: list[np.ndarray]
    ) -> FedNovaClient:
        """The client side for one train message (it needs only the run's momentum)."""
        return cls(cfg.momentum)

    def correction(self) -> None:
        """FedNova trains plain local SGD."""
        return None

    def finish(
        self, local_weights: Sequence[np.ndarray], steps: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        """No extra records; ``local-steps`` and ``fednova-a`` metrics."""
        return {}, {STEPS_KEY: steps, NORMALIZED_STEPS_KEY: normalized_steps(steps, self.momentum)}


class FedNova(FedAvg):
    """FedNova's server: FedAvg's sampling and messages, normalized aggregation."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages; remembers x for the aggregation."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """x ← x - τ_eff Σ p_i (x - y_i) / a_i with τ_eff = Σ p_i a_i."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if self.current_arrays is None:
            raise AggregationError("FedNova aggregates only after configure_train")
        accepted = [r for r in valid if self._has_normalizer(r)]
        if not accepted:
            return None, None
        metrics = [next(iter(r.content.metric_records.values())) for r in accepted]
        examples = np.array([m[self.weighted_by_key] for m in metrics], np.float64)
        shares = examples / examples.sum()
        norms = np.array([m[NORMALIZED_STEPS_KEY] for m in metrics], np.float64)
        tau_eff = float(shares @ norms)
        new_arrays = ArrayRecord()
        for key, array in self.current_arrays.items():
            x = array.numpy()
            direction = sum(
                (p / a) * (x.astype(np.float64) - _weights(r)[key].numpy())
                for p, a, r in zip(shares, norms, accepted, strict=True)
            )
            new_arrays[key] = Array((x - tau_eff * direction).astype(x.dtype))
        aggregated = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        aggregated["fednova-tau-eff"] = tau_eff
        return new_arrays, aggregated

    def _has_normalizer(self, reply: Message) -> bool:
        metrics = next(iter(reply.content.metric_records.values()))
        value = metrics.get(NORMALIZED_STEPS_KEY)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return True
        log.warning(
            "FedNova skipped the reply of node %s: %r is %r, not a number > 0",
            reply.metadata.src_node_id,
            NORMALIZED_STEPS_KEY,
            value,
        )
        return False


def _weights(reply: Message) -> ArrayRecord:
    return next(iter(reply.content.array_records.values()))
