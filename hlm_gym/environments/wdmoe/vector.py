"""Batched WDMoE environments on numpy (:class:`WDMoEVectorEnv`) and torch (:class:`WDMoETorchVectorEnv`).

Same semantics as :class:`hlm_gym.environments.wdmoe.env.WDMoEEnv` in trace mode, for
``num_envs`` sub-environments stepped with array operations by the same kernel
(:class:`hlm_gym.environments.wdmoe.kernel.WDMoEKernel`). Sub-environment ``i`` reset with
``seed`` uses ``seed + i``, so its trajectory equals a single environment's. Autoreset mode
``NEXT_STEP`` (see :mod:`hlm_gym.environments.batched`). ``gym.make_vec("hlm_gym/WDMoE-v0",
num_envs, vectorization_mode="vector_entry_point")`` gives the numpy one.

    from hlm_gym.environments.wdmoe.vector import WDMoETorchVectorEnv
    env = WDMoETorchVectorEnv(num_envs=4096, device="cuda", scenario="mixed-vehicular")
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from gymnasium import spaces

from hlm_gym.environments.backends import NumpyOps, TorchOps
from hlm_gym.environments.batched import KernelVectorEnv, TorchBatch
from hlm_gym.environments.wdmoe.config import make_config
from hlm_gym.environments.wdmoe.kernel import EPISODE_KEYS, STEP_KEYS, WDMoEKernel
from hlm_gym.environments.wdmoe.observation import obs_bounds
from hlm_gym.environments.wdmoe.simulation import build_simulation, episode_draw

__all__ = ["WDMoEVectorEnv", "WDMoETorchVectorEnv"]


class WDMoEVectorEnv(KernelVectorEnv):
    """``num_envs`` WDMoE environments in numpy (trace mode); options as the single env.

    ``risk_weights``/``risk_targets`` (``num_envs`` values each) give each sub-environment its own
    reward parameters, so one batch serves a population of reward settings.
    """

    def __init__(self, num_envs: int = 1, max_episode_steps: Optional[int] = None,
                 render_mode: Optional[str] = None, **kwargs: Any) -> None:
        self._setup(NumpyOps(), num_envs, max_episode_steps, render_mode, kwargs)

    def _setup(self, xp: Any, num_envs: int, max_episode_steps: Optional[int], render_mode: Optional[str],
               kwargs: dict) -> None:
        config, extra = make_config(kwargs, extra_allowed=("risk_weights", "risk_targets"))
        n = self._batch_options(num_envs, max_episode_steps, render_mode)
        self.config = config
        self.sim = sim = build_simulation(config)
        kernel = WDMoEKernel(sim, xp, n)
        self._per_env_rewards(kernel, extra, config, n)
        low, high = obs_bounds(sim.n_experts)
        self._spaces(spaces.Box(low, high, dtype=np.float32), kernel.n_actions)
        self._init_batch(xp, kernel, episode_draw(sim), len(low), kernel.n_actions, STEP_KEYS, EPISODE_KEYS,
                         int_keys=("tokens", "n_selected"))

    def _kernel_step(self, actions: Any, resetting: bool) -> tuple[Any, Any, dict]:
        k = self._kernel
        if resetting:  # ended episodes point one row past their prompt: keep them in the table
            k.row = self._xp.minimum(k.row, len(k.denom) - 1)
        return k.step(actions)


class WDMoETorchVectorEnv(TorchBatch, WDMoEVectorEnv):
    """``num_envs`` WDMoE environments as torch tensors on ``device`` (``None``: CUDA when available)."""

    def __init__(self, num_envs: int = 1, device: Optional[Any] = None, max_episode_steps: Optional[int] = None,
                 **kwargs: Any) -> None:
        import torch

        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self._setup(TorchOps(self.device), num_envs, max_episode_steps, None, kwargs)
