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

__all__ = ["StackedPolicy", "evaluate_blocks", "block_env", "block_quota", "stack_models", "evaluate_models"]


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
        self.n_actions = int(self.params["action_net.weight"].shape[1])  # (P, actions, hidden)
        first = sorted(k for k in self.params if k.startswith("mlp_extractor.policy_net.") and k.endswith(".weight"))
        self.obs_dim = int(self.params[first[0] if first else "action_net.weight"].shape[-1])  # (P, out, in)

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


def block_env(env_id: str, settings: EnvSettings, split: str, risk_weights: Sequence[float],
              risk_targets: Optional[Sequence[float]], k: int) -> Any:
    """The vector env of ``len(risk_weights)`` blocks of ``k`` envs on ``split``, block ``b`` with
    reward setting ``risk_weights[b]``/``risk_targets[b]`` (``risk_targets`` None: the env's default)."""
    family = family_for(env_id)
    kwargs = family.env_kwargs(settings, split)
    kwargs["risk_weights"] = [float(w) for w in risk_weights for _ in range(k)]
    if risk_targets is not None:
        kwargs["risk_targets"] = [float(t) for t in risk_targets for _ in range(k)]
    return family.make_vector_env(env_id, len(risk_weights) * k, kwargs)


def evaluate_blocks(policy: Policy, env_id: str, settings: EnvSettings, split: str, seeds: Sequence[int],
                    risk_weights: Sequence[float], risk_targets: Optional[Sequence[float]], episodes: int,
                    k: int, env: Any = None) -> list[dict[str, dict[str, float]]]:
    """Evaluate ``policy`` (acting on ``len(seeds)`` blocks of ``k`` envs) on ``split``: block ``b``
    with reset seed ``seeds[b]``, reward setting ``risk_weights[b]``/``risk_targets[b]`` and
    ``episodes`` episodes (``env``: that :func:`block_env`, made here when None; closed at the end).
    Returns each block's summary (as ``evaluate(...).summary``)."""
    family = family_for(env_id)
    n = len(seeds)
    if env is None:
        env = block_env(env_id, settings, split, risk_weights, risk_targets, k)
    try:
        eps = run_episodes(env, policy, n * episodes, [int(s) + j for s in seeds for j in range(k)],
                           family.episode_tracker(n * k), quota=block_quota(n, k, episodes))
    finally:
        env.close()
    out = []
    for b in range(n):
        block = [e for e in eps if b * k <= e["env"] < (b + 1) * k]
        out.append(summarize_episodes(block, family.metrics))
    return out


def stack_models(paths: Sequence[str], context: Any = None
                 ) -> Optional[tuple[Any, Optional[torch.Tensor], Optional[torch.Tensor], float]]:
    """``(nets, mean, std, clip_obs)`` of saved SB3 actor-critic zips (PPO/A2C, loaded for the env
    ``context``, a :class:`~hlm_gym.policies.context.PolicyContext`) stacked for one batched pass,
    their baked-in observation normalisation as (P, d) tensors; ``None`` when they cannot be
    stacked (another algorithm, another action space, different architectures, or only some
    normalise)."""
    from hlm_gym.harness.population_nets import ActorCritic, PopulationNets
    from hlm_gym.policies.sb3_model import NormalizedObsExtractor, load_sb3_policy

    nets, means, stds, clips = [], [], [], set()
    for path in paths:
        loaded = load_sb3_policy(str(path), context=context)
        if context is not None and loaded.n_actions != context.n_actions:
            return None  # a binary model on a larger action space: evaluate() maps its actions
        policy = loaded.model.policy
        if not all(hasattr(policy, a) for a in ("mlp_extractor", "action_net", "value_net")):
            return None
        extractor = policy.features_extractor
        if isinstance(extractor, NormalizedObsExtractor):
            means.append(extractor.mean)
            stds.append(extractor.std)
            clips.add(extractor.clip_obs)
        elif type(extractor).__name__ != "FlattenExtractor":
            return None
        nets.append(ActorCritic(policy))
    if means and len(means) != len(nets) or len(clips) > 1:
        return None
    shapes = {tuple((k, tuple(v.shape)) for k, v in n.state_dict().items()) for n in nets}
    if len(shapes) != 1:
        return None
    mean = torch.stack(means) if means else None
    std = torch.stack(stds) if stds else None
    return PopulationNets(nets, "cpu"), mean, std, (clips.pop() if clips else 10.0)


def evaluate_models(paths: Sequence[str], env_id: str, settings: EnvSettings, split: str, seed: int,
                    risk_weights: Sequence[float], risk_targets: Optional[Sequence[float]],
                    episodes: int, num_envs: int = 16) -> Optional[list[dict[str, dict[str, float]]]]:
    """Each saved model of ``paths`` on the episodes ``evaluate(f"ppo:{path}", seed=seed, ...)``
    gives it (the same for every model), all models in one batch; model ``i`` with reward setting
    ``risk_weights[i]``/``risk_targets[i]`` (None: the env's default target). Returns their summaries, or ``None`` when the models
    cannot be stacked (evaluate them one by one)."""
    family = family_for(env_id)
    k = min(num_envs, episodes)
    env = block_env(env_id, settings, split, risk_weights, risk_targets, k)
    try:
        stacked = stack_models(paths, family.context_for(env, env_id, seed=seed, traces=settings.traces))
    except BaseException:
        env.close()
        raise
    if stacked is None:
        env.close()
        return None
    nets, mean, std, clip = stacked
    policy = StackedPolicy(nets, range(len(paths)), k, mean, std, clip)
    return evaluate_blocks(policy, env_id, settings, split, [seed] * len(paths), risk_weights, risk_targets,
                           episodes, k, env=env)
