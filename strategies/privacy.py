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
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, MessageType
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

__all__ = ["DP_MODES", "dp_client_mod", "dp_noise_stddev", "wrap_with_dp"]

DP_MODES = ("none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")

_FIXED = {
    "server-fixed": DifferentialPrivacyServerSideFixedClipping,
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
}
_ADAPTIVE = {
    "server-adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "client-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}


def wrap_with_dp(strategy: Strategy, cfg: RunConfig, num_sampled_clients: int) -> Strategy:
    """Wrap ``strategy`` in the DP wrapper named by ``cfg.dp`` (``none``: unchanged)."""
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
    if cfg.dp in _FIXED:
        return _FIXED[cfg.dp](
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_clipping_norm,
            num_sampled_clients=num_sampled_clients,
        )
    return _ADAPTIVE[cfg.dp](
        strategy,
        noise_multiplier=cfg.dp_noise_multiplier,
        num_sampled_clients=num_sampled_clients,
        initial_clipping_norm=cfg.dp_clipping_norm,
        target_clipped_quantile=cfg.dp_target_quantile,
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
