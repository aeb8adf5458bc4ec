"""A stable-baselines3 ``VecEnv`` of the batched WDMoE env (:class:`WDMoESB3VecEnv`).

    from hlm_gym.environments.wdmoe.sb3 import WDMoESB3VecEnv
    venv = WDMoESB3VecEnv(num_envs=64, scenario="mixed-vehicular")      # kwargs as the env
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=512)

A finished sub-environment's info carries the episode metrics
(:data:`hlm_gym.environments.wdmoe.kernel.EPISODE_KEYS`), see
:class:`hlm_gym.environments.sb3_vec.BatchedSB3VecEnv`.
"""

from __future__ import annotations

from typing import Any, Optional

from hlm_gym.environments.options import EnvConfigError
from hlm_gym.environments.sb3_vec import BatchedSB3VecEnv
from hlm_gym.environments.wdmoe.kernel import EPISODE_KEYS

__all__ = ["WDMoESB3VecEnv", "BACKENDS"]

BACKENDS = ("numpy", "torch")


class WDMoESB3VecEnv(BatchedSB3VecEnv):
    """SB3 ``VecEnv`` of ``num_envs`` WDMoE envs: ``backend="numpy"`` (default) or ``"torch"`` on ``device``."""

    def __init__(self, num_envs: int = 8, backend: str = "numpy", device: Optional[str] = None,
                 **kwargs: Any) -> None:
        if backend not in BACKENDS:
            raise EnvConfigError(f"bad option backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "torch":
            from hlm_gym.environments.batched import NumpyView
            from hlm_gym.environments.wdmoe.vector import WDMoETorchVectorEnv

            venv: Any = NumpyView(WDMoETorchVectorEnv(num_envs=num_envs, device=device, **kwargs))
        else:
            if device not in (None, "cpu"):
                raise EnvConfigError(f"bad option device={device!r}: the numpy backend runs on the CPU; "
                                     "use backend='torch' for other devices")
            from hlm_gym.environments.wdmoe.vector import WDMoEVectorEnv

            venv = WDMoEVectorEnv(num_envs=num_envs, **kwargs)
        super().__init__(venv, EPISODE_KEYS, {})
