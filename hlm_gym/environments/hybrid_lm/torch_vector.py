"""Torch batched HybridLM environments: the numpy vector env's semantics on a GPU when there is one.

    from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv
    env = HybridLMTorchVectorEnv(num_envs=65536, device="cuda", scenario="vehicular")
    obs, info = env.reset(seed=0)                       # obs: (n, 10) float32 tensor on the device
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (n,) integer tensor

Same options, seeding (sub-env ``i`` uses ``seed + i``), autoreset mode (``NEXT_STEP``) and
float64 arithmetic as :class:`hlm_gym.environments.hybrid_lm.vector.HybridLMVectorEnv`, so on the CPU
the trajectories are identical to the numpy implementation. Episode draws (prompt, channel
realisation, start time) use per-env numpy generators on the host; everything else stays on
the device. ``device=None`` picks CUDA when available.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from hlm_gym.environments.backends import TorchOps
# NumpyView lives in environments.batched (shared by the families); importable from here too
from hlm_gym.environments.batched import NumpyView, TorchBatch
from hlm_gym.environments.hybrid_lm.vector import HybridLMVectorEnv
from hlm_gym.environments.registration import MAX_EPISODE_STEPS

__all__ = ["HybridLMTorchVectorEnv", "NumpyView"]


class HybridLMTorchVectorEnv(TorchBatch, HybridLMVectorEnv):
    """``num_envs`` HybridLM environments as torch tensors (trace mode): the numpy vector env's
    kernel on the torch backend (``compressed=True``: ``HybridLMCompressed-v0``)."""

    def __init__(self, num_envs: int = 1, device: Optional[str | torch.device] = None, compressed: bool = False,
                 max_episode_steps: Optional[int] = MAX_EPISODE_STEPS, **kwargs: Any) -> None:
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.compressed = bool(compressed)
        self._setup(TorchOps(self.device), num_envs, max_episode_steps, None, kwargs)
