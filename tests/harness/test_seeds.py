"""Results over training seeds (:mod:`hlm_gym.harness.seeds`): the mean over seeds and a 95 %
Student-t interval over seeds per PPO setting."""

from __future__ import annotations

import math

import pytest

from hlm_gym.harness.seeds import SEED_FAMILY, aggregate_seeds, seed_row


def _row(policy, tps, risk, scenario="s"):
    return {"scenario": scenario, "family": "ppo", "policy": policy, "lambda": 5.0, "param": 0.0, "tokens_per_s": tps,
            "tokens_per_s_ci": 0.5, "risk": risk, "risk_ci": 0.01, "error_rate": risk / 2, "error_rate_ci": 0.01,
            "skip_rate": 0.5, "transmission_rate": 0.5, "energy_j_per_token": 0.1, "episodes": 200}


def test_mean_and_t_interval_over_seeds():
    rows = [seed_row(_row("ppo:lambda=5", t, r), s) for s, (t, r) in enumerate([(10.0, 0.2), (12.0, 0.3), (14.0, 0.4)])]
    rows.append(seed_row(_row("ppo:lambda=5", 99.0, 0.9, scenario="other"), 0))
    assert all(r["family"] == SEED_FAMILY for r in rows) and rows[1]["policy"] == "ppo:lambda=5/seed1"
    agg = aggregate_seeds(rows)
    assert [(a["scenario"], a["policy"], a["seeds"]) for a in agg] == [("s", "ppo:lambda=5", 3),
                                                                          ("other", "ppo:lambda=5", 1)]
    a = agg[0]
    assert a["family"] == "ppo" and a["seed_list"] == "0;1;2" and a["tokens_per_s"] == pytest.approx(12.0)
    # t_{0.975, 2} = 4.302653, s = 2, n = 3
    assert a["tokens_per_s_ci"] == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-6)
    assert a["risk"] == pytest.approx(0.3) and a["risk_ci"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    one = agg[1]  # one seed: that seed's row and its interval over episodes
    assert one["tokens_per_s"] == 99.0 and one["tokens_per_s_ci"] == 0.5 and "seed" not in one


def test_rows_that_are_not_per_seed_are_ignored():
    assert aggregate_seeds([_row("ppo:lambda=5", 10.0, 0.2)]) == []
