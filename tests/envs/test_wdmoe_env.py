"""hlm_gym/WDMoE-v0: checkers, seeding, the batched envs equal the single env, the step's accounting.

The mechanics tests replay a small synthetic trace whose experts' output vectors are known, so
the quality loss can be checked against its definition; the shipped traces are tested in
tests/traces/test_wdmoe_traces.py and at the end of this file.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import hlm_gym.environments.wdmoe.simulation as simulation
from hlm_gym.environments.options import EnvConfigError, UnknownOptionError
from hlm_gym.environments.wdmoe.env import WDMoEEnv
from hlm_gym.environments.wdmoe.kernel import selection_bits
from hlm_gym.environments.wdmoe.vector import WDMoETorchVectorEnv, WDMoEVectorEnv

SCENARIOS = ("close-static", "mixed-vehicular")
BANK = {"channel_bank_size": 4, "channel_bank_points": 4096}


def synthetic(tokens=(4, 5, 3), layers=3, experts=8, width=6, seed=0):
    """A trace-like object of known expert outputs ``y`` (rows, experts, width)."""
    rng = np.random.default_rng(seed)
    rows = sum(tokens) * layers
    y = rng.normal(size=(rows, experts, width))
    scores = rng.random((rows, experts))
    scores /= scores.sum(1, keepdims=True)
    return types.SimpleNamespace(
        scores=scores.astype(np.float32), gram=np.einsum("rei,rfi->ref", y, y).astype(np.float32),
        residual_norm2=(rng.random(rows) * 50 + 10).astype(np.float32),
        token_ids=rng.integers(0, 100, sum(tokens)),
        prompt_offsets=np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64) * layers,
        n_layers=layers, n_experts=experts, meta={"max_tokens": max(tokens)}, y=y)


@pytest.fixture
def trace(monkeypatch):
    tr = synthetic()
    monkeypatch.setattr(simulation, "read_traces", lambda source: tr)
    return tr


def rollout(env, actions_seed=0, seed=3):
    rng = np.random.default_rng(actions_seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    done = False
    while not done:
        obs, r, done, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        out += [obs, r, info]
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkers_pass(trace, scenario):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(WDMoEEnv(scenario=scenario, **BANK), skip_render_check=True)
    sb3_check_env(WDMoEEnv(scenario=scenario, **BANK))


def test_registered_and_seeded_rollouts_reproduce(trace):
    import gymnasium as gym

    import hlm_gym  # noqa: F401  (registers the env ids)

    env = gym.make("hlm_gym/WDMoE-v0", scenario="mixed-vehicular", **BANK)
    a, b = rollout(env), rollout(env)
    assert len(a) == len(b) == 1 + 3 * 12 * 3 or len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x == y
        else:
            assert np.array_equal(x, y)
    c = rollout(env, seed=4)
    assert any(not np.array_equal(x, y) for x, y in zip(a[::3], c[::3]))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_vector_and_torch_envs_equal_the_single_env(trace, scenario):
    n = 3
    vec = WDMoEVectorEnv(num_envs=n, scenario=scenario, **BANK)
    tvec = WDMoETorchVectorEnv(num_envs=n, device="cpu", scenario=scenario, **BANK)
    singles = [WDMoEEnv(scenario=scenario, **BANK) for _ in range(n)]
    obs_v, _ = vec.reset(seed=7)
    obs_t, _ = tvec.reset(seed=7)
    obs_s = np.stack([e.reset(seed=7 + i)[0] for i, e in enumerate(singles)])
    assert np.array_equal(obs_v, obs_s) and np.array_equal(obs_v, obs_t.numpy())
    rng = np.random.default_rng(1)
    pending = [False] * n  # the single env ended: the vector env resets it at this step
    ends = 0
    for _ in range(120):
        a = rng.integers(0, 256, n)
        ov, rv, tv, _, iv = vec.step(a)
        ot, rt, tt, _, it = tvec.step(torch.as_tensor(a))
        assert np.array_equal(ov, ot.numpy()) and np.array_equal(tv, tt.numpy())
        np.testing.assert_allclose(rv, rt.numpy(), rtol=0, atol=1e-12)
        for i, env in enumerate(singles):
            if pending[i]:
                o, _ = env.reset()
                assert np.array_equal(o, ov[i]) and rv[i] == 0.0 and not tv[i]
                pending[i] = False
                continue
            o, r, d, _, info = env.step(int(a[i]))
            assert np.array_equal(o, ov[i]) and d == tv[i]
            assert r == pytest.approx(rv[i], abs=1e-12)
            assert info["latency_s"] == pytest.approx(iv["latency_s"][i], abs=1e-15)
            if d:
                pending[i] = True
                ends += 1
                assert info["tokens_per_s"] == pytest.approx(iv["tokens_per_s"][i], rel=1e-12)
    assert ends >= 3


def test_step_accounting_matches_its_definition(trace):
    env = WDMoEEnv(scenario="mixed-vehicular", risk_weight=2.0, risk_target=0.1, **BANK)
    env.reset(seed=0)
    k, sim = env._kernel, env.sim
    rng = np.random.default_rng(0)
    for _ in range(20):
        row = int(k.row[0])
        crow = int(k.channel_rows()[0])
        a = int(rng.integers(1, 256))
        _, r, done, _, info = env.step(a)
        sel = selection_bits(a, 8)
        times = sim.expert_s[crow]
        latency = times[sel].max() + sim.bs_layer_s
        assert info["latency_s"] == pytest.approx(latency, rel=1e-12)
        assert info["energy_j"] == pytest.approx(sim.expert_j[crow][sel].sum(), rel=1e-12)
        y = trace.y[row]
        want = np.sum(y[~sel].sum(0) ** 2) / np.sum(y.sum(0) ** 2)
        assert info["step_quality_loss"] == pytest.approx(want, rel=1e-5)
        assert r == pytest.approx(-latency / sim.latency_ref - 2.0 * (want - 0.1), rel=1e-5)
        assert info["n_selected"] == sel.sum() and not info["empty"]
        if done:
            break


def test_all_experts_lose_nothing_and_empty_means_top1(trace):
    env = WDMoEEnv(scenario="close-static", **BANK)
    obs, _ = env.reset(seed=0)
    _, _, _, _, info = env.step(255)
    assert info["step_quality_loss"] == 0.0 and info["n_selected"] == 8
    obs_gates = env._obs[0, :8].copy()
    _, _, _, _, info = env.step(0)
    top1 = int(np.argmax(obs_gates))
    assert info["empty"] and info["n_selected"] == 1
    env2 = WDMoEEnv(scenario="close-static", **BANK)
    env2.reset(seed=0)
    env2.step(255)
    _, _, _, _, info2 = env2.step(1 << top1)
    assert info2["step_quality_loss"] == info["step_quality_loss"] and info2["latency_s"] == info["latency_s"]


def test_stream_quality_divides_by_the_residual_norm(trace):
    env = WDMoEEnv(scenario="close-static", quality="stream", **BANK)
    env.reset(seed=0)
    row = int(env._kernel.row[0])
    _, _, _, _, info = env.step(1)
    y = trace.y[row]
    assert info["step_quality_loss"] == pytest.approx(np.sum(y[1:].sum(0) ** 2) / trace.residual_norm2[row], rel=1e-5)


def test_per_env_reward_weights_equal_separate_envs(trace):
    weights = [0.0, 5.0]
    vec = WDMoEVectorEnv(num_envs=2, scenario="close-static", risk_weights=weights, **BANK)
    vec.reset(seed=2)
    singles = [WDMoEEnv(scenario="close-static", risk_weight=w, **BANK) for w in weights]
    for i, e in enumerate(singles):
        e.reset(seed=2 + i)
    for a in (3, 17, 255, 0):
        _, rv, _, _, _ = vec.step(np.array([a, a]))
        for i, e in enumerate(singles):
            assert e.step(a)[1] == pytest.approx(rv[i], abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"scenario": "nowhere"}, "nowhere"),
    ({"risk_weight": -1.0}, "risk_weight"),
    ({"quality": "bits"}, "quality"),
    ({"split": "dev"}, "split"),
    ({"prompts": [0, 99]}, "prompts"),
])
def test_bad_options_are_one_line_errors(trace, kwargs, match):
    from hlm_gym.errors import HLMGymError

    with pytest.raises(HLMGymError, match=match) as err:
        WDMoEEnv(**{**BANK, **kwargs})
    assert "\n" not in str(err.value)


def test_unknown_option_and_bad_action(trace):
    with pytest.raises(UnknownOptionError, match="colour"):
        WDMoEEnv(colour="red")
    env = WDMoEEnv(**BANK)
    env.reset(seed=0)
    for bad in (256, -1, 1.5, True):
        with pytest.raises(ValueError, match="0..255"):
            env.step(bad)
    with pytest.raises(EnvConfigError, match="mode"):
        WDMoEVectorEnv(num_envs=2, mode="live", **BANK)


def test_latency_agrees_with_the_fleet_model_also_for_shared_devices(trace, tmp_path):
    import yaml

    from hlm_gym.wireless.fleet import layer_latency, load_fleet

    fleet = load_fleet("mixed-vehicular").to_dict()
    fleet["placement"] = [0, 0, 1, 1, 2, 3, 3, 3]
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(fleet))
    for placement, scenario in ((None, "mixed-vehicular"), (fleet["placement"], str(path))):
        env = WDMoEEnv(scenario=scenario, **BANK)
        env.reset(seed=1)
        sim = env.sim
        for a in (0b11, 0b10000001, 0b11100000, 255, 0b100):
            crow = int(env._kernel.channel_rows()[0])
            _, _, _, _, info = env.step(a)
            want = layer_latency(sim.expert_s[crow], selection_bits(a, 8), sim.bs_layer_s, placement=placement)
            assert info["latency_s"] == pytest.approx(float(want), rel=1e-12)


# ----------------------------------------------------------------------------- the shipped traces
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_shipped_traces_make_a_checker_clean_env_and_equal_batched_envs(scenario):
    from gymnasium.utils.env_checker import check_env

    env = WDMoEEnv(scenario=scenario, split="test", **BANK)
    assert env.observation_space.shape == (18,) and env.action_space.n == 256
    assert env.sim.tables.n_layers == 30 and env.sim.n_prompts >= 16
    check_env(WDMoEEnv(scenario=scenario, split="test", **BANK), skip_render_check=True)
    vec = WDMoETorchVectorEnv(num_envs=2, device="cpu", scenario=scenario, split="test", **BANK)
    obs_t, _ = vec.reset(seed=11)
    singles = [WDMoEEnv(scenario=scenario, split="test", **BANK) for _ in range(2)]
    obs_s = np.stack([e.reset(seed=11 + i)[0] for i, e in enumerate(singles)])
    assert np.array_equal(obs_t.numpy(), obs_s)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 256, 2)
        o, r, _, _, _ = vec.step(torch.as_tensor(a))
        for i, e in enumerate(singles):
            oi, ri, *_ = e.step(int(a[i]))
            assert np.array_equal(oi, o[i].numpy()) and ri == pytest.approx(float(r[i]), abs=1e-12)


def test_shipped_traces_dense_costs_nothing_and_topk_costs_more_as_k_falls():
    env = WDMoEEnv(scenario="mixed-vehicular", split="test", **BANK)
    losses = {}
    for k in (8, 7, 4, 1):
        env.reset(seed=0)
        total = 0.0
        for _ in range(300):
            gates = env._obs[0, :8]
            sel = np.argsort(-gates, kind="stable")[:k]
            _, _, done, _, info = env.step(int(sum(1 << int(e) for e in sel)))
            total += info["step_quality_loss"]
        losses[k] = total / 300
    assert losses[8] == 0.0 and 0 < losses[7] < losses[4] < losses[1] <= 1.0 + 1e-6
