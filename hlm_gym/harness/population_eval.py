"""Batched evaluation of a population's agents: every agent's final policy on the episodes
``hlm-gym evaluate`` would give it, all agents of a scenario in ONE vector env.

Agent ``p`` owns a block of ``k = min(16, episodes)`` sub-envs, reset with seeds
``seed_p + j`` (``j < k``) and with the agent's reward setting (per-env ``risk_weights`` /
``risk_targets``), and counts the same per-env episode quotas as
:func:`hlm_gym.harness.evaluation.evaluate` on a ``k``-env vector env with reset seed ``seed_p``:
the same episodes, the same metrics. Actions are the deterministic ones of the exported SB3 model
(argmax of the action probabilities after the model's own float32 observation normalisation),
computed for all agents by one batched forward pass of the stacked networks.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from hlm_gym.harness.evaluation import run_episodes
from hlm_gym.harness.families import family_for
from hlm_gym.harness.family import EnvSettings
from hlm_gym.harness.results import summarize_episodes
from hlm_gym.policies.base import Policy

__all__ = ["StackedPolicy", "evaluate_blocks", "block_quota"]


class StackedPolicy(Policy):
    """Agents' stacked actor-critics as one :class:`Policy` on ``len(rows) * k`` envs: agent
    ``rows[b]`` acts on envs ``b*k .. (b+1)*k - 1``, deterministically, after its observation
    normalisation (``mean``/``std`` of shape (P, d), float32, as the exported model's extractor)."""

    name = "population"

    def __init__(self, nets: Any, rows: Sequence[int], k: int, mean: Optional[torch.Tensor] = None,
                 std: Optional[torch.Tensor] = None, clip_obs: float = 10.0) -> None:
        device = next(iter(nets.params.values())).device
        index = torch.as_tensor(list(rows), dtype=torch.int64, device=device)
        self.nets, self.k, self.device = nets, int(k), device
        self.params = {name: v.detach().index_select(0, index) for name, v in nets.params.items()}
        self.mean = None if mean is None else mean.to(device).index_select(0, index).unsqueeze(1)
        self.std = None if std is None else std.to(device).index_select(0, index).unsqueeze(1)
        self.clip_obs = float(clip_obs)

    def _act(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        x = x.reshape(-1, self.k, x.shape[-1])
        if self.mean is not None:
            x = torch.clamp((x - self.mean) / self.std, -self.clip_obs, self.clip_obs)
        with torch.no_grad():
            logits, _ = self.nets(x, self.params)
            actions = torch.softmax(logits, -1).argmax(-1)
        return actions.reshape(-1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "agents": len(self.params[next(iter(self.params))])}


def block_quota(n_blocks: int, k: int, episodes: int) -> np.ndarray:
    """Per-env episode quotas of ``n_blocks`` blocks of ``k`` envs, ``episodes`` per block split as
    :func:`~hlm_gym.harness.evaluation.run_episodes` splits them over ``k`` envs."""
    q = np.full(k, episodes // k)
    q[: episodes % k] += 1
    return np.tile(q, n_blocks)


def evaluate_blocks(policy: Policy, env_id: str, settings: EnvSettings, split: str, seeds: Sequence[int],
                    risk_weights: Sequence[float], risk_targets: Sequence[float], episodes: int,
                    k: int) -> list[dict[str, float]]:
    """Evaluate ``policy`` (acting on ``len(seeds)`` blocks of ``k`` envs) on ``split``: block ``b``
    with reset seed ``seeds[b]``, reward setting ``risk_weights[b]``/``risk_targets[b]`` and
    ``episodes`` episodes. Returns each block's metric means (as ``evaluate(...).summary``'s means)."""
    family = family_for(env_id)
    n = len(seeds)
    kwargs = family.env_kwargs(settings, split)
    kwargs["risk_weights"] = [float(w) for w in risk_weights for _ in range(k)]
    kwargs["risk_targets"] = [float(t) for t in risk_targets for _ in range(k)]
    env = family.make_vector_env(env_id, n * k, kwargs)
    try:
        eps = run_episodes(env, policy, n * episodes, [int(s) + j for s in seeds for j in range(k)],
                           family.episode_tracker(n * k), quota=block_quota(n, k, episodes))
    finally:
        env.close()
    out = []
    for b in range(n):
        block = [e for e in eps if b * k <= e["env"] < (b + 1) * k]
        out.append({m: float(v["mean"]) for m, v in summarize_episodes(block, family.metrics).items()})
    return out
