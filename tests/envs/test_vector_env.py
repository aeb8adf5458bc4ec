"""Numpy and torch batched envs: identical trajectories to single envs, autoreset, SB3 adapter."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import hlm_gym  # noqa: F401
from hlm_gym.environments.hybrid_lm.config import EnvConfigError
from hlm_gym.environments.hybrid_lm.vector import HybridLMVectorEnv
from tests.tiny_models import build_tiny_trace

torch.set_num_threads(1)
IDS = ["hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0"]
INFO_KEYS = ("latency_s", "uplink_bits", "sent", "rejected", "beta", "error", "snr_db", "rate_bps", "energy_j",
             "tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate")


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return str(build_tiny_trace(tmp_path_factory.mktemp("vec") / "tiny.parquet"))


def _to_np(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same_step(r1, r2, n, step):
    for x, y, name in zip(r1[:4], r2[:4], ("obs", "reward", "terminated", "truncated")):
        assert np.array_equal(_to_np(x), _to_np(y)), f"{name} differs at step {step}"
    for key in INFO_KEYS:
        m1 = _to_np(r1[4].get("_" + key, np.zeros(n, bool)))
        m2 = _to_np(r2[4].get("_" + key, np.zeros(n, bool)))
        assert np.array_equal(m1, m2), f"info mask {key} differs at step {step}"
        if m1.any():
            assert np.array_equal(_to_np(r1[4][key])[m1], _to_np(r2[4][key])[m1]), f"info {key} differs at step {step}"


CONFIGS = [
    {},
    {"scenario": "vehicular", "risk_weight": 2.0, "risk_target": 0.3},
    {"verify": "deferred", "max_episode_steps": 200},
    {"verify": "deferred", "max_episode_steps": 20},  # truncation by the time limit
    {"risk": "error", "scenario": "vehicular", "risk_weight": 0.3},
    {"scenario": "cell-edge-fast-fading"},
    {"skip_window": 100, "scenario": "static-good"},  # above the old vector envs' limit of 62
]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("kw", CONFIGS)
def test_vector_env_equals_sync_vector_env(trace_file, env_id, kw):
    n = 6
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", trace=trace_file, **kw)
    senv = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", trace=trace_file, **kw)
    assert venv.metadata["autoreset_mode"] == senv.metadata["autoreset_mode"]
    o1, _ = venv.reset(seed=11)
    o2, _ = senv.reset(seed=11)
    assert np.array_equal(o1, o2)
    rng = np.random.default_rng(0)
    ends = 0
    for step in range(150):
        a = rng.integers(0, venv.single_action_space.n, n)
        r1, r2 = venv.step(a), senv.step(a)
        assert_same_step(r1, r2, n, step)
        ends += int(r1[2].sum() + r1[3].sum())
    assert ends > 0


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kw", CONFIGS[:4] + CONFIGS[-1:])
def test_torch_vector_env_equals_numpy_on_cpu(trace_file, compressed, kw):
    from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv
    from hlm_gym.environments.hybrid_lm.vector import HybridLMCompressedVectorEnv

    n = 8
    np_env = (HybridLMCompressedVectorEnv if compressed else HybridLMVectorEnv)(num_envs=n, trace=trace_file, **kw)
    th_env = HybridLMTorchVectorEnv(num_envs=n, device="cpu", compressed=compressed, trace=trace_file, **kw)
    o1, _ = np_env.reset(seed=5)
    o2, _ = th_env.reset(seed=5)
    assert np.array_equal(o1, o2.numpy())
    rng = np.random.default_rng(1)
    for step in range(120):
        a = rng.integers(0, np_env.single_action_space.n, n)
        assert_same_step(np_env.step(a), th_env.step(torch.as_tensor(a)), n, step)


def test_make_vec_1024_and_next_step_autoreset(trace_file):
    venv = gym.make_vec("hlm_gym/HybridLM-v0", num_envs=1024, vectorization_mode="vector_entry_point",
                        trace=trace_file)
    assert isinstance(venv.unwrapped, HybridLMVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (1024, 10) and venv.observation_space.contains(obs)
    ones = np.ones(1024, dtype=np.int64)
    done_prev = np.zeros(1024, bool)
    for _ in range(40):
        obs, rew, term, trunc, info = venv.step(ones)
        # the step after an episode ended resets that sub-env: reward 0, not done, fresh observation
        assert np.all(rew[done_prev] == 0) and not np.any(term[done_prev])
        assert np.all(obs[done_prev, 8] == 0)
        done_prev = term | trunc
    assert info["_latency_s"].any()


def test_vector_env_rejects_bad_actions(trace_file):
    venv = HybridLMVectorEnv(num_envs=4, trace=trace_file)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid actions \[2\]: expected integers in 0\.\.1"):
        venv.step(np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="expected an integer array of shape"):
        venv.step(np.array([0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="unknown option"):
        HybridLMVectorEnv(num_envs=2, trace=trace_file, bogus=1)


def test_sb3_vec_env_adapter(trace_file):
    from stable_baselines3 import PPO

    from hlm_gym.environments.hybrid_lm.sb3 import HybridLMSB3VecEnv

    venv = HybridLMSB3VecEnv(num_envs=16, trace=trace_file)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (16, 10)
    seen_terminal = False
    for _ in range(60):
        obs, rew, done, infos = venv.step(np.ones(16, dtype=np.int64))
        for i in np.flatnonzero(done):
            seen_terminal = True
            assert "terminal_observation" in infos[i] and "tokens_per_s" in infos[i]
            assert infos[i]["episode"]["l"] > 0
            assert obs[i, 8] == 0  # already the next episode's first observation
    assert seen_terminal
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=512)
    assert len(model.ep_info_buffer) > 0


def test_sb3_adapter_torch_backend_equals_numpy_backend(trace_file):
    from hlm_gym.environments.hybrid_lm.config import EnvConfigError
    from hlm_gym.environments.hybrid_lm.sb3 import HybridLMSB3VecEnv

    n = 12
    envs = [HybridLMSB3VecEnv(num_envs=n, backend=b, trace=trace_file, scenario="vehicular") for b in ("numpy", "torch")]
    obs = []
    for e in envs:
        e.seed(7)
        obs.append(e.reset())
    assert np.array_equal(obs[0], obs[1]) and obs[1].dtype == np.float32
    rng = np.random.default_rng(2)
    ends = 0
    for _ in range(150):
        a = rng.integers(0, 2, n)
        (o1, r1, d1, i1), (o2, r2, d2, i2) = (e.step(a) for e in envs)
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(d1, d2)
        for x, y in zip(i1, i2):
            assert x.keys() == y.keys()
            for k in x:
                if k == "episode":
                    assert x[k]["r"] == y[k]["r"] and x[k]["l"] == y[k]["l"]
                elif k != "terminal_observation":
                    assert x[k] == y[k], k
        ends += int(d1.sum())
    assert ends > 0
    with pytest.raises(EnvConfigError, match="backend='gpu'"):
        HybridLMSB3VecEnv(num_envs=2, backend="gpu", trace=trace_file)
    with pytest.raises(EnvConfigError, match="numpy backend runs on the CPU"):
        HybridLMSB3VecEnv(num_envs=2, backend="numpy", device="cuda", trace=trace_file)



@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_per_env_reward_settings_equal_separate_envs(backend):
    """One batch with a reward setting per sub-env follows, for each sub-env, the env of that setting."""
    from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv

    trace = str(Path(__file__).resolve().parents[1] / "data" / "golden" / "trace.parquet")
    weights, targets = [0.0, 1.0, 5.0, 10.0], [0.0, 0.3, 0.0, 0.45]
    if backend == "torch":
        pop = HybridLMTorchVectorEnv(num_envs=4, device="cpu", trace=trace, risk_weights=weights, risk_targets=targets)
    else:
        pop = HybridLMVectorEnv(num_envs=4, trace=trace, risk_weights=weights, risk_targets=targets)
    pop.reset(seed=3)
    singles = [HybridLMVectorEnv(num_envs=4, trace=trace, risk_weight=w, risk_target=r) for w, r in zip(weights, targets)]
    for env in singles:
        env.reset(seed=3)
    rng = np.random.default_rng(0)
    rewards = []
    for step in range(200):
        a = rng.integers(0, 2, 4)
        o, rew, term, trunc, _ = pop.step(torch.as_tensor(a) if backend == "torch" else a)
        for i, env in enumerate(singles):
            o2, rew2, term2, trunc2, _ = env.step(a)
            assert np.array_equal(_to_np(o)[i], o2[i]) and _to_np(rew)[i] == rew2[i], f"env {i} differs at step {step}"
        rewards.append(_to_np(rew))
    assert len({tuple(np.round(r, 12)) for r in np.asarray(rewards).T}) == 4  # the settings do differ


def test_per_env_reward_settings_are_checked():
    trace = str(Path(__file__).resolve().parents[1] / "data" / "golden" / "trace.parquet")
    with pytest.raises(EnvConfigError, match="risk_weights: expected 3 values"):
        HybridLMVectorEnv(num_envs=3, trace=trace, risk_weights=[1.0, 2.0])
    with pytest.raises(EnvConfigError, match="risk_targets=1.5"):
        HybridLMVectorEnv(num_envs=2, trace=trace, risk_targets=[0.2, 1.5])
