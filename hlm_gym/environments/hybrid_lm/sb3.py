"""A stable-baselines3 ``VecEnv`` over the numpy batched HybridLM environment.

    from hlm_gym.environments.hybrid_lm.sb3 import HybridLMSB3VecEnv
    venv = HybridLMSB3VecEnv(num_envs=1024, scenario="pedestrian")      # kwargs as the env
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=4096)

SB3 resets a finished sub-environment in the same step: the returned observation is the
first of the next episode, ``infos[i]["terminal_observation"]`` the last of the finished
one, and ``infos[i]["TimeLimit.truncated"]`` is set when it was cut by
``max_episode_steps``. The episode metrics (``tokens_per_s``, ``transmission_rate``,
``skip_rate``, ``risk``, ``error_rate``, ``tokens``, ``time_s``, and the episode's
``energy_j_per_token`` and ``uplink_bits_per_token``) are added to the info of a finished
sub-environment, together with ``episode = {"r", "l", "t"}`` (the return, length
and wall time) as SB3's ``Monitor`` would give, so ``ep_info_buffer`` fills without a
``VecMonitor``.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from hlm_gym.environments.hybrid_lm.config import EnvConfigError
from hlm_gym.environments.hybrid_lm.vector import EPISODE_KEYS, HybridLMCompressedVectorEnv, HybridLMVectorEnv


BACKENDS = ("numpy", "torch")


class HybridLMSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` adapter of the batched HybridLM env (``compressed=True``: the CU-HLM variant).

    ``backend="numpy"`` (default) runs :class:`HybridLMVectorEnv`; ``backend="torch"`` runs
    :class:`hlm_gym.environments.hybrid_lm.torch_vector.HybridLMTorchVectorEnv` on ``device`` (CUDA
    when available if ``device`` is None). Both give identical trajectories on the CPU.
    """

    def __init__(self, num_envs: int = 8, compressed: bool = False, backend: str = "numpy",
                 device: Optional[str] = None, **kwargs: Any) -> None:
        if backend not in BACKENDS:
            raise EnvConfigError(f"bad option backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "torch":
            from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv, NumpyView

            self.venv = NumpyView(HybridLMTorchVectorEnv(num_envs=num_envs, device=device,
                                                         compressed=compressed, **kwargs))
        else:
            if device not in (None, "cpu"):
                raise EnvConfigError(f"bad option device={device!r}: the numpy backend runs on the CPU; "
                                     "use backend='torch' for other devices")
            cls = HybridLMCompressedVectorEnv if compressed else HybridLMVectorEnv
            self.venv = cls(num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions: Optional[np.ndarray] = None
        self._ep_ret = np.zeros(num_envs)
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self._ep_energy = np.zeros(num_envs)
        self._ep_bits = np.zeros(num_envs)
        self._t0 = time.time()

    def reset(self):
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        for acc in (self._ep_ret, self._ep_len, self._ep_energy, self._ep_bits):
            acc[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        obs, rew, term, trunc, info = self.venv.step(self._actions)
        self._ep_ret += rew
        self._ep_len += 1
        self._ep_energy += info["energy_j"]
        self._ep_bits += info["uplink_bits"]
        done = term | trunc
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(done)
        if len(ended):
            terminal = obs[ended].copy()
            obs[ended] = self.venv.autoreset_now(ended)
            now = round(time.time() - self._t0, 6)
            for j, i in enumerate(ended):
                d = infos[i]
                d["terminal_observation"] = terminal[j]
                d["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                d["episode"] = {"r": float(self._ep_ret[i]), "l": int(self._ep_len[i]), "t": now}
                for key in EPISODE_KEYS:
                    if key in info and info["_" + key][i]:
                        d[key] = float(info[key][i])
                tokens = max(d.get("tokens") or d["episode"]["l"], 1)
                d["energy_j_per_token"] = float(self._ep_energy[i] / tokens)
                d["uplink_bits_per_token"] = float(self._ep_bits[i] / tokens)
            for acc in (self._ep_ret, self._ep_len, self._ep_energy, self._ep_bits):
                acc[ended] = 0
        return obs, rew.astype(np.float32), done, infos

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices

    def get_attr(self, attr_name: str, indices=None) -> list:
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list:
        return [getattr(self.venv, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]
