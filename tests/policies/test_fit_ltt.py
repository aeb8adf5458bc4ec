"""U-HLM fit and Learn-then-Test on synthetic data (no environment, no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from hlm_gym.policies.base import PolicyError
from hlm_gym.policies.fit import estimate_delta, fit_uhlm
from hlm_gym.policies.ltt import (DEFAULT_CANDIDATES, empirical_risk_curve, hb_pvalue, learn_then_test,
                                  response_losses)


def synthetic_tokens(rng: np.random.Generator, n_resp: int, t: int = 32, a: float = 0.82, b: float = -0.06,
                     noise: float = 0.08):
    """Responses of ``t`` tokens: u on the K = 20 grid, beta = clip(a u + b + response effect + noise)."""
    u = rng.binomial(20, rng.beta(0.6, 3.0, size=(n_resp, t))) / 20.0
    effect = rng.normal(0.0, 0.03, size=(n_resp, 1))
    beta = np.clip(a * u + b + effect + rng.normal(0.0, noise, size=u.shape), 0.0, 1.0)
    episode = np.repeat(np.arange(n_resp), t)
    return u.ravel(), beta.ravel(), episode


def test_fit_recovers_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, 20000)
    beta = 0.82 * u - 0.06 + rng.normal(0, 0.05, u.size)
    fit = fit_uhlm(u, beta)
    assert fit.a == pytest.approx(0.82, abs=0.01)
    assert fit.b == pytest.approx(-0.06, abs=0.01)
    assert fit.r > 0.95 and fit.n == 20000
    assert fit.residual_std == pytest.approx(0.05, abs=0.005)
    assert abs(fit.a - 0.82) < 4 * fit.slope_se + 1e-3
    assert fit.u_th_averse == pytest.approx(0.06 / 0.82, abs=0.02)
    assert all(abs(m) < 0.01 for _, m, _ in fit.residual_by_u)


def test_delta_and_prone_threshold():
    beta = np.array([0.0, 0.0, 0.3, 0.5])
    assert estimate_delta(beta) == 0.5
    assert estimate_delta(beta, p_draft=[0.1, 0.2, 0.3, 0.4], q_draft=[0.05, 0.3, 0.5, 0.5]) == 0.75
    rng = np.random.default_rng(1)
    u = rng.uniform(0, 1, 5000)
    beta = np.clip(0.8 * u - 0.1 + rng.normal(0, 0.02, u.size), 0, 1)
    fit = fit_uhlm(u, beta)
    assert fit.delta == pytest.approx(np.mean(beta > 0))
    assert fit.u_th_prone == pytest.approx((fit.delta - fit.b) / fit.a)
    assert fit.threshold("prone") > fit.threshold("averse")
    assert 0.0 <= fit.threshold("prone") <= 1.0
    # b > 0: every token has a positive predicted beta, the risk-averse rule never skips
    pos = fit_uhlm(u, np.clip(0.2 * u + 0.5, 0, 1))
    assert pos.threshold("averse") < 0 and pos.threshold("prone") == 1.0


def test_fit_rejects_bad_input():
    with pytest.raises(PolicyError):
        fit_uhlm([0.1, 0.1, 0.1], [0.0, 0.1, 0.2])
    with pytest.raises(PolicyError):
        fit_uhlm([0.1, 0.2], [0.0, 0.1])
    fit = fit_uhlm([0.1, 0.5, 0.9], [0.9, 0.5, 0.1])  # a negative slope is reported ...
    assert fit.a == pytest.approx(-1.0) and fit.to_dict()["u_th_averse"] is None
    with pytest.raises(PolicyError, match="slope"):  # ... but has no thresholds
        fit.threshold("averse")


def test_hb_pvalue_matches_formula():
    n, delta, r = 200, 0.1, 0.05
    h1 = r * math.log(r / delta) + (1 - r) * math.log((1 - r) / (1 - delta))
    expected = min(math.exp(-n * h1), math.e * binom.cdf(math.ceil(n * r), n, delta))
    assert hb_pvalue(r, n, delta) == pytest.approx(expected)
    assert hb_pvalue(0.2, n, delta) == pytest.approx(1.0)  # above delta: no evidence
    assert hb_pvalue(0.0, 1000, delta) < 1e-10


def test_response_losses_by_hand():
    # two responses; candidates 0.1, 0.5
    score = np.array([0.0, 0.3, 0.9, 0.2])
    beta = np.array([0.1, 0.4, 0.8, 0.2])
    ep = np.array([0, 0, 0, 1])
    L = response_losses(score, beta, ep, [0.1, 0.5], risk="skipped")
    np.testing.assert_allclose(L, [[0.1, 0.25], [0.0, 0.2]])
    L = response_losses(score, beta, ep, [0.1, 0.5], risk="token")
    np.testing.assert_allclose(L, [[0.1 / 3, 0.5 / 3], [0.0, 0.2]])
    with pytest.raises(PolicyError):
        response_losses(score, beta, ep, [0.5, 0.1])


@pytest.mark.parametrize("risk,delta", [("skipped", 0.05), ("token", 0.02)])
def test_ltt_guarantee_in_repeated_simulation(risk, delta):
    eps, reps, n_cal = 0.1, 200, 400
    rng = np.random.default_rng(123)
    # the true risk curve from a large independent sample
    u, beta, ep = synthetic_tokens(rng, 20000)
    true_curve = empirical_risk_curve(u, beta, ep, DEFAULT_CANDIDATES, risk)
    violations, chosen = 0, []
    for _ in range(reps):
        u, beta, ep = synthetic_tokens(rng, n_cal)
        res = learn_then_test(u, beta, ep, delta=delta, epsilon=eps, risk=risk)
        if res.threshold is not None:
            chosen.append(res.threshold)
            violations += true_curve[np.searchsorted(DEFAULT_CANDIDATES, res.threshold)] > delta
    # the guarantee, with a binomial tolerance for 300 repetitions
    assert violations / reps <= eps + 3 * math.sqrt(eps * (1 - eps) / reps)
    # and it is not vacuous: thresholds are found and skip something
    assert len(chosen) > 0.9 * reps and np.median(chosen) > 0.0
    # the largest safe candidate is not far above the typical choice
    safe = DEFAULT_CANDIDATES[true_curve <= delta]
    assert np.median(chosen) <= safe.max()


def test_ltt_returns_none_when_nothing_is_safe():
    rng = np.random.default_rng(5)
    u, beta, ep = synthetic_tokens(rng, 50)
    res = learn_then_test(u, np.clip(beta + 0.5, 0, 1), ep, delta=0.05, epsilon=0.1)
    assert res.threshold is None and res.n_tested == 1
    with pytest.raises(PolicyError):
        learn_then_test(u, beta, ep, delta=0.0)
    with pytest.raises(PolicyError):
        learn_then_test(u, beta, ep, epsilon=1.5)


def test_holdout_check_reports_a_small_violation_rate():
    from hlm_gym.policies.ltt import holdout_check

    rng = np.random.default_rng(9)
    u, beta, ep = synthetic_tokens(rng, 1200)
    out = holdout_check(u, beta, ep, delta=0.05, epsilon=0.1, reps=50, seed=0)
    assert out["violation_rate"] <= 0.1 + 0.05 and out["median_threshold"] is not None
    assert out["n_calibration"] == 600 and out["n_holdout"] == 600
