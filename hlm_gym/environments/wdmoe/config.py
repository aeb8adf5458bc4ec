"""Options of the WDMoE environments: :class:`WDMoEConfig` holds every default in one place.

:func:`make_config` turns keyword arguments into it (unknown names raise
:class:`~hlm_gym.environments.options.UnknownOptionError`, also a ``TypeError``; bad values
:class:`~hlm_gym.environments.options.EnvConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from hlm_gym.environments.options import (EnvConfigError, UnknownOptionError, bad_option, choice, integer,
                                          integers, real)

__all__ = ["WDMoEConfig", "make_config", "CONFIG_FIELDS", "SPLITS", "QUALITIES", "EnvConfigError"]

SPLITS = ("train", "validation", "test")
#: What a selection's quality loss is relative to (see :class:`WDMoEConfig`).
QUALITIES = ("mlp", "stream")
MODES = ("trace",)


@dataclass(frozen=True)
class WDMoEConfig:
    """Options of the WDMoE environments (all are constructor keyword arguments).

    ``scenario``: a WDMoE fleet scenario name (``envs/wdmoe/<name>.yaml``, see
    :func:`hlm_gym.wireless.fleet.fleet_names`) or a YAML path.
    ``trace``: path of a WDMoE trace file (default: the shipped file of ``split``).
    ``split``: ``train``, ``validation`` or ``test`` (the shipped trace set).
    ``risk_weight``: lambda, the weight of the quality loss in the reward.
    ``risk_target``: the per-decision quality loss at which the quality term is zero (the
    reward charges ``risk_weight * (quality_loss - risk_target)``; ``0``, the default, prices
    the quality loss itself).
    ``quality``: ``mlp`` (the dropped experts' share of the MoE layer's output,
    ``|y_dropped|^2 / |y_all|^2``) or ``stream`` (the same error relative to the residual
    stream it is added to, ``|y_dropped|^2 / |h|^2``).
    ``latency_ref_s``: reward normalisation (default: the fleet's mean all-experts layer latency,
    :func:`hlm_gym.wireless.fleet.reference_layer_s`).
    ``channel_dt_s``, ``channel_bank_size``, ``channel_bank_points``, ``channel_seed``: the
    fleet's channel bank (grid step, realisations, grid points, seed; default: as the
    HybridLM envs choose them for the fleet's fastest device).
    ``prompts``: restrict episodes to these prompt indices of the trace (default: all).
    ``mode``: ``trace`` (replay the recorded trace).
    """

    scenario: Any = "close-static"
    trace: Optional[str] = None
    split: str = "train"
    risk_weight: float = 1.0
    risk_target: float = 0.0
    quality: str = "mlp"
    latency_ref_s: Optional[float] = None
    channel_dt_s: Optional[float] = None
    channel_bank_size: Optional[int] = None
    channel_bank_points: Optional[int] = None
    channel_seed: int = 0
    prompts: Optional[tuple[int, ...]] = None
    mode: str = "trace"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:  # the normalised value (the dataclass is frozen)
            object.__setattr__(self, name, value)

        choice("split", self.split, SPLITS)
        choice("quality", self.quality, QUALITIES)
        choice("mode", self.mode, MODES)
        if not isinstance(self.scenario, (str, os.PathLike)) or not os.fspath(self.scenario):
            raise bad_option("scenario", self.scenario, "expected a WDMoE scenario name or a YAML path")
        put("scenario", os.fspath(self.scenario))
        put("risk_weight", real("risk_weight", self.risk_weight, lo=0.0))
        put("risk_target", real("risk_target", self.risk_target, lo=0.0, hi=1.0))
        put("channel_seed", integer("channel_seed", self.channel_seed, lo=0))
        for name in ("latency_ref_s", "channel_dt_s"):
            if self.__dict__[name] is not None:
                put(name, real(name, self.__dict__[name], lo=0.0, open_lo=True, what="a finite number > 0 or None"))
        for name, lo in (("channel_bank_size", 1), ("channel_bank_points", 2)):
            if self.__dict__[name] is not None:
                put(name, integer(name, self.__dict__[name], lo=lo))
        if self.prompts is not None:
            put("prompts", integers("prompts", self.prompts, lo=0))
        if self.trace is not None:
            if not isinstance(self.trace, (str, os.PathLike)):
                raise bad_option("trace", self.trace, "expected a path or None")
            put("trace", os.fspath(self.trace))


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(WDMoEConfig))


def make_config(kwargs: Mapping[str, Any], extra_allowed: tuple[str, ...] = ()) -> tuple[WDMoEConfig, dict]:
    """Split keyword arguments into a :class:`WDMoEConfig` and the ``extra_allowed`` ones."""
    kw = dict(kwargs)
    extra = {k: kw.pop(k) for k in list(kw) if k in extra_allowed}
    unknown = sorted(set(kw) - set(CONFIG_FIELDS))
    if unknown:
        allowed = ", ".join(sorted(set(CONFIG_FIELDS) | set(extra_allowed)))
        raise UnknownOptionError(f"unknown option(s) {', '.join(map(repr, unknown))} for the WDMoE environment; "
                                 f"allowed: {allowed}")
    return WDMoEConfig(**kw), extra
