"""Learn-then-Test calibration of a skip threshold (Angelopoulos et al. 2021; CALM, Schuster et al. 2022).

Rule family: skip token ``i`` iff ``score_i <= lambda`` (``score = u`` for U-HLM), send otherwise.
Larger ``lambda`` skips more tokens, so candidates are ordered from the safest (smallest) to
the most aggressive (largest).

Loss and the i.i.d. unit
------------------------
The calibration units are **responses** (episodes), which are i.i.d. draws of a prompt and a
sampled response; tokens inside one response are not independent. For response ``j`` with
tokens ``i`` and candidate ``lambda`` the loss is, by ``risk=``:

* ``"skipped"`` (default): ``L_j(lambda) = sum_i beta_i 1[skip_i] / max(1, sum_i 1[skip_i])``, the
  mean rejection probability of the tokens the rule skipped in that response (0 if none); this
  is the "mean rejection risk of skipped tokens", averaged per response;
* ``"token"``: ``L_j(lambda) = (1/T_j) sum_i beta_i 1[skip_i]``, the rejection risk per output token.

Both are in [0, 1]. The controlled risk is ``R(lambda) = E_j[L_j(lambda)]`` (the expectation over
responses), and Learn-then-Test returns ``lambda_hat`` with ``P(R(lambda_hat) <= delta) >= 1 - epsilon``
over the draw of the calibration set, with no assumption on the risk curve's shape.

Procedure (fixed-sequence testing): for each candidate in order, compute the Hoeffding-Bentkus
p-value of the null ``H_lambda: R(lambda) > delta`` from the ``n`` calibration responses; keep
going while ``p <= epsilon``, stop at the first failure; return the last candidate that was
rejected. If even the safest candidate fails, the result is ``None`` (never skip).

Hoeffding-Bentkus p-value (Bates et al. 2021, Angelopoulos et al. 2021):
``p = min( exp(-n h1(min(R_hat, delta), delta)), e * P(Binom(n, delta) <= ceil(n R_hat)) )`` with
``h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from hlm_gym.policies.base import PolicyError

__all__ = ["holdout_check", "hb_pvalue", "response_losses", "learn_then_test", "LTTResult", "empirical_risk_curve",
           "DEFAULT_CANDIDATES"]

#: Default candidate thresholds: 0, 0.01, ..., 1 (``u`` is a multiple of 1/K).
DEFAULT_CANDIDATES = np.round(np.linspace(0.0, 1.0, 101), 10)
RISKS = ("skipped", "token")


def _h1(a: np.ndarray, b: float) -> np.ndarray:
    a = np.clip(a, 1e-300, 1 - 1e-16)
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def hb_pvalue(risk_hat: Any, n: int, delta: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value of ``R > delta`` given the empirical risk ``risk_hat`` over ``n`` units."""
    if n < 1:
        raise PolicyError(f"need at least one calibration unit, got n={n}")
    if not 0.0 < delta < 1.0:
        raise PolicyError(f"delta must be in (0, 1), got {delta}")
    from scipy.stats import binom  # scipy.stats takes a second to import: only when calibrating

    r = np.asarray(risk_hat, dtype=np.float64)
    hoeffding = np.exp(-n * _h1(np.minimum(r, delta), delta))
    bentkus = math.e * binom.cdf(np.ceil(n * r - 1e-9), n, delta)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def response_losses(score: Any, beta: Any, episode: Any, candidates: Sequence[float],
                    risk: str = "skipped") -> np.ndarray:
    """Loss matrix ``(n_responses, n_candidates)`` for the rule "skip iff score <= lambda"."""
    if risk not in RISKS:
        raise PolicyError(f"risk must be one of {RISKS}, got {risk!r}")
    score = np.asarray(score, dtype=np.float64).ravel()
    beta = np.asarray(beta, dtype=np.float64).ravel()
    episode = np.asarray(episode).ravel()
    if not (score.size == beta.size == episode.size):
        raise PolicyError("score, beta and episode must have the same length")
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.ndim != 1 or cand.size == 0 or np.any(np.diff(cand) <= 0):
        raise PolicyError("candidates must be a non-empty strictly increasing sequence (safest first)")
    _, ep = np.unique(episode, return_inverse=True)
    n_ep = int(ep.max()) + 1 if ep.size else 0
    # first candidate index at which the token is skipped (score <= cand[k]); n_cand = never
    first = np.searchsorted(cand, score, side="left")
    n_c = cand.size
    flat = ep * (n_c + 1) + first
    size = n_ep * (n_c + 1)
    num = np.bincount(flat, weights=beta, minlength=size).reshape(n_ep, n_c + 1)
    cnt = np.bincount(flat, minlength=size).astype(np.float64).reshape(n_ep, n_c + 1)
    num = np.cumsum(num, axis=1)[:, :n_c]
    cnt = np.cumsum(cnt, axis=1)[:, :n_c]
    if risk == "skipped":
        return num / np.maximum(cnt, 1.0)
    tokens = np.bincount(ep, minlength=n_ep).astype(np.float64)
    return num / tokens[:, None]


def empirical_risk_curve(score: Any, beta: Any, episode: Any, candidates: Sequence[float] = DEFAULT_CANDIDATES,
                         risk: str = "skipped") -> np.ndarray:
    """``R_hat(lambda)`` for each candidate: the mean over responses of :func:`response_losses`."""
    return response_losses(score, beta, episode, candidates, risk).mean(axis=0)


@dataclass
class LTTResult:
    """Outcome of :func:`learn_then_test`."""

    threshold: float | None        #: chosen lambda (skip iff score <= lambda); None = never skip
    delta: float
    epsilon: float
    risk: str
    n: int                         #: calibration responses
    candidates: np.ndarray = field(repr=False)
    risk_hat: np.ndarray = field(repr=False)
    pvalues: np.ndarray = field(repr=False)
    n_tested: int = 0              #: candidates tested before stopping

    @property
    def risk_hat_at_threshold(self) -> float | None:
        if self.threshold is None:
            return None
        return float(self.risk_hat[int(np.searchsorted(self.candidates, self.threshold))])

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "delta": self.delta, "epsilon": self.epsilon, "risk": self.risk,
                "n": self.n, "n_tested": self.n_tested, "risk_hat_at_threshold": self.risk_hat_at_threshold}


def learn_then_test(score: Any, beta: Any, episode: Any, delta: float = 0.05, epsilon: float = 0.1,
                    candidates: Sequence[float] = DEFAULT_CANDIDATES, risk: str = "skipped") -> LTTResult:
    """Calibrate "skip iff score <= lambda" so that ``P(R(lambda) <= delta) >= 1 - epsilon``; see the module docstring."""
    if not 0.0 < epsilon < 1.0:
        raise PolicyError(f"epsilon must be in (0, 1), got {epsilon}")
    losses = response_losses(score, beta, episode, candidates, risk)
    n = losses.shape[0]
    r_hat = losses.mean(axis=0)
    pv = hb_pvalue(r_hat, n, delta)
    cand = np.asarray(candidates, dtype=np.float64)
    chosen: float | None = None
    tested = 0
    for k in range(cand.size):
        tested += 1
        if pv[k] > epsilon:
            break
        chosen = float(cand[k])
    return LTTResult(threshold=chosen, delta=float(delta), epsilon=float(epsilon), risk=risk, n=n,
                     candidates=cand, risk_hat=r_hat, pvalues=pv, n_tested=tested)


def holdout_check(score: Any, beta: Any, episode: Any, delta: float = 0.05, epsilon: float = 0.1,
                  calibration_fraction: float = 0.5, reps: int = 200, seed: int = 0,
                  candidates: Sequence[float] = DEFAULT_CANDIDATES, risk: str = "skipped") -> dict[str, Any]:
    """Check the guarantee on held-out responses: ``reps`` random splits of the responses into a
    calibration part (``calibration_fraction``) and a held-out part; calibrate on the first,
    measure the held-out empirical risk at the chosen threshold. Returns the violation rate
    (held-out risk > delta; to compare with epsilon, bearing in mind that the held-out risk is
    itself an estimate), the median threshold and the fraction of splits with no threshold."""
    losses = response_losses(score, beta, episode, candidates, risk)
    n = losses.shape[0]
    rng = np.random.default_rng(seed)
    cand = np.asarray(candidates, dtype=np.float64)
    m = max(1, int(round(calibration_fraction * n)))
    viol, chosen, none = 0, [], 0
    for _ in range(reps):
        perm = rng.permutation(n)
        cal, held = losses[perm[:m]], losses[perm[m:]]
        pv = hb_pvalue(cal.mean(axis=0), m, delta)
        ok = np.flatnonzero(np.cumprod(pv <= epsilon))
        if ok.size == 0:
            none += 1
            continue
        k = int(ok[-1])
        chosen.append(float(cand[k]))
        viol += float(held[:, k].mean()) > delta
    return {"reps": reps, "n_calibration": m, "n_holdout": n - m, "violation_rate": viol / reps,
            "median_threshold": float(np.median(chosen)) if chosen else None, "no_threshold_rate": none / reps,
            "delta": delta, "epsilon": epsilon, "risk": risk}
