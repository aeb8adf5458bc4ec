"""Results over training seeds: one row per PPO reward setting, the mean over its seeds with a
95 % Student-t interval over seeds (``hlm-gym compare --seeds N``).

Each seed's model is evaluated on the same test episodes; its row holds the episode means. A
setting's row is then the mean of those per-seed values, and its ``*_ci`` half-widths are
``t_{0.975, n-1} * s / sqrt(n)`` over the ``n`` seeds: how much the *training run* varies, which
is what a reader comparing PPO against an analytic rule needs (single runs vary between
machines). With one seed the row is that seed's, with its interval over episodes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from hlm_gym.harness.results import t_interval

__all__ = ["SEED_FAMILY", "METRICS", "WITH_CI", "aggregate_seeds", "seed_row"]

#: The family of the per-seed rows (kept in results.csv; the tables, plots and dominance check
#: use the aggregated ``ppo`` rows).
SEED_FAMILY = "ppo-seed"
#: The metrics averaged over seeds by default (the HybridLM family's; ``*_ci``: those with an interval).
METRICS = ("tokens_per_s", "risk", "error_rate", "skip_rate", "transmission_rate", "energy_j_per_token")
WITH_CI = ("tokens_per_s", "risk", "error_rate")


def seed_row(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """A per-seed result row: ``row`` (an evaluation of one seed's model) marked with its seed."""
    return row | {"family": SEED_FAMILY, "seed": int(seed), "policy": f"{row['policy']}/seed{seed}"}


def aggregate_seeds(rows: Sequence[dict[str, Any]], family: str = "ppo", metrics: Sequence[str] = METRICS,
                    with_ci: Sequence[str] = WITH_CI) -> list[dict[str, Any]]:
    """One ``family`` row per (scenario, policy) of the per-seed rows in ``rows`` (in first-seen
    order): each of ``metrics``' mean over the seeds (NaN values left out), ``*_ci`` the 95 % t
    half-width over seeds of those in ``with_ci`` (an env family's ``row_metrics`` and
    ``ci_metrics``), ``seeds`` the count, ``seed_list`` the seeds. Rows that are not per-seed rows
    are ignored."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("family") == SEED_FAMILY:
            groups.setdefault((r["scenario"], r["policy"].rsplit("/seed", 1)[0]), []).append(r)
    out = []
    for (scenario, policy), members in groups.items():
        if len(members) == 1:
            only = members[0]
            out.append({k: v for k, v in only.items() if k != "seed"}
                       | {"family": family, "policy": policy, "seeds": 1, "seed_list": str(only["seed"])})
            continue
        first = members[0]
        row: dict[str, Any] = {"scenario": scenario, "family": family, "policy": policy, "lambda": first.get("lambda"),
                               "param": first.get("param"), "episodes": int(first.get("episodes", 0)),
                               "seeds": len(members), "seed_list": ";".join(str(m["seed"]) for m in members)}
        for m in metrics:
            values = np.array([float(x.get(m, math.nan)) for x in members], dtype=float)
            ok = values[np.isfinite(values)]
            row[m] = float(ok.mean()) if len(ok) else math.nan
            if m in with_ci:
                _, lo, hi, _ = t_interval(ok)
                row[m + "_ci"] = (hi - lo) / 2 if math.isfinite(lo) else math.nan
        out.append(row)
    return out
