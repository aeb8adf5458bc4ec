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

import math
from typing import Any, Optional

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hlm_gym.environments.backends import ALL, NumpyOps
from hlm_gym.environments.hybrid_lm.config import EnvConfigError, integer, make_config
from hlm_gym.environments.hybrid_lm.kernel import EPISODE_KEYS, STEP_KEYS, HybridLMKernel
from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW, OBS_NAMES
from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw, build_simulation, sub_env_seeds
from hlm_gym.environments.options import per_env
from hlm_gym.environments.registration import MAX_EPISODE_STEPS

__all__ = ["HybridLMVectorEnv", "HybridLMCompressedVectorEnv", "STEP_KEYS", "EPISODE_KEYS"]

class HybridLMVectorEnv(VectorEnv):
    """``num_envs`` HybridLM environments in numpy (trace mode only); options as the single env.

    ``risk_weights``/``risk_targets`` (sequences of ``num_envs`` values) give each sub-environment
    its own reward parameters, so one batch serves a population of reward settings; sub-env ``i``
    then follows the trajectory of an env made with ``risk_weight=risk_weights[i]``.

    The dynamics are :class:`~hlm_gym.environments.hybrid_lm.kernel.HybridLMKernel` on the numpy
    backend; this class adds the vector interface (seeding, ``NEXT_STEP`` autoreset, info masks).
    :class:`~hlm_gym.environments.hybrid_lm.torch_vector.HybridLMTorchVectorEnv` is the same class
    on the torch backend.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
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
        if render_mode is not None:
            raise EnvConfigError(f"bad option render_mode={render_mode!r}: the vector environment does not render")
        self.config = config
        self.num_envs = n = integer("num_envs", num_envs, lo=1)
        self.max_episode_steps = None if max_episode_steps is None else integer("max_episode_steps",
                                                                                 max_episode_steps, lo=1)
        self.render_mode = None
        self.sim = sim = build_simulation(config, self.compressed)
        self._xp = xp
        self._kernel = HybridLMKernel(sim, xp, n, self.compressed)
        if extra.get("risk_weights") is not None or extra.get("risk_targets") is not None:
            self._kernel.set_reward_weights(
                per_env("risk_weights", extra.get("risk_weights"), n, config.risk_weight, 0.0, math.inf),
                per_env("risk_targets", extra.get("risk_targets"), n, config.risk_target, 0.0, 1.0))
        self._n_actions = self._kernel.n_actions
        self.single_observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.single_action_space = spaces.Discrete(self._n_actions)
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self._episode_draw = EpisodeDraw.of(sim)
        self._gens: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(n)]
        self._needs_reset = xp.zeros(n, "b")
        self._obs = xp.table(np.zeros((n, len(OBS_NAMES)), dtype=np.float32), "f32")
        self._arange = xp.from_host(np.arange(n))
        self._all_valid = xp.logical_not(xp.zeros(n, "b"))  # the info mask of a step without resets
        self._started = False

    # ------------------------------------------------------------------ backend-specific bits
    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"invalid actions: expected an integer array of shape ({self.num_envs},) with values in "
                             f"0..{self._n_actions - 1}, got shape {a.shape} dtype {a.dtype}")
        if a.min() < 0 or a.max() >= self._n_actions:
            bad = np.unique(a[(a < 0) | (a >= self._n_actions)])[:8]
            raise ValueError(f"invalid actions {bad.tolist()}: expected integers in 0..{self._n_actions - 1}")
        return a.astype(np.int64, copy=False)

    @staticmethod
    def _indices(mask):
        return np.flatnonzero(mask)

    @staticmethod
    def _host(idx) -> np.ndarray:
        return np.asarray(idx)

    @staticmethod
    def _copy(x):
        return x.copy()

    # ------------------------------------------------------------------ reset
    def _reset_envs(self, idx) -> None:
        prompt, brow, j0 = self._episode_draw.draw(self._gens, self._host(idx))
        self._kernel.reset(idx, prompt, brow, j0)
        self._needs_reset[idx] = False

    def reset(self, *, seed: Optional[int | list] = None, options: Optional[dict] = None):
        if options:
            raise EnvConfigError(f"bad reset option(s) {', '.join(map(repr, sorted(options)))}: the batched envs "
                                 "take no reset options (episodes start at random prompts)")
        super().reset(seed=int(seed) if isinstance(seed, (int, np.integer)) else None)
        self._gens = [seeding.np_random(s)[0] for s in sub_env_seeds(seed, self.num_envs)]
        self._reset_envs(self._arange)
        self._started = True
        self._kernel.observe(self._obs, self._arange)
        return self._copy(self._obs), {}

    # ------------------------------------------------------------------ step
    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = self._check_actions(actions)
        k, xp = self._kernel, self._xp
        resetting = self._indices(self._needs_reset)
        any_reset = len(resetting) > 0
        # every env is stepped; the ones being reset are overwritten afterwards (rows clipped to stay valid)
        r = xp.minimum(k.row, k.n_rows - 1) if any_reset else k.row
        a = k.send_action(a, r)
        rewards, term, step_info, _, _ = k.step(a, r, k.option(a))
        term = self._copy(term)
        if self.max_episode_steps is not None:
            truncated = k.steps >= self.max_episode_steps
        else:
            truncated = xp.zeros(self.num_envs, "b")
        k.observe(self._obs, ALL, xp.where(term, k.row - 1, k.row))
        if any_reset:
            term[resetting] = False
            truncated[resetting] = False
            rewards[resetting] = 0.0
            mask = xp.logical_not(self._needs_reset)
        else:
            mask = self._all_valid
        info: dict[str, Any] = {}
        for key in STEP_KEYS:
            info[key] = step_info[key]
            info["_" + key] = mask
        ended = self._indices(term)
        if len(ended):
            for key, val in k.episode_metrics(ended).items():
                full = xp.zeros(self.num_envs, "i" if key == "tokens" else "f")
                full[ended] = val
                info[key] = full
                info["_" + key] = term
        self._needs_reset = term | truncated
        if any_reset:
            self._reset_envs(resetting)
            k.observe(self._obs, resetting)
        return self._copy(self._obs), rewards, term, truncated, info

    def autoreset_now(self, idx) -> Any:
        """Reset the sub-environments ``idx`` at once (same-step autoreset, for SB3); returns their observations."""
        idx = self._xp.from_host(np.asarray(idx, dtype=np.int64))
        if len(idx):
            self._reset_envs(idx)
            self._kernel.observe(self._obs, idx)
        return self._copy(self._obs[idx])


class HybridLMCompressedVectorEnv(HybridLMVectorEnv):
    """Numpy batched ``HybridLMCompressed-v0`` (the action also picks the top-k size)."""

    compressed = True
