"""The evaluation harness: run any policy on held-out traces (or live) of any env the harness
knows and report metrics with confidence intervals over episodes.

The env id picks the env family (:func:`hlm_gym.harness.families.family_for`), which says how
to build the environment and the policy's context, how binary rules map onto the action space,
and which metrics an episode has (the HybridLM family's: :mod:`hlm_gym.harness.hybrid_lm`).
Each metric is one value per episode, then the mean and a 95% **Student-t interval over
episodes**, ``mean +- t_{0.975, n-1} * s / sqrt(n)`` (episodes are i.i.d. draws of a prompt and
the channel).

The run is deterministic for a seed: the environment is reset with ``seed``, stochastic
policies are re-seeded from it, and episodes are assigned to the parallel environments by
fixed quotas (so which episodes are counted does not depend on their lengths).

Outputs: :func:`format_table` (terminal), :func:`write_outputs` -> ``summary.csv``,
``episodes.csv`` and ``result.json`` in ``--out`` (written atomically).
"""

from __future__ import annotations

import csv
import io
import json
import time
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from hlm_gym.harness.checks import check_choice, check_int, check_scenarios
from hlm_gym.harness.errors import EvaluationError
from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.family import EnvSettings, EpisodeTracker
from hlm_gym.harness.results import CI_METHOD, EvaluationResult, summarize_episodes, t_interval
from hlm_gym.harness.run_folder import signals_deferred
from hlm_gym.paths import atomic_write_text
from hlm_gym.policies.base import Policy

__all__ = ["EvaluationResult", "EvaluationError", "CI_METHOD", "summarize_episodes", "t_interval", "run_episodes",
           "make_eval_env", "check_evaluation", "evaluate", "format_table", "write_outputs"]


#: live mode's fidelity reference: the trace's always-send response when the trace was recorded with
#: the live pair, else decoded live (``auto``); always decoded live; always the trace's.
REFERENCES = ("auto", "live", "trace")

def run_episodes(env: Any, policy: Policy, n_episodes: int, seed: int | Sequence[int], tracker: EpisodeTracker,
                 max_steps: int = 10_000_000, progress: Callable[[int], None] | None = None,
                 quota: Optional[Sequence[int]] = None) -> list[dict[str, float]]:
    """Run ``policy`` on a Gymnasium vector env until ``n_episodes`` episodes have finished.

    Env ``i`` contributes the first ``q_i`` episodes it finishes (quotas fixed up front:
    ``n_episodes`` split evenly, or the given ``quota`` per env), so the set of counted episodes
    does not favour short ones. ``seed``: the env's reset seed (an int, or one seed per env).
    ``tracker`` (the env family's :class:`~hlm_gym.harness.family.EpisodeTracker` for
    ``env.num_envs`` environments) turns the steps into each episode's metrics.
    """
    n_envs = env.num_envs
    if quota is None:
        quota = np.full(n_envs, n_episodes // n_envs)
        quota[: n_episodes % n_envs] += 1
    else:
        quota = np.asarray(quota, dtype=int)
        if quota.shape != (n_envs,) or int(quota.sum()) != n_episodes:
            raise ValueError(f"quota: expected {n_envs} counts summing to {n_episodes}")
    done = np.zeros(n_envs, dtype=int)
    results: list[list[dict[str, float]]] = [[] for _ in range(n_envs)]
    obs, _ = env.reset(seed=seed)
    policy.reset(n_envs)
    autoreset_next = str(getattr(env, "metadata", {}).get("autoreset_mode", "")).lower().endswith("next_step")
    skip_next = np.zeros(n_envs, dtype=bool)
    for _ in range(max_steps):
        if np.all(done >= quota):
            break
        actions = policy.act(obs)
        obs, rew, term, trunc, info = env.step(actions)
        ended = np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
        valid = ~skip_next  # a NEXT_STEP autoreset step is not a decision
        tracker.step(actions, rew, info, valid)
        for i in np.flatnonzero(ended & valid):
            if done[i] < quota[i]:
                results[i].append(tracker.finish(i, info))
                done[i] += 1
                if progress:
                    progress(int(done.sum()))
            tracker.clear(i)
        skip_next = ended & valid & autoreset_next
    else:
        raise EvaluationError(f"evaluation did not finish {n_episodes} episodes in {max_steps} steps")
    # deterministic order: env by env, in completion order
    out = []
    for i in range(n_envs):
        for j, ep in enumerate(results[i]):
            out.append({"env": i, "episode": j} | ep)
    return out


def make_eval_env(settings: EnvSettings, split: str, num_envs: int = 16, env_id: str = DEFAULT_ENV_ID) -> Any:
    """The vector environment (trace mode) the harness drives for ``env_id`` on ``split``."""
    family = family_for(env_id)
    return family.make_vector_env(env_id, num_envs, family.env_kwargs(settings, split))


#: Seeds :func:`evaluate` takes (numpy's legacy seeding limit; the CLI's ``--seed`` stops at ``SEED_MAX``).
EVAL_SEED_MAX = 2**32 - 1


def check_evaluation(policy: "str | Policy", *, env_id: str = DEFAULT_ENV_ID, scenario: Any = None,
                     split: str = "test", episodes: int = 100, seed: int = 0, mode: str = "trace",
                     num_envs: int = 16, reference: str = "auto") -> None:
    """Check an evaluation's settings before any work (:class:`EvaluationError` naming the flag, the
    value and what is allowed; a policy spec's own error): env id, mode, split, episodes, seed,
    parallel envs, the fidelity reference, the policy spec and the scenario (loaded; ``None``: not checked)."""
    family_for(env_id)
    check_choice(mode, "--mode", ("trace", "live"), EvaluationError)
    check_choice(split, "--split", ("train", "validation", "test"), EvaluationError)
    check_choice(reference, "--reference", REFERENCES, EvaluationError)
    check_int(episodes, "--episodes", 1, error=EvaluationError)
    check_int(num_envs, "--num-envs", 1, error=EvaluationError)
    check_int(seed, "--seed", 0, EVAL_SEED_MAX, EvaluationError)
    if isinstance(policy, str):
        from hlm_gym.policies.registry import validate_spec

        validate_spec(policy)
    if isinstance(scenario, (str, PathLike)):
        check_scenarios([scenario], "--scenario", EvaluationError, family_for(env_id).load_scenario)


def evaluate(policy: str | Policy, *, env_id: str = DEFAULT_ENV_ID, scenario: Any = "static-good",
             split: str = "test", episodes: int = 100, seed: int = 0, mode: str = "trace",
             risk_weight: Optional[float] = None, risk_target: Optional[float] = None, num_envs: int = 16,
             traces: Any = None, env_kwargs: Optional[Mapping[str, Any]] = None, env: Any = None,
             policy_context: Optional[Mapping[str, Any]] = None, reference: str = "auto",
             live_options: Optional[Mapping[str, Any]] = None) -> EvaluationResult:
    """Evaluate ``policy`` (a spec string or a :class:`Policy`) on ``env_id`` for ``episodes`` episodes.

    ``risk_weight``/``risk_target``/``traces``/``env_kwargs``: environment options (``None``:
    its defaults); ``env``: an already made vector env of ``env_id`` to use instead (its options
    win); ``policy_context``: :class:`~hlm_gym.policies.context.PolicyContext` fields to set on top
    of the env's (e.g. a ready U-HLM ``fit``); ``reference``: live mode's fidelity reference;
    ``live_options``: more keywords of the family's ``evaluate_live`` (HybridLM: ``batch_size``,
    ``progress``)."""
    family = family_for(env_id)
    check_evaluation(policy, env_id=env_id, scenario=scenario if env is None else None, split=split,
                     episodes=episodes, seed=seed, mode=mode, num_envs=num_envs, reference=reference)
    settings = EnvSettings(scenario=scenario, risk_weight=risk_weight, risk_target=risk_target, traces=traces,
                           env_kwargs=dict(env_kwargs or {}))
    if mode == "live":
        if family.evaluate_live is None:
            raise EvaluationError(f"{env_id} has no live mode")
        return family.evaluate_live(policy, family=family, env_id=env_id, settings=settings, split=split,
                                    episodes=episodes, seed=seed, policy_context=policy_context, reference=reference,
                                    **dict(live_options or {}))
    own_env = env is None
    if own_env:
        env = make_eval_env(settings, split, min(num_envs, episodes), env_id)
    try:
        pol, ctx = family.policy_for(policy, env, env_id, seed=seed, traces=traces, overrides=policy_context)
        t0 = time.perf_counter()
        eps = run_episodes(env, pol, episodes, seed, family.episode_tracker(env.num_envs))
        wall = time.perf_counter() - t0
    finally:
        if own_env:
            env.close()
    config = {"policy": policy if isinstance(policy, str) else repr(policy), "env_id": env_id,
              "scenario": scenario if isinstance(scenario, str) else getattr(scenario, "name", str(scenario)),
              "split": split, "episodes": episodes, "seed": seed, "mode": mode, "risk_weight": ctx.risk_weight,
              "risk_target": ctx.risk_target, "num_envs": getattr(env, "num_envs", None),
              "traces": None if traces is None else str(traces), "latency_ref_s": ctx.latency_ref,
              "max_tokens": ctx.max_tokens, "wall_s": round(wall, 3)}
    return EvaluationResult(config=config, episodes=eps, summary=summarize_episodes(eps, family.metrics),
                            policy=pol.describe())


# ------------------------------------------------------------------------------------ output
_LABELS = {"tokens_per_s": "tokens/s", "transmission_rate": "transmission rate", "skip_rate": "skip rate",
           "risk": "risk", "error_rate": "error rate", "uplink_bits_per_token": "uplink bits/token",
           "energy_j_per_token": "energy J/token", "reward_per_step": "reward/step", "fidelity": "fidelity"}


def _fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "nan"
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        return f"{x:.4g}"
    return f"{x:.4f}" if ax < 10 else f"{x:.2f}"


def format_table(result: EvaluationResult) -> str:
    """A plain-text table of the summary (mean and 95% interval per metric)."""
    c = result.config
    lines = [f"policy {c['policy']}  scenario {c['scenario']}  split {c['split']}  mode {c['mode']}  "
             f"episodes {c['episodes']}  seed {c['seed']}",
             f"{'metric':<20} {'mean':>12} {'95% CI (t, over episodes)':>30}"]
    for m, s in result.summary.items():
        ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"
        lines.append(f"{_LABELS.get(m, m):<20} {_fmt(s['mean']):>12} {ci:>30}")
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_outputs(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.csv``, ``episodes.csv`` and ``result.json``, rendered first, then each
    atomically under a unique temporary name (Ctrl-C deferred until all three are in place)."""
    out = Path(out_dir)
    rows = [{"metric": m} | s for m, s in result.summary.items()]
    ep_fields: list[str] = []
    for ep in result.episodes:
        ep_fields += [k for k in ep if k not in ep_fields]
    texts = {"summary_csv": ("summary.csv", _csv(rows, ["metric", "mean", "ci_low", "ci_high", "std", "n"])),
             "episodes_csv": ("episodes.csv", _csv(result.episodes, ep_fields)),
             "json": ("result.json", json.dumps(result.to_dict(), indent=2, default=_json_default) + "\n")}
    paths = {key: out / name for key, (name, _) in texts.items()}
    with signals_deferred():
        for key, (_, text) in texts.items():
            atomic_write_text(paths[key], text)
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
