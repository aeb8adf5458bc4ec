"""``hlm-gym compare``: learned PPO policies against the analytic thresholds, the project's main job.

For each scenario (time-varying by default: pedestrian, vehicular, cell-edge-fast-fading), on
one env id (``--env``, default ``hlm_gym/HybridLM-v0``; its env family supplies the analytic
policies, see :mod:`hlm_gym.harness.hybrid_lm`):

1. train PPO on the training split for two sweeps of the reward: each risk weight lambda with
   ``risk_target`` 0 (the return prices the *error rate*, expected rejections per token), and
   each risk target R at ``target_risk_weight`` (the return is the Lagrangian of "mean rejection
   probability of the skipped tokens <= R", the *risk* that the matched-risk check compares),
   each with ``seeds`` training seeds: with ``trainer="population"`` (default) the runs of the
   sweep as batched populations, one per training process (``jobs``) or cluster slot, each on
   one CPU thread (:mod:`hlm_gym.harness.compare_population`, final models), with
   ``"sb3"`` one :func:`hlm_gym.harness.training.train` run per point (best checkpoint by
   validation reward);
2. evaluate, on the **test** split through the evaluation harness
   (:func:`hlm_gym.harness.evaluation.evaluate`, the same episodes for every policy): each PPO model,
   the U-HLM threshold swept over ``u_th`` (``threshold:U``, and ``always`` as ``u_th = -inf``) plus the fitted risk-averse and
   risk-prone thresholds (``uhlm``, ``uhlm:prone``), Learn-then-Test thresholds
   (``ltt:delta=D``) and the channel-aware rule at each PPO run's reward
   (``channel-aware:lambda=L[,target=R]``); each PPO point is the mean over its seeds with a 95%
   t interval over seeds (:mod:`hlm_gym.harness.seeds`);
3. the dominance check: for each PPO point (risk r, tokens/s T), the analytic reference
   ``T_analytic``: the best tokens/s among the ``u_th`` sweep points whose risk is within 10%
   (relative) of r, or, when there is none, the U-HLM front (the upper envelope of the sweep,
   tokens/s against risk) linearly interpolated at r; the gain is ``T / T_analytic - 1``. A PPO
   point with no sweep point within 10% and a risk outside the front's range is reported as
   out of range and not counted. Each point is also flagged as on the learned front or not
   (dominated by another PPO point) and as attainable or not (a 10% gain over its reference is
   possible at all: near risk 0.5 the reference is skipping every token). The same check is
   repeated with the error rate as the risk axis.

That is the HybridLM family's comparison. Every env family runs the same job with its own pieces
(:class:`~hlm_gym.harness.family.EnvFamily`): its defaults (``compare_defaults``: scenarios,
reward sweeps, the reference rule's ``thresholds`` and its other sweeps; a sweep flag it has no
default for does not apply to it and is refused), its analytic policies and reference sweep
(``analytic_policies``, ``sweep_family``), the matched-risk axis (``risk_metric``) and the
secondary one (``error_metric``, ``None``: no secondary check), the rows' metrics
(``row_metrics``, ``ci_metrics``) and its words (``labels``, ``plot_styles``, ``table_columns``).
``hlm_gym/WDMoE-v0``, for instance, sweeps the weight-to-latency ratio threshold (``wlr:T``)
and the gate's top-k, and checks tokens/s at matched quality loss. With ``live`` (a family with
``live_metrics`` and an ``evaluate_live``), each policy is also run in the family's live mode on
the test split and its live metrics (WDMoE: perplexity) join its row.

Outputs in ``--out``: ``results.csv``, ``results.md`` (table and dominance), ``dominance.csv``,
``pareto-<scenario>.png``, ``compare.json``, the training runs (``runs/<scenario>/lambda<L>-seed<S>/``,
TensorBoard logs under ``tb/`` there). The tables' ``lambda`` column is the risk weight of the
row's reward.

Every setting is checked before any work (:func:`check_config`: sweeps non-empty and in range,
scenarios loaded, each run's training settings as ``hlm-gym train`` checks them). ``--out`` is
locked for the comparison; each run folder is owned by its run (see
:mod:`~hlm_gym.harness.run_folder`); the tables, plots and JSON are rendered first and written
(each atomically) only when the whole comparison has completed. ``resume`` reuses a run only
when its ``summary.json`` records the same settings and its files match the recorded sha256.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hlm_gym.harness.checks import (check_choice, check_int, check_number, check_out_dir, check_scenarios, check_seed,
                                    check_sweep)
from hlm_gym.harness.compare_defaults import DEFAULTS, SWEEP_FLAGS, family_defaults
from hlm_gym.harness.compare_plot import pareto_png
from hlm_gym.harness.errors import CompareError, UnknownEnvError
from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.front import analytic_front
from hlm_gym.harness.hybrid_lm import SWEEP_FAMILY, reward_label
from hlm_gym.harness.hyperparams import check_algo
from hlm_gym.harness.run_folder import FolderLock, moved_path, read_run_summary, signals_deferred, verify_artifacts
from hlm_gym.harness.seeds import SEED_FAMILY, aggregate_seeds, seed_row
from hlm_gym.paths import atomic_write_bytes
from hlm_gym.policies.base import PolicyError

__all__ = ["DEFAULTS", "CompareConfig", "compare", "check_config", "command_line", "dominance", "dominance_checks",
           "analytic_front", "result_row", "config_from_saved", "finished_run", "render_outputs", "write_outputs",
           "columns_for", "compare_defaults_for"]

TRAINERS = ("population", "sb3")
MATCH_TOL = 0.10  # matched risk: within 10% relative
GAIN_TARGET = 0.10  # the claim: >= 10% more tokens/s at matched risk
ANALYTIC_FAMILY = SWEEP_FAMILY  # the default env family's reference sweep (the U-HLM thresholds)
#: Keys of compare.json files written before the risk weight had one name.
LEGACY_KEYS = {"lambdas": "risk_weights", "target_lambda": "target_risk_weight"}
#: Settings added for other env families, recorded in compare.json only when not at these defaults
#: (so a comparison that does not use them writes the same file as before they existed).
OPTIONAL_FIELDS: dict[str, Any] = {"topk": None, "live": False, "live_episodes": None, "backend": "local",
                                   "address": None}


def compare_defaults_for(env_id: str) -> dict[str, Any]:
    """compare's defaults for ``env_id``'s env family (:func:`~hlm_gym.harness.compare_defaults.family_defaults`)."""
    return family_defaults(family_for(env_id).compare_defaults)


@dataclass
class CompareConfig:
    """The settings of one comparison (the flags of ``hlm-gym compare``; ``None``: the env family's default)."""

    scenarios: Optional[tuple[str, ...]] = None  # None: the env family's default scenarios
    risk_weights: Optional[tuple[float, ...]] = None  # error-rate runs (risk_target 0); () for none
    risk_targets: Optional[tuple[float, ...]] = None  # matched-risk runs at target_risk_weight; () for none
    target_risk_weight: float = DEFAULTS["target_risk_weight"]
    timesteps: Optional[int] = None
    full: bool = False
    thresholds: Optional[tuple[float, ...]] = None
    ltt_deltas: Optional[tuple[float, ...]] = None
    bild_alphas: Optional[tuple[float, ...]] = None
    calm_lambdas: Optional[tuple[float, ...]] = None
    episodes: Optional[int] = None
    seed: int = 0
    seeds: int = DEFAULTS["seeds"]  # training seeds per reward setting: seed, seed + 1, ...
    trainer: str = DEFAULTS["trainer"]  # "population" (the PPO runs as batched populations) or "sb3"
    device: str = "cpu"
    env_backend: str = "numpy"  # PPO training environments: "numpy" (CPU) or "torch" (on `device`)
    n_envs: Optional[int] = None
    traces: Optional[str] = None
    out: str = "runs/compare"
    progress: bool = False
    jobs: int = 0  # PPO runs trained at once (worker processes, one torch thread each); 0: auto
    resume: bool = False  # reuse runs in `out` that finished with the same settings
    algo: str = "ppo"
    env_id: str = DEFAULT_ENV_ID
    eval_episodes: int = DEFAULTS["eval_episodes"]
    overrides: Optional[dict] = None  # PPO hyperparameter overrides (on top of agents/ppo.yml)
    topk: Optional[tuple[int, ...]] = None  # WDMoE: the gate's top-k rules (K experts each)
    live: bool = False  # also evaluate every policy in the family's live mode (its live metrics join the rows)
    live_episodes: Optional[int] = None  # live episodes per policy (None: the test episodes)
    backend: str = "local"  # where training and evaluation jobs run: "local" (this machine) or "ray"
    address: Optional[str] = None  # backend "ray": the cluster's address (None: a local Ray instance)

    def __post_init__(self) -> None:
        if self.scenarios is None:  # the family's; an unknown env id is refused by check_config
            with contextlib.suppress(UnknownEnvError):
                self.scenarios = tuple(compare_defaults_for(self.env_id)["scenarios"])

    def defaults(self) -> dict[str, Any]:
        """compare's defaults for this comparison's env family (:func:`compare_defaults_for`)."""
        return compare_defaults_for(self.env_id)

    def resolved(self) -> dict[str, Any]:
        full = self.full
        d = self.defaults()

        def pick(value, key):
            return tuple(value) if value is not None else tuple(d[("full_" if full else "") + key])

        def pick_plain(value, key):
            return tuple(value) if value is not None else tuple(d[key])

        weights, targets = pick(self.risk_weights, "risk_weights"), pick(self.risk_targets, "risk_targets")
        rc = {"scenarios": tuple(self.scenarios or ()),
              "risk_weights": weights, "risk_targets": targets, "target_risk_weight": float(self.target_risk_weight),
              # the PPO runs: (risk_weight, risk_target)
              "ppo_runs": tuple((float(w), 0.0) for w in weights)
                          + tuple((float(self.target_risk_weight), float(t)) for t in targets),
              "seeds": tuple(int(self.seed) + i for i in range(int(self.seeds))),
              "timesteps": int(self.timesteps or (d["full_timesteps"] if full else d["timesteps"]))}
        for key in SWEEP_FLAGS:  # the analytic sweeps of this family (HybridLM: thresholds, ltt_deltas, bild, calm)
            if key in d:
                rc[key] = pick_plain(getattr(self, key), key)
        if "topk" in rc:
            rc["topk"] = tuple(int(k) for k in rc["topk"])
        rc["episodes"] = int(self.episodes or (d["full_episodes"] if full else d["episodes"]))
        if self.live:
            rc["live_episodes"] = int(self.live_episodes or rc["episodes"])
        return rc


# ------------------------------------------------------------------------------------ front
def front_at(front: Sequence[tuple[float, float]], risk: float) -> Optional[float]:
    """The front's tokens/s at ``risk`` (linear interpolation; None outside its risk range)."""
    if not front:
        return None
    rs = np.array([p[0] for p in front])
    ts = np.array([p[1] for p in front])
    if risk < rs[0] * (1 - MATCH_TOL) - 1e-12 or risk > rs[-1] * (1 + MATCH_TOL) + 1e-12:
        return None
    return float(np.interp(risk, rs, ts))


def _reference(points: list[dict[str, Any]], front: Sequence[tuple[float, float]], metric: str, value: float
               ) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]], Optional[float]]:
    """``(matched, best, reference tokens/s)`` at ``metric`` = ``value``: the ``points`` within 10%
    (relative), the fastest of them, and its tokens/s, or ``front`` interpolated when none is that close."""
    matched = [a for a in points if abs(a[metric] - value) <= MATCH_TOL * max(abs(value), 1e-12)]
    best = max(matched, key=lambda a: a["tokens_per_s"]) if matched else None
    return matched, best, best["tokens_per_s"] if best else front_at(front, value)


def dominance(rows: list[dict[str, Any]], scenario: str, metric: str = "risk",
              reference: str = ANALYTIC_FAMILY) -> list[dict[str, Any]]:
    """One record per PPO point of ``scenario``: matched analytic tokens/s and the gain.

    ``reference``: the analytic family whose sweep points (and their front) are the reference
    (an env family's ``sweep_family``; default the HybridLM family's U-HLM thresholds).

    ``metric``: the risk axis, a row metric: the env family's ``risk_metric`` for the primary check
    (HybridLM: ``risk``, mean rejection probability of skipped tokens; WDMoE: ``quality_loss``)
    or its ``error_metric`` for the secondary one (HybridLM: ``error_rate``, skipped tokens that
    would have been rejected / tokens). The record's ``risk`` field holds the point's value of
    ``metric`` whichever it is (:func:`dominance_checks` runs both checks for an env id).
    ``on_learned_front``: no other PPO point of the scenario has at most its risk and more tokens/s
    (the points that make up the learned front; the others are dominated by PPO itself).
    ``attainable``: a 10% gain over the reference is possible at all, i.e. the reference is at
    most the scenario's ceiling / 1.1, the ceiling being the highest tokens/s of any policy
    evaluated (skipping every token: device-only decoding). Near the always-skip end the
    reference within 10% risk *is* always-skip, which no policy can beat."""
    mine = [r for r in rows if r["scenario"] == scenario]
    ppo = [r for r in mine if r["family"] == "ppo"]
    analytic = [r for r in mine if r["family"] == reference]
    front = analytic_front([(r[metric], r["tokens_per_s"]) for r in analytic])
    rules = [r for r in mine if r["family"] not in ("ppo", SEED_FAMILY) and not r.get("note")
             and math.isfinite(r[metric]) and math.isfinite(r["tokens_per_s"])]  # every analytic rule
    rules_front = analytic_front([(r[metric], r["tokens_per_s"]) for r in rules])
    ceiling = max((r["tokens_per_s"] for r in mine if math.isfinite(r["tokens_per_s"])), default=math.inf)

    def gain(tps: float, ref: Optional[float]) -> Optional[float]:
        return tps / ref - 1 if ref and ref > 0 else None

    def attainable(ref: Optional[float]) -> bool:
        return bool(ref is not None and ref * (1 + GAIN_TARGET) <= ceiling * (1 + 1e-9))

    out = []
    for r in ppo:
        risk, tps = r[metric], r["tokens_per_s"]
        on_front = not any(o is not r and o[metric] <= risk and o["tokens_per_s"] > tps for o in ppo)
        # the reference: the best sweep point within 10% risk; the interpolated front only if there is none
        matched, best_matched, ref = _reference(analytic, front, metric, risk)
        g = gain(tps, ref)
        # the same gain at the lower end of the point's 95% tokens/s interval (over seeds for PPO means)
        ci = r.get("tokens_per_s_ci")
        g_low = gain(tps - ci, ref) if isinstance(ci, (int, float)) and math.isfinite(ci) else None
        # the same check against the best of ALL analytic rules (U-HLM, LTT, BiLD, CALM, channel-aware)
        _, best_rule, ref_rules = _reference(rules, rules_front, metric, risk)
        g_rules = gain(tps, ref_rules)
        out.append({"scenario": scenario, "metric": metric, "policy": r["policy"], "lambda": r.get("lambda"), "risk": risk,
                    "tokens_per_s": tps, "analytic_tokens_per_s": ref, "front_tokens_per_s": front_at(front, risk),
                    "gain": g, "matched_points": ";".join(a["policy"] for a in matched),
                    "best_matched_policy": best_matched["policy"] if best_matched else "",
                    "best_matched_tokens_per_s": best_matched["tokens_per_s"] if best_matched else None,
                    "gain_vs_best_matched": gain(tps, best_matched["tokens_per_s"]) if best_matched else None,
                    "in_range": ref is not None, "on_learned_front": on_front, "attainable": attainable(ref),
                    "dominates_10pct": bool(g is not None and g >= GAIN_TARGET),
                    "gain_at_ci_low": g_low,
                    "dominates_10pct_at_ci_low": bool(g_low is not None and g_low >= GAIN_TARGET),
                    "best_rule_policy": best_rule["policy"] if best_rule else ("front of all rules" if ref_rules else ""),
                    "best_rule_tokens_per_s": ref_rules, "gain_vs_best_rule": g_rules,
                    "beats_best_rule_10pct": bool(g_rules is not None and g_rules >= GAIN_TARGET),
                    "best_rule_attainable": attainable(ref_rules)})
    return out


# ------------------------------------------------------------------------------------ run
def auto_jobs(n_runs: int) -> int:
    """Training processes when ``jobs`` is 0: one per CPU core, at most 4 and at most the runs."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores, n_runs))


def _run_folder_name(risk_weight: float, target: float) -> str:
    """A reward setting's name under ``runs/<scenario>/`` (``lambda5``, ``lambda10-target0.3``); a
    run's folder adds its seed (``lambda5-seed0``)."""
    return reward_label(risk_weight, target).replace("=", "").replace(",", "-")


def sweep_runs(rc: dict[str, Any]) -> list[tuple[str, float, float, int]]:
    """Every PPO run of the sweep: ``(scenario, risk weight, risk target, seed)``."""
    return [(sc, float(w), float(t), int(s)) for sc in rc["scenarios"] for w, t in rc["ppo_runs"] for s in rc["seeds"]]


def _train_config(config: CompareConfig, rc: dict[str, Any], out: Path, scenario: str, risk_weight: float,
                  target: float, seed: int):
    """The :class:`~hlm_gym.harness.training.TrainConfig` of one PPO run of the sweep (SB3 trainer)."""
    from hlm_gym.harness.training import TrainConfig

    name = f"{_run_folder_name(risk_weight, target)}-seed{seed}"
    return TrainConfig(algo=config.algo, env_id=config.env_id, scenario=scenario, risk_weight=risk_weight,
                       risk_target=target or None, device=config.device, env_backend=config.env_backend,
                       n_envs=config.n_envs, timesteps=rc["timesteps"], seed=seed,
                       out=str(out / "runs" / scenario / name), traces=config.traces,
                       eval_episodes=config.eval_episodes, run_name=f"ppo-{name}",
                       overrides=dict(config.overrides or {}))


# ------------------------------------------------------------------------------------ checks
def _check_ppo_runs(rc: dict[str, Any]) -> None:
    """At least one PPO run, and no two runs in one folder (a risk target 0 at the target risk
    weight is the error-rate run of that weight; values equal to 6 digits share a name)."""
    if not rc["ppo_runs"]:
        raise CompareError("no PPO runs: give at least one risk weight (--risk-weights) or risk target (--risk-targets)")
    origins = ([f"--risk-weights {w:g}" for w in rc["risk_weights"]]
               + [f"--risk-targets {t:g} at --target-risk-weight {rc['target_risk_weight']:g}"
                  for t in rc["risk_targets"]])
    seen: dict[str, str] = {}
    for (weight, target), origin in zip(rc["ppo_runs"], origins):
        name = _run_folder_name(weight, target)
        if name in seen:
            raise CompareError(f"{seen[name]} and {origin} are the same PPO run (folder {name!r}); "
                               "give each reward once")
        seen[name] = origin


def check_config(config: CompareConfig) -> dict[str, Any]:
    """The resolved settings of ``config`` with every value checked, before any work: scenarios
    (each loaded), the sweeps (non-empty where a sweep is needed, each value in range, none
    twice), budgets, seed, jobs, the data, and each PPO run's training settings (hyperparameters,
    device) as ``hlm-gym train`` checks them; a one-line :class:`CompareError` (or the training
    checks' error) naming the flag, the value and what is allowed otherwise. Writes nothing."""
    from hlm_gym.harness.training import prepare

    family = family_for(config.env_id)
    check_algo(config.algo)
    _check_applicable(config, family)
    check_scenarios(config.scenarios, "--scenarios", CompareError, family.load_scenario)
    _check_sweeps(config)
    for flag, value in (("--timesteps", config.timesteps), ("--episodes", config.episodes),
                        ("--n-envs", config.n_envs)):
        if value is not None:
            check_int(value, flag, 1, error=CompareError)
    check_int(config.eval_episodes, "--eval-episodes", 1, error=CompareError)
    if config.live_episodes is not None:
        check_int(config.live_episodes, "--live-episodes", 1, error=CompareError)
    check_int(config.jobs, "--jobs", 0, error=CompareError)
    _check_backend(config)
    check_seed(config.seed, "--seed", CompareError)
    check_int(config.seeds, "--seeds", 1, error=CompareError)
    check_seed(config.seed + config.seeds - 1, "--seed + --seeds - 1", CompareError)
    check_choice(config.trainer, "--trainer", TRAINERS, CompareError)
    if config.trainer == "population" and config.algo != "ppo":
        raise CompareError(f"--trainer population trains PPO only, not --algo {config.algo} (use --trainer sb3)")
    rc = config.resolved()
    _check_ppo_runs(rc)
    family.check_data(config.traces)
    out = check_out_dir(config.out, "--out", create=False)
    if config.trainer == "population":
        from hlm_gym.harness.compare_population import population_config
        from hlm_gym.harness.population import prepare_population

        prepare_population(population_config(config, rc, out, sweep_runs(rc)), create_out=False)
    else:
        for sc, weight, target, seed in sweep_runs(rc):
            prepare(_train_config(config, rc, out, sc, weight, target, seed), create_out=False)
    return rc


def _check_backend(config: CompareConfig) -> None:
    """``backend``, ``address`` and ``device`` (:func:`~hlm_gym.parallel.ray_runner.check_backend`);
    ``jobs`` only for the local backend."""
    from hlm_gym.parallel.ray_runner import check_backend

    if config.backend == "ray" and config.jobs:
        raise CompareError("--jobs is for --backend local; with --backend ray every run is a Ray task "
                           "scheduled on the cluster's CPUs")
    check_backend(config.backend, config.address, config.device)


def _check_applicable(config: CompareConfig, family: Any) -> None:
    """Refuse (one line) a sweep flag given for a family it does not apply to (e.g. ``--ltt-deltas``
    for WDMoE), and ``live`` for a family compare has no live mode for."""
    d = config.defaults()
    words = _labels(family)
    for key, flag in SWEEP_FLAGS.items():
        if getattr(config, key) is not None and key not in d:
            raise CompareError(f"{flag} does not apply to {config.env_id} (its analytic rules: {words['rules']}); "
                               f"leave it out")
    if config.live_episodes is not None and not config.live:
        raise CompareError("--live-episodes needs --live")
    if config.live and not (family.live_metrics and family.evaluate_live is not None):
        why = words.get("no_live") or ("its family has no live evaluation yet" if family.live_metrics else
                                       "its family has no live metrics for compare")
        raise CompareError(f"--live: compare has no live mode for {config.env_id}: {why}")


def _check_sweeps(config: CompareConfig) -> None:
    """The sweep lists given (None: the defaults): risk weights finite >= 0 and risk targets in
    [0, 1] (empty: no such runs), thresholds in [0, 1], LTT deltas in (0, 1) and top-k whole
    numbers >= 1 (never empty), BiLD and CALM in [0, 1]; the target risk weight > 0 when there are
    risk-target runs."""
    if config.risk_weights is not None:
        check_sweep(config.risk_weights, "--risk-weights", 0, allow_empty=True)
    if config.risk_targets is not None:
        check_sweep(config.risk_targets, "--risk-targets", 0, 1, allow_empty=True)
    if config.thresholds is not None:
        check_sweep(config.thresholds, "--thresholds", 0, 1)
    if config.ltt_deltas is not None:
        check_sweep(config.ltt_deltas, "--ltt-deltas", 0, 1, lo_open=True, hi_open=True)
    for flag, values in (("--bild-alphas", config.bild_alphas), ("--calm-lambdas", config.calm_lambdas)):
        if values is not None:
            check_sweep(values, flag, 0, 1, allow_empty=True)
    if config.topk is not None:
        check_sweep(config.topk, "--topk", 1)
        bad = next((k for k in config.topk if not float(k).is_integer()), None)
        if bad is not None:
            raise CompareError(f"--topk: expected whole numbers of experts >= 1, got {bad:g}")
    has_targets = config.risk_targets is None or len(config.risk_targets) > 0
    check_number(config.target_risk_weight, "--target-risk-weight", 0, lo_open=has_targets, error=CompareError)


# ------------------------------------------------------------------------------------ training
def _train_job(cfg: Any) -> dict[str, Any]:
    """A job: train one run (SB3 trainer); what the comparison keeps of it."""
    from hlm_gym.harness.training import train

    res = train(cfg)
    return {"model": str(res.files.get("model_best", res.files["model_last"])), "wall_s": res.summary["wall_s"],
            "steps_per_s": res.summary["steps_per_s"], "tensorboard": str(res.files["tensorboard"]), "reused": False}


def _settings_diff(recorded: Any, current: dict[str, Any]) -> str:
    """The settings that differ between a run's recorded config and ``current`` (at most three)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    keys = [k for k in dict.fromkeys([*current, *recorded]) if recorded.get(k) != current.get(k)]
    shown = ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def finished_run(cfg: Any) -> tuple[Optional[dict[str, Any]], str]:
    """``(info, why)``: what :func:`_train_job` returns for ``cfg``, from a finished run in
    ``cfg.out`` whose ``summary.json`` records the same settings and whose files match the sha256
    it records; else ``(None, why not)``."""
    from hlm_gym.harness.training import config_dict

    folder = Path(cfg.out)
    s, why = read_run_summary(folder)
    if s is None:
        return None, why
    # the output folder is not compared: a finished run copied into another --out is reused there
    # (its files are checked by hash below)
    current = {k: v for k, v in config_dict(cfg).items() if k != "out"}
    recorded = {k: v for k, v in (s.get("config") or {}).items() if k != "out"}
    if recorded != current:
        return None, f"settings differ: {_settings_diff(recorded, current)}"
    problem = verify_artifacts(folder, s.get("artifacts"))
    if problem:
        return None, problem
    art = s["artifacts"].get("model_best") or s["artifacts"].get("model_last")
    if art is None:
        return None, "summary.json records no model"
    tensorboard = moved_path((s.get("files") or {}).get("tensorboard", ""), s["config"].get("out", folder), folder)
    return ({"model": str(folder / art["file"]), "wall_s": s.get("wall_s"), "steps_per_s": s.get("steps_per_s"),
             "tensorboard": tensorboard, "reused": True},
            "finished with the same settings, files match their sha256")


def _say(bar: Any, text: str) -> None:
    """One line to the terminal, above the progress bar if there is one."""
    if bar is not None:
        bar.write(text)
    else:
        print(text, flush=True)


def _resume(configs: list[Any], bar: Any) -> list[Optional[dict[str, Any]]]:
    """The reusable runs among ``configs`` (None where a run must be trained), one line each saying why."""
    infos: list[Optional[dict[str, Any]]] = []
    for cfg in configs:
        info, why = finished_run(cfg)
        _say(bar, f"resume: {'reuse' if info else 'retrain'} {cfg.out}: {why}")
        infos.append(info)
    return infos


def _train_all(configs: list[Any], jobs: int, bar: Any, resume: bool = False) -> list[dict[str, Any]]:
    """Train every run (SB3 trainer), ``jobs`` at a time in worker processes (``jobs`` 1: here), one
    torch thread each; with ``resume``, runs already finished with the same settings (and intact
    files) are reused."""
    from hlm_gym.parallel import ProcessRunner

    return _train_jobs(configs, ProcessRunner(jobs), bar, resume)


def _metrics_of(metrics: Optional[Sequence[str]], ci: Optional[Sequence[str]]
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(metrics, ci)``, the default env family's ``row_metrics``/``ci_metrics`` where ``None``."""
    default = family_for(DEFAULT_ENV_ID)
    return (tuple(default.row_metrics if metrics is None else metrics),
            tuple(default.ci_metrics if ci is None else ci))


def _half_width(stats: dict[str, Any]) -> float:
    """The 95% half-width of a summary's ``ci_low``/``ci_high``."""
    return (float(stats["ci_high"]) - float(stats["ci_low"])) / 2


def result_row(scenario: str, family: str, policy: str, res: Any, risk_weight: Optional[float] = None,
               param: Any = None, *, metrics: Optional[Sequence[str]] = None,
               ci: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """One results-table row of an :class:`~hlm_gym.harness.evaluation.EvaluationResult` (means and 95%
    half-widths; the ``lambda`` column is the risk weight). ``family`` is the row's policy family;
    ``metrics``/``ci``: the env family's ``row_metrics``/``ci_metrics`` (default: the HybridLM family's),
    NaN where the result has none."""
    metrics, ci = _metrics_of(metrics, ci)
    s = res.summary
    row = {"scenario": scenario, "family": family, "policy": policy, "lambda": risk_weight, "param": param}
    for m in metrics:
        row[m] = float(s[m]["mean"]) if m in s else math.nan
        if m in ci:
            row[m + "_ci"] = _half_width(s[m]) if m in s else math.nan
    row["episodes"] = int(s["tokens_per_s"]["n"]) if "tokens_per_s" in s else 0
    return row


def merge_live(row: dict[str, Any], res: Any, live_metrics: Sequence[str],
               sources: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """``row`` with the ``live_metrics`` columns from a live evaluation ``res`` (column ``m`` gets the
    mean of ``res``'s metric ``sources.get(m, m)``, ``m_ci`` its 95% half-width; NaN where ``res`` has
    none) and its episode count as ``live_episodes``."""
    s = res.summary
    sources = sources or {}
    for m in live_metrics:
        src = sources.get(m, m)
        row[m] = float(s[src]["mean"]) if src in s else math.nan
        row[m + "_ci"] = _half_width(s[src]) if src in s else math.nan
    first = sources.get(live_metrics[0], live_metrics[0]) if live_metrics else None
    row["live_episodes"] = int(s[first]["n"]) if first in s else 0
    return row


def _undefined_row(scenario: str, family: str, policy: str, risk_weight: Optional[float], param: Any,
                   exc: BaseException, metrics: Optional[Sequence[str]] = None,
                   ci: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """A policy that cannot be built on these traces: NaN metrics and the reason."""
    metrics, ci = _metrics_of(metrics, ci)
    row = {"scenario": scenario, "family": family, "policy": policy, "lambda": risk_weight, "param": param,
           "episodes": 0,
           "note": f"undefined: {str(exc).splitlines()[0]}"}
    for m in (*metrics, *(m + "_ci" for m in metrics if m in ci)):
        row[m] = math.nan
    return row


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="job", leave=True)
    except ImportError:  # pragma: no cover
        return None


def compare(config: CompareConfig) -> dict[str, Any]:
    """Run the comparison; returns the rows, the dominance records and the files written.

    Every setting is checked first (:func:`check_config`); then ``--out`` is locked for this
    comparison, the runs trained (or, with ``resume``, reused), every policy evaluated, and the
    outputs written only once all of it has completed."""
    t0 = time.perf_counter()
    from hlm_gym.parallel import make_runner

    if config.backend == "ray":  # workers start elsewhere: they get absolute paths
        config = dataclasses.replace(config, out=str(Path(config.out).expanduser().resolve()),
                                     traces=None if config.traces is None else
                                     str(Path(config.traces).expanduser().resolve()))
    rc = check_config(config)
    out = check_out_dir(config.out, "--out")
    with FolderLock(out, "comparison folder"), make_runner(config.backend, config.address) as runner:
        if config.backend == "ray":
            runner.check_shared([out] + ([] if config.traces is None else [config.traces]))
        return _compare(config, rc, out, t0, runner)


def _compare(config: CompareConfig, rc: dict[str, Any], out: Path, t0: float, runner: Any = None) -> dict[str, Any]:
    """The comparison proper, on checked settings, in a locked ``out``; training and evaluation jobs
    run on ``runner`` (:mod:`hlm_gym.parallel`; ``None``: in this process)."""
    from hlm_gym.parallel import SerialRunner

    runner = runner or SerialRunner()
    family = family_for(config.env_id)
    analytic = family.analytic_policies(rc)
    todo = sweep_runs(rc)
    evaluations = len(todo) + len(rc["scenarios"]) * len(analytic)
    bar = _progress(config.progress, len(todo) + evaluations * (2 if config.live else 1), "compare")
    try:
        # 1. PPO over the reward sweep x seeds (trained on train)
        infos = _train_runs(config, rc, out, todo, bar, runner)
        runs = [{"scenario": sc, "risk_weight": w, "risk_target": t, "seed": s} | info
                for (sc, w, t, s), info in zip(todo, infos)]
        # 2. every PPO model and analytic rule on the same test episodes; PPO: the mean over seeds
        rows = _evaluate_all(config, rc, runs, analytic, family, bar, runner, _test_runner(config, evaluations, runner))
    finally:
        if bar is not None:
            bar.close()
    dom, dom_err = dominance_checks(rows, rc["scenarios"], config.env_id)
    wall = time.perf_counter() - t0
    files = write_outputs(out, rows, dom + dom_err, runs, rc, config, wall)
    _report(rows, dom, dom_err, files, wall, config.env_id)
    return {"rows": rows, "dominance": dom, "dominance_error_rate": dom_err, "runs": runs, "files": files,
            "wall_s": wall}


def _train_runs(config: CompareConfig, rc: dict[str, Any], out: Path, todo: list[tuple[str, float, float, int]],
                bar: Any, runner: Any = None) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, reuse) every PPO run of the sweep with ``config.trainer``; with the
    ray backend every run (population trainer: every shard of the population) is a job of ``runner``."""
    distributed = config.backend != "local" and runner is not None
    if config.trainer == "population":
        from hlm_gym.harness.compare_population import train_sweep

        def on_iteration(i: int, n: int) -> None:
            if bar is not None:
                bar.set_description(f"train {len(todo)} PPO agents as one population: iteration {i}/{n}")

        # local on the CPU: the agents in `--jobs` populations in worker processes; on a GPU: one population here
        local = _local_pool(config, len(todo))
        if bar is not None and (distributed or local is not None):
            bar.set_description(f"train {len(todo)} PPO agents in populations of one CPU thread each")
        infos = train_sweep(config, rc, out, todo, config.resume, lambda text: _say(bar, text), on_iteration,
                            runner=runner if distributed else local)
        if bar is not None:
            bar.update(len(todo))
    else:
        configs = [_train_config(config, rc, out, sc, w, t, s) for sc, w, t, s in todo]
        if not distributed:
            return _train_all(configs, config.jobs or auto_jobs(len(todo)), bar, config.resume)
        infos = _train_jobs(configs, runner, bar, config.resume, gpus=_gpus(config.device))
    if distributed:
        _check_visible(infos, out)
    return infos


def _check_visible(infos: list[dict[str, Any]], out: Path) -> None:
    """Every model the cluster's workers wrote is visible here (``out`` on storage all nodes share)."""
    from hlm_gym.parallel.ray_runner import ClusterError

    missing = [info["model"] for info in infos if not Path(info["model"]).is_file()]
    if missing:
        raise ClusterError(f"--backend ray: {len(missing)} model(s) the Ray workers wrote are not visible on this "
                           f"machine (first: {missing[0]}); --out {out} must be on storage every node shares "
                           "(docs/cluster.md)")


def _gpus(device: str) -> float:
    """The GPUs a training job on ``device`` needs: one for ``cuda``/``cuda:N`` (and ``auto`` where
    this machine has one), else none."""
    if device == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 1.0 if device.startswith("cuda") else 0.0


def _train_jobs(configs: list[Any], runner: Any, bar: Any, resume: bool, gpus: float = 0.0) -> list[dict[str, Any]]:
    """Train the runs ``configs`` (SB3 trainer) as jobs of ``runner``, one CPU thread each (the runs
    reusable with ``resume`` are not trained again)."""
    from hlm_gym.parallel import Job

    infos = _resume(configs, bar) if resume else [None] * len(configs)
    todo = [i for i, info in enumerate(infos) if info is None]
    if bar is not None:
        bar.update(len(configs) - len(todo))
    jobs = [Job(_train_job, (configs[i],), label=f"train {configs[i].scenario} {Path(configs[i].out).name}",
                gpus=gpus) for i in todo]
    for i, info in zip(todo, runner.run(jobs, bar)):
        infos[i] = info
    return infos  # type: ignore[return-value]


def dominance_checks(rows: list[dict[str, Any]], scenarios: Sequence[str], env_id: str = DEFAULT_ENV_ID
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(main, secondary)``: the dominance records of every scenario against ``env_id``'s family's
    reference sweep, at matched ``risk_metric`` and at matched ``error_metric`` (empty when ``None``)."""
    family = family_for(env_id)
    main = [d for sc in scenarios for d in dominance(rows, sc, family.risk_metric, family.sweep_family)]
    second = ([] if family.error_metric is None else
              [d for sc in scenarios for d in dominance(rows, sc, family.error_metric, family.sweep_family)])
    return main, second


def _live_summary(config: CompareConfig, rc: dict[str, Any], policy: str, scenario: str,
                  risk_weight: Optional[float], policy_context: Any) -> Any:
    """A job: ``policy`` in ``config.env_id``'s family's live mode on the test split
    (``rc["live_episodes"]`` episodes at the test seed, the same settings as its trace evaluation)."""
    from hlm_gym.harness.family import EnvSettings

    family = family_for(config.env_id)
    return family.evaluate_live(
        policy, family=family, env_id=config.env_id,
        settings=EnvSettings(scenario=scenario, risk_weight=risk_weight, traces=config.traces),
        split="test", episodes=rc["live_episodes"], seed=config.seed + 20_000, policy_context=policy_context)


def _ppo_seed_rows(env_id: str, sc: str, runs: list[dict[str, Any]], ev: dict[str, Any]) -> list[dict[str, Any]]:
    """A job: each PPO model of scenario ``sc`` on the test episodes (all of them in one batch where
    they stack, :func:`~hlm_gym.harness.population_eval.evaluate_models`; else one by one), one
    per-seed row each."""
    from hlm_gym.harness.evaluation import evaluate
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.population_eval import evaluate_models
    from hlm_gym.harness.results import EvaluationResult

    family = family_for(env_id)
    metrics = {"metrics": family.row_metrics, "ci": family.ci_metrics}
    settings = EnvSettings(scenario=sc, traces=ev["traces"])
    # as evaluate(ppo:..., risk_weight=...) below: the run's risk weight, the env's default target
    summaries = evaluate_models([r["model"] for r in runs], env_id, settings, "test", ev["seed"],
                                [r["risk_weight"] for r in runs], None, ev["episodes"])
    rows = []
    for i, run in enumerate(runs):
        if summaries is not None:
            res = EvaluationResult(config={}, episodes=[], summary=summaries[i], policy={})
        else:
            res = evaluate(f"ppo:{run['model']}", scenario=sc, risk_weight=run["risk_weight"], **ev)
        label = reward_label(run["risk_weight"], run["risk_target"])
        rows.append(seed_row(result_row(sc, "ppo", f"ppo:{label}", res, run["risk_weight"], run["risk_target"],
                                        **metrics), run["seed"]))
    return rows


def _rule_row(env_id: str, sc: str, rule: Any, shared: Any, ev: dict[str, Any]) -> dict[str, Any]:
    """A job: the analytic ``rule`` (an entry of the family's ``analytic_policies``) on scenario
    ``sc``'s test episodes; a row of NaN metrics and the reason where it cannot be built here."""
    from hlm_gym.harness.evaluation import evaluate

    family = family_for(env_id)
    metrics = {"metrics": family.row_metrics, "ci": family.ci_metrics}
    try:
        r = evaluate(rule.spec, scenario=sc, risk_weight=rule.risk_weight, policy_context=shared, **ev)
        return result_row(sc, rule.family, rule.spec, r, rule.risk_weight, rule.param, **metrics)
    except PolicyError as exc:  # e.g. U-HLM thresholds undefined when beta does not grow with u
        return _undefined_row(sc, rule.family, rule.spec, rule.risk_weight, rule.param, exc, **metrics)


def _local_pool(config: CompareConfig, n: int) -> Any:
    """``--jobs`` worker processes of one torch thread for ``n`` jobs of the local backend on the CPU
    (default one per core, at most 4 and at most ``n``); None where they run in this process
    (one job at a time, or a CUDA device)."""
    from hlm_gym.parallel import ProcessRunner

    jobs = config.jobs or auto_jobs(n)
    return ProcessRunner(jobs) if jobs > 1 and not _gpus(config.device) else None


def _test_runner(config: CompareConfig, evaluations: int, runner: Any) -> Any:
    """Where the test-episode evaluations run: ``runner`` with the ray backend; on the local CPU
    :func:`_local_pool`, like the training processes (an evaluation's results do not depend on
    where it runs)."""
    if config.backend != "local":
        return runner
    return _local_pool(config, evaluations) or runner


def _evaluate_all(config: CompareConfig, rc: dict[str, Any], runs: list[dict[str, Any]], analytic: list[Any],
                  family: Any, bar: Any, runner: Any = None, test_runner: Any = None) -> list[dict[str, Any]]:
    """The results rows: per scenario, the mean over seeds of each PPO reward setting (the env
    family's metrics, :mod:`hlm_gym.harness.seeds`), each PPO model per seed, and each analytic
    rule, on the scenario's test episodes; with ``config.live`` each row also gets its policy's
    live metrics. Every trace evaluation is a job of ``test_runner`` and every live one of
    ``runner`` (default: in this process, in order)."""
    from hlm_gym.parallel import Job, SerialRunner

    runner = runner or SerialRunner()
    test_runner = test_runner or runner
    ev = {"env_id": config.env_id, "split": "test", "episodes": rc["episodes"], "seed": config.seed + 20_000,
          "traces": config.traces}
    shared = family.shared_policy_context(config.traces)  # computed once (HybridLM: the U-HLM fit)
    jobs, scenario_runs = [], {}
    for sc in rc["scenarios"]:
        scenario_runs[sc] = [r for r in runs if r["scenario"] == sc]
        jobs.append(Job(_ppo_seed_rows, (config.env_id, sc, scenario_runs[sc], ev),
                        label=f"test {sc}: {len(scenario_runs[sc])} PPO models", weight=len(scenario_runs[sc])))
        jobs += [Job(_rule_row, (config.env_id, sc, a, shared, ev), label=f"test {sc} {a.spec}") for a in analytic]
    results = iter(test_runner.run(jobs, bar))
    per_scenario = {sc: (next(results), [next(results) for _ in analytic]) for sc in rc["scenarios"]}
    if config.live:
        _add_live(config, rc, per_scenario, scenario_runs, analytic, shared, runner, bar, family)
    rows: list[dict[str, Any]] = []
    for sc, (ppo_rows, rule_rows) in per_scenario.items():
        rows += aggregate_seeds(ppo_rows, metrics=family.row_metrics, with_ci=family.ci_metrics) + ppo_rows + rule_rows
    return rows


def _add_live(config: CompareConfig, rc: dict[str, Any], per_scenario: dict[str, tuple[list, list]],
              scenario_runs: dict[str, list[dict[str, Any]]], analytic: list[Any], shared: Any, runner: Any,
              bar: Any, family: Any) -> None:
    """Merge each row's live metrics in (a job per PPO model and per rule that could be built)."""
    from hlm_gym.parallel import Job

    targets, jobs = [], []
    for sc, (ppo_rows, rule_rows) in per_scenario.items():
        for row, run in zip(ppo_rows, scenario_runs[sc]):
            targets.append(row)
            jobs.append(Job(_live_summary, (config, rc, f"ppo:{run['model']}", sc, run["risk_weight"], None),
                            label=f"live {sc} ppo:{row['policy'].removeprefix('ppo:')} seed {run['seed']}"))
        for row, a in zip(rule_rows, analytic):
            if row.get("note"):
                if bar is not None:
                    bar.update(1)
                continue
            targets.append(row)
            jobs.append(Job(_live_summary, (config, rc, a.spec, sc, a.risk_weight, shared),
                            label=f"live {sc} {a.spec}"))
    for row, res in zip(targets, runner.run(jobs, bar)):
        merge_live(row, res, family.live_metrics, family.live_sources)


def _report(rows: list[dict[str, Any]], dom: list[dict[str, Any]], dom_err: list[dict[str, Any]],
            files: dict[str, Path], wall: float, env_id: str = DEFAULT_ENV_ID) -> None:
    """The tables, the dominance checks and the files written, on the terminal."""
    print(format_table(rows, env_id=env_id))
    print()
    print(format_dominance(dom, env_id=env_id))
    print()
    if family_for(env_id).error_metric is not None:
        print(format_dominance(dom_err, env_id=env_id))
        print()
    print(f"compare finished in {wall / 60:.1f} min; files written:")
    for k, v in files.items():
        print(f"  {k:<14} {v}")


def config_from_saved(saved: dict[str, Any]) -> tuple[CompareConfig, dict[str, Any]]:
    """``(CompareConfig, resolved settings)`` of a ``compare.json``'s ``config`` (older files' keys
    ``lambdas``/``target_lambda`` read as ``risk_weights``/``target_risk_weight``)."""
    saved = {LEGACY_KEYS.get(k, k): v for k, v in saved.items()}
    rc = {LEGACY_KEYS.get(k, k): v for k, v in saved.pop("resolved").items()}
    if "seeds" not in saved:  # written before --seeds and --trainer: one seed, the SB3 trainer
        saved |= {"seeds": 1, "trainer": "sb3"}
        rc.setdefault("seeds", [int(saved.get("seed", 0))])
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    tuples = ("scenarios", "risk_weights", "risk_targets", "thresholds", "ltt_deltas", "bild_alphas", "calm_lambdas",
              "topk")
    config = CompareConfig(**{k: (tuple(v) if k in tuples and v is not None else v)
                              for k, v in saved.items() if k in fields})
    return config, rc


# ------------------------------------------------------------------------------------ outputs
#: results.csv's columns for the HybridLM family (:func:`columns_for` gives any family's).
COLUMNS = ("scenario", "family", "policy", "lambda", "param", "tokens_per_s", "tokens_per_s_ci", "risk", "risk_ci",
           "error_rate", "error_rate_ci", "skip_rate", "transmission_rate", "energy_j_per_token", "live_tokens_per_s",
           "live_tokens_per_s_ci", "live_transmission_rate", "live_risk", "live_risk_ci", "live_error_rate",
           "live_error_rate_ci", "fidelity", "fidelity_ci", "episodes", "note", "seeds", "seed_list", "seed",
           "live_episodes")
DOM_COLUMNS = ("metric", "scenario", "policy", "lambda", "risk", "tokens_per_s", "analytic_tokens_per_s",
               "front_tokens_per_s", "gain",
               "best_matched_policy", "best_matched_tokens_per_s", "gain_vs_best_matched", "matched_points",
               "in_range", "on_learned_front", "attainable", "dominates_10pct", "gain_at_ci_low",
               "dominates_10pct_at_ci_low",
               "best_rule_policy", "best_rule_tokens_per_s", "gain_vs_best_rule", "beats_best_rule_10pct",
               "best_rule_attainable")


def columns_for(env_id: str = DEFAULT_ENV_ID) -> tuple[str, ...]:
    """results.csv's columns for ``env_id``'s family: its ``row_metrics`` (each followed by its
    ``_ci`` when in ``ci_metrics``) between the row's identity and its counts (:data:`COLUMNS`
    for the HybridLM family)."""
    family = family_for(env_id)
    metrics = tuple(c for m in family.row_metrics for c in ((m, m + "_ci") if m in family.ci_metrics else (m,)))
    return ("scenario", "family", "policy", "lambda", "param", *metrics, "episodes", "note", "seeds", "seed_list",
            "seed") + (("live_episodes",) if family.live_metrics else ())


def _labels(family: Any) -> dict[str, str]:
    """compare's words for ``family``: its ``labels`` over generic ones."""
    sweep = family.sweep_family
    generic = {"title": "learned PPO vs analytic rules", "sweep_point": sweep, "front": f"{sweep} front",
               "front_long": f"{sweep} sweep front", "rules": "every analytic rule of the comparison",
               "all_rules": "every analytic rule of the comparison",
               "reference": f"Reference: the best `{sweep}` sweep point whose {{risk}} is within 10% (relative) of the "
                            f"PPO point's; if there is none, the front of that sweep (its upper envelope) linearly "
                            f"interpolated at the PPO point's {{risk}}."}
    return generic | dict(family.labels)


def metric_name(family: Any, metric: str) -> str:
    """A metric's name in text (``error_rate`` -> ``error rate``, or the family's ``name:<metric>`` label)."""
    return family.labels.get(f"name:{metric}", metric.replace("_", " "))


def command_line(config: CompareConfig) -> str:
    """The ``hlm-gym compare`` command that reproduces ``config`` (flags that differ from the defaults;
    the scenarios: from the env family's)."""
    d = CompareConfig()
    with contextlib.suppress(UnknownEnvError):
        d = CompareConfig(env_id=config.env_id)

    def nums(xs):
        return ",".join(f"{x:g}" for x in xs) or "none"

    flags = []
    if d.scenarios is None or tuple(config.scenarios or ()) != tuple(d.scenarios):
        flags.append(f"--scenarios {','.join(config.scenarios or ())}")
    if config.full:
        flags.append("--full")
    if config.env_id != DEFAULT_ENV_ID:
        flags.append(f"--env {config.env_id}")
    for name, value in (("risk-weights", config.risk_weights), ("risk-targets", config.risk_targets),
                        ("thresholds", config.thresholds), ("ltt-deltas", config.ltt_deltas),
                        ("bild-alphas", config.bild_alphas), ("calm-lambdas", config.calm_lambdas),
                        ("topk", config.topk)):
        if value is not None:
            flags.append(f"--{name} {nums(value)}")
    if config.live:
        flags.append("--live")
    for name, value, default in (("target-risk-weight", config.target_risk_weight, d.target_risk_weight),
                                 ("timesteps", config.timesteps, None), ("episodes", config.episodes, None),
                                 ("seed", config.seed, d.seed), ("seeds", config.seeds, d.seeds),
                                 ("trainer", config.trainer, d.trainer), ("device", config.device, d.device),
                                 ("env-backend", config.env_backend, d.env_backend),
                                 ("n-envs", config.n_envs, None), ("traces", config.traces, None),
                                 ("jobs", config.jobs, d.jobs), ("live-episodes", config.live_episodes, None),
                                 ("backend", config.backend, d.backend), ("address", config.address, None)):
        if value != default:
            flags.append(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}")
    flags += [f"--hp {k}={v}" for k, v in (config.overrides or {}).items()]
    return " ".join(["hlm-gym compare", *flags])


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:.{nd}g}"
    return str(x)


def table_columns(rows: list[dict[str, Any]], env_id: str = DEFAULT_ENV_ID) -> tuple[tuple[str, str, int, bool], ...]:
    """The results table's columns for ``env_id``'s family: ``(metric, heading, significant digits,
    with interval)``, its ``table_columns`` (default: its ``row_metrics``); a live metric only when
    some row has a value for it."""
    family = family_for(env_id)
    cols = family.table_columns or tuple((m, metric_name(family, m), 4 if m == "tokens_per_s" else 3,
                                          m in family.ci_metrics) for m in family.row_metrics)

    def shown(metric: str) -> bool:
        return metric not in family.live_metrics or any(
            isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]) for r in rows)

    return tuple(c for c in cols if shown(c[0]))


def format_table(rows: list[dict[str, Any]], markdown: bool = False, env_id: str = DEFAULT_ENV_ID) -> str:
    columns = table_columns(rows, env_id)
    heads = ("scenario", "policy", *(c[1] for c in columns))

    def cell(r, metric, _heading, nd, with_ci):
        value = _fmt(r.get(metric), nd)
        return f"{value} ± {_fmt(r.get(metric + '_ci'), 2)}" if with_ci else value

    def cells(r):
        return (r["scenario"], r["policy"], *(cell(r, *c) for c in columns))

    shown = [r for r in rows if r.get("family") != SEED_FAMILY]  # PPO: the mean over seeds, not each seed
    body = [cells(r) for r in shown if not r.get("note")]
    notes = [f"{r['scenario']}  {r['policy']}: {r['note']}" for r in shown if r.get("note")]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cs, widths)) for cs in body]
    return "\n".join(lines + notes)


def format_dominance(dom: list[dict[str, Any]], markdown: bool = False, env_id: str = DEFAULT_ENV_ID) -> str:
    family = family_for(env_id)
    words = _labels(family)
    metric = dom[0]["metric"] if dom else family.risk_metric
    name = metric_name(family, metric)
    heads = ("scenario", "PPO", name, "tokens/s", f"best {words['sweep_point']} point within 10% {name}",
             f"{words['front']} (interpolated) at that {name}", "reference tokens/s", "gain", ">= 10%?",
             "on learned front", "10% attainable", f"best analytic rule at that {name}", "gain vs best rule")
    pct = lambda g: f"{g * 100:+.1f}%" if g is not None else "n/a"  # noqa: E731

    def cells(d):
        g = d["gain"]
        best = d.get("best_rule_policy") or ""
        return (d["scenario"], d["policy"], _fmt(d["risk"], 3), _fmt(d["tokens_per_s"]),
                f"{d['best_matched_policy']} ({_fmt(d['best_matched_tokens_per_s'])})" if d["best_matched_policy"] else "none",
                _fmt(d["front_tokens_per_s"]),
                _fmt(d["analytic_tokens_per_s"]) if d["in_range"] else "out of range",
                pct(g), "yes" if d["dominates_10pct"] else "no",
                "yes" if d["on_learned_front"] else "no", "yes" if d["attainable"] else "no",
                f"{best} ({_fmt(d.get('best_rule_tokens_per_s'))})" if best else "none", pct(d.get("gain_vs_best_rule")))

    body = [cells(d) for d in dom]
    verdict = []
    for sc in dict.fromkeys(d["scenario"] for d in dom):
        ds = [d for d in dom if d["scenario"] == sc and d["in_range"]]
        n_ok = sum(d["dominates_10pct"] for d in ds)
        fr = [d for d in ds if d["on_learned_front"] and d["attainable"]]
        verdict.append(f"{sc}: {n_ok}/{len(ds)} PPO points in the front's {name} range beat the {words['front_long']} "
                       f"by >= 10% tokens/s at matched {name}"
                       + (f" (median gain {np.median([d['gain'] for d in ds]) * 100:+.1f}%)" if ds else "")
                       + f"; learned-front points where a 10% gain is attainable: "
                       f"{sum(d['dominates_10pct'] for d in fr)}/{len(fr)}"
                       + (f" ({sum(d.get('dominates_10pct_at_ci_low', False) for d in fr)} of them also at the lower "
                          "end of their 95% interval)" if fr else ""))
        rs = [d for d in dom if d["scenario"] == sc and d.get("gain_vs_best_rule") is not None]
        if rs:  # the honest comparison: every analytic rule, not just the U-HLM sweep
            fr_r = [d for d in rs if d["on_learned_front"] and d.get("best_rule_attainable")]
            verdict.append(f"{sc}: against the best analytic rule at matched {name} ({words['rules']}): "
                           f"{sum(d['beats_best_rule_10pct'] for d in rs)}/{len(rs)} PPO points "
                           f">= 10% ahead (median gain {np.median([d['gain_vs_best_rule'] for d in rs]) * 100:+.1f}%); "
                           f"learned-front points where a 10% gain is attainable: "
                           f"{sum(d['beats_best_rule_10pct'] for d in fr_r)}/{len(fr_r)}")
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines + [""] + [f"- {v}" for v in verdict])
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = [f"dominance at matched {name} (learned vs the analytic {words['front_long']}, test split):",
             "  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cs, widths)) for cs in body]
    return "\n".join(lines + verdict)


def _csv(rows: list[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def _trainer_text(config: CompareConfig, rc: dict[str, Any]) -> str:
    """How the PPO runs were trained, for the results' header."""
    seeds = tuple(rc.get("seeds") or (config.seed,))
    which = ("the population trainer, the runs as populations of one CPU thread each"
             if config.trainer == "population" else "Stable-Baselines3, one run per point")
    return f"{which}; training seeds {', '.join(map(str, seeds))}"


def _config_json(config: CompareConfig) -> dict[str, Any]:
    """``config`` as compare.json records it (:data:`OPTIONAL_FIELDS` only when set)."""
    return {k: v for k, v in asdict(config).items() if k not in OPTIONAL_FIELDS or v != OPTIONAL_FIELDS[k]}


def render_outputs(rows, dom, runs, rc, config: CompareConfig, wall: float) -> dict[str, tuple[str, bytes]]:
    """Every output of a comparison in memory: ``key -> (file name, bytes)`` (tables, CSVs, plots, JSON),
    in the words of ``config.env_id``'s family."""
    env_id = config.env_id
    family = family_for(env_id)
    words = _labels(family)
    risk = metric_name(family, family.risk_metric)
    dom_risk = [d for d in dom if d["metric"] == family.risk_metric]
    dom_err = [d for d in dom if d["metric"] != family.risk_metric]
    cmd = command_line(config)
    env_flag = "" if env_id == DEFAULT_ENV_ID else f" --env {env_id}"
    md = [f"# hlm-gym compare: {words['title']}", "",
          f"Command: `{cmd}` (scenarios {', '.join(rc['scenarios'])}; lambdas {', '.join(map(str, rc['risk_weights']))}; "
          f"risk targets {', '.join(map(str, rc['risk_targets'])) or 'none'} at lambda {rc['target_risk_weight']:g}; "
          f"{rc['timesteps']} PPO steps per run ({_trainer_text(config, rc)}); {rc['episodes']} test episodes per "
          f"policy at evaluation seed {config.seed + 20_000} (`hlm-gym evaluate{env_flag} --split test --episodes "
          f"{rc['episodes']} --seed {config.seed + 20_000}` reproduces a row); {wall / 60:.1f} min).", "",
          "Analytic rules: means over test episodes with 95% Student-t half-widths. PPO: "
          + ("the mean over the training seeds of each seed's test mean, with a 95% Student-t half-width over "
             "seeds (each seed's row is in results.csv)." if len(rc.get("seeds", ())) > 1 else
             "one training seed; means over test episodes with 95% Student-t half-widths."), ""]
    if config.live:
        md += [f"Live mode ({', '.join(metric_name(family, m) for m in family.live_metrics)}): every policy (each "
               f"PPO seed's model) also run live on the test split, {rc.get('live_episodes')} episodes at evaluation "
               f"seed {config.seed + 20_000}; 95% Student-t half-widths as above.", ""]
    md += [format_table(rows, markdown=True, env_id=env_id), "",
           f"## Dominance at matched {risk}", "",
           words["reference"].format(risk=risk), "", format_dominance(dom_risk, markdown=True, env_id=env_id), "",
           "The last two columns repeat the check against the best of *every* analytic rule of the comparison "
           f"({words['all_rules']}) within 10% {risk}, or the interpolated front of all of them where none is that "
           "close.", ""]
    if family.error_metric is not None:
        md += [f"Secondary check, {metric_name(family, family.error_metric)} as the {risk} axis:", "",
               format_dominance(dom_err, markdown=True, env_id=env_id), ""]
    contents = {"results_csv": ("results.csv", _csv(rows, columns_for(env_id)).encode()),
                "dominance_csv": ("dominance.csv", _csv(dom, DOM_COLUMNS).encode())}
    # the env id only when not the default, so that stand-ins with pareto_png's (rows, scenario) still serve
    plot_kw = {} if env_id == DEFAULT_ENV_ID else {"env_id": env_id}
    for sc in rc["scenarios"]:
        contents[f"pareto_{sc}"] = (f"pareto-{sc}.png", pareto_png(rows, sc, **plot_kw))
        md.append(f"![{sc}](pareto-{sc}.png)")
    contents["results_md"] = ("results.md", ("\n".join(md) + "\n").encode())
    doc = {"config": _config_json(config) | {"resolved": rc}, "wall_s": round(wall, 1), "rows": rows,
           "dominance": dom, "runs": runs}
    contents["json"] = ("compare.json", (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return contents


def write_outputs(out: Path, rows, dom, runs, rc, config: CompareConfig, wall: float) -> dict[str, Path]:
    """Render every output first, then write them all (each atomically, under a unique temporary
    name; Ctrl-C deferred until the last is in place) and remove plots of scenarios this
    comparison did not have, so the folder holds one comparison's results, never a mix."""
    out = Path(out)
    contents = render_outputs(rows, dom, runs, rc, config, wall)
    files = {key: out / name for key, (name, _) in contents.items()}
    with signals_deferred():
        for key, (_, data) in contents.items():
            atomic_write_bytes(files[key], data)
        for stale in out.glob("pareto-*.png"):
            if stale not in files.values():
                stale.unlink(missing_ok=True)
    files["tensorboard"] = out / "runs"
    return files
