"""The WDMoE expert-selection rules and their spec kinds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hlm_gym.policies.base import PolicyError
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.registry import make_policy
from hlm_gym.policies.wdmoe_rules import GateTopK, MyopicSelection, WeightLatencyRatio, all_subsets, selection_action

E = 8
CTX = PolicyContext(env_id="hlm_gym/WDMoE-v0", n_actions=1 << E, send_action=(1 << E) - 1,
                    observation_shape=(2 * E + 2,), risk_weight=2.0)


def observations(n=64, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(E), size=n)
    t = rng.uniform(0.05, 3.0, size=(n, E))
    return np.concatenate([w, t, rng.random((n, 2))], axis=1)


def bits(actions):
    return ((np.asarray(actions)[:, None] >> np.arange(E)) & 1).astype(bool)


def test_selection_action_and_subsets_are_the_env_encoding():
    from hlm_gym.environments.wdmoe.kernel import selection_bits

    subsets = all_subsets(E)
    assert subsets.shape == (255, E)
    assert np.array_equal(selection_action(subsets), np.arange(1, 256))
    assert np.array_equal(selection_bits(np.arange(1, 256), E), subsets)


def test_topk_uses_the_largest_gate_weights():
    obs = observations()
    for k in (1, 2, E):
        sel = bits(GateTopK(k, E).act(obs))
        assert (sel.sum(1) == k).all()
        w = obs[:, :E]
        kth = np.sort(w, axis=1)[:, -k]
        assert (w[sel].reshape(len(obs), k) >= kth[:, None] - 1e-15).all()
    assert (GateTopK(E, E).act(obs) == 255).all()


def test_wlr_keeps_experts_with_a_good_weight_to_latency_ratio():
    obs = observations()
    w, t = obs[:, :E], obs[:, E:2 * E]
    ratio = w / t
    assert (WeightLatencyRatio(0.0, E).act(obs) == 255).all()
    best = bits(WeightLatencyRatio(1.0, E).act(obs))
    assert (best.sum(1) == 1).all() and np.array_equal(best.argmax(1), ratio.argmax(1))
    mid = bits(WeightLatencyRatio(0.5, E, k=4).act(obs))
    top4 = np.argsort(-w, axis=1)[:, :4]
    for i in range(len(obs)):
        cand = np.zeros(E, bool)
        cand[top4[i]] = True
        r = np.where(cand, ratio[i], -np.inf)
        assert np.array_equal(mid[i], cand & (r >= 0.5 * r.max()))
    assert len(set(mid.sum(1).tolist())) > 1  # the number of experts is dynamic


def test_myopic_is_the_brute_force_optimum_of_its_cost():
    obs = observations(16)
    w, t = obs[:, :E], obs[:, E:2 * E]
    for lam in (0.0, 0.7, 5.0):
        acts = MyopicSelection(lam, E).act(obs)
        for i in range(len(obs)):
            best, arg = np.inf, None
            for a in range(1, 256):
                s = bits([a])[0]
                cost = t[i][s].max() + lam * (w[i][~s] ** 2).sum() / (w[i] ** 2).sum()
                if cost < best - 1e-12:
                    best, arg = cost, a
            assert acts[i] == arg
    assert (bits(MyopicSelection(0.0, E).act(obs)).sum(1) == 1).all()  # lambda 0: the fastest expert
    assert (MyopicSelection(1e12, E).act(obs) == 255).all()


@pytest.mark.parametrize("spec, cls", [("topk:2", GateTopK), ("wlr:0.4", WeightLatencyRatio),
                                       ("wlr:0.4,k=3", WeightLatencyRatio), ("myopic", MyopicSelection),
                                       ("myopic:lambda=0.5", MyopicSelection)])
def test_specs_build_rules_for_the_wdmoe_env(spec, cls):
    pol = make_policy(spec, CTX)
    assert isinstance(pol, cls) and pol.n_actions == 256
    assert pol.act(observations(4)).shape == (4,)
    if spec == "myopic":
        assert pol.risk_weight == 2.0  # the environment's


@pytest.mark.parametrize("spec, why", [("topk:0", ">= 1"), ("topk:9", "exceeds"), ("topk:x", "whole number"),
                                       ("topk", "needs K"), ("wlr:1.5", r"\[0, 1\]"), ("wlr:0.2,k=12", "exceeds"),
                                       ("myopic:lambda=-1", "lambda"), ("threshold:0.5", "does not apply")])
def test_bad_specs_are_one_line_errors(spec, why):
    with pytest.raises(PolicyError, match=why) as err:
        make_policy(spec, CTX)
    assert "\n" not in str(err.value)


def test_wdmoe_rules_do_not_apply_to_hybrid_lm():
    with pytest.raises(PolicyError, match="does not apply"):
        make_policy("topk:2", PolicyContext())


def test_rules_refuse_observations_of_another_layout():
    with pytest.raises(PolicyError, match=r"\(n, 18\)"):
        GateTopK(2, E).act(np.zeros((3, 10)))


def test_all_experts_rule_equals_every_subset_enumeration():
    assert sorted(itertools.chain.from_iterable([selection_action(all_subsets(3)).tolist()])) == list(range(1, 8))
