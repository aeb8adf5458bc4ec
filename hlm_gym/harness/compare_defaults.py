"""The default sweep and budgets of ``hlm-gym compare`` (no imports: the CLI reads them to build its help).

:data:`DEFAULTS` are the HybridLM family's. Another env family gives its own in
``EnvFamily.compare_defaults``; :func:`family_defaults` merges them: the family's scenarios, reward
sweeps and analytic sweeps (:data:`FAMILY_KEYS`) replace these as a whole (a sweep the family does
not name does not apply to it; ``full_X`` falls back to its ``X``), any other key it gives
overrides the budget here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["DEFAULTS", "SWEEP_FLAGS", "FAMILY_KEYS", "family_defaults"]

#: The analytic sweeps compare has a flag for (key -> flag); each family uses some of them.
SWEEP_FLAGS: dict[str, str] = {"thresholds": "--thresholds", "ltt_deltas": "--ltt-deltas",
                               "bild_alphas": "--bild-alphas", "calm_lambdas": "--calm-lambdas", "topk": "--topk"}
#: The keys a family's ``compare_defaults`` replaces as a whole.
FAMILY_KEYS = ("scenarios", "risk_weights", "full_risk_weights", "risk_targets", "full_risk_targets", *SWEEP_FLAGS)

DEFAULTS: dict[str, Any] = {
    "scenarios": ("pedestrian", "vehicular", "cell-edge-fast-fading"),
    "risk_weights": (1.0, 2.0, 3.0, 5.0),
    "full_risk_weights": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
    "risk_targets": (0.2, 0.3, 0.4, 0.45),
    "full_risk_targets": (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45),
    "target_risk_weight": 10.0,
    # 100k: over three seeds the risk-target runs were >= 10% ahead in the mid-risk band in 14 of 20
    # cases at 100k steps and 11 of 20 at 40k (docs/training.md)
    "timesteps": 100_000,
    "full_timesteps": 1_000_000,
    # u is recorded on a 0.05 grid and 39% of tokens have u = 1: the top of the sweep is dense
    "thresholds": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
    "ltt_deltas": (0.02, 0.05, 0.1),
    # BiLD fallback (send iff top-1 probability < alpha) and CALM softmax-margin (send iff margin <
    # lambda(t)) sweeps: the other analytic rules PPO is compared with at matched risk
    "bild_alphas": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "calm_lambdas": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    "episodes": 200,
    "full_episodes": 500,
    "eval_episodes": 48,
    # training seeds per reward setting (PPO points are means over them, with 95% t intervals)
    "seeds": 3,
    # PPO trainer: "population" (every run of the sweep as one batched torch run) or "sb3"
    "trainer": "population",
}


def family_defaults(compare_defaults: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """compare's defaults for an env family whose ``EnvFamily.compare_defaults`` is ``compare_defaults``
    (``None``: :data:`DEFAULTS`); the analytic sweeps present are the ones that apply to the family."""
    if compare_defaults is None:
        return dict(DEFAULTS)
    out = {k: v for k, v in DEFAULTS.items() if k not in FAMILY_KEYS} | dict(compare_defaults)
    out.setdefault("scenarios", ())
    for key in ("risk_weights", "risk_targets"):
        out.setdefault(key, ())
        out.setdefault("full_" + key, out[key])
    return out
