"""The evaluation harness: run any policy on held-out traces (or live) and report metrics with
confidence intervals over episodes.

Metrics (one value per episode, then mean and a 95% **Student-t interval over episodes**,
``mean +- t_{0.975, n-1} * s / sqrt(n)``; episodes are i.i.d. draws of a prompt and the
channel):

==========================  ===============================================================
``tokens_per_s``            output tokens / the episode's simulated latency
``transmission_rate``       uploaded tokens / output tokens
``skip_rate``               1 - transmission_rate
``risk``                    the environment's risk of the episode (rejection probability of
                            the tokens kept without verification, see the env's docs)
``error_rate``              skipped tokens that verification would have rejected / tokens
``uplink_bits_per_token``   uplink bits / output tokens
``energy_j_per_token``      device energy (J) / output tokens
``reward_per_step``         the environment's reward, averaged over the episode's decisions
``fidelity``                (live mode) cosine similarity of the response's sentence
                            embedding to the LLM-alone response for the same prompt
==========================  ===============================================================

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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hlm_gym.paths import atomic_write_text
from hlm_gym.policies.base import Policy

__all__ = ["METRICS", "EvaluationResult", "summarize_episodes", "t_interval", "evaluate", "format_table",
           "write_outputs", "EvaluationError"]

METRICS: tuple[str, ...] = ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate",
                            "uplink_bits_per_token", "energy_j_per_token", "reward_per_step", "fidelity")
CI_METHOD = "Student-t 95% interval over episodes"
ENV_ID = "hlm_gym/HybridLM-v0"


class EvaluationError(ValueError):
    """Bad evaluation settings."""


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, low, high, std)`` of a Student-t interval; NaN bounds for fewer than 2 values."""
    from scipy.stats import t as student_t

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, math.nan
    s = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)
    return m, m - half, m + half, s


def summarize_episodes(episodes: Sequence[dict[str, float]], metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """``metric -> {mean, ci_low, ci_high, std, n}`` over the episodes that report it."""
    out: dict[str, dict] = {}
    for m in metrics:
        vals = [ep[m] for ep in episodes if m in ep and ep[m] is not None and np.isfinite(ep[m])]
        if not vals:
            continue
        mean, lo, hi, sd = t_interval(vals)
        out[m] = {"mean": mean, "ci_low": lo, "ci_high": hi, "std": sd, "n": len(vals)}
    return out


@dataclass
class EvaluationResult:
    """Per-episode metrics, their summary and the run's settings."""

    config: dict[str, Any]
    episodes: list[dict[str, float]]
    summary: dict[str, dict] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "policy": self.policy, "ci_method": CI_METHOD, "summary": self.summary,
                "episodes": self.episodes}


# ------------------------------------------------------------------------------- episode runner
_STEP_SUMS = ("latency_s", "uplink_bits", "energy_j", "sent", "rejected", "beta_skipped", "error_skipped", "reward")


def _episode_from(acc: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """Metrics of one finished episode: the env's end-of-episode info where it has them, else
    computed from the per-step sums."""
    tokens = final.get("tokens", acc["tokens"])  # output tokens (the env's count; steps otherwise)
    n = max(tokens, 1.0)
    ep = {
        "tokens": tokens,
        "steps": acc["tokens"],
        "latency_s": acc["latency_s"],
        "tokens_per_s": tokens / acc["latency_s"] if acc["latency_s"] > 0 else math.nan,
        "transmission_rate": acc["sent"] / max(acc["tokens"], 1.0),
        "skip_rate": 1.0 - acc["sent"] / max(acc["tokens"], 1.0),
        "uplink_bits_per_token": acc["uplink_bits"] / n,
        "energy_j_per_token": acc["energy_j"] / n,
        "reward_per_step": acc["reward"] / max(acc["tokens"], 1.0),
    }
    skipped = acc["tokens"] - acc["sent"]
    ep["risk"] = acc["beta_skipped"] / skipped if skipped > 0 else 0.0
    ep["error_rate"] = acc["error_skipped"] / n
    for key in ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate", "fidelity"):
        if key in final and final[key] is not None and np.isfinite(final[key]):
            ep[key] = float(final[key])
    return ep


def _info_value(info: dict, key: str, i: int) -> float | None:
    if key not in info:
        return None
    mask = info.get("_" + key)
    if mask is not None and not bool(np.asarray(mask)[i]):
        return None
    v = np.asarray(info[key])
    return float(v[i]) if v.ndim else float(v)


def _column(info: dict, key: str, n: int) -> np.ndarray:
    """``info[key]`` as a float array of length ``n`` with NaN where its ``_key`` mask is False."""
    if key not in info:
        return np.full(n, np.nan)
    v = np.broadcast_to(np.asarray(info[key], dtype=np.float64), (n,)).copy()
    mask = info.get("_" + key)
    if mask is not None:
        v[~np.asarray(mask, dtype=bool)] = np.nan
    return v


def run_episodes(env: Any, policy: Policy, n_episodes: int, seed: int, max_steps: int = 10_000_000,
                 progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Run ``policy`` on a Gymnasium vector env until ``n_episodes`` episodes have finished.

    Env ``i`` contributes the first ``q_i`` episodes it finishes (quotas fixed up front:
    ``n_episodes`` split evenly), so the set of counted episodes does not favour short ones.
    Per-step infos ``latency_s``, ``uplink_bits``, ``energy_j``, ``sent``, ``beta``,
    ``rejected`` are summed; end-of-episode infos override the computed metrics.
    """
    n_envs = env.num_envs
    quota = np.full(n_envs, n_episodes // n_envs)
    quota[: n_episodes % n_envs] += 1
    done = np.zeros(n_envs, dtype=int)
    results: list[list[dict[str, float]]] = [[] for _ in range(n_envs)]
    keys = _STEP_SUMS + ("tokens",)
    acc = {k: np.zeros(n_envs) for k in keys}
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
        sent = _column(info, "sent", n_envs)
        sent = np.where(np.isnan(sent), (np.asarray(actions) != 0).astype(float), sent)
        skipped = valid & (sent == 0)
        acc["tokens"] += valid
        acc["reward"] += np.where(valid, np.asarray(rew, dtype=np.float64), 0.0)
        acc["sent"] += np.where(valid, sent, 0.0)
        for key in ("latency_s", "uplink_bits", "energy_j"):
            acc[key] += np.where(valid, np.nan_to_num(_column(info, key, n_envs)), 0.0)
        acc["beta_skipped"] += np.where(skipped, np.nan_to_num(_column(info, "beta", n_envs)), 0.0)
        acc["error_skipped"] += np.where(skipped, np.nan_to_num(_column(info, "error", n_envs)), 0.0)
        for i in np.flatnonzero(ended & valid):
            final = {k: _info_value(info, k, i) for k in METRICS + ("tokens",)}
            final = {k: v for k, v in final.items() if v is not None}
            if done[i] < quota[i]:
                results[i].append(_episode_from({k: float(acc[k][i]) for k in keys}, final))
                done[i] += 1
                if progress:
                    progress(int(done.sum()))
            for k in keys:
                acc[k][i] = 0.0
        skip_next = ended & valid & autoreset_next
    else:
        raise EvaluationError(f"evaluation did not finish {n_episodes} episodes in {max_steps} steps")
    # deterministic order: env by env, in completion order
    out = []
    for i in range(n_envs):
        for j, ep in enumerate(results[i]):
            out.append({"env": i, "episode": j} | ep)
    return out


def _default_traces_exist() -> bool:
    try:
        from hlm_gym.traces.store import default_trace_path

        return default_trace_path("test").is_file()
    except Exception:
        return False


def make_eval_env(scenario: str, split: str, lambda_: float | None, num_envs: int, traces: Any = None,
                  env_kwargs: dict[str, Any] | None = None) -> Any:
    """The numpy vector environment (trace mode) the harness drives.

    ``traces``: a trace file or a folder with ``embedded-<split>.parquet`` (default: the shipped set)."""
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    kw = _env_kwargs(scenario, split, lambda_, traces, env_kwargs)
    return gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kw)


def _env_kwargs(scenario: str, split: str, lambda_: float | None, traces: Any,
                env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"scenario": scenario, "split": split}
    if lambda_ is not None:
        kw["risk_weight"] = float(lambda_)
    if traces is not None:
        from hlm_gym.policies.data import resolve_trace_path

        kw["trace"] = str(resolve_trace_path(traces, split))
    kw.update(env_kwargs or {})
    return kw


def _policy_for(env, policy, seed: int, traces, policy_context) -> tuple[Policy, dict]:
    """The policy to evaluate on ``env`` (built from a spec with the env's context, reseeded) and that context."""
    ctx = _env_context(env)
    ctx.update({"seed": seed, "traces": traces} | (policy_context or {}))
    pol = policy if isinstance(policy, Policy) else _make(policy, ctx)
    if hasattr(pol, "reseed"):
        pol.reseed(seed)
    return pol, ctx


def _env_context(env: Any) -> dict[str, Any]:
    """What spec strings need from the environment (max_tokens, latency_ref, lambda, scenario, V)."""
    base = getattr(env, "unwrapped", env)
    sim = getattr(base, "sim", None)
    if sim is None:
        return {}
    return {"max_tokens": int(sim.max_tokens), "latency_ref": float(sim.latency_ref),
            "lambda_": float(sim.config.risk_weight), "scenario": sim.scenario, "vocab_size": int(sim.vocab_size)}


def evaluate(policy: str | Policy, *, scenario: str = "static-good", split: str = "test", episodes: int = 100,
             seed: int = 0, mode: str = "trace", lambda_: float | None = None, num_envs: int = 16,
             traces: Any = None, env_kwargs: dict[str, Any] | None = None, env: Any = None,
             policy_context: dict[str, Any] | None = None, reference: str = "live") -> EvaluationResult:
    """Evaluate ``policy`` (a spec string or a :class:`Policy`) for ``episodes`` episodes."""
    if mode not in ("trace", "live"):
        raise EvaluationError(f"mode must be trace or live, got {mode!r}")
    if not isinstance(episodes, int) or episodes < 1:
        raise EvaluationError(f"episodes must be a positive integer, got {episodes!r}")
    if mode == "live":
        if isinstance(policy, str):
            from hlm_gym.policies.registry import validate_spec

            validate_spec(policy)
        return evaluate_live(policy, scenario=scenario, split=split, episodes=episodes, seed=seed,
                             lambda_=lambda_, traces=traces, env_kwargs=env_kwargs, policy_context=policy_context,
                             reference=reference)
    if isinstance(policy, str):
        from hlm_gym.policies.registry import validate_spec

        validate_spec(policy)
    own_env = env is None
    if own_env:
        env = make_eval_env(scenario, split, lambda_, min(num_envs, episodes), traces, env_kwargs)
    try:
        pol, ctx = _policy_for(env, policy, seed, traces, policy_context)
        t0 = time.perf_counter()
        eps = run_episodes(env, pol, episodes, seed)
        wall = time.perf_counter() - t0
    finally:
        if own_env:
            env.close()
    config = {"policy": policy if isinstance(policy, str) else repr(policy), "scenario": scenario, "split": split,
              "episodes": episodes, "seed": seed, "mode": mode, "lambda": ctx.get("lambda_", lambda_),
              "num_envs": getattr(env, "num_envs", None), "traces": None if traces is None else str(traces),
              "latency_ref_s": ctx.get("latency_ref"), "max_tokens": ctx.get("max_tokens")}
    res = EvaluationResult(config=config, episodes=eps, summary=summarize_episodes(eps), policy=pol.describe())
    res.config["wall_s"] = round(wall, 3)
    return res


def evaluate_live(policy: str | Policy, *, scenario: str, split: str, episodes: int, seed: int,
                  lambda_: float | None, traces: Any = None, env_kwargs: dict[str, Any] | None = None,
                  policy_context: dict[str, Any] | None = None, fidelity: bool = True,
                  reference: str = "live") -> EvaluationResult:
    """Live mode: the real pair in the loop (single env, ``mode="live"``), one episode after another.

    Episode ``j`` decodes prompt ``order[j mod n]`` of a seeded permutation of the split's prompts.
    Fidelity: cosine similarity of the response's sentence embedding to the LLM-alone response
    for the same prompt. ``reference="live"`` (default) decodes that response in the same env
    with always-send (same prompt, same per-prompt seed; speculative sampling makes it an exact
    LLM sample), once per prompt; ``reference="trace"`` uses the trace's recorded always-send
    response instead (cheaper, but only the same sample if the SLM artifact is the one the
    trace was built with).
    """
    if reference not in ("live", "trace"):
        raise EvaluationError(f"reference must be live or trace, got {reference!r}")
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    kw = _env_kwargs(scenario, split, lambda_, traces, env_kwargs) | {"mode": "live"}
    env = gym.make(ENV_ID, **kw)
    base = env.unwrapped
    try:
        pol, ctx = _policy_for(env, policy, seed, traces, policy_context)
        tok = base._live.pair.tokenizer
        sim = base.sim
        eps, responses, references = [], [], []
        ref_cache: dict[int, str] = {}
        t0 = time.perf_counter()
        order = np.random.default_rng(seed).permutation(sim.traces.n_prompts)
        for j in range(episodes):
            # each prompt once (in a seeded order) before any repeats: live episodes are expensive
            obs, info0 = env.reset(seed=seed if j == 0 else None, options={"prompt": int(order[j % order.size])})
            pol.reset(1)
            acc = {k: 0.0 for k in _STEP_SUMS} | {"tokens": 0.0}
            while True:
                a = int(pol.act(obs)[0])
                obs, rew, term, trunc, info = env.step(a)
                acc["tokens"] += 1
                acc["reward"] += float(rew) if np.isfinite(rew) else math.nan
                acc["sent"] += float(info["sent"])
                for key in ("latency_s", "uplink_bits", "energy_j"):
                    acc[key] += float(info[key])
                if term or trunc:
                    break
            final = {k: float(info[k]) for k in METRICS + ("tokens",) if k in info}
            ep = {"env": 0, "episode": j, "prompt": int(info0["prompt"])} | _episode_from(acc, final)
            # skipped tokens are not verified live: their risk is unknown
            for key in ("risk", "error_rate"):
                if key in final and not np.isfinite(final[key]):
                    ep[key] = math.nan
            eos = getattr(tok, "eos_token_id", None)
            out = [t for t in base.output_tokens if t != eos]
            p = int(info0["prompt"])
            responses.append(tok.decode(out))
            if fidelity:
                if p not in ref_cache:
                    if reference == "trace":
                        ref = [int(t) for t in sim.tables.token[sim.tables.starts[p]:sim.tables.stops[p]] if t != eos]
                    else:
                        env.reset(options={"prompt": p})
                        while True:
                            _, _, rt, rtr, _ = env.step(1)
                            if rt or rtr:
                                break
                        ref = [t for t in base.output_tokens if t != eos]
                    ref_cache[p] = tok.decode(ref)
                references.append(ref_cache[p])
            eps.append(ep)
        if fidelity:
            from hlm_gym.lm.fidelity import response_fidelity

            for ep, f in zip(eps, response_fidelity(responses, references)):
                ep["fidelity"] = float(f)
        wall = time.perf_counter() - t0
    finally:
        env.close()
    config = {"policy": policy if isinstance(policy, str) else repr(policy), "scenario": scenario, "split": split,
              "episodes": episodes, "seed": seed, "mode": "live", "lambda": ctx.get("lambda_", lambda_),
              "traces": None if traces is None else str(traces), "latency_ref_s": ctx.get("latency_ref"),
              "max_tokens": ctx.get("max_tokens"), "wall_s": round(wall, 3), "fidelity_reference": reference}
    res = EvaluationResult(config=config, episodes=eps, summary=summarize_episodes(eps), policy=pol.describe())
    res.responses = responses  # type: ignore[attr-defined]
    return res


def _make(spec: str, ctx: dict[str, Any]) -> Policy:
    from hlm_gym.policies.context import PolicyContext
    from hlm_gym.policies.registry import make_policy

    fields = {("risk_weight" if k == "lambda_" else k): v for k, v in ctx.items()}
    return make_policy(spec, PolicyContext(**fields))


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
    """Write ``summary.csv``, ``episodes.csv`` and ``result.json`` atomically; return their paths."""
    out = Path(out_dir)
    rows = [{"metric": m} | s for m, s in result.summary.items()]
    paths = {"summary_csv": out / "summary.csv", "episodes_csv": out / "episodes.csv", "json": out / "result.json"}
    atomic_write_text(paths["summary_csv"], _csv(rows, ["metric", "mean", "ci_low", "ci_high", "std", "n"]))
    ep_fields: list[str] = []
    for ep in result.episodes:
        ep_fields += [k for k in ep if k not in ep_fields]
    atomic_write_text(paths["episodes_csv"], _csv(result.episodes, ep_fields))
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=_json_default) + "\n")
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
