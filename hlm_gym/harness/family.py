"""What the harness needs from an env family: :class:`EnvFamily`, :class:`EnvSettings`.

An env family is a set of env ids that share an observation layout, metrics and analytic
policies (the HybridLM family: ``hlm_gym/HybridLM-v0`` and ``hlm_gym/HybridLMCompressed-v0``).
Evaluation, training, the training callbacks and ``compare`` take an env id and ask its family
(:func:`hlm_gym.harness.families.family_for`) for everything env-specific, so a new family
plugs in by declaring one :class:`EnvFamily` (see :mod:`hlm_gym.harness.hybrid_lm`) and adding
it to :data:`hlm_gym.harness.families.FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

from hlm_gym.policies.base import Policy, on_action_space
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.registry import make_policy

__all__ = ["EnvFamily", "EnvSettings", "EpisodeTracker", "AnalyticPolicy"]


@dataclass(frozen=True)
class EnvSettings:
    """The run-level environment options the harness exposes (``None``: the environment's default).

    ``traces``: a trace folder/file (``None``: the shipped set); ``env_kwargs``: any other
    environment options, passed as they are."""

    scenario: Any = "pedestrian"
    risk_weight: Optional[float] = None
    risk_target: Optional[float] = None
    traces: Any = None
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)


class EpisodeTracker(Protocol):
    """Per-step accounting of the episodes of ``n`` parallel environments (made per evaluation)."""

    def step(self, actions: np.ndarray, rewards: np.ndarray, info: dict, valid: np.ndarray) -> None:
        """Add one step (``valid``: the environments whose step was a decision)."""

    def finish(self, i: int, info: dict) -> dict[str, float]:
        """The metrics of environment ``i``'s episode, which ended at this step (``info`` is the step's)."""

    def clear(self, i: int) -> None:
        """Start environment ``i``'s next episode."""


@dataclass(frozen=True)
class AnalyticPolicy:
    """One analytic policy ``compare`` evaluates: its plot/table ``family``, ``spec``, the risk
    weight it is evaluated at (``None``: the environment's) and its swept ``param``."""

    family: str
    spec: str
    risk_weight: Optional[float]
    param: Any


@dataclass(frozen=True)
class EnvFamily:
    """What the harness needs from one env family.

    * ``env_kwargs(settings, split) -> dict``: the environment options of a run for a data split
      (the one place they are built, for evaluation and training alike);
    * ``make_vector_env(env_id, num_envs, env_kwargs)``: the Gymnasium vector env evaluation drives;
    * ``make_train_env(env_id, n_envs, seed, env_kwargs, backend, device)``: the SB3 ``VecEnv``
      training steps (finished episodes' infos carry ``train_metrics``);
    * ``policy_context(env) -> PolicyContext``: what spec strings need from an env (the harness
      adds the env id and the action and observation spaces);
    * ``send_action(n_actions)``: the action a binary rule's SEND becomes;
    * ``episode_tracker(n)``: an :class:`EpisodeTracker` that turns steps into ``metrics``;
    * ``reference_policy``: the analytic spec the training callback draws as a reference line;
    * ``analytic_policies(sweep)``: the analytic policies ``compare`` evaluates for its resolved
      settings (thresholds, Learn-then-Test deltas, the PPO runs' rewards);
      ``sweep_family``: the one whose front the learned points are checked against;
      ``shared_policy_context(traces)``: PolicyContext fields ``compare`` computes once for all
      of them (HybridLM: the U-HLM fit);
    * ``check_data(traces, splits)``: raise when the data of ``splits`` (default all) is missing;
    * ``evaluate_live(policy, *, family, env_id, settings, split, episodes, seed, policy_context,
      reference, **options)``: the family's live evaluation (an
      :class:`~hlm_gym.harness.results.EvaluationResult`; ``family`` is this object; ``None``: no
      live mode);
    * ``load_scenario(name)``: the scenario of a name or YAML path (a one-line error otherwise);
      ``make_torch_env(env_id, num_envs, device, env_kwargs, risk_weights, risk_targets)``: the
      torch batched env with per-env reward settings (the population trainer's);
      ``reward_defaults(env_kwargs) -> (risk_weight, risk_target)``: the env's defaults;
    * ``episode_info_metrics``: the end-of-episode info keys the population trainer logs;
      ``per_token_sums``: ``{metric: step info key}`` it sums per episode and divides by tokens;
    * ``risk_metric``: compare's matched-risk axis (tokens/s against it); ``error_metric``: a
      second axis checked the same way (``None``: none); ``row_metrics``/``ci_metrics``: the
      results table's columns (and those with an interval); ``compare_defaults``: compare's
      default scenarios and sweeps for this family (``None``: compare's own);
    * compare's words and looks for this family (all optional; compare falls back to generic ones):
      ``labels`` (``title``, ``sweep_point``, ``front``, ``front_long``, ``rules``, ``all_rules``,
      ``reference`` with ``{risk}`` for the risk axis' name, ``axis:<metric>`` for a plot axis,
      ``name:<metric>`` for a metric's name in text, ``no_live``: why compare has no live mode for
      it), ``plot_styles`` (one ``(analytic family,
      colour, marker, legend label)`` per analytic family, in drawing order), ``table_columns``
      (``(metric, heading, significant digits, with interval)`` per column of the results table);
      ``live_metrics``: the row columns ``compare --live`` fills from ``evaluate_live``
      (empty: compare has no live mode for this family), ``live_sources``: the live result's
      metric of each (default: the same name).
    """

    name: str
    env_ids: tuple[str, ...]
    metrics: tuple[str, ...]
    train_metrics: tuple[str, ...]
    env_kwargs: Callable[[EnvSettings, str], dict[str, Any]]
    make_vector_env: Callable[[str, int, dict[str, Any]], Any]
    make_train_env: Callable[[str, int, int, dict[str, Any], str, str], Any]
    policy_context: Callable[[Any], PolicyContext]
    send_action: Callable[[int], int]
    episode_tracker: Callable[[int], EpisodeTracker]
    reference_policy: Optional[str]
    analytic_policies: Callable[[Mapping[str, Any]], list[AnalyticPolicy]]
    sweep_family: str
    shared_policy_context: Callable[[Any], Mapping[str, Any]]
    check_data: Callable[..., None]
    load_scenario: Callable[[Any], Any]
    make_torch_env: Callable[..., Any]
    reward_defaults: Callable[[Mapping[str, Any]], tuple[float, float]]
    episode_info_metrics: tuple[str, ...]
    per_token_sums: Mapping[str, str]
    risk_metric: str
    error_metric: Optional[str]
    row_metrics: tuple[str, ...]
    ci_metrics: tuple[str, ...]
    compare_defaults: Optional[Mapping[str, Any]] = None
    evaluate_live: Optional[Callable[..., Any]] = None
    labels: Mapping[str, str] = field(default_factory=dict)
    plot_styles: tuple[tuple[str, str, str, str], ...] = ()
    table_columns: tuple[tuple[str, str, int, bool], ...] = ()
    live_metrics: tuple[str, ...] = ()
    live_sources: Mapping[str, str] = field(default_factory=dict)

    def context_for(self, env: Any, env_id: str, **changes: Any) -> PolicyContext:
        """The :class:`PolicyContext` of ``env`` (a single or vector env of ``env_id``): the family's
        fields plus the env id, action and observation spaces and the action SEND maps to; then ``changes``."""
        act = getattr(env, "single_action_space", None)
        act = env.action_space if act is None else act
        obs = getattr(env, "single_observation_space", None)
        obs = env.observation_space if obs is None else obs
        n = int(act.n)
        return self.policy_context(env).replace(env_id=env_id, n_actions=n, send_action=self.send_action(n),
                                                observation_shape=tuple(obs.shape), **changes)

    def policy_for(self, policy: "str | Policy", env: Any, env_id: str, *, seed: int, traces: Any = None,
                   overrides: Optional[Mapping[str, Any]] = None) -> tuple[Policy, PolicyContext]:
        """The policy to run on ``env`` (built from a spec for the env's context, or given) acting in the
        env's action space, reseeded with ``seed``; and the context (``overrides``: PolicyContext fields)."""
        ctx = self.context_for(env, env_id, seed=seed, traces=traces)
        if overrides:
            ctx = ctx.replace(**overrides)
        pol = make_policy(policy, ctx) if isinstance(policy, str) else on_action_space(policy, ctx.n_actions,
                                                                                          ctx.send_action)
        if hasattr(pol, "reseed"):
            pol.reseed(seed)
        return pol, ctx
