"""Native numpy batched HybridLM environments (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``).

Same semantics as :class:`hlm_gym.environments.hybrid_lm.env.HybridLMEnv` in trace mode, for
``num_envs`` independent sub-environments stepped with array operations. Sub-environment
``i`` reset with ``seed`` uses ``seed + i`` (like ``SyncVectorEnv``), so its trajectory is
identical to a single environment's (wrapped in ``TimeLimit(max_episode_steps)``).
Autoreset mode ``NEXT_STEP``: the step after a sub-environment ends resets it (its action is
ignored, reward 0, ``terminated = truncated = False``). Episode metrics
(``tokens_per_s``, ...) are in ``info`` with the ``_key`` masks of Gymnasium's vector info.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from gymnasium import spaces

from hlm_gym.environments.backends import NumpyOps
from hlm_gym.environments.batched import KernelVectorEnv
from hlm_gym.environments.hybrid_lm.config import EnvConfigError, make_config
from hlm_gym.environments.hybrid_lm.kernel import EPISODE_KEYS, STEP_KEYS, HybridLMKernel
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES
from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw, build_simulation
from hlm_gym.environments.registration import MAX_EPISODE_STEPS

__all__ = ["HybridLMVectorEnv", "HybridLMCompressedVectorEnv", "STEP_KEYS", "EPISODE_KEYS"]

class HybridLMVectorEnv(KernelVectorEnv):
    """``num_envs`` HybridLM environments in numpy (trace mode only); options as the single env.

    ``risk_weights``/``risk_targets`` (sequences of ``num_envs`` values) give each sub-environment
    its own reward parameters, so one batch serves a population of reward settings; sub-env ``i``
    then follows the trajectory of an env made with ``risk_weight=risk_weights[i]``.

    The dynamics are :class:`~hlm_gym.environments.hybrid_lm.kernel.HybridLMKernel` on the numpy
    backend; :class:`~hlm_gym.environments.batched.KernelVectorEnv` adds the vector interface
    (seeding, ``NEXT_STEP`` autoreset, info masks).
    :class:`~hlm_gym.environments.hybrid_lm.torch_vector.HybridLMTorchVectorEnv` is the same class
    on the torch backend.
    """

    compressed = False

    def __init__(self, num_envs: int = 1, max_episode_steps: Optional[int] = MAX_EPISODE_STEPS,
                 render_mode: Optional[str] = None, **kwargs: Any) -> None:
        self._setup(NumpyOps(), num_envs, max_episode_steps, render_mode, kwargs)

    def _setup(self, xp: Any, num_envs: int, max_episode_steps: Optional[int], render_mode: Optional[str],
               kwargs: dict) -> None:
        config, extra = make_config(kwargs, extra_allowed=("risk_weights", "risk_targets"))
        if config.mode != "trace":
            raise EnvConfigError(f"bad option mode={config.mode!r}: the vector environments replay traces only; "
                                 "use the single environment for mode='live'")
        n = self._batch_options(num_envs, max_episode_steps, render_mode)
        self.config = config
        self.sim = sim = build_simulation(config, self.compressed)
        kernel = HybridLMKernel(sim, xp, n, self.compressed)
        self._per_env_rewards(kernel, extra, config, n)
        self._spaces(spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32), kernel.n_actions)
        self._init_batch(xp, kernel, EpisodeDraw.of(sim), len(OBS_NAMES), kernel.n_actions, STEP_KEYS, EPISODE_KEYS,
                         int_keys=("tokens",))

    def _kernel_step(self, actions: Any, resetting: bool) -> tuple[Any, Any, dict]:
        k = self._kernel
        # the sub-envs being reset are stepped too (and overwritten): their rows clipped to stay valid
        r = self._xp.minimum(k.row, k.n_rows - 1) if resetting else k.row
        a = k.send_action(actions, r)
        rewards, term, step_info, _, _ = k.step(a, r, k.option(a))
        return rewards, term, step_info


class HybridLMCompressedVectorEnv(HybridLMVectorEnv):
    """Numpy batched ``HybridLMCompressed-v0`` (the action also picks the top-k size)."""

    compressed = True
