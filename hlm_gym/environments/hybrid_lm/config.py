"""Options of the HybridLM environments: :class:`EnvConfig` holds every default in one place.

:func:`make_config` turns keyword arguments into it (unknown names raise ``TypeError``, bad
values :class:`EnvConfigError`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from hlm_gym.errors import HLMGymError

RISKS = ("beta", "error")
VERIFIES = ("none", "deferred")
MODES = ("trace", "live")


class EnvConfigError(HLMGymError, ValueError):
    """An environment option has a bad value."""


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
        def bad(name, msg):
            raise EnvConfigError(f"bad option {name}={getattr(self, name)!r}: {msg}")

        if self.split not in ("train", "validation", "test"):
            bad("split", "expected 'train', 'validation' or 'test'")
        if self.risk not in RISKS:
            bad("risk", f"expected one of {RISKS}")
        if self.verify not in VERIFIES:
            bad("verify", f"expected one of {VERIFIES}")
        if self.mode not in MODES:
            bad("mode", f"expected one of {MODES}")
        if not (isinstance(self.risk_weight, (int, float)) and math.isfinite(self.risk_weight)
                and self.risk_weight >= 0):
            bad("risk_weight", "expected a finite number >= 0")
        if not (isinstance(self.risk_target, (int, float)) and 0.0 <= self.risk_target <= 1.0):
            bad("risk_target", "expected a number in [0, 1] (a rejection probability)")
        if not isinstance(self.skip_window, int) or self.skip_window < 1:
            bad("skip_window", "expected a positive integer")
        if self.latency_ref_s is not None and not self.latency_ref_s > 0:
            bad("latency_ref_s", "expected a positive number or None")
        if self.channel_dt_s is not None and not self.channel_dt_s > 0:
            bad("channel_dt_s", "expected a positive number or None")
        if self.channel_bank_size is not None and self.channel_bank_size < 1:
            bad("channel_bank_size", "expected a positive integer or None")
        if self.channel_bank_points is not None and self.channel_bank_points < 2:
            bad("channel_bank_points", "expected an integer >= 2 or None")
        if self.k_choices is not None and (len(self.k_choices) == 0 or any(int(k) < 1 for k in self.k_choices)):
            bad("k_choices", "expected a non-empty sequence of positive integers")


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(EnvConfig))


def make_config(kwargs: Mapping[str, Any], extra_allowed: tuple[str, ...] = ()) -> tuple[EnvConfig, dict]:
    """Split keyword arguments into an :class:`EnvConfig` and the ``extra_allowed`` ones.

    Names containing a dot are scenario overrides. Any other unknown name raises ``TypeError``
    naming it and listing the allowed options.
    """
    kw = dict(kwargs)
    overrides = dict(kw.pop("scenario_overrides", None) or {})
    for name in [k for k in kw if "." in k]:
        overrides[name] = kw.pop(name)
    extra = {k: kw.pop(k) for k in list(kw) if k in extra_allowed}
    unknown = sorted(set(kw) - set(CONFIG_FIELDS))
    if unknown:
        allowed = ", ".join(sorted(set(CONFIG_FIELDS) | set(extra_allowed)))
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for the HybridLM environment; "
                        f"allowed: {allowed} (and dotted scenario overrides such as 'link.mean_snr_db')")
    if kw.get("k_choices") is not None:
        kw["k_choices"] = tuple(int(k) for k in kw["k_choices"])
    if kw.get("prompts") is not None:
        kw["prompts"] = tuple(int(k) for k in kw["prompts"])
    if kw.get("trace") is not None:
        kw["trace"] = str(kw["trace"])
    return EnvConfig(scenario_overrides=overrides, **kw), extra
