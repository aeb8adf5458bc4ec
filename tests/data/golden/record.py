"""Record the golden trajectories of the HybridLM environments (tests/data/golden/*.npz).

    python tests/data/golden/record.py            # writes trajectories.npz beside this file

The file shipped here was recorded on commit 40101af (before the package restructure) and is
never re-recorded by the test suite: ``tests/envs/test_golden.py`` replays the same action
sequences through today's environments and requires identical observations, rewards, flags
and infos. Re-running this script on a later commit must reproduce the file bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRACE = HERE / "trace.parquet"
IDS = ("hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0")
INFO_KEYS = ("latency_s", "uplink_bits", "sent", "rejected", "beta", "error", "snr_db", "rate_bps", "energy_j",
             "tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate", "tokens", "time_s")
#: (name, options, vector implementations recorded): skip_window 100 was legal only in the single env
CONFIGS = (
    ("default", {}, True),
    ("vehicular-target", {"scenario": "vehicular", "risk_weight": 2.0, "risk_target": 0.3}, True),
    ("deferred", {"verify": "deferred", "scenario": "pedestrian"}, True),
    ("deferred-trunc", {"verify": "deferred", "max_episode_steps": 20}, True),
    ("error-celledge", {"risk": "error", "scenario": "cell-edge-fast-fading", "risk_weight": 0.3}, True),
    ("window100", {"scenario": "static-good", "skip_window": 100, "channel_dt_s": 0.005}, False),
    ("window62-ref", {"scenario": "static-cell-edge", "skip_window": 62, "latency_ref_s": 0.1,
                      "channel_bank_size": 4, "channel_bank_points": 5000, "channel_seed": 3}, True),
)
SINGLE_STEPS, VEC_STEPS, N_ENVS = 400, 150, 4


def actions(rng: np.random.Generator, n_actions: int, shape) -> np.ndarray:
    """Skip with probability 0.6, else a uniform send option."""
    skip = rng.random(shape) < 0.6
    send = rng.integers(1, n_actions, shape)
    return np.where(skip, 0, send).astype(np.int64)


def _np(x) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.cpu().numpy()
    except ImportError:
        pass
    return np.asarray(x)


def run_single(env_id: str, kw: dict) -> dict[str, np.ndarray]:
    import gymnasium as gym

    env = gym.make(env_id, trace=str(TRACE), **kw)
    n_act = int(env.action_space.n)
    rng = np.random.default_rng(123)
    obs, _ = env.reset(seed=7)
    rec = {"obs": [obs], "action": [], "reward": [], "terminated": [], "truncated": []}
    infos = {k: [] for k in INFO_KEYS}
    episode = 0
    for _ in range(SINGLE_STEPS):
        a = int(actions(rng, n_act, ()))
        obs, r, term, trunc, info = env.step(a)
        rec["action"].append(a)
        rec["reward"].append(r)
        rec["terminated"].append(term)
        rec["truncated"].append(trunc)
        for k in INFO_KEYS:
            infos[k].append(float(info[k]) if k in info else np.nan)
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=1000 + episode)
        rec["obs"].append(obs)
    out = {k: np.asarray(v) for k, v in rec.items()}
    out.update({f"info.{k}": np.asarray(v, dtype=np.float64) for k, v in infos.items()})
    return out


def run_vector(make, n_act: int) -> dict[str, np.ndarray]:
    env = make()
    rng = np.random.default_rng(321)
    obs, _ = env.reset(seed=11)
    rec = {"obs": [_np(obs)], "action": [], "reward": [], "terminated": [], "truncated": []}
    infos = {k: [] for k in INFO_KEYS}
    masks = {k: [] for k in INFO_KEYS}
    for _ in range(VEC_STEPS):
        a = actions(rng, n_act, (N_ENVS,))
        obs, r, term, trunc, info = env.step(a if not hasattr(env, "device") else _torch_actions(a, env.device))
        rec["obs"].append(_np(obs))
        rec["action"].append(a)
        rec["reward"].append(_np(r))
        rec["terminated"].append(_np(term))
        rec["truncated"].append(_np(trunc))
        for k in INFO_KEYS:
            m = _np(info.get("_" + k, np.zeros(N_ENVS, bool))).astype(bool)
            v = np.where(m, _np(info[k]).astype(np.float64), np.nan) if k in info else np.full(N_ENVS, np.nan)
            infos[k].append(v)
            masks[k].append(m)
    out = {k: np.asarray(v) for k, v in rec.items()}
    out.update({f"info.{k}": np.asarray(v) for k, v in infos.items()})
    out.update({f"mask.{k}": np.asarray(v) for k, v in masks.items()})
    return out


def _torch_actions(a, device):
    import torch

    return torch.as_tensor(a, device=device)


def record() -> dict[str, np.ndarray]:
    import gymnasium as gym
    import torch

    import hlm_gym  # noqa: F401

    torch.set_num_threads(1)
    data: dict[str, np.ndarray] = {}
    for env_id in IDS:
        fam = env_id.split("/")[1]
        compressed = "Compressed" in env_id
        for name, kw, vec in CONFIGS:
            for key, val in run_single(env_id, kw).items():
                data[f"{fam}/{name}/single/{key}"] = val
            if not vec:
                continue
            n_act = int(gym.make(env_id, trace=str(TRACE), **{k: v for k, v in kw.items()
                                                               if k != "max_episode_steps"}).action_space.n)
            mk = lambda: gym.make_vec(env_id, num_envs=N_ENVS, vectorization_mode="vector_entry_point",  # noqa: E731
                                      trace=str(TRACE), **kw)
            for key, val in run_vector(mk, n_act).items():
                data[f"{fam}/{name}/numpy/{key}"] = val
            for key, val in run_vector(lambda: make_torch_env(compressed, kw), n_act).items():
                data[f"{fam}/{name}/torch/{key}"] = val
    return data


def make_torch_env(compressed: bool, kw: dict):
    """The torch batched env on the CPU (import path of the current layout)."""
    try:
        from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv
    except ImportError:
        from hlm_gym.environments.torch_vector import HybridLMTorchVectorEnv
    return HybridLMTorchVectorEnv(num_envs=N_ENVS, device="cpu", compressed=compressed, trace=str(TRACE), **kw)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "trajectories.npz"
    data = record()
    np.savez_compressed(out, **data)
    print(f"wrote {len(data)} arrays to {out}")
