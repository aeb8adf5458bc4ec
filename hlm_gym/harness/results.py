"""Evaluation results: per-episode metrics, their summary with Student-t intervals over episodes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["CI_METHOD", "EvaluationResult", "summarize_episodes", "t_interval"]

CI_METHOD = "Student-t 95% interval over episodes"


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, low, high, std)`` of a Student-t interval; NaN bounds for fewer than 2 values."""
    # the Student-t quantile from scipy.special (what scipy.stats.t.ppf calls, bit for bit): importing
    # scipy.stats costs about a second more in every process that evaluates
    from scipy.special import stdtrit

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, math.nan
    s = float(x.std(ddof=1))
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * s / math.sqrt(n)
    return m, m - half, m + half, s


def summarize_episodes(episodes: Sequence[dict[str, float]], metrics: Sequence[str]) -> dict[str, dict]:
    """``metric -> {mean, ci_low, ci_high, std, n}`` over the episodes that report it."""
    out: dict[str, dict] = {}
    for m in metrics:
        vals = [ep[m] for ep in episodes if m in ep and ep[m] is not None and np.isfinite(ep[m])]
        if not vals:
            continue
        mean, lo, hi, sd = t_interval(vals)
        out[m] = {"mean": mean, "ci_low": lo, "ci_high": hi, "std": sd, "n": len(vals)}
    return out


@dataclass
class EvaluationResult:
    """Per-episode metrics, their summary and the run's settings (``responses``: live mode's texts)."""

    config: dict[str, Any]
    episodes: list[dict[str, float]]
    summary: dict[str, dict] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "policy": self.policy, "ci_method": CI_METHOD, "summary": self.summary,
                "episodes": self.episodes}
