"""The published decision rules as :class:`~hlm_gym.policies.base.Policy` objects.

=====================  =========================================================  ==========
class                  rule (per token)                                           source
=====================  =========================================================  ==========
``AlwaysSend``         send every draft (HLM, plain speculative sampling)         U-HLM
``NeverSend``          never send (SLM alone)                                     U-HLM
``RandomSkip``         skip with probability ``rate`` (own, seeded RNG)           Rand-HLM
``UncertaintyThreshold``  send iff ``u > u_th``                                   U-HLM
``BiLDFallback``       send iff ``top1_prob < alpha_fb`` (default 0.6)            BiLD
``CALMSoftmax``        send iff ``margin < lambda(t)``, decaying ``lambda(t)``    CALM
=====================  =========================================================  ==========
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hlm_gym.environments.hybrid_lm.observation import OBS_INDEX, SEND, SKIP
from hlm_gym.policies.base import Policy, PolicyError

__all__ = ["AlwaysSend", "NeverSend", "RandomSkip", "UncertaintyThreshold", "BiLDFallback", "CALMSoftmax",
           "calm_threshold"]

_U = OBS_INDEX["u"]
_TOP1 = OBS_INDEX["top1_prob"]
_MARGIN = OBS_INDEX["margin"]
_POS = OBS_INDEX["position"]


def _unit(value: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise PolicyError(f"{what} must be in [0, 1], got {v}")
    return v


class AlwaysSend(Policy):
    """HLM: upload every draft; the LLM verifies every token (no risk, full traffic)."""

    name = "always"

    def _act(self, obs: np.ndarray) -> np.ndarray:
        return np.full(obs.shape[0], SEND, dtype=np.int64)


class NeverSend(Policy):
    """SLM only: never upload (no traffic, every token unverified)."""

    name = "never"

    def _act(self, obs: np.ndarray) -> np.ndarray:
        return np.full(obs.shape[0], SKIP, dtype=np.int64)


class RandomSkip(Policy):
    """Rand-HLM: skip each token independently with probability ``rate``.

    Randomness comes only from ``rng`` (a ``numpy.random.Generator``) or ``seed``; ``reseed``
    restarts the stream, so an evaluation with a fixed seed is reproducible.
    """

    name = "random"

    def __init__(self, rate: float, rng: np.random.Generator | None = None, seed: int | None = None) -> None:
        self.rate = _unit(rate, "skip rate")
        self._seed = seed
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream from ``seed``."""
        self._seed = seed
        self.rng = np.random.default_rng(seed)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        skip = self.rng.random(obs.shape[0]) < self.rate
        return np.where(skip, SKIP, SEND).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate}


class UncertaintyThreshold(Policy):
    """U-HLM: send iff ``u > u_th`` (skip iff ``u <= u_th``).

    ``u_th`` may be any real from code (``-inf``/negative: never skip; ``>= 1``: always skip);
    spec strings restrict it to [0, 1]. ``fit`` (optional) is the :class:`~hlm_gym.policies.fit.UHLMFit`
    it came from, kept for reports.
    """

    name = "uhlm"

    def __init__(self, u_th: float, fit: Any = None, label: str | None = None) -> None:
        try:
            self.u_th = float(u_th)
        except (TypeError, ValueError):
            raise PolicyError(f"u_th must be a number, got {u_th!r}") from None
        if math.isnan(self.u_th):
            raise PolicyError("u_th must not be NaN")
        self.fit = fit
        self.label = label

    def _act(self, obs: np.ndarray) -> np.ndarray:
        return np.where(obs[:, _U] > self.u_th, SEND, SKIP).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "u_th": self.u_th}
        if self.label:
            d["label"] = self.label
        return d


class BiLDFallback(Policy):
    """BiLD's fallback: hand the token to the large model iff the small model's top-1 probability
    is below ``alpha_fb`` (default 0.6). BiLD's code also falls back after 10 consecutive small
    steps; ``max_small_steps`` reproduces that from the ``pending`` entry of the observation
    (``pending * max_tokens >= max_small_steps`` forces a send); ``None`` (default) disables it."""

    name = "bild"

    def __init__(self, alpha_fb: float = 0.6, max_small_steps: int | None = None, max_tokens: int | None = None) -> None:
        self.alpha_fb = _unit(alpha_fb, "alpha_FB")
        if max_small_steps is not None and (max_tokens is None or max_small_steps < 1):
            raise PolicyError("max_small_steps needs max_tokens and must be >= 1")
        self.max_small_steps = max_small_steps
        self.max_tokens = max_tokens

    def _act(self, obs: np.ndarray) -> np.ndarray:
        send = obs[:, _TOP1] < self.alpha_fb
        if self.max_small_steps is not None:
            pending = np.rint(obs[:, OBS_INDEX["pending"]] * self.max_tokens)
            send |= pending >= self.max_small_steps
        return np.where(send, SEND, SKIP).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "alpha_fb": self.alpha_fb, "max_small_steps": self.max_small_steps}


def calm_threshold(lam: float, t: np.ndarray | float, n: int, tau: float = 4.0) -> np.ndarray:
    """CALM's decaying threshold ``lambda(t) = 0.9*lambda + 0.1*lambda*exp(-tau*t/N)`` (t5x code)."""
    t = np.asarray(t, dtype=np.float64)
    return 0.9 * lam + 0.1 * lam * np.exp(-tau * t / n)


class CALMSoftmax(Policy):
    """CALM's softmax-response confidence as a send rule: the SLM is confident at position ``t``
    iff its top-1 minus top-2 probability ``margin >= lambda(t)``; send iff ``margin < lambda(t)``,
    with ``lambda(t) = 0.9*lambda + 0.1*lambda*exp(-tau*t/N)``, ``tau = 4``, ``N = max_tokens``.
    ``t`` is recovered from the observation as ``round(position * max_tokens)``, so the policy
    is stateless and vectorises over episodes at different positions. ``decay=False`` keeps
    ``lambda`` constant."""

    name = "calm"

    def __init__(self, lam: float = 0.9, max_tokens: int = 128, tau: float = 4.0, decay: bool = True) -> None:
        self.lam = _unit(lam, "CALM lambda")
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
            raise PolicyError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if not tau >= 0:
            raise PolicyError(f"tau must be >= 0, got {tau}")
        self.max_tokens = int(max_tokens)
        self.tau = float(tau)
        self.decay = bool(decay)

    def threshold(self, t: np.ndarray | float) -> np.ndarray:
        """``lambda(t)`` at positions ``t``."""
        if not self.decay:
            return np.full(np.shape(t), self.lam)
        return calm_threshold(self.lam, t, self.max_tokens, self.tau)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        t = np.rint(obs[:, _POS] * self.max_tokens)
        return np.where(obs[:, _MARGIN] < self.threshold(t), SEND, SKIP).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lambda": self.lam, "tau": self.tau, "max_tokens": self.max_tokens,
                "decay": self.decay}
