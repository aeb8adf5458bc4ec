"""The spec kinds of the WDMoE family's rules (``hlm_gym/WDMoE-v0``; see :mod:`hlm_gym.policies.wdmoe_rules`).

==============================  ==============================================================
spec                            policy
==============================  ==============================================================
``topk:K``                      the router's top-K experts (K = E: every expert, the dense model)
``wlr:T[,k=K]``                 WDMoE's weight-to-latency ratio rule: of the gate's top-K
                                (default all), keep experts whose w/t is >= T x the best, T in [0, 1]
``myopic[:lambda=L]``           the channel-aware myopic rule (L: the environment's risk weight)
==============================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hlm_gym.policies.base import Policy
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.kind import ParsedSpec, PolicyKind, SpecArgumentError, key_values, number
from hlm_gym.policies.wdmoe_rules import GateTopK, MyopicSelection, WeightLatencyRatio

__all__ = ["WDMOE_ENV_IDS", "WDMOE_KINDS", "TopKArgs", "WLRArgs", "MyopicArgs", "n_experts_of"]

WDMOE_ENV_IDS = ("hlm_gym/WDMoE-v0",)


@dataclass(frozen=True)
class TopKArgs:
    """``topk:K``."""

    k: int


@dataclass(frozen=True)
class WLRArgs:
    """``wlr:T[,k=K]``."""

    threshold: float
    k: Optional[int] = None


@dataclass(frozen=True)
class MyopicArgs:
    """``myopic[:lambda=L]``."""

    risk_weight: Optional[float] = None


def _count(raw: str, what: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise SpecArgumentError(f"{what} must be a whole number of experts, got {raw!r}") from None
    if v < 1:
        raise SpecArgumentError(f"{what} must be >= 1, got {v}")
    return v


def _parse_topk(arg: str) -> TopKArgs:
    if not arg:
        raise SpecArgumentError("topk needs K, the number of experts (topk:2)")
    return TopKArgs(_count(arg, "K"))


def _parse_wlr(arg: str) -> WLRArgs:
    if not arg:
        raise SpecArgumentError("wlr needs a threshold T in [0, 1] (wlr:0.5 or wlr:0.5,k=4)")
    head, _, rest = arg.partition(",")
    kv = key_values(rest, {"k": "k"})
    return WLRArgs(number(head.strip(), "threshold T"), _count(kv["k"], "k") if "k" in kv else None)


def _parse_myopic(arg: str) -> MyopicArgs:
    kv = key_values(arg, {"lambda": "lambda", "risk_weight": "lambda"})
    return MyopicArgs(number(kv["lambda"], "lambda", unit=False) if "lambda" in kv else None)


def n_experts_of(context: PolicyContext) -> int:
    """The number of experts of the WDMoE env a context describes (its action space is ``2**E``)."""
    n = int(context.n_actions)
    E = n.bit_length() - 1
    if n < 2 or 1 << E != n:
        raise SpecArgumentError(f"the environment's {n} actions are not the 2**E selections of a WDMoE env")
    return E


def _build_topk(spec: ParsedSpec, context: PolicyContext) -> Policy:
    E = n_experts_of(context)
    if spec.args.k > E:
        raise SpecArgumentError(f"K = {spec.args.k} exceeds the environment's {E} experts")
    return GateTopK(spec.args.k, E)


def _build_wlr(spec: ParsedSpec, context: PolicyContext) -> Policy:
    E = n_experts_of(context)
    a: WLRArgs = spec.args
    if a.k is not None and a.k > E:
        raise SpecArgumentError(f"k = {a.k} exceeds the environment's {E} experts")
    return WeightLatencyRatio(a.threshold, E, a.k)


def _build_myopic(spec: ParsedSpec, context: PolicyContext) -> Policy:
    weight = spec.args.risk_weight if spec.args.risk_weight is not None else context.risk_weight
    if weight is None or weight < 0:
        raise SpecArgumentError("myopic needs lambda >= 0 (lambda=L or the environment's risk weight)")
    return MyopicSelection(float(weight), n_experts_of(context))


WDMOE_KINDS: tuple[PolicyKind, ...] = (
    PolicyKind("topk", "topk:K", _parse_topk, _build_topk, WDMOE_ENV_IDS, aliases=("top-k",)),
    PolicyKind("wlr", "wlr:T[,k=K]", _parse_wlr, _build_wlr, WDMOE_ENV_IDS, aliases=("weight-latency",)),
    PolicyKind("myopic", "myopic[:lambda=L]", _parse_myopic, _build_myopic, WDMOE_ENV_IDS),
)
