"""The HybridLM family's training ``VecEnv``: the env's SB3 adapter plus per-token energy and uplink bits.

Imports SB3; :func:`hlm_gym.harness.hybrid_lm.make_train_env` imports this module when it builds one.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from hlm_gym.environments.hybrid_lm.sb3 import HybridLMSB3VecEnv

__all__ = ["DomainSB3VecEnv"]


class DomainSB3VecEnv(HybridLMSB3VecEnv):
    """The adapter plus ``energy_j_per_token`` and ``uplink_bits_per_token`` in a finished episode's info.

    Also seeds the batched env with one integer (``seed + i`` per sub-env, as SB3 means it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._energy = np.zeros(self.num_envs)
        self._bits = np.zeros(self.num_envs)
        self._int_seed: Optional[int] = None
        inner_step = self.venv.step

        def step(actions):
            out = inner_step(actions)
            info = out[4]
            self._energy += np.asarray(info.get("energy_j", 0.0), dtype=np.float64)
            self._bits += np.asarray(info.get("uplink_bits", 0.0), dtype=np.float64)
            return out

        self.venv.step = step

    def seed(self, seed: Optional[int] = None):
        seeds = super().seed(seed)
        self._int_seed = int(seeds[0])
        self._seeds = [None] * self.num_envs
        return seeds

    def reset(self):
        self._energy[:] = 0.0
        self._bits[:] = 0.0
        if self._int_seed is None:
            return super().reset()
        obs, _ = self.venv.reset(seed=self._int_seed)
        self._int_seed = None
        self._reset_options()
        self._ep_ret[:] = 0.0
        self._ep_len[:] = 0
        return obs

    def step_wait(self):
        obs, rew, done, infos = super().step_wait()
        for i in np.flatnonzero(done):
            tokens = infos[i].get("tokens") or infos[i].get("episode", {}).get("l", 1)
            infos[i]["energy_j_per_token"] = float(self._energy[i] / max(tokens, 1))
            infos[i]["uplink_bits_per_token"] = float(self._bits[i] / max(tokens, 1))
            self._energy[i] = 0.0
            self._bits[i] = 0.0
        return obs, rew, done, infos
