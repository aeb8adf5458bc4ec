"""Options of the HybridLM environments: :class:`EnvConfig` holds every default in one place.

:func:`make_config` turns keyword arguments into it (unknown names raise ``TypeError``, bad
values :class:`EnvConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

# EnvConfigError, UnknownOptionError, integer and real live in options; importable from here too
from hlm_gym.environments.options import EnvConfigError, UnknownOptionError
from hlm_gym.environments.options import bad_option as _bad, integer, integers, real

__all__ = ["EnvConfig", "EnvConfigError", "UnknownOptionError", "CONFIG_FIELDS", "make_config", "integer",
           "integers", "real", "SPLITS"]

SPLITS = ("train", "validation", "test")
RISKS = ("beta", "error")
VERIFIES = ("none", "deferred")
MODES = ("trace", "live")


@dataclass(frozen=True)
class EnvConfig:
    """Options of the HybridLM environments (all are constructor keyword arguments).

    ``trace``: path of a trace file (default: the shipped file of ``split``).
    ``split``: ``train``, ``validation`` or ``test`` (the shipped trace set).
    ``scenario``: a scenario name (``hlm_gym.wireless.scenarios.list_scenarios()``), YAML path or dict.
    ``scenario_overrides``: dotted scenario overrides, e.g. ``{"link.mean_snr_db": 10.0}``
    (keyword arguments whose name contains a dot are added here too).
    ``risk_weight``: lambda, the weight of the rejection risk in the reward.
    ``risk_target``: R, the per-skipped-token risk at which a skip's risk term is zero: a skip
    is charged ``lambda * (risk - R)``. ``R = 0`` (default) prices expected rejections per token
    (the error rate); ``R > 0`` makes the return the Lagrangian of "mean ``beta`` of the skipped
    tokens <= R" (the ``risk`` metric), so tokens safer than R earn a bonus when skipped.
    ``risk``: ``beta`` (the skipped draft's rejection probability) or ``error`` (1 if the
    skipped draft would have been rejected with the recorded uniform).
    ``verify``: ``none`` (U-HLM: skipped tokens are never verified) or ``deferred``
    (verified at the next send as one speculative block; exact output).
    ``mode``: ``trace`` (replay recorded traces) or ``live`` (the real models in the loop).
    ``k_choices``: top-k sizes of the compressed action (``HybridLMCompressed-v0``;
    default: the trace's recorded sizes plus ``V``).
    ``skip_window``: decisions in the ``skip_frac`` observation.
    ``latency_ref_s``: reward normalisation (default: the latency of a full-upload send with
    no pending tokens at the scenario's nominal mean SNR).
    ``channel_dt_s``: grid step of the channel bank (default: coherence time / 4, clipped to
    [0.5 ms, 20 ms]); ``channel_bank_points``: grid points per realisation (default: the power
    of two covering ``BANK_SECONDS`` of channel, within [4096, 65536]); ``channel_bank_size``:
    realisations (default: ``BANK_TOTAL_POINTS / points``, within [8, 64]);
    ``channel_seed``: seed of the bank.
    ``prompts``: restrict episodes to these prompt indices of the trace (default: all).
    ``slm``, ``llm``, ``device``: the live pair (default: the trace's specs), live mode only.
    """

    trace: Optional[str] = None
    split: str = "train"
    scenario: Any = "pedestrian"
    scenario_overrides: Mapping[str, Any] = field(default_factory=dict)
    risk_weight: float = 1.0
    risk_target: float = 0.0
    risk: str = "beta"
    verify: str = "none"
    mode: str = "trace"
    k_choices: Optional[tuple[int, ...]] = None
    skip_window: int = 16
    latency_ref_s: Optional[float] = None
    channel_dt_s: Optional[float] = None
    channel_bank_size: Optional[int] = None
    channel_bank_points: Optional[int] = None
    channel_seed: int = 0
    prompts: Optional[tuple[int, ...]] = None
    slm: Optional[str] = None
    llm: Optional[str] = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if self.__dict__[name] not in allowed:
                raise _bad(name, self.__dict__[name], f"expected one of {', '.join(map(repr, allowed))}")

        def put(name: str, value: Any) -> None:  # the normalised value (the dataclass is frozen)
            object.__setattr__(self, name, value)

        choice("split", SPLITS)
        choice("risk", RISKS)
        choice("verify", VERIFIES)
        choice("mode", MODES)
        put("risk_weight", real("risk_weight", self.risk_weight, lo=0.0))
        put("risk_target", real("risk_target", self.risk_target, lo=0.0, hi=1.0,
                                what="a number in [0, 1] (a rejection probability)"))
        put("skip_window", integer("skip_window", self.skip_window, lo=1))
        put("channel_seed", integer("channel_seed", self.channel_seed, lo=0))
        for name in ("latency_ref_s", "channel_dt_s"):
            if self.__dict__[name] is not None:
                put(name, real(name, self.__dict__[name], lo=0.0, open_lo=True, what="a finite number > 0 or None"))
        for name, lo in (("channel_bank_size", 1), ("channel_bank_points", 2)):
            if self.__dict__[name] is not None:
                put(name, integer(name, self.__dict__[name], lo=lo))
        if self.k_choices is not None:
            ks = integers("k_choices", self.k_choices, lo=1)
            if len(set(ks)) != len(ks):
                raise _bad("k_choices", self.k_choices, "expected distinct sizes")
            put("k_choices", ks)
        if self.prompts is not None:
            put("prompts", integers("prompts", self.prompts, lo=0))
        for name in ("trace", "slm", "llm"):
            value = self.__dict__[name]
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise _bad(name, value, "expected a path or None")
            if value is not None:
                put(name, os.fspath(value))
        if not isinstance(self.device, str) or not self.device:
            raise _bad("device", self.device, "expected a torch device name such as 'cpu' or 'cuda'")


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(EnvConfig))


def make_config(kwargs: Mapping[str, Any], extra_allowed: tuple[str, ...] = ()) -> tuple[EnvConfig, dict]:
    """Split keyword arguments into an :class:`EnvConfig` and the ``extra_allowed`` ones.

    Names containing a dot are scenario overrides. Any other unknown name raises
    :class:`UnknownOptionError` (also a ``TypeError``) naming it and listing the allowed options.
    """
    kw = dict(kwargs)
    overrides = dict(kw.pop("scenario_overrides", None) or {})
    for name in [k for k in kw if "." in k]:
        overrides[name] = kw.pop(name)
    extra = {k: kw.pop(k) for k in list(kw) if k in extra_allowed}
    unknown = sorted(set(kw) - set(CONFIG_FIELDS))
    if unknown:
        allowed = ", ".join(sorted(set(CONFIG_FIELDS) | set(extra_allowed)))
        raise UnknownOptionError(f"unknown option(s) {', '.join(map(repr, unknown))} for the HybridLM environment; "
                        f"allowed: {allowed} (and dotted scenario overrides such as 'link.mean_snr_db')")
    return EnvConfig(scenario_overrides=overrides, **kw), extra
