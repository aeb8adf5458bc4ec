"""A channel-aware analytic skip rule: the myopic optimum of the environment's one-step reward.

Derivation
----------
The HybridLM environments reward each token with

    r = -latency / L_ref - lambda * risk,

where ``latency`` is the token's latency from :func:`hlm_gym.wireless.cost.token_cost` and ``risk``
is the rejection probability ``beta`` of the draft when it is kept unverified (skipped) and 0
when it is sent (speculative sampling makes a verified token exact). At a decision the device
knows its signals (``u``), the pending count ``p`` (skipped tokens since the last upload) and an
estimate ``R`` of the uplink rate (``log_rate`` in the observation). With the U-HLM fit
``E[beta | u] ~ beta_hat(u) = clip(a u + b, 0, 1)``, the expected one-step rewards are

    E[r | skip] = -L_dev / L_ref - lambda * beta_hat(u)
    E[r | send] = -(L_dev + DeltaL(R, p)) / L_ref

where ``L_dev`` is the device's own compute (paid either way) and

    DeltaL(R, p) = (bits_up(p) / R) + (bits_down / R_down) + t_verify + [p > 0](t_a + t_b p)

is what sending adds: the upload of the distribution, the pending ids and the draft id at rate
``R``, the returned token on the downlink, and the LLM's verification plus the catch-up prefill
of the ``p`` pending tokens. Sending is better iff ``E[r | send] > E[r | skip]``:

    lambda * beta_hat(u) > DeltaL(R, p) / L_ref
    <=>  u > u_th(R, p) = (DeltaL(R, p) / (lambda L_ref) - b) / a      (for a > 0, beta_hat unclipped)

So the rule is U-HLM's threshold with the intercept shifted by the normalised cost of an upload:
``u_th`` rises as the uplink gets slower (DeltaL grows like 1/R) and falls as lambda (the price
of risk) grows; as ``DeltaL / (lambda L_ref) -> 0`` it tends to the risk-averse ``-b/a``. When
``DeltaL / L_ref >= lambda * beta_hat(1)`` no token is worth sending.

With a risk target ``R`` (the environment's ``risk_target``: a skip costs
``lambda * (beta - R)``) the same comparison gives ``lambda * (beta_hat(u) - R) > DeltaL / L_ref``,
i.e. the intercept ``b`` becomes ``b - R``.

``lookahead=True`` refines the myopic comparison with the cost a skip defers: a skipped token's
id and catch-up ride on the next upload. Comparing "send now, then send" with "skip now, then
send" at the same rate replaces DeltaL(R, p) by DeltaL(R, p) + DeltaL(R, 0) - DeltaL(R, p + 1).

The rule is evaluated per observation (vectorised): ``R = 10**log_rate - 1``,
``p = round(pending * max_tokens)``; the downlink rate comes from the observed uplink SNR plus
the scenario's downlink SNR offset (the downlink carries one token id: its airtime only matters
when it is in outage, which then costs the outage wait).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hlm_gym.environments.hybrid_lm.observation import OBS_INDEX, SEND, SKIP
from hlm_gym.policies.base import Policy, PolicyError
from hlm_gym.wireless.cost import token_cost

__all__ = ["ChannelAwareThreshold"]


class ChannelAwareThreshold(Policy):
    """Send iff ``lambda * (clip(a u + b, 0, 1) - target) > DeltaL(rate, pending) / latency_ref`` (module docstring).

    ``scenario``: a :class:`hlm_gym.wireless.scenarios.Scenario` (payload and compute figures);
    ``a``, ``b``: the U-HLM fit (or pass ``fit=UHLMFit``); ``risk_weight``: the environment's risk weight lambda;
    ``latency_ref``: the environment's latency normaliser (seconds); ``max_tokens``: the
    environment's response length limit (to recover the pending count); ``vocab_size`` and
    ``topk`` set the payload (default: the scenario's vocabulary, full distribution).
    """

    name = "channel-aware"

    def __init__(self, scenario: Any, *, risk_weight: float, latency_ref: float, max_tokens: int, a: float | None = None,
                 b: float | None = None, fit: Any = None, vocab_size: int | None = None, topk: int | None = None,
                 lookahead: bool = False, target: float = 0.0) -> None:
        if fit is not None:
            a, b = fit.a, fit.b
        if a is None or b is None:
            raise PolicyError("channel-aware rule needs the U-HLM fit (a, b)")
        if not a > 0:
            raise PolicyError(f"channel-aware rule needs a positive slope a, got {a}")
        if not risk_weight > 0:
            raise PolicyError(f"risk weight lambda must be > 0, got {risk_weight}")
        if not latency_ref > 0:
            raise PolicyError(f"latency_ref must be > 0, got {latency_ref}")
        self.scenario = scenario
        self.risk_weight, self.latency_ref = float(risk_weight), float(latency_ref)
        self.a, self.b = float(a), float(b)
        self.max_tokens = int(max_tokens)
        self.vocab_size = vocab_size
        self.topk = topk
        self.lookahead = bool(lookahead)
        if not 0.0 <= target <= 1.0:
            raise PolicyError(f"risk target must be in [0, 1], got {target}")
        self.target = float(target)
        self.fit = fit

    def downlink_rate_bps(self, rate_bps: np.ndarray, snr_db: Any = None) -> np.ndarray:
        """Downlink rate: from the uplink SNR plus the scenario's downlink offset when ``snr_db``
        is known (as the environment's channel has it), else the uplink rate scaled by the
        bandwidth ratio."""
        sc = self.scenario
        if snr_db is None:
            return rate_bps * (sc.downlink_bandwidth_hz / sc.link.bandwidth_hz)
        from hlm_gym.wireless.rate import RateModel

        snr = np.broadcast_to(np.asarray(snr_db, dtype=np.float64), rate_bps.shape) + sc.downlink_offset_db
        with np.errstate(over="ignore"):
            return RateModel(sc.rate).rate_bps(10.0 ** (snr / 10.0), sc.downlink_bandwidth_hz)

    def send_cost_s(self, rate_bps: Any, pending: Any, snr_db: Any = None) -> np.ndarray:
        """``DeltaL(R, p)``: seconds that sending adds over skipping (array over links)."""
        rate = np.atleast_1d(np.asarray(rate_bps, dtype=np.float64))
        pend = np.broadcast_to(np.atleast_1d(np.asarray(pending, dtype=np.float64)), rate.shape)
        sc = self.scenario
        down = self.downlink_rate_bps(rate, snr_db)

        def extra(p: np.ndarray) -> np.ndarray:
            kw = dict(pending=p, topk=self.topk, vocab_size=self.vocab_size, up_rate_bps=rate, down_rate_bps=down)
            send = token_cost(sc, sent=np.ones(rate.shape, bool), **kw).latency_s
            skip = token_cost(sc, sent=np.zeros(rate.shape, bool), **kw).latency_s
            return send - skip

        cost = extra(pend)
        if self.lookahead:
            cost = cost + extra(np.zeros_like(pend)) - extra(pend + 1)
        return cost

    def threshold(self, rate_bps: Any, pending: Any = 0, snr_db: Any = None) -> np.ndarray:
        """``u_th(R, p) = (DeltaL / (lambda L_ref) - b + target) / a`` (send iff ``u > u_th``)."""
        return (self.send_cost_s(rate_bps, pending, snr_db) / (self.risk_weight * self.latency_ref) - self.b
                + self.target) / self.a

    def beta_hat(self, u: np.ndarray) -> np.ndarray:
        """``E[beta | u]`` as the rule prices it: the U-HLM fit ``clip(a u + b, 0, 1)``."""
        return np.clip(self.a * u + self.b, 0.0, 1.0)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        rate = np.power(10.0, obs[:, OBS_INDEX["log_rate"]]) - 1.0
        pending = np.rint(obs[:, OBS_INDEX["pending"]] * self.max_tokens)
        gain = self.risk_weight * (self.beta_hat(obs[:, OBS_INDEX["u"]]) - self.target)
        cost = self.send_cost_s(rate, pending, obs[:, OBS_INDEX["snr_db"]]) / self.latency_ref
        return np.where(gain > cost, SEND, SKIP).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "risk_weight": self.risk_weight, "latency_ref": self.latency_ref, "a": self.a, "b": self.b, "target": self.target,
                "scenario": getattr(self.scenario, "name", None), "lookahead": self.lookahead}
