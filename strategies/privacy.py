"""Differential privacy: Flower's DP strategy wrappers and the matching client mods.

``dp`` in the run config selects one mode (see the README for the guarantee of each):

==================  ==========================================  =======================
``dp``              server wrapper                              client mod
==================  ==========================================  =======================
``none``            —                                           —
``server-fixed``    DifferentialPrivacyServerSideFixedClipping  —
``server-adaptive`` DifferentialPrivacyServerSideAdaptiveClipping —
``client-fixed``    DifferentialPrivacyClientSideFixedClipping  ``fixedclipping_mod``
``client-adaptive`` DifferentialPrivacyClientSideAdaptiveClipping ``adaptiveclipping_mod``
==================  ==========================================  =======================

Noise has standard deviation ``dp-noise-multiplier × clipping norm / sampled clients``
and is added to the aggregate on the server in every mode (central DP); the modes differ
in where updates are clipped (server or client) and whether the clipping norm is fixed
(``dp-clipping-norm``) or adapted towards the ``dp-target-quantile`` of update norms
(starting from ``dp-clipping-norm``).

Flower's wrappers draw their noise (and the noisy clipped-count of adaptive clipping)
from NumPy's global generator. The wrappers built here draw from a generator of their
own instead, seeded with the run's ``seed``: during ``aggregate_train`` it stands in for
the global one, so nothing else in the process shifts the noise, and its state is part
of the checkpoint (``dp_state``), so a resumed run draws the noise an uninterrupted run
would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedge.core.errors import ConfigError
from fedge.core.run_config import RunConfig

__all__ = [
    "DP_MODES",
    "SeededNoise",
    "dp_client_mod",
    "dp_noise_stddev",
    "dp_state",
    "restore_dp_state",
    "wrap_with_dp",
    "wrapped_strategy",
]

DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")


class SeededNoise:
    """Mixin for Flower's DP wrappers: noise from the wrapper's own seeded generator.

    ``noise_rng`` is a ``numpy.random.RandomState`` (the kind of NumPy's global
    generator, which Flower's noise functions call); it replaces the global state for
    the duration of ``aggregate_train``, the only step that draws noise.
    """

    noise_rng: np.random.RandomState

    def __init__(self, *args: Any, noise_seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noise_rng = np.random.RandomState(noise_seed)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's DP aggregation, with every global NumPy draw taken from ``noise_rng``."""
        with _global_numpy_draws_from(self.noise_rng):
            return super().aggregate_train(server_round, replies)  # type: ignore[misc]


@contextmanager
def _global_numpy_draws_from(rng: np.random.RandomState) -> Iterator[None]:
    outer = np.random.get_state()
    np.random.set_state(rng.get_state())
    try:
        yield
    finally:
        rng.set_state(np.random.get_state())
        np.random.set_state(outer)


class _ServerSideFixedClipping(SeededNoise, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, noise seeded by the run."""


class _ClientSideFixedClipping(SeededNoise, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping, noise seeded by the run."""


class _ServerSideAdaptiveClipping(SeededNoise, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, noise seeded by the run."""


class _ClientSideAdaptiveClipping(SeededNoise, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, noise seeded by the run."""


_FIXED: dict[str, type[Strategy]] = {
    "server-fixed": _ServerSideFixedClipping,
    "client-fixed": _ClientSideFixedClipping,
}
_ADAPTIVE: dict[str, type[Strategy]] = {
    "server-adaptive": _ServerSideAdaptiveClipping,
    "client-adaptive": _ClientSideAdaptiveClipping,
}
_FLOWER_WRAPPERS = (
    DifferentialPrivacyServerSideFixedClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyClientSideAdaptiveClipping,
)


def wrap_with_dp(strategy: Strategy, cfg: RunConfig, num_sampled_clients: int) -> Strategy:
    """Wrap ``strategy`` in the DP wrapper named by ``cfg.dp`` (``none``: unchanged).

    The wrapper's noise generator is seeded with ``cfg.seed``.

    Raises
    ------
    ConfigError
        If the mode is unknown or Flower rejects the DP parameters.
    """
    if cfg.dp not in DP_MODES:
        raise ConfigError(f"unknown dp mode {cfg.dp!r}; choose one of {', '.join(DP_MODES)}")
    if cfg.dp == "none":
        return strategy
    if cfg.dp_noise_multiplier < 0 or cfg.dp_clipping_norm <= 0:
        raise ConfigError(
            "dp-noise-multiplier must be >= 0 and dp-clipping-norm > 0, got "
            f"{cfg.dp_noise_multiplier} and {cfg.dp_clipping_norm}"
        )
    if num_sampled_clients < 1:
        raise ConfigError("differential privacy needs at least one sampled client per round")
    try:
        if cfg.dp in _FIXED:
            return _FIXED[cfg.dp](
                strategy,
                noise_multiplier=cfg.dp_noise_multiplier,
                clipping_norm=cfg.dp_clipping_norm,
                num_sampled_clients=num_sampled_clients,
                noise_seed=cfg.seed,
            )
        return _ADAPTIVE[cfg.dp](
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            num_sampled_clients=num_sampled_clients,
            initial_clipping_norm=cfg.dp_clipping_norm,
            target_clipped_quantile=cfg.dp_target_quantile,
            noise_seed=cfg.seed,
        )
    except ValueError as err:
        raise ConfigError(f"dp={cfg.dp}: {err}") from err


def wrapped_strategy(strategy: Strategy) -> Strategy | None:
    """The strategy inside a Flower DP wrapper, or None if ``strategy`` is not one."""
    if isinstance(strategy, _FLOWER_WRAPPERS):
        return strategy.strategy
    return None


_NOISE_KEYS = ("noise_rng_key", "noise_rng_pos", "noise_rng_has_gauss", "noise_rng_cached_gaussian")


def dp_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """The DP wrapper's evolving state: clipping norm and noise generator, as arrays.

    The wrapped strategy's state is not included (see ``wrapped_strategy``); the server
    wrappers' ``current_arrays`` is not either, as every round's ``configure_train``
    sets it afresh.
    """
    state = {"clipping_norm": np.asarray(float(strategy.clipping_norm))}  # type: ignore[attr-defined]
    if isinstance(strategy, SeededNoise):
        _, key, pos, has_gauss, cached = strategy.noise_rng.get_state(legacy=True)
        values = (key, pos, has_gauss, cached)
        state.update({name: np.asarray(v) for name, v in zip(_NOISE_KEYS, values, strict=True)})
    return state


def restore_dp_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Put state read by ``dp_state`` back into a freshly built DP wrapper.

    Raises
    ------
    ConfigError
        If the state lacks the noise generator the wrapper needs to continue exactly.
    """
    strategy.clipping_norm = float(state["clipping_norm"])  # type: ignore[attr-defined]
    if isinstance(strategy, SeededNoise):
        missing = [k for k in _NOISE_KEYS if k not in state]
        if missing:
            raise ConfigError(
                f"the checkpoint has no DP noise generator state ({', '.join(missing)}), so "
                "this run cannot continue with the noise it would have drawn; start a new "
                "run-name"
            )
        key, pos, has_gauss, cached = (state[k] for k in _NOISE_KEYS)
        strategy.noise_rng.set_state(
            ("MT19937", key.astype(np.uint32), int(pos), int(has_gauss), float(cached))
        )


def dp_noise_stddev(strategy: Strategy) -> dict[str, float]:
    """The DP wrapper's current noise std-dev, clipping norm and noise multiplier."""
    if not hasattr(strategy, "noise_multiplier"):
        return {}
    clip = float(strategy.clipping_norm)  # type: ignore[attr-defined]
    noise = float(strategy.noise_multiplier)  # type: ignore[attr-defined]
    sampled = int(strategy.num_sampled_clients)  # type: ignore[attr-defined]
    return {
        "dp_noise_multiplier": noise,
        "dp_clipping_norm": clip,
        "dp_noise_stddev": noise * clip / sampled,
        "dp_sampled_clients": sampled,
    }


def dp_client_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """ClientApp mod: apply Flower's clipping mod when the run uses client-side DP."""
    mode = str(context.run_config.get("dp", "none"))
    if msg.metadata.message_type == MessageType.TRAIN and mode == "client-fixed":
        return fixedclipping_mod(msg, context, call_next)
    if msg.metadata.message_type == MessageType.TRAIN and mode == "client-adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    return call_next(msg, context)
