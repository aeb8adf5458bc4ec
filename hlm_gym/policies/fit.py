"""U-HLM's linear fit of the rejection probability on the uncertainty, and its thresholds.

U-HLM observes that the draft's rejection probability ``beta = max(0, 1 - p(d)/q(d))`` is close
to linear in the temperature-perturbation uncertainty ``u``: ``beta ~ a*u + b``. From the fit:

* risk-averse ``u_th = -b/a``: skip only tokens whose predicted ``beta`` is <= 0, i.e. tokens
  predicted to be accepted outright;
* risk-prone ``u_th = (Delta - b)/a`` with ``Delta = P(p(d) < q(d))``, the probability that the
  draft is rejectable at all. Since ``beta > 0`` exactly when ``p(d) < q(d)``, ``Delta`` is
  estimated as the fraction of training tokens with ``beta > 0`` (or from ``p_draft < q_draft``
  when those columns are given).

The fit is ordinary least squares on the training-split tokens (one point per token).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hlm_gym.policies.base import PolicyError

__all__ = ["UHLMFit", "fit_uhlm", "fit_from_traces", "estimate_delta"]


@dataclass(frozen=True)
class UHLMFit:
    """Result of :func:`fit_uhlm`."""

    a: float                  #: slope
    b: float                  #: intercept
    r: float                  #: Pearson correlation of (u, beta)
    residual_std: float       #: standard deviation of beta - (a u + b)
    residual_mae: float       #: mean absolute residual
    slope_se: float           #: standard error of the slope (OLS)
    intercept_se: float       #: standard error of the intercept (OLS)
    n: int                    #: number of tokens fitted
    delta: float              #: Delta = P(p(d) < q(d)) estimated from the same tokens
    residual_by_u: tuple[tuple[float, float, int], ...] = ()  #: (u bin centre, mean residual, count)

    def _check_slope(self) -> None:
        if not self.a > 0:
            raise PolicyError(f"fitted slope a = {self.a:.4g} <= 0 (r = {self.r:.3f}, n = {self.n}): beta does not "
                              "grow with u on these traces, so the U-HLM thresholds are undefined")

    @property
    def u_th_averse(self) -> float:
        """Risk-averse threshold ``-b/a`` (skip iff ``u <= u_th``); PolicyError if ``a <= 0``."""
        self._check_slope()
        return -self.b / self.a

    @property
    def u_th_prone(self) -> float:
        """Risk-prone threshold ``(Delta - b)/a``; PolicyError if ``a <= 0``."""
        self._check_slope()
        return (self.delta - self.b) / self.a

    def threshold(self, kind: str = "averse") -> float:
        """``averse`` or ``prone`` threshold for "send iff u > u_th", capped at 1 (skip everything).

        A negative value is kept: no ``u`` in [0, 1] is below it, so the rule never skips, which
        is what the risk-averse rule means when ``b > 0`` (every token has a positive predicted
        ``beta``). Clipping it to 0 would instead skip the ``u = 0`` tokens."""
        if kind in ("averse", "risk-averse"):
            v = self.u_th_averse
        elif kind in ("prone", "risk-prone"):
            v = self.u_th_prone
        else:
            raise PolicyError(f"threshold kind must be 'averse' or 'prone', got {kind!r}")
        return float(min(v, 1.0))

    def predict_beta(self, u: Any) -> np.ndarray:
        """Predicted rejection probability ``clip(a u + b, 0, 1)``."""
        return np.clip(self.a * np.asarray(u, dtype=np.float64) + self.b, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["residual_by_u"] = [list(x) for x in self.residual_by_u]
        ok = self.a > 0
        d["u_th_averse"] = self.u_th_averse if ok else None
        d["u_th_prone"] = self.u_th_prone if ok else None
        return d


def estimate_delta(beta: Any, p_draft: Any = None, q_draft: Any = None) -> float:
    """``Delta = P(p(d) < q(d))``: from ``p_draft``/``q_draft`` when given, else ``mean(beta > 0)``."""
    if p_draft is not None and q_draft is not None:
        p = np.asarray(p_draft, dtype=np.float64)
        q = np.asarray(q_draft, dtype=np.float64)
        return float(np.mean(p < q))
    return float(np.mean(np.asarray(beta, dtype=np.float64) > 0))


def fit_uhlm(u: Any, beta: Any, p_draft: Any = None, q_draft: Any = None, n_bins: int = 10) -> UHLMFit:
    """Least-squares fit ``beta = a u + b`` over tokens; see the module docstring. A fit with
    ``a <= 0`` is returned (its numbers are a finding), but its thresholds raise PolicyError."""
    u = np.asarray(u, dtype=np.float64).ravel()
    beta = np.asarray(beta, dtype=np.float64).ravel()
    if u.shape != beta.shape:
        raise PolicyError(f"u and beta must have the same length, got {u.size} and {beta.size}")
    keep = np.isfinite(u) & np.isfinite(beta)
    u, beta = u[keep], beta[keep]
    n = u.size
    if n < 3:
        raise PolicyError(f"need at least 3 finite (u, beta) pairs to fit, got {n}")
    su = u.std()
    if su < 1e-12:
        raise PolicyError("u is constant: the slope of beta on u is undefined")
    um, bm = u.mean(), beta.mean()
    cov = np.mean((u - um) * (beta - bm))
    a = cov / su**2
    b = bm - a * um
    sb = beta.std()
    r = cov / (su * sb) if sb > 0 else 0.0
    res = beta - (a * u + b)
    s2 = float(np.sum(res**2) / max(n - 2, 1))
    sxx = float(np.sum((u - um) ** 2))
    slope_se = math.sqrt(s2 / sxx)
    intercept_se = math.sqrt(s2 * (1.0 / n + um**2 / sxx))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(u, edges) - 1, 0, n_bins - 1)
    by_u = []
    for k in range(n_bins):
        m = idx == k
        if m.any():
            by_u.append((float((edges[k] + edges[k + 1]) / 2), float(res[m].mean()), int(m.sum())))
    if p_draft is not None and q_draft is not None:
        p_draft = np.asarray(p_draft, dtype=np.float64).ravel()[keep]
        q_draft = np.asarray(q_draft, dtype=np.float64).ravel()[keep]
    return UHLMFit(a=float(a), b=float(b), r=float(r), residual_std=float(res.std()),
                   residual_mae=float(np.abs(res).mean()), slope_se=slope_se, intercept_se=intercept_se, n=int(n),
                   delta=estimate_delta(beta, p_draft, q_draft), residual_by_u=tuple(by_u))


def fit_from_traces(traces: Any = None, split: str = "train") -> UHLMFit:
    """Fit on a trace set's ``split`` (default: the shipped default traces, training split).

    ``traces`` is anything :func:`hlm_gym.policies.data.trace_columns` accepts (``None`` for the
    default set, a folder, or a mapping of numpy columns)."""
    from hlm_gym.policies.data import trace_columns

    cols = trace_columns(traces, split)
    return fit_uhlm(cols["u"], cols["beta"], cols.get("p_draft"), cols.get("q_draft"))
