"""The Gymnasium vector interface around a family's step kernel, for numpy and torch batches.

:class:`KernelVectorEnv` adds to a kernel (an object with ``reset(idx, *start)``,
``step(actions) -> (rewards, terminated, info)``, ``observe(obs, idx, rows)``,
``last_rows(terminated)``, ``episode_metrics(idx)`` and a ``steps`` counter) what every batched
env of the suite does the same way: per-sub-env generators (sub-env ``i`` reset with ``seed``
uses ``seed + i``, like ``SyncVectorEnv``), autoreset mode ``NEXT_STEP`` (the step after a
sub-environment ends resets it: its action is ignored, reward 0, ``terminated = truncated =
False``), truncation after ``max_episode_steps``, and Gymnasium's vector info with ``_key``
masks. :class:`TorchBatch` swaps in the torch versions of the few host-side helpers.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hlm_gym.environments.backends import ALL
from hlm_gym.environments.episodes import EpisodeDraw, sub_env_seeds
from hlm_gym.environments.options import EnvConfigError, integer, per_env

__all__ = ["KernelVectorEnv", "TorchBatch", "NumpyView"]


class KernelVectorEnv(VectorEnv):
    """A batch of ``num_envs`` environments stepped by one kernel on a numpy backend.

    A subclass builds its kernel and spaces and calls :meth:`_init_batch`; it may override
    :meth:`_kernel_step` (what one step of the kernel is) and :meth:`_check_actions`.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def _batch_options(self, num_envs: Any, max_episode_steps: Any, render_mode: Any) -> int:
        """Check and set ``num_envs``, ``max_episode_steps`` and ``render_mode`` (batched envs do not
        render); returns ``num_envs``."""
        if render_mode is not None:
            raise EnvConfigError(f"bad option render_mode={render_mode!r}: the vector environment does not render")
        self.num_envs = n = integer("num_envs", num_envs, lo=1)
        self.max_episode_steps = None if max_episode_steps is None else integer("max_episode_steps",
                                                                                 max_episode_steps, lo=1)
        self.render_mode = None
        return n

    @staticmethod
    def _per_env_rewards(kernel: Any, extra: dict, config: Any, n: int) -> None:
        """Give the kernel per-sub-env ``risk_weights``/``risk_targets`` when ``extra`` has them."""
        if extra.get("risk_weights") is not None or extra.get("risk_targets") is not None:
            kernel.set_reward_weights(
                per_env("risk_weights", extra.get("risk_weights"), n, config.risk_weight, 0.0, math.inf),
                per_env("risk_targets", extra.get("risk_targets"), n, config.risk_target, 0.0, 1.0))

    def _spaces(self, observation_space: Any, n_actions: int) -> None:
        """The single and batched observation and action spaces."""
        self.single_observation_space = observation_space
        self.single_action_space = spaces.Discrete(n_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def _init_batch(self, xp: Any, kernel: Any, draw: EpisodeDraw, obs_dim: int, n_actions: int,
                    step_keys: Sequence[str], episode_keys: Sequence[str], int_keys: Sequence[str] = ()) -> None:
        """Set up the batch state (``kernel`` on backend ``xp``; ``int_keys``: integer episode metrics)."""
        n = self.num_envs
        self._xp, self._kernel, self._episode_draw = xp, kernel, draw
        self._n_actions = int(n_actions)
        self._step_keys, self._episode_keys, self._int_keys = tuple(step_keys), tuple(episode_keys), set(int_keys)
        self._gens: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(n)]
        self._needs_reset = xp.zeros(n, "b")
        self._obs = xp.table(np.zeros((n, obs_dim), dtype=np.float32), "f32")
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
        start = self._episode_draw.draw(self._gens, self._host(idx))
        self._kernel.reset(idx, *start)
        self._needs_reset[idx] = False

    def reset(self, *, seed: Optional[int | list] = None, options: Optional[dict] = None):
        """Reset every sub-environment (``seed``: an int, sub-env ``i`` gets ``seed + i``, or a list)."""
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
    def _kernel_step(self, actions: Any, resetting: bool) -> tuple[Any, Any, dict]:
        """One kernel step of every sub-env (``resetting``: some are being reset and must stay in range)."""
        return self._kernel.step(actions)

    def step(self, actions):
        """Step every sub-environment; the ones that ended at the previous step are reset instead."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = self._check_actions(actions)
        k, xp = self._kernel, self._xp
        resetting = self._indices(self._needs_reset)
        any_reset = len(resetting) > 0
        # every env is stepped; the ones being reset are overwritten afterwards
        rewards, term, step_info = self._kernel_step(a, any_reset)
        term = self._copy(term)
        if self.max_episode_steps is not None:
            truncated = k.steps >= self.max_episode_steps
        else:
            truncated = xp.zeros(self.num_envs, "b")
        k.observe(self._obs, ALL, k.last_rows(term))
        if any_reset:
            term[resetting] = False
            truncated[resetting] = False
            rewards[resetting] = 0.0
            mask = xp.logical_not(self._needs_reset)
        else:
            mask = self._all_valid
        info: dict[str, Any] = {}
        for key in self._step_keys:
            info[key] = step_info[key]
            info["_" + key] = mask
        ended = self._indices(term)
        if len(ended):
            for key, val in k.episode_metrics(ended).items():
                full = xp.zeros(self.num_envs, "i" if key in self._int_keys else "f")
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


class TorchBatch:
    """The torch versions of :class:`KernelVectorEnv`'s host-side helpers (mix in before it)."""

    device: Any
    num_envs: int
    _n_actions: int

    def _check_actions(self, actions):
        import torch

        a = torch.as_tensor(actions, device=self.device)
        if a.shape != (self.num_envs,) or a.dtype.is_floating_point or a.dtype == torch.bool:
            raise ValueError(f"invalid actions: expected an integer tensor of shape ({self.num_envs},) with values in "
                             f"0..{self._n_actions - 1}, got shape {tuple(a.shape)} dtype {a.dtype}")
        a = a.to(torch.int64)
        if bool(((a < 0) | (a >= self._n_actions)).any()):
            raise ValueError(f"invalid actions: expected integers in 0..{self._n_actions - 1}")
        return a

    @staticmethod
    def _indices(mask):
        import torch

        return torch.nonzero(mask).reshape(-1)

    @staticmethod
    def _host(idx) -> np.ndarray:
        return idx.cpu().numpy()

    @staticmethod
    def _copy(x):
        return x.clone()


class NumpyView:
    """A torch vector env seen through numpy arrays (actions in, observations/rewards/infos out).

    Lets the SB3 adapter (:class:`hlm_gym.environments.sb3_vec.BatchedSB3VecEnv`), which works on
    numpy, drive a torch env: the simulation runs on the env's device and only the
    observations, rewards, flags and info arrays cross to the host each step.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    @staticmethod
    def _np(x):
        return x.detach().cpu().numpy() if hasattr(x, "detach") else x

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._np(obs), {k: self._np(v) for k, v in info.items()}

    def step(self, actions: np.ndarray):
        import torch

        a = torch.as_tensor(np.asarray(actions, dtype=np.int64), device=self.env.device)
        obs, rew, term, trunc, info = self.env.step(a)
        return (self._np(obs), self._np(rew), self._np(term), self._np(trunc),
                {k: self._np(v) for k, v in info.items()})

    def autoreset_now(self, idx: np.ndarray) -> np.ndarray:
        return self._np(self.env.autoreset_now(idx))

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str):
        return getattr(self.env, name)

