"""A stable-baselines3 ``VecEnv`` over any of the suite's batched environments.

SB3 resets a finished sub-environment in the same step: the returned observation is the
first of the next episode, ``infos[i]["terminal_observation"]`` the last of the finished
one, and ``infos[i]["TimeLimit.truncated"]`` is set when it was cut by
``max_episode_steps``. The family's episode metrics are added to the info of a finished
sub-environment, with per-token sums of chosen step infos, together with
``episode = {"r", "l", "t"}`` (the return, length and wall time) as SB3's ``Monitor`` would
give, so ``ep_info_buffer`` fills without a ``VecMonitor``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

__all__ = ["BatchedSB3VecEnv"]


class BatchedSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` adapter of a batched env ``venv`` (numpy in and out, with ``autoreset_now``).

    ``episode_keys``: the env's end-of-episode info keys copied into a finished sub-env's info;
    ``per_token``: ``{metric: step info key}`` summed over the episode and divided by its tokens
    (the ``tokens`` episode info, else the episode's length).
    """

    def __init__(self, venv: Any, episode_keys: Sequence[str], per_token: Mapping[str, str]) -> None:
        self.venv = venv
        self._episode_keys = tuple(episode_keys)
        self._per_token = dict(per_token)
        num_envs = venv.num_envs
        super().__init__(num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: Optional[np.ndarray] = None
        self._ep_ret = np.zeros(num_envs)
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self._ep_sums = {k: np.zeros(num_envs) for k in self._per_token}
        self._t0 = time.time()

    def _accumulators(self) -> list[np.ndarray]:
        return [self._ep_ret, self._ep_len, *self._ep_sums.values()]

    def reset(self):
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, _ = self.venv.reset(seed=seeds)
        self._reset_seeds()
        self._reset_options()
        for acc in self._accumulators():
            acc[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        obs, rew, term, trunc, info = self.venv.step(self._actions)
        self._ep_ret += rew
        self._ep_len += 1
        for metric, key in self._per_token.items():
            self._ep_sums[metric] += info[key]
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
                for key in self._episode_keys:
                    if key in info and info["_" + key][i]:
                        d[key] = float(info[key][i])
                tokens = max(d.get("tokens") or d["episode"]["l"], 1)
                for metric in self._per_token:
                    d[metric] = float(self._ep_sums[metric][i] / tokens)
            for acc in self._accumulators():
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
