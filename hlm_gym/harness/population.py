"""Population training: P independent PPO agents trained together in one process on one device
(``hlm-gym train --trainer population``).

Every point of a sweep (a reward setting x a seed) is one *agent* with its own parameters, Adam
state, observation/reward normalisation, seed and reward setting. They share nothing but the
batch: ONE :class:`~hlm_gym.environments.hybrid_lm.torch_vector.HybridLMTorchVectorEnv` of
``P * n_envs`` sub-envs (agent ``p`` owns sub-envs ``p*n_envs .. (p+1)*n_envs - 1``, each with
the agent's ``risk_weight``/``risk_target``), and one batched forward/backward pass through the
P actor-critics (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``). For a
64x64 MLP the cost of SB3 is per-call overhead, so one batched matrix product serving all P
agents is where the speed comes from.

Read :func:`train_population` top to bottom to follow a whole run (CleanRL style)::

    checks   -> :func:`prepare_population`: agents, hyperparameters (agents/ppo.yml + --hp, the
                same file and rules as the SB3 trainer), device, output folders; one-line errors
    folders  -> one locked run folder per agent, ``<out>/<agent-name>/`` (staging + commit)
    nets     -> each agent's SB3 ``ActorCriticPolicy`` built under its own seed (SB3's own
                architecture and orthogonal init), its actor-critic parameters stacked
    loop     -> rollout (:func:`_collect`) -> GAE (:func:`compute_gae`) -> PPO epochs
                (:func:`ppo_losses`, per-agent gradient clipping, one Adam over stacked tensors)
                -> TensorBoard scalars per agent (one transfer to the host per iteration)
    export   -> each agent as an SB3 PPO zip with its observation normalisation baked in
                (:class:`~hlm_gym.policies.sb3_model.NormalizedObsExtractor`), evaluated on the
                validation split through :func:`hlm_gym.harness.evaluation.evaluate`, and a
                ``summary.json`` like the SB3 trainer's

The algorithm is SB3's PPO with SB3's hyperparameters (n_steps, batch_size, n_epochs, gamma,
gae_lambda, clip_range and its schedule, clip_range_vf, ent_coef, vf_coef, max_grad_norm per
agent, advantage normalisation per minibatch per agent, the learning-rate schedule, Adam with
eps 1e-5) and SB3's handling of truncation (the value of the terminal observation is added to
the reward of a ``truncated`` step). Differences, all forced by the batched env:

* the env autoresets ``NEXT_STEP``: the step after an episode ends is a reset step (reward 0,
  action ignored). It is kept in the rollout buffer but masked out: GAE never crosses it (the
  step before it is ``done``), it counts in no loss, mean or normalisation statistic, and
  minibatch means are over the valid samples of each agent's minibatch. An agent's
  ``timesteps`` count env steps including these reset steps (about one per episode);
* observation statistics are updated with the observations the agent will act on (a terminal
  observation is not one; the first observation of the next episode is, one step later than in
  SB3's same-step reset);
* actions are drawn by inverse CDF from per-agent seeded uniforms, minibatch permutations from
  per-agent seeded generators, so an agent's run does not depend on the other agents
  (``target_kl`` early stopping is not supported);
* SB3's default tanh MLP is computed as ``2 sigmoid(2z) - 1`` in rollouts and updates
  (:meth:`PopulationNets.train_forward`, the same function up to float rounding, about four
  times cheaper on the CPU); validation and the exported models use ``nn.Tanh``.

Agents are independent: changing one agent's reward setting or seed leaves every other agent's
parameters bit-identical (tested).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from hlm_gym.harness.checks import check_device, check_int, check_number, check_out_dir, check_scenarios, check_seed
from hlm_gym.harness.errors import TrainingError
from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.family import EnvSettings
from hlm_gym.harness.heap import keep_freed_memory
from hlm_gym.harness.hyperparams import check_hyperparams, load_hyperparams, split_hyperparams
from hlm_gym.harness.population_nets import ActorCritic, PopulationNets, sb3_policy
from hlm_gym.harness.run_folder import RunFolder, sha256_file
from hlm_gym.paths import atomic_path, atomic_write_text

__all__ = ["AgentSpec", "PopulationConfig", "PopulationPlan", "PopulationResult", "population_agents",
           "prepare_population", "train_population", "format_population_summary", "population_config_dict",
           "scenario_groups", "ActorCritic", "PopulationNets",
           "RunningStats", "compute_gae", "ppo_losses", "clip_grad_norm_per_agent", "POPULATION_ARTIFACTS",
           "UNSUPPORTED_KEYS"]

#: The files each agent's folder gets (``summary.json`` last); TensorBoard logs go to ``tb/``.
POPULATION_ARTIFACTS = ("model_last.zip", "summary.json")
#: PPO keys the population trainer refuses (one line) rather than silently ignoring.
UNSUPPORTED_KEYS = ("target_kl", "use_sde", "sde_sample_freq")
_POLICY_KWARGS = ("net_arch", "activation_fn", "ortho_init")


# ----------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AgentSpec:
    """One agent of a population: its reward setting, seed and scenario (``risk_weight``/
    ``risk_target`` None: the environment's default; ``scenario`` None: the run's ``--scenario``)."""

    risk_weight: Optional[float] = None
    risk_target: Optional[float] = None
    seed: int = 0
    scenario: Optional[str] = None

    @property
    def name(self) -> str:
        """The agent's TensorBoard name, e.g. ``lambda10-target0.3-seed1``."""
        w = "default" if self.risk_weight is None else f"{self.risk_weight:g}"
        t = f"-target{self.risk_target:g}" if self.risk_target else ""
        return f"lambda{w}{t}-seed{self.seed}"

    @property
    def folder(self) -> str:
        """The agent's folder under ``--out``: ``<name>``, or ``<scenario>/<name>`` when it names a scenario."""
        return self.name if self.scenario is None else f"{self.scenario}/{self.name}"


def population_agents(risk_weights: Sequence[Optional[float]] = (None,),
                      risk_targets: Sequence[Optional[float]] = (None,), seeds: Sequence[int] = (0,),
                      combine: str = "product", scenarios: Sequence[Optional[str]] = (None,)) -> list[AgentSpec]:
    """The agents of a sweep, for each of ``scenarios`` (``None``: the run's scenario):
    ``combine="product"`` every (weight, target, seed) combination; ``"zip"`` the i-th weight with
    the i-th target and the i-th seed (a list of one value is repeated to the others' length)."""
    w, t, s = list(risk_weights) or [None], list(risk_targets) or [None], list(seeds) or [0]
    scs = list(scenarios) or [None]
    if len(scs) > 1 or scs[0] is not None:
        return [AgentSpec(a.risk_weight, a.risk_target, a.seed, sc)
                for sc in scs for a in population_agents(w, t, s, combine)]
    if combine == "product":
        return [AgentSpec(a, b, c) for a, b, c in itertools.product(w, t, s)]
    if combine != "zip":
        raise TrainingError(f"--combine {combine!r}: expected product or zip")
    n = max(len(w), len(t), len(s))
    for flag, values in (("--risk-weights", w), ("--risk-targets", t), ("--seeds", s)):
        if len(values) not in (1, n):
            raise TrainingError(f"{flag}: {len(values)} values; with --combine zip every list has one value or "
                                f"{n} (the longest list's length)")
    pick = lambda values, i: values[0] if len(values) == 1 else values[i]  # noqa: E731
    return [AgentSpec(pick(w, i), pick(t, i), pick(s, i)) for i in range(n)]


@dataclass
class PopulationConfig:
    """Everything a population run needs (the flags of ``hlm-gym train --trainer population``)."""

    agents: list[AgentSpec] = field(default_factory=lambda: [AgentSpec()])
    env_id: str = DEFAULT_ENV_ID
    scenario: str = "pedestrian"
    device: str = "cpu"
    n_envs: Optional[int] = None  # per agent; None: the YAML's
    timesteps: Optional[int] = None  # per agent; None: the YAML's n_timesteps
    out: str = "runs/population"
    traces: Optional[str] = None
    hyperparams: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_episodes: int = 64
    tensorboard: bool = True
    verbose: int = 0
    #: called after each iteration with ``(iteration, iterations)`` (progress bars; not recorded)
    on_iteration: Optional[Callable[[int, int], None]] = None

    def scenario_of(self, agent: AgentSpec) -> str:
        """The scenario agent ``agent`` trains on."""
        return self.scenario if agent.scenario is None else agent.scenario

    def settings(self, agent: AgentSpec) -> EnvSettings:
        """Agent ``agent``'s environment options (as the SB3 trainer's ``TrainConfig.env_settings``)."""
        return EnvSettings(scenario=self.scenario_of(agent), risk_weight=agent.risk_weight,
                           risk_target=agent.risk_target, traces=self.traces, env_kwargs=dict(self.env_kwargs))


@dataclass
class PopulationPlan:
    """A checked population run (what :func:`prepare_population` derives)."""

    hp: dict[str, Any]
    normalize: Optional[dict[str, Any]]
    ppo: dict[str, Any]  # the PPO constructor arguments (schedules as functions)
    n_envs: int
    timesteps: int
    iterations: int
    device: str
    out: Path


@dataclass
class PopulationResult:
    """What a population run wrote: one summary per agent, in agent order."""

    out: Path
    agents: list[AgentSpec]
    summaries: list[dict[str, Any]]
    wall_s: float


def _check_agents(agents: Sequence[AgentSpec]) -> list[AgentSpec]:
    if not agents:
        raise TrainingError("the population is empty: give at least one risk weight, risk target and seed")
    out = []
    for a in agents:
        if a.risk_weight is not None:
            check_number(a.risk_weight, "--risk-weights", 0, error=TrainingError)
        if a.risk_target is not None:
            check_number(a.risk_target, "--risk-targets", 0, 1, error=TrainingError)
        check_seed(a.seed, "--seeds", TrainingError)
        out.append(a)
    names = [a.folder for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TrainingError(f"the population has the same agent twice ({', '.join(dup)}); each (scenario, risk "
                            "weight, risk target, seed) must be distinct")
    return out


def prepare_population(config: PopulationConfig, create_out: bool = True) -> PopulationPlan:
    """Check every setting of ``config`` before any work (one-line :class:`TrainingError`)."""
    family = family_for(config.env_id)
    config.agents = _check_agents(config.agents)
    hp = load_hyperparams("ppo", config.env_id, config.hyperparams)
    if config.overrides:
        hp.update(check_hyperparams("ppo", config.overrides, "--hp"))
    run, kwargs = split_hyperparams("ppo", hp)
    for key in UNSUPPORTED_KEYS:
        if kwargs.get(key) not in (None, False, -1):
            raise TrainingError(f"hyperparameter {key}={kwargs[key]!r}: not supported by the population trainer "
                                "(use --trainer sb3)")
    pk = dict(kwargs.get("policy_kwargs") or {})
    extra = sorted(set(pk) - set(_POLICY_KWARGS))
    if extra:
        raise TrainingError(f"policy_kwargs {', '.join(extra)}: not supported by the population trainer (it "
                            f"builds SB3's MlpPolicy from {', '.join(_POLICY_KWARGS)}; use --trainer sb3)")
    n_envs = run["n_envs"] if config.n_envs is None else check_int(config.n_envs, "--n-envs", 1, error=TrainingError)
    timesteps = (run["n_timesteps"] if config.timesteps is None
                 else check_int(config.timesteps, "--timesteps", 1, error=TrainingError))
    check_int(config.eval_episodes, "--eval-episodes", 1, error=TrainingError)
    ppo = {"learning_rate": 3e-4, "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "gamma": 0.99,
           "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": None, "normalize_advantage": True,
           "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5} | {k: v for k, v in kwargs.items()
                                                                     if k not in ("policy", "stats_window_size")}
    if ppo["n_steps"] * n_envs < 2:
        raise TrainingError(f"n_steps {ppo['n_steps']} x --n-envs {n_envs}: PPO needs a rollout of at least 2 steps")
    ppo["batch_size"] = int(min(ppo["batch_size"], ppo["n_steps"] * n_envs))
    device = check_device(config.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_scenarios(sorted({config.scenario_of(a) for a in config.agents}, key=str), "--scenario", TrainingError,
                    family.load_scenario)
    family.check_data(config.traces, ("train", "validation"))
    out = check_out_dir(config.out, "--out", create=create_out)
    normalize = None
    if run["normalize"] is not None:
        normalize = {"norm_obs": True, "norm_reward": True, "clip_obs": 10.0, "clip_reward": 10.0,
                     "epsilon": 1e-8, "gamma": ppo["gamma"]} | dict(run["normalize"])
    iterations = math.ceil(timesteps / (ppo["n_steps"] * n_envs))
    return PopulationPlan(hp=hp, normalize=normalize, ppo=ppo, n_envs=n_envs, timesteps=timesteps,
                          iterations=iterations, device=str(device), out=out)


def _const(value: Any) -> Callable[[float], float]:
    return value if callable(value) else (lambda _progress: float(value))


# ----------------------------------------------------------------------------------- normalisation
class RunningStats:
    """P running means/variances (SB3's ``RunningMeanStd`` per agent, float64), updated with a
    weighted batch so that masked-out rows do not count."""

    def __init__(self, P: int, shape: tuple[int, ...], device: torch.device, epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros((P, *shape), dtype=torch.float64, device=device)
        self.var = torch.ones((P, *shape), dtype=torch.float64, device=device)
        self.count = torch.full((P,), float(epsilon), dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """``x`` (P, B, *shape), ``mask`` (P, B) bool: the rows of each agent that count."""
        x = x.to(torch.float64)
        w = mask.to(torch.float64)
        wx = w.reshape(*w.shape, *([1] * (x.dim() - 2)))
        c = w.sum(1)
        cc = c.clamp(min=1.0).reshape(-1, *([1] * (x.dim() - 2)))
        bm = (x * wx).sum(1) / cc
        bv = ((x - bm.unsqueeze(1)) ** 2 * wx).sum(1) / cc
        cnt = self.count.reshape(-1, *([1] * (x.dim() - 2)))
        cb = c.reshape(cnt.shape)
        tot = cnt + cb
        delta = bm - self.mean
        new_mean = self.mean + delta * cb / tot
        new_var = (self.var * cnt + bv * cb + delta ** 2 * cnt * cb / tot) / tot
        has = (c > 0).reshape(cnt.shape)
        self.mean = torch.where(has, new_mean, self.mean)
        self.var = torch.where(has, new_var, self.var)
        self.count = self.count + c


class _Normalizer:
    """Per-agent VecNormalize: observation statistics (over the observations the agent acts on) and
    the discounted-return statistics that scale its rewards; ``None`` settings: identity."""

    def __init__(self, P: int, n: int, obs_dim: int, settings: Optional[dict[str, Any]], device: torch.device):
        s = settings or {}
        self.norm_obs = bool(settings) and bool(s.get("norm_obs", True))
        self.norm_reward = bool(settings) and bool(s.get("norm_reward", True))
        self.clip_obs = float(s.get("clip_obs", 10.0))
        self.clip_reward = float(s.get("clip_reward", 10.0))
        self.epsilon = float(s.get("epsilon", 1e-8))
        self.gamma = float(s.get("gamma", 0.99))
        self.obs_rms = RunningStats(P, (obs_dim,), device)
        self.ret_rms = RunningStats(P, (), device)
        self.returns = torch.zeros((P, n), dtype=torch.float64, device=device)

    def obs(self, obs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Update with the rows ``counts`` (P, n) and normalise ``obs`` (P, n, d) -> float32."""
        if not self.norm_obs:
            return obs.to(torch.float32)
        self.obs_rms.update(obs, counts)
        return self.normalize_obs(obs)

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.norm_obs:
            return obs.to(torch.float32)
        z = (obs.to(torch.float64) - self.obs_rms.mean.unsqueeze(1)) / torch.sqrt(self.obs_rms.var.unsqueeze(1)
                                                                                 + self.epsilon)
        return z.clamp(-self.clip_obs, self.clip_obs).to(torch.float32)

    def reward(self, rew: torch.Tensor, valid: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scale ``rew`` (P, n) by the return statistics (updated on the ``valid`` steps)."""
        if not self.norm_reward:
            return rew.to(torch.float32)
        r = rew.to(torch.float64)
        self.returns = torch.where(valid, self.returns * self.gamma + r, self.returns)
        self.ret_rms.update(self.returns, valid)
        out = (r / torch.sqrt(self.ret_rms.var.unsqueeze(1) + self.epsilon)).clamp(-self.clip_reward,
                                                                                    self.clip_reward)
        self.returns = torch.where(done, torch.zeros_like(self.returns), self.returns)
        return out.to(torch.float32)


# ----------------------------------------------------------------------------------- PPO pieces
def sample_actions(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Categorical samples by inverse CDF: ``u`` uniform in [0, 1) of ``logits``'s batch shape."""
    cdf = torch.softmax(logits, -1).cumsum(-1)
    return (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
                gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SB3's GAE over a rollout of shape (T, ...): ``dones[t]`` says step t ended its episode
    (the next step starts another, or is a masked reset step). Returns ``(advantages, returns)``."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_values)
    for t in reversed(range(T)):
        next_values = last_values if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * nonterminal - values[t]
        last = delta + gamma * gae_lambda * nonterminal * last
        adv[t] = last
    return adv, adv + values


def _masked_mean(x: torch.Tensor, w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return (x * w).sum(-1) / n


def ppo_losses(nets: PopulationNets, batch: dict[str, torch.Tensor], clip_range: float,
               clip_range_vf: Optional[float], ent_coef: float, vf_coef: float, normalize_advantage: bool = True,
               params: Optional[dict[str, torch.Tensor]] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SB3's PPO loss for each agent on its minibatch: ``batch`` holds (P, B) tensors ``obs`` (P, B, d),
    ``actions``, ``old_log_prob``, ``old_values``, ``advantages``, ``returns`` and ``mask`` (the valid
    samples; means are over them). Returns ``(loss (P,), stats)`` with per-agent ``policy_loss``,
    ``value_loss``, ``entropy_loss``, ``approx_kl``, ``clip_fraction``."""
    logits, values = nets.train_forward(batch["obs"], params)
    logp_all = torch.log_softmax(logits, -1)
    log_prob = logp_all.gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    w = batch["mask"].to(logits.dtype)
    n = w.sum(-1).clamp(min=1.0)
    adv = batch["advantages"]
    if normalize_advantage:
        mean = _masked_mean(adv, w, n)
        var = ((adv - mean.unsqueeze(-1)) ** 2 * w).sum(-1) / (w.sum(-1) - 1).clamp(min=1.0)
        normed = (adv - mean.unsqueeze(-1)) / (var.sqrt().unsqueeze(-1) + 1e-8)
        adv = torch.where((w.sum(-1) > 1).unsqueeze(-1), normed, adv)
    log_ratio = log_prob - batch["old_log_prob"]
    ratio = torch.exp(log_ratio)
    surr1 = adv * ratio
    surr2 = adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    policy_loss = -_masked_mean(torch.min(surr1, surr2), w, n)
    if clip_range_vf is None:
        values_pred = values
    else:
        old = batch["old_values"]
        values_pred = old + torch.clamp(values - old, -clip_range_vf, clip_range_vf)
    value_loss = _masked_mean((batch["returns"] - values_pred) ** 2, w, n)
    entropy_loss = -_masked_mean(entropy, w, n)
    loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss
    with torch.no_grad():
        approx_kl = _masked_mean((ratio - 1) - log_ratio, w, n)
        clip_fraction = _masked_mean(((ratio - 1).abs() > clip_range).to(w.dtype), w, n)
    stats = {"policy_gradient_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
             "entropy_loss": entropy_loss.detach(), "approx_kl": approx_kl, "clip_fraction": clip_fraction,
             "loss": loss.detach()}
    return loss, stats


def clip_grad_norm_per_agent(params: dict[str, torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each agent separately (its slice of every stacked
    gradient); returns the per-agent norms before clipping."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    P = grads[0].shape[0]
    total = torch.sqrt(sum(g.reshape(P, -1).pow(2).sum(1) for g in grads))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape(P, *([1] * (g.dim() - 1))))
    return total


# ----------------------------------------------------------------------------------- the run
def train_population(config: PopulationConfig) -> PopulationResult:
    """One population run (see the module docstring): every setting checked first, then one run
    folder per agent locked and written into its staging folder, committed when the run completes."""
    plan = prepare_population(config)
    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(RunFolder(plan.out / a.folder, POPULATION_ARTIFACTS, what="agent folder"))
                   for a in config.agents]
        return _run(config, plan, folders)


def scenario_groups(config: PopulationConfig, agents: Sequence[AgentSpec]) -> dict[str, list[int]]:
    """The indices of ``agents`` by scenario, scenarios in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(agents):
        groups.setdefault(config.scenario_of(a), []).append(i)
    return groups


def _reward_settings(config: PopulationConfig, agents: Sequence[AgentSpec], kwargs: dict[str, Any]
                     ) -> tuple[list[float], list[float]]:
    """Each agent's risk weight and risk target (its own, or the env's default under ``kwargs``)."""
    weight, target = family_for(config.env_id).reward_defaults(kwargs)
    return ([weight if a.risk_weight is None else float(a.risk_weight) for a in agents],
            [target if a.risk_target is None else float(a.risk_target) for a in agents])


def _make_env(config: PopulationConfig, plan: PopulationPlan, agents: Sequence[AgentSpec]) -> Any:
    """The batched torch env of P * n_envs sub-envs (agent ``p``'s block ``p*n .. (p+1)*n - 1``, with
    its reward setting): one env per scenario, concatenated (``agents`` grouped by scenario)."""
    from hlm_gym.environments.concat import ConcatVectorEnv

    family = family_for(config.env_id)
    n, parts = plan.n_envs, []
    for scenario, idx in scenario_groups(config, agents).items():
        kwargs = family.env_kwargs(EnvSettings(scenario=scenario, traces=config.traces,
                                               env_kwargs=dict(config.env_kwargs)), "train")
        weights, targets = _reward_settings(config, [agents[i] for i in idx], kwargs)
        parts.append(family.make_torch_env(config.env_id, len(idx) * n, plan.device, kwargs,
                                           [w for w in weights for _ in range(n)],
                                           [t for t in targets for _ in range(n)]))
    return parts[0] if len(parts) == 1 else ConcatVectorEnv(parts)


def _collect(env: Any, nets: PopulationNets, norm: _Normalizer, state: dict[str, Any], T: int, P: int, n: int,
             u: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """One rollout of ``T`` steps of every agent's ``n`` envs, on the device: this loop reads
    nothing back to the host (the torch env's own step still synchronises where it picks the
    sub-envs to reset and draws their next episodes on the host). ``state`` carries the normalised
    observation, the reset flags and the episode sums (:class:`_EpisodeSums`)."""
    dev = state["obs"].device
    buf = {"obs": torch.empty((T, P, n, state["obs"].shape[-1]), device=dev),
           "actions": torch.empty((T, P, n), dtype=torch.int64, device=dev),
           "log_prob": torch.empty((T, P, n), device=dev), "values": torch.empty((T, P, n), device=dev),
           "rewards": torch.empty((T, P, n), device=dev), "dones": torch.empty((T, P, n), device=dev),
           "trunc": torch.empty((T, P, n), device=dev), "valid": torch.empty((T, P, n), dtype=torch.bool, device=dev)}
    forward = nets.frozen_forward()
    for t in range(T):
        valid = ~state["needs_reset"]
        with torch.no_grad():
            logits, values = forward(state["obs"])
            actions = sample_actions(logits, u[t])
            log_prob = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        raw_obs, rew, term, trunc, info = env.step(actions.reshape(-1))
        rew, term, trunc = rew.reshape(P, n), term.reshape(P, n), trunc.reshape(P, n)
        done = (term | trunc) & valid
        buf["obs"][t], buf["actions"][t], buf["log_prob"][t], buf["values"][t] = state["obs"], actions, log_prob, values
        buf["rewards"][t] = norm.reward(rew, valid, done)
        buf["dones"][t] = done.to(torch.float32)
        buf["trunc"][t] = (trunc & ~term & valid).to(torch.float32)
        buf["valid"][t] = valid
        state["episodes"].step(rew, valid, done, info)
        state["needs_reset"] = done
        # the next observation: a terminal one (next step is a reset step) does not count in the statistics
        state["obs"] = norm.obs(raw_obs.reshape(P, n, -1), ~done)
    with torch.no_grad():
        _, last_values = forward(state["obs"])
    # SB3's truncation handling: the value of the terminal observation (the next step's input) is
    # added to the reward of a truncated step
    next_values = torch.cat([buf["values"][1:], last_values.unsqueeze(0)], 0)
    buf["rewards"] = buf["rewards"] + gamma * buf["trunc"] * next_values
    buf["last_values"] = last_values
    return buf


class _EpisodeSums:
    """Per-agent sums over the episodes that end during the rollouts (the ``rollout/`` and ``domain/``
    scalars): return, length, the family's end-of-episode info ``metrics`` and its ``per_token``
    sums (``{metric: step info key}``, divided by the episode's tokens)."""

    def __init__(self, P: int, n: int, device: torch.device, metrics: Sequence[str],
                 per_token: dict[str, str]) -> None:
        self.metrics, self.per_token = tuple(metrics), dict(per_token)
        z = lambda shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.running = {k: z((P, n)) for k in ("ep_ret", "ep_len", *self.per_token)}
        self.totals = {k: z(P) for k in ("episodes", "return", "length", "ended_metrics", *self.per_token)}
        for key in self.metrics:
            self.totals[key], self.totals[key + "_n"] = z(P), z(P)

    def step(self, rew: torch.Tensor, valid: torch.Tensor, done: torch.Tensor, info: dict) -> None:
        """Add one step of raw rewards and infos (``valid``: decisions; ``done``: episodes ending now)."""
        P, n = rew.shape
        run, tot = self.running, self.totals
        run["ep_ret"] += torch.where(valid, rew.to(torch.float64), 0.0)
        run["ep_len"] += valid.to(torch.float64)
        for metric, key in self.per_token.items():
            run[metric] += torch.where(valid, info[key].reshape(P, n).to(torch.float64), 0.0)
        d64 = done.to(torch.float64)
        tot["episodes"] += d64.sum(1)
        tot["return"] += (run["ep_ret"] * d64).sum(1)
        tot["length"] += (run["ep_len"] * d64).sum(1)
        if "tokens" in info:
            ended = info["_tokens"].reshape(P, n) & done
            tokens = info["tokens"].reshape(P, n).to(torch.float64).clamp(min=1.0)
            e64 = ended.to(torch.float64)
            tot["ended_metrics"] += e64.sum(1)
            for metric in self.per_token:
                tot[metric] += (run[metric] / tokens * e64).sum(1)
            for key in self.metrics:
                v = info[key].reshape(P, n).to(torch.float64)
                ok = ended & torch.isfinite(v)
                tot[key] += torch.where(ok, v, 0.0).sum(1)
                tot[key + "_n"] += ok.to(torch.float64).sum(1)
        for k in run:
            run[k] = torch.where(done, torch.zeros_like(run[k]), run[k])

    def scalars(self) -> dict[str, torch.Tensor]:
        """Per-agent means over the episodes ended since the last call (NaN where none); resets the sums."""
        tot = self.totals
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=tot["episodes"].device)
        mean = lambda s, c: torch.where(c > 0, s / c.clamp(min=1.0), nan)  # noqa: E731
        out = {"rollout/ep_rew_mean": mean(tot["return"], tot["episodes"]),
               "rollout/ep_len_mean": mean(tot["length"], tot["episodes"]), "domain/episodes": tot["episodes"].clone()}
        for key in self.metrics:
            out[f"domain/{key}"] = mean(tot[key], tot[key + "_n"])
        for metric in self.per_token:
            out[f"domain/{metric}"] = mean(tot[metric], tot["ended_metrics"])
        for v in tot.values():
            v.zero_()
        return out


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SB3's explained variance per agent over the valid samples (rows of (P, N))."""
    n = w.sum(1).clamp(min=1.0)

    def var(x):
        m = (x * w).sum(1) / n
        return ((x - m.unsqueeze(1)) ** 2 * w).sum(1) / n

    vy = var(returns)
    return torch.where(vy == 0, torch.full_like(vy, float("nan")), 1 - var(returns - values) / vy)


def _tb_run_dir(tb: Path, name: str) -> Path:
    """``tb/<name>_<k>`` with the next unused ``k`` (SB3's naming: a rerun does not mix its events
    into an earlier run's folder)."""
    used = [int(m.group(1)) for d in (tb.iterdir() if tb.is_dir() else ())
            if (m := re.fullmatch(re.escape(name) + r"_(\d+)", d.name))]
    return tb / f"{name}_{max(used, default=0) + 1}"


def _seed_everything(agents: Sequence[AgentSpec], device: torch.device) -> list[torch.Generator]:
    """One generator per agent on the device (actions and minibatch permutations)."""
    gens = []
    for a in agents:
        g = torch.Generator(device=device)
        g.manual_seed(int(a.seed) + 1_000_003)
        gens.append(g)
    return gens


def _run(config: PopulationConfig, plan: PopulationPlan, folders: list[RunFolder]) -> PopulationResult:
    t_start = time.perf_counter()
    keep_freed_memory()  # the update's large tensors reuse the heap instead of page-faulting anew
    # the agents grouped by scenario (one env per scenario, each agent's sub-envs one block); the
    # summaries are returned in the given order
    order = [i for idx in scenario_groups(config, config.agents).values() for i in idx]
    agents, folders = [config.agents[i] for i in order], [folders[i] for i in order]
    P, n, ppo = len(agents), plan.n_envs, plan.ppo
    T, dev = ppo["n_steps"], torch.device(plan.device)
    family = family_for(config.env_id)
    lr_fn, clip_fn = _const(ppo["learning_rate"]), _const(ppo["clip_range"])
    clip_vf_fn = None if ppo["clip_range_vf"] is None else _const(ppo["clip_range_vf"])
    env = _make_env(config, plan, agents)
    writers: list[Any] = []
    try:
        # --- networks: SB3's policy per agent under the agent's seed; actor-critics stacked
        pk = dict(ppo.get("policy_kwargs") or {})
        policies = [sb3_policy(env.single_observation_space, env.single_action_space, pk, a.seed) for a in agents]
        nets = PopulationNets([ActorCritic(p) for p in policies], dev)
        optimizer = torch.optim.Adam(list(nets.params.values()), lr=lr_fn(1.0), eps=1e-5)
        gens = _seed_everything(agents, dev)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writers = [SummaryWriter(log_dir=str(_tb_run_dir(f.final("tb"), a.name))) for f, a in zip(folders, agents)]
        # --- env reset: agent p's sub-env j gets seed seed_p + j (as an SB3 run with that seed)
        obs, _ = env.reset(seed=[a.seed + j for a in agents for j in range(n)])
        norm = _Normalizer(P, n, obs.shape[-1], plan.normalize, dev)
        state = {"obs": norm.obs(obs.reshape(P, n, -1), torch.ones((P, n), dtype=torch.bool, device=dev)),
                 "needs_reset": torch.zeros((P, n), dtype=torch.bool, device=dev),
                 "episodes": _EpisodeSums(P, n, dev, family.episode_info_metrics, dict(family.per_token_sums))}
        N, bs = T * n, ppo["batch_size"]
        rows = torch.arange(P, device=dev).unsqueeze(1)
        timesteps = 0
        last_metrics: dict[str, np.ndarray] = {}
        for it in range(plan.iterations):
            # --- rollout
            u = torch.stack([torch.rand((T, n), generator=g, device=dev) for g in gens], 1)  # (T, P, n)
            buf = _collect(env, nets, norm, state, T, P, n, u, ppo["gamma"])
            timesteps += T * n
            adv, ret = compute_gae(buf["rewards"], buf["values"], buf["dones"], buf["last_values"], ppo["gamma"],
                                   ppo["gae_lambda"])
            # (T, P, n, ...) -> (P, T * n, ...): each agent's samples in one row
            flat = lambda x: x.transpose(0, 1).reshape(P, N, *x.shape[3:])  # noqa: E731
            data = {"obs": flat(buf["obs"]), "actions": flat(buf["actions"]), "old_log_prob": flat(buf["log_prob"]),
                    "old_values": flat(buf["values"]), "advantages": flat(adv), "returns": flat(ret),
                    "mask": flat(buf["valid"])}
            # --- PPO update (SB3's progress: 1 - timesteps / total, updated after the rollout)
            progress = 1.0 - timesteps / plan.timesteps
            lr, clip = lr_fn(progress), clip_fn(progress)
            clip_vf = None if clip_vf_fn is None else clip_vf_fn(progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums: dict[str, torch.Tensor] = {}
            n_batches = 0
            for _ in range(ppo["n_epochs"]):
                kl_sum, kl_batches = 0, 0  # SB3 logs approx_kl of the last epoch only
                perms = torch.stack([torch.randperm(N, generator=g, device=dev) for g in gens])  # (P, N)
                for start in range(0, N, bs):
                    idx = perms[:, start:start + bs]
                    batch = {k: v[rows, idx] for k, v in data.items()}
                    loss, stats = ppo_losses(nets, batch, clip, clip_vf, ppo["ent_coef"], ppo["vf_coef"],
                                             ppo["normalize_advantage"])
                    optimizer.zero_grad(set_to_none=False)
                    loss.sum().backward()
                    clip_grad_norm_per_agent(nets.params, ppo["max_grad_norm"])
                    optimizer.step()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0) + v
                    kl_sum, kl_batches = kl_sum + stats["approx_kl"], kl_batches + 1
                    n_batches += 1
            # --- per-agent scalars: one transfer to the host per iteration
            scalars = {f"train/{k}": v / n_batches for k, v in sums.items() if k not in ("loss", "approx_kl")}
            scalars["train/approx_kl"] = kl_sum / max(kl_batches, 1)
            scalars["train/loss"] = stats["loss"]
            scalars["train/explained_variance"] = _explained_variance(data["old_values"], data["returns"],
                                                                      data["mask"].to(torch.float32))
            scalars |= state["episodes"].scalars()
            host = {k: v.detach().to(torch.float64).cpu().numpy() for k, v in scalars.items()}
            host["train/learning_rate"] = np.full(P, lr)
            host["train/clip_range"] = np.full(P, clip)
            wall = time.perf_counter() - t_start
            host["time/fps"] = np.full(P, timesteps * P / max(wall, 1e-9))
            for p, w in enumerate(writers):
                for k, v in host.items():
                    if np.isfinite(v[p]):
                        w.add_scalar(k, float(v[p]), timesteps)
            for k, v in host.items():  # the last finite value of each scalar, per agent (for the summary)
                old = last_metrics.get(k, np.full(P, np.nan))
                last_metrics[k] = np.where(np.isfinite(v), v, old)
            if config.on_iteration is not None:
                config.on_iteration(it + 1, plan.iterations)
            if config.verbose:
                print(f"iteration {it + 1}/{plan.iterations}: {timesteps} steps per agent, "
                      f"{host['time/fps'][0]:.0f} steps/s in all", flush=True)
        train_wall = time.perf_counter() - t_start
        for w in writers:
            w.flush()
        tb_dirs = [Path(w.log_dir) for w in writers] or [None] * P
        # --- export each agent, validate all of them in one batch, summarise, commit
        for p, (a, folder) in enumerate(zip(agents, folders)):
            _export(nets, norm, p, env, ppo, pk, a, timesteps, folder.staged("model_last.zip"))
        metrics = _validate(config, agents, nets, norm)
        summaries: list[dict[str, Any]] = [{} for _ in agents]
        for p, (a, folder) in enumerate(zip(agents, folders)):
            summary = _summary(config, plan, a, p, timesteps, train_wall, time.perf_counter() - t_start, metrics[p],
                               last_metrics, folder, tb_dirs[p])
            atomic_write_text(folder.staged("summary.json"), json.dumps(summary, indent=2, default=_json) + "\n")
            summaries[order[p]] = summary
        for folder in folders:
            folder.commit()
    finally:
        for w in writers:
            w.close()
        env.close()
    return PopulationResult(out=plan.out, agents=list(config.agents), summaries=summaries,
                            wall_s=time.perf_counter() - t_start)


# ----------------------------------------------------------------------------------- export
class _SpacesEnv:
    """The spaces of the env, enough for SB3 to build a model to save (it is never stepped)."""

    def __init__(self, obs_space: Any, act_space: Any) -> None:
        import gymnasium as gym

        class _Env(gym.Env):
            observation_space, action_space = obs_space, act_space

            def reset(self, *, seed=None, options=None):
                return obs_space.sample(), {}

            def step(self, action):  # pragma: no cover - never stepped
                raise RuntimeError("the export env is not stepped")

        self.env_class = _Env


def _export(nets: PopulationNets, norm: _Normalizer, p: int, env: Any, ppo: dict[str, Any], pk: dict[str, Any],
            agent: AgentSpec, timesteps: int, path: Path) -> Path:
    """Agent ``p`` as an SB3 PPO zip: SB3's MlpPolicy with its weights and, when observations were
    normalised, its statistics baked in as a :class:`NormalizedObsExtractor` (as ``training.save_model``)."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.vec_env import DummyVecEnv

    from hlm_gym.policies.sb3_model import NormalizedObsExtractor

    policy_kwargs = dict(pk)
    if norm.norm_obs:
        policy_kwargs["features_extractor_class"] = NormalizedObsExtractor
        policy_kwargs["features_extractor_kwargs"] = {
            "mean": norm.obs_rms.mean[p].cpu().tolist(), "var": norm.obs_rms.var[p].cpu().tolist(),
            "epsilon": norm.epsilon, "clip_obs": norm.clip_obs}
    kwargs = {k: v for k, v in ppo.items() if k != "policy_kwargs"}
    venv = DummyVecEnv([_SpacesEnv(env.single_observation_space, env.single_action_space).env_class])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batch-size advice for a 1-env rollout: this model is only saved
        model = sb3.PPO("MlpPolicy", venv, policy_kwargs=policy_kwargs, seed=int(agent.seed), device="cpu", **kwargs)
    missing, unexpected = model.policy.load_state_dict(nets.agent_state_dict(p), strict=False)
    bad = [k for k in missing if not k.endswith((".mean", ".std"))]
    if bad or unexpected:  # pragma: no cover - an SB3 layout we do not know
        raise TrainingError(f"cannot export agent {agent.name} (missing {bad}, unexpected {unexpected})")
    model.num_timesteps = int(timesteps)
    with atomic_path(path, ".zip") as tmp:
        model.save(str(tmp))
    venv.close()
    return path


def _validate(config: PopulationConfig, agents: Sequence[AgentSpec], nets: PopulationNets,
              norm: _Normalizer) -> list[dict[str, float]]:
    """Every agent's final policy on the validation split, on the episodes the SB3 trainer's
    evaluation of its model would use (reset seed + 10000, ``eval_episodes``), the agents of a
    scenario in one batch (:mod:`hlm_gym.harness.population_eval`; the same metrics as
    ``evaluate`` of the exported zip)."""
    from hlm_gym.harness.population_eval import StackedPolicy, evaluate_blocks

    family = family_for(config.env_id)
    k, E = min(16, config.eval_episodes), config.eval_episodes
    mean = std = None
    if norm.norm_obs:  # the exported extractor's float32 statistics
        mean = norm.obs_rms.mean.to(torch.float32)
        std = torch.sqrt(norm.obs_rms.var + norm.epsilon).to(torch.float32)
    out: list[dict[str, float]] = [{} for _ in agents]
    for scenario, idx in scenario_groups(config, agents).items():
        settings = EnvSettings(scenario=scenario, traces=config.traces, env_kwargs=dict(config.env_kwargs))
        group = [agents[i] for i in idx]
        weights, targets = _reward_settings(config, group, family.env_kwargs(settings, "validation"))
        policy = StackedPolicy(nets, idx, k, mean, std, norm.clip_obs)
        res = evaluate_blocks(policy, config.env_id, settings, "validation", [a.seed + 10_000 for a in group],
                              weights, targets, E, k)
        for i, r in zip(idx, res):
            out[i] = {m: float(v["mean"]) for m, v in r.items()}
    return out


def _summary(config: PopulationConfig, plan: PopulationPlan, agent: AgentSpec, p: int, timesteps: int,
             train_wall: float, wall: float, metrics: dict[str, float], last: dict[str, np.ndarray],
             folder: RunFolder, tb_dir: Optional[Path]) -> dict[str, Any]:
    """An agent's ``summary.json``: the SB3 trainer's fields where they apply, plus the population."""
    P = len(config.agents)
    return {"algo": "ppo", "trainer": "population", "env_id": config.env_id, "scenario": config.scenario_of(agent),
            "risk_weight": agent.risk_weight, "risk_target": agent.risk_target, "seed": agent.seed,
            "agent": agent.name, "agent_index": config.agents.index(agent),
            "population": [a.folder for a in config.agents],
            "config": population_config_dict(config), "device": plan.device, "env_backend": "torch",
            "n_envs": plan.n_envs, "timesteps": int(timesteps), "train_wall_s": round(train_wall, 2),
            "wall_s": round(wall, 2), "steps_per_s": round(timesteps * P / max(train_wall, 1e-9), 1),
            "hyperparams": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v))
                            for k, v in plan.hp.items()},
            "normalize": plan.normalize, "last": metrics,
            "train": {k: (None if not np.isfinite(v[p]) else float(v[p])) for k, v in last.items()},
            "files": {"model_last": str(folder.final("model_last.zip")),
                      "tensorboard": None if tb_dir is None else str(tb_dir),
                      "summary": str(folder.final("summary.json"))},
            "artifacts": {"model_last": {"file": "model_last.zip",
                                         "sha256": sha256_file(folder.staged("model_last.zip"))}}}


def population_config_dict(config: PopulationConfig) -> dict[str, Any]:
    """The run settings an agent's ``summary.json`` records (``config``): every field but the agent
    list and the output options, as JSON values (``hlm-gym compare --resume`` compares them)."""
    d = {f.name: getattr(config, f.name) for f in fields(config)
         if f.name not in ("agents", "verbose", "on_iteration")}
    return json.loads(json.dumps(d, default=str))


def _json(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def format_population_summary(result: PopulationResult) -> str:
    """The end-of-run lines printed by ``hlm-gym train --trainer population``."""
    s0 = result.summaries[0] if result.summaries else {}
    scenarios = ", ".join(dict.fromkeys(str(s.get("scenario")) for s in result.summaries))
    lines = [f"trained {len(result.agents)} PPO agents together on {s0.get('env_id')} ({scenarios}): "
             f"{s0.get('timesteps')} steps each in {s0.get('train_wall_s', 0):.1f} s "
             f"({s0.get('steps_per_s', 0):.0f} steps/s in all, {s0.get('device')})"]
    risk = family_for(s0["env_id"]).risk_metric if s0.get("env_id") else "risk"
    shown = [k for k in dict.fromkeys(("tokens_per_s", "skip_rate", risk, "experts_per_layer"))
             if any(k in s["last"] for s in result.summaries)]
    for s in result.summaries:
        m = s["last"]
        cells = "  ".join(f"{k.replace('_per_s', '/s').replace('_', ' ')} {m.get(k, math.nan):.4g}" for k in shown)
        lines.append(f"  {s['agent']:<28} {cells}  reward/step {m.get('reward_per_step', math.nan):.4g}  "
                     f"-> {Path(s['files']['model_last']).parent}")
    return "\n".join(lines)

