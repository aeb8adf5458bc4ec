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

from typing import Any, Optional

from hlm_gym.environments.hybrid_lm.config import EnvConfigError
from hlm_gym.environments.sb3_vec import BatchedSB3VecEnv
from hlm_gym.environments.hybrid_lm.vector import EPISODE_KEYS, HybridLMCompressedVectorEnv, HybridLMVectorEnv


BACKENDS = ("numpy", "torch")


class HybridLMSB3VecEnv(BatchedSB3VecEnv):
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

            venv = NumpyView(HybridLMTorchVectorEnv(num_envs=num_envs, device=device, compressed=compressed,
                                                    **kwargs))
        else:
            if device not in (None, "cpu"):
                raise EnvConfigError(f"bad option device={device!r}: the numpy backend runs on the CPU; "
                                     "use backend='torch' for other devices")
            cls = HybridLMCompressedVectorEnv if compressed else HybridLMVectorEnv
            venv = cls(num_envs=num_envs, **kwargs)
        super().__init__(venv, EPISODE_KEYS, {"energy_j_per_token": "energy_j", "uplink_bits_per_token": "uplink_bits"})
