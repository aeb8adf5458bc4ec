"""Several torch vector envs as one batch (e.g. one env per scenario, so that a population of
agents with different scenarios steps as one batch).

    env = ConcatVectorEnv([HybridLMTorchVectorEnv(48, scenario="pedestrian"),
                           HybridLMTorchVectorEnv(32, scenario="vehicular")])
    obs, info = env.reset(seed=0)            # sub-env i of the concatenation gets seed + i
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (80,)

The sub-envs of ``envs[0]`` come first, then those of ``envs[1]``, ... Every part keeps its own
semantics (autoreset mode, info keys); an info key that only some parts return this step is
filled with zeros where it is missing, and its ``_key`` mask is ``False`` there.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["ConcatVectorEnv"]


class ConcatVectorEnv:
    """Torch vector envs with the same single spaces and device, stepped as one batch."""

    def __init__(self, envs: Sequence[Any]) -> None:
        if not envs:
            raise ValueError("ConcatVectorEnv needs at least one env")
        first = envs[0]
        for e in envs[1:]:
            if (e.single_observation_space != first.single_observation_space
                    or e.single_action_space != first.single_action_space):
                raise ValueError("ConcatVectorEnv: the envs' single observation/action spaces differ")
            if torch.device(e.device) != torch.device(first.device):
                raise ValueError(f"ConcatVectorEnv: envs on different devices ({first.device}, {e.device})")
        self.envs = list(envs)
        self.sizes = [int(e.num_envs) for e in self.envs]
        self.num_envs = sum(self.sizes)
        self.device = first.device
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.metadata = getattr(first, "metadata", {})

    def reset(self, *, seed: Optional[int | list] = None, options: Optional[dict] = None):
        """Reset every part; an int ``seed`` gives sub-env ``i`` of the concatenation ``seed + i``,
        a list gives one seed per sub-env."""
        if seed is None:
            seeds: list = [None] * len(self.envs)
        elif isinstance(seed, int):
            offsets = [sum(self.sizes[:j]) for j in range(len(self.envs))]
            seeds = [[seed + o + i for i in range(n)] for o, n in zip(offsets, self.sizes)]
        else:
            seed = list(seed)
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seed)}")
            seeds, start = [], 0
            for n in self.sizes:
                seeds.append(seed[start:start + n])
                start += n
        obs, infos = zip(*(e.reset(seed=s, options=options) for e, s in zip(self.envs, seeds)))
        return torch.cat(obs), self._cat_infos(infos)

    def step(self, actions: torch.Tensor):
        """Step every part with its slice of ``actions``; outputs concatenated."""
        parts = [e.step(a) for e, a in zip(self.envs, torch.split(actions, self.sizes))]
        obs, rew, term, trunc, infos = zip(*parts)
        return torch.cat(obs), torch.cat(rew), torch.cat(term), torch.cat(trunc), self._cat_infos(infos)

    def _cat_infos(self, infos: Sequence[dict]) -> dict[str, Any]:
        if len(infos) == 1:
            return dict(infos[0])
        keys = list(dict.fromkeys(k for info in infos for k in info if not k.startswith("_")))
        out: dict[str, Any] = {}
        for k in keys:
            like = next(info[k] for info in infos if k in info)
            out[k] = torch.cat([info[k] if k in info else torch.zeros(n, dtype=like.dtype, device=like.device)
                                for info, n in zip(infos, self.sizes)])
            out["_" + k] = torch.cat([info["_" + k] if "_" + k in info
                                      else torch.full((n,), k in info, dtype=torch.bool, device=like.device)
                                      for info, n in zip(infos, self.sizes)])
        return out

    def close(self) -> None:
        for e in self.envs:
            e.close()
