"""The spec kinds of the HybridLM family's rules (both env ids; binary skip/send rules).

==============================  ==============================================================
spec                            policy
==============================  ==============================================================
``always`` / ``hlm``            send every token
``never`` / ``slm``             never send
``random:R``                    Rand-HLM, skip with probability R in [0, 1] (seeded)
``threshold:U``                 send iff u > U, U in [0, 1]
``uhlm`` / ``uhlm:averse``      U-HLM risk-averse threshold -b/a fitted on the training traces
``uhlm:prone``                  U-HLM risk-prone threshold (Delta - b)/a
``bild[:A]``                    BiLD fallback, send iff top-1 probability < A (default 0.6)
``calm[:L]``                    CALM softmax response, send iff margin < lambda(t) (default 0.9)
``ltt[:delta=D,eps=E,risk=R,cal=C]``  threshold on u calibrated by Learn-then-Test on the traces'
                                split C (validation [default], train or train+validation;
                                defaults delta=0.05, eps=0.1, risk=skipped)
``channel-aware[:lambda=L,target=R,lookahead=0|1]``  the channel-aware analytic rule (L and R
                                default to the environment's risk weight and risk target)
==============================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hlm_gym.policies.base import Policy
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.kind import ParsedSpec, PolicyKind, SpecArgumentError, key_values, no_argument, number
from hlm_gym.policies.rules import AlwaysSend, BiLDFallback, CALMSoftmax, NeverSend, RandomSkip, UncertaintyThreshold

__all__ = ["HYBRID_LM_ENV_IDS", "HYBRID_LM_KINDS", "RateArgs", "ThresholdArgs", "UHLMArgs", "LTTArgs",
           "ChannelAwareArgs"]

HYBRID_LM_ENV_IDS = ("hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0")
LTT_SPLITS = ("validation", "train", "train+validation")
LTT_RISKS = ("skipped", "token")


@dataclass(frozen=True)
class RateArgs:
    """``random:R``: skip rate."""

    rate: float


@dataclass(frozen=True)
class ThresholdArgs:
    """A single number in [0, 1]: ``threshold:U`` (u_th), ``bild:A`` (alpha_FB), ``calm:L`` (lambda)."""

    value: float


@dataclass(frozen=True)
class UHLMArgs:
    """``uhlm[:averse|prone]``."""

    which: str


@dataclass(frozen=True)
class LTTArgs:
    """``ltt[:delta=D,eps=E,risk=skipped|token,cal=SPLIT]``."""

    delta: float = 0.05
    epsilon: float = 0.1
    risk: str = "skipped"
    cal: str = "validation"


@dataclass(frozen=True)
class ChannelAwareArgs:
    """``channel-aware[:lambda=L,target=R,lookahead=0|1]`` (None: the environment's)."""

    risk_weight: Optional[float] = None
    target: Optional[float] = None
    lookahead: bool = False


def _fit(context: PolicyContext):
    if context.fit is not None:
        return context.fit
    from hlm_gym.policies.fit import fit_from_traces

    return fit_from_traces(context.traces, "train")


# ---------------------------------------------------------------------------------- parse
def _parse_random(arg: str) -> RateArgs:
    if not arg:
        raise SpecArgumentError("random needs a skip rate, e.g. random:0.3")
    return RateArgs(number(arg, "skip rate value"))


def _parse_threshold(arg: str) -> ThresholdArgs:
    if not arg:
        raise SpecArgumentError("threshold needs a value, e.g. threshold:0.1")
    return ThresholdArgs(number(arg, "threshold value"))


def _parse_uhlm(arg: str) -> UHLMArgs:
    which = arg.lower() or "averse"
    if which not in ("averse", "prone", "risk-averse", "risk-prone"):
        raise SpecArgumentError(f"uhlm takes averse or prone, got {arg!r}")
    return UHLMArgs(which.replace("risk-", ""))


def _parse_bild(arg: str) -> ThresholdArgs:
    return ThresholdArgs(number(arg, "alpha_FB value") if arg else 0.6)


def _parse_calm(arg: str) -> ThresholdArgs:
    return ThresholdArgs(number(arg, "lambda value") if arg else 0.9)


def _parse_ltt(arg: str) -> LTTArgs:
    kw = key_values(arg, {"delta": "delta", "eps": "epsilon", "epsilon": "epsilon", "risk": "risk", "cal": "cal"})
    delta = number(kw.get("delta", "0.05"), "delta")
    eps = number(kw.get("epsilon", "0.1"), "eps")
    if not (0 < delta < 1 and 0 < eps < 1):
        raise SpecArgumentError("delta and eps must be in (0, 1)")
    risk = kw.get("risk", "skipped")
    if risk not in LTT_RISKS:
        raise SpecArgumentError(f"risk must be skipped or token, got {risk!r}")
    cal = kw.get("cal", "validation")
    if cal not in LTT_SPLITS:
        raise SpecArgumentError(f"cal must be validation, train or train+validation, got {cal!r}")
    return LTTArgs(delta, eps, risk, cal)


def _parse_channel_aware(arg: str) -> ChannelAwareArgs:
    kw = key_values(arg, {"lambda": "risk_weight", "lam": "risk_weight", "risk_weight": "risk_weight",
                          "lookahead": "lookahead", "target": "target"})
    weight = None
    if "risk_weight" in kw:
        weight = number(kw["risk_weight"], "lambda", unit=False)
        if not weight > 0:
            raise SpecArgumentError("lambda must be > 0")
    target = number(kw["target"], "target") if "target" in kw else None
    look = kw.get("lookahead", "0").lower()
    if look not in ("0", "1", "false", "true", "no", "yes"):
        raise SpecArgumentError(f"lookahead must be 0 or 1, got {look!r}")
    return ChannelAwareArgs(weight, target, look in ("1", "true", "yes"))


# ---------------------------------------------------------------------------------- build
def _build_uhlm(spec: ParsedSpec, context: PolicyContext) -> Policy:
    fit = _fit(context)
    which = spec.args.which
    return UncertaintyThreshold(fit.threshold(which), fit=fit, label=f"uhlm:{which}")


def _build_ltt(spec: ParsedSpec, context: PolicyContext) -> Policy:
    from hlm_gym.policies.data import trace_columns
    from hlm_gym.policies.ltt import learn_then_test

    a: LTTArgs = spec.args
    if context.calibration is not None:
        cols = trace_columns(context.calibration, "validation")
    else:
        parts = [trace_columns(context.traces, sp) for sp in a.cal.split("+")]
        cols = {k: np.concatenate([p[k] + (i * 10**7 if k == "prompt" else 0) for i, p in enumerate(parts)])
                for k in ("u", "beta", "prompt")}
    res = learn_then_test(cols["u"], cols["beta"], cols["prompt"], delta=a.delta, epsilon=a.epsilon, risk=a.risk)
    if res.threshold is None:
        pol = UncertaintyThreshold(-np.inf, label=f"ltt:delta={a.delta},eps={a.epsilon} (no safe threshold)")
    else:
        pol = UncertaintyThreshold(res.threshold, label=f"ltt:delta={a.delta},eps={a.epsilon}")
    pol.ltt = res  # type: ignore[attr-defined]
    return pol


def _build_channel_aware(spec: ParsedSpec, context: PolicyContext) -> Policy:
    a: ChannelAwareArgs = spec.args
    weight = a.risk_weight if a.risk_weight is not None else context.risk_weight
    if weight is None or not weight > 0:
        raise SpecArgumentError("channel-aware needs lambda > 0 (lambda=L or the environment's)")
    scenario = context.scenario
    if scenario is None:
        raise SpecArgumentError("channel-aware needs a scenario")
    if isinstance(scenario, str):
        from hlm_gym.wireless.scenarios import load_scenario

        scenario = load_scenario(scenario)
    if context.latency_ref is None or context.max_tokens is None:
        raise SpecArgumentError("channel-aware needs latency_ref and max_tokens from the environment")
    from hlm_gym.policies.channel_aware import ChannelAwareThreshold

    target = a.target if a.target is not None else float(context.risk_target or 0.0)
    return ChannelAwareThreshold(scenario, risk_weight=float(weight), latency_ref=float(context.latency_ref),
                                 max_tokens=int(context.max_tokens), fit=_fit(context),
                                 vocab_size=context.vocab_size, lookahead=a.lookahead, target=target)


HYBRID_LM_KINDS: tuple[PolicyKind, ...] = (
    PolicyKind("always", "always", no_argument("always"), lambda s, c: AlwaysSend(), HYBRID_LM_ENV_IDS,
               aliases=("hlm", "send")),
    PolicyKind("never", "never", no_argument("never"), lambda s, c: NeverSend(), HYBRID_LM_ENV_IDS,
               aliases=("slm", "slm-only")),
    PolicyKind("random", "random:R", _parse_random,
               lambda s, c: RandomSkip(s.args.rate, rng=c.rng, seed=c.seed), HYBRID_LM_ENV_IDS,
               aliases=("rand", "rand-hlm")),
    PolicyKind("threshold", "threshold:U", _parse_threshold,
               lambda s, c: UncertaintyThreshold(s.args.value, label=s.text), HYBRID_LM_ENV_IDS),
    PolicyKind("uhlm", "uhlm[:averse|prone]", _parse_uhlm, _build_uhlm, HYBRID_LM_ENV_IDS, aliases=("u-hlm",)),
    PolicyKind("bild", "bild[:A]", _parse_bild, lambda s, c: BiLDFallback(s.args.value), HYBRID_LM_ENV_IDS),
    PolicyKind("calm", "calm[:L]", _parse_calm,
               lambda s, c: CALMSoftmax(s.args.value, max_tokens=int(c.max_tokens or 128)), HYBRID_LM_ENV_IDS),
    PolicyKind("ltt", "ltt[:delta=D,eps=E,risk=skipped|token,cal=validation|train|train+validation]", _parse_ltt,
               _build_ltt, HYBRID_LM_ENV_IDS),
    PolicyKind("channel-aware", "channel-aware[:lambda=L,target=R,lookahead=0|1]", _parse_channel_aware,
               _build_channel_aware, HYBRID_LM_ENV_IDS, aliases=("channel",)),
)
