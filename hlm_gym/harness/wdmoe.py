"""The WDMoE env family as the harness sees it (:data:`WDMOE`): ``hlm_gym/WDMoE-v0``.

``Discrete(2**E)`` expert selections (bit ``e`` = expert ``e``); the analytic policies are the
gate's top-k, WDMoE's weight-to-latency ratio rule swept over its threshold, and the myopic
channel-aware rule at each PPO run's reward (:mod:`hlm_gym.policies.wdmoe_kinds`).

Metrics per episode (one sequence; mean and a Student-t interval over episodes):

=========================  ==================================================================
``tokens_per_s``           tokens / the episode's simulated MoE latency (all layers)
``latency_per_token_s``    the episode's simulated latency / tokens
``quality_loss``           the dropped experts' error per decision (the env's ``quality``
                           measure), averaged over the episode's (token, layer) decisions
``experts_per_layer``      experts used per decision
``empty_rate``             decisions that selected no expert (resolved to the gate's top-1)
``energy_j_per_token``     the devices' energy (J) / tokens
``reward_per_step``        the environment's reward, averaged over the episode's decisions
``perplexity``             (live mode) exp of the mean next-token loss on the sequence's
                           reference tokens with the policy's selections in the real MoE
=========================  ==================================================================
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

import numpy as np

from hlm_gym.harness.errors import TrainingError
from hlm_gym.harness.family import AnalyticPolicy, EnvFamily, EnvSettings
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.wdmoe_kinds import WDMOE_ENV_IDS

__all__ = ["WDMOE", "METRICS", "TRAIN_METRICS", "SWEEP_FAMILY", "WDMoEEpisodes", "DEFAULTS"]

METRICS: tuple[str, ...] = ("tokens_per_s", "latency_per_token_s", "quality_loss", "experts_per_layer",
                            "empty_rate", "energy_j_per_token", "reward_per_step", "perplexity")
TRAIN_METRICS: tuple[str, ...] = ("tokens_per_s", "latency_per_token_s", "quality_loss", "experts_per_layer",
                                  "energy_j_per_token")
#: The weight-to-latency ratio sweep: compare's reference front.
SWEEP_FAMILY = "wlr"
_SUMS = ("latency_s", "energy_j", "step_quality_loss", "n_selected", "empty", "reward", "steps")
#: compare's defaults for this family (the fleets, the reward sweeps, the WLR thresholds, top-k). The MoE
#: made from the embedded model is usable only with most experts kept (held-out perplexity 5.24 dense,
#: 6.57 at top-7, 62 at top-4, docs/moe.md), so the sweeps cover dropping 0-4 experts: top-k from 4,
#: WLR thresholds up to 0.3 (about 5 experts per layer) and risk weights that price the loss of one
#: expert (quality loss ~0.05) against its device's latency.
DEFAULTS: dict[str, Any] = {
    "scenarios": ("close-static", "mixed-vehicular"),
    "risk_weights": (1.0, 3.0, 10.0),
    "full_risk_weights": (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0),
    "risk_targets": (),
    "full_risk_targets": (),
    "thresholds": (0.02, 0.05, 0.1, 0.2, 0.3),
    "topk": (4, 6, 7, 8),
    # one decision per (token, layer), 256 actions: PPO needs more steps than on HybridLM (on
    # mixed-vehicular, lambda 3: validation reward -0.468 after 100k steps, -0.434 after 400k)
    "timesteps": 400_000,
}


def env_kwargs(settings: EnvSettings, split: str) -> dict[str, Any]:
    """The environment options of a run for ``split`` (fleet scenario, risk weight and target, trace)."""
    kw: dict[str, Any] = {"scenario": settings.scenario, "split": split}
    if settings.risk_weight is not None:
        kw["risk_weight"] = float(settings.risk_weight)
    if settings.risk_target is not None:
        kw["risk_target"] = float(settings.risk_target)
    if settings.traces is not None:
        kw["trace"] = str(resolve_trace_path(settings.traces, split))
    kw.update(settings.env_kwargs)
    return kw


def resolve_trace_path(traces: Any, split: str) -> Any:
    """The WDMoE trace file of ``split`` in a folder (``wdmoe-<split>.parquet``), or a file as given."""
    from pathlib import Path

    p = Path(traces)
    return p / f"wdmoe-{split}.parquet" if p.is_dir() else p


def make_vector_env(env_id: str, num_envs: int, kwargs: dict[str, Any]) -> Any:
    """The numpy batched env through Gymnasium's ``make_vec``."""
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def make_train_env(env_id: str, n_envs: int, seed: int, kwargs: dict[str, Any], backend: str = "numpy",
                   device: str = "cpu") -> Any:
    """The SB3 ``VecEnv`` of ``n_envs`` batched WDMoE envs (``backend="torch"``: on ``device``)."""
    from hlm_gym.environments.wdmoe.sb3 import BACKENDS, WDMoESB3VecEnv

    if backend not in BACKENDS:
        raise TrainingError(f"bad env backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    extra: dict[str, Any] = {"backend": backend}
    if backend == "torch":
        extra["device"] = None if device == "auto" else device
    venv = WDMoESB3VecEnv(num_envs=n_envs, **extra, **kwargs)
    venv.seed(seed)
    return venv


def make_torch_env(env_id: str, num_envs: int, device: Any, kwargs: dict[str, Any], risk_weights: Any,
                   risk_targets: Any) -> Any:
    """The torch batched env with per-env reward settings (the population trainer's)."""
    from hlm_gym.environments.wdmoe.vector import WDMoETorchVectorEnv

    return WDMoETorchVectorEnv(num_envs=num_envs, device=device, risk_weights=risk_weights,
                               risk_targets=risk_targets, **kwargs)


def reward_defaults(kwargs: Mapping[str, Any]) -> tuple[float, float]:
    """The risk weight and target of a WDMoE env made with ``kwargs``."""
    from hlm_gym.environments.wdmoe.config import make_config

    config, _ = make_config(dict(kwargs))
    return config.risk_weight, config.risk_target


def load_scenario(name: Any) -> Any:
    """The fleet of a WDMoE scenario name or YAML path (one-line error otherwise)."""
    from hlm_gym.wireless.fleet import load_fleet

    return load_fleet(name)


def policy_context(env: Any) -> PolicyContext:
    """What spec strings need from a WDMoE env (``env.sim``): latency_ref, risk weight and target, fleet."""
    base = getattr(env, "unwrapped", env)
    sim = getattr(base, "sim", None)
    if sim is None:
        return PolicyContext()
    return PolicyContext(latency_ref=float(sim.latency_ref), risk_weight=float(sim.config.risk_weight),
                         risk_target=float(sim.config.risk_target), scenario=sim.fleet,
                         max_tokens=int(sim.tables.max_tokens))


def send_action(n_actions: int) -> int:
    """A binary rule's SEND: every expert (the dense layer)."""
    return n_actions - 1


# ------------------------------------------------------------------------------------ episodes
class WDMoEEpisodes:
    """Per-step sums of latency, energy, quality loss, experts used, empty selections and reward;
    the env's end-of-episode ``tokens`` gives the per-token metrics."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.acc = {k: np.zeros(n) for k in _SUMS}

    def step(self, actions: np.ndarray, rewards: np.ndarray, info: dict, valid: np.ndarray) -> None:
        acc = self.acc
        acc["steps"] += valid
        acc["reward"] += np.where(valid, np.asarray(rewards, dtype=np.float64), 0.0)
        for key in ("latency_s", "energy_j", "step_quality_loss", "n_selected", "empty"):
            acc[key] += np.where(valid, np.asarray(info[key], dtype=np.float64), 0.0)

    def finish(self, i: int, info: dict) -> dict[str, float]:
        a = {k: float(v[i]) for k, v in self.acc.items()}
        tokens = float(np.asarray(info["tokens"])[i]) if "tokens" in info else a["steps"]
        steps = max(a["steps"], 1.0)
        return {"tokens": tokens, "steps": a["steps"], "latency_s": a["latency_s"],
                "tokens_per_s": tokens / a["latency_s"] if a["latency_s"] > 0 else math.nan,
                "latency_per_token_s": a["latency_s"] / max(tokens, 1.0),
                "quality_loss": a["step_quality_loss"] / steps, "experts_per_layer": a["n_selected"] / steps,
                "empty_rate": a["empty"] / steps, "energy_j_per_token": a["energy_j"] / max(tokens, 1.0),
                "reward_per_step": a["reward"] / steps}

    def clear(self, i: int) -> None:
        for v in self.acc.values():
            v[i] = 0.0


# ------------------------------------------------------------------------------------ compare
def analytic_policies(sweep: Mapping[str, Any]) -> list[AnalyticPolicy]:
    """The gate's top-k (``topk:K``), the weight-to-latency ratio rule over the ``thresholds``
    sweep (the reference front) and the myopic rule at each PPO run's reward."""
    from hlm_gym.harness.hybrid_lm import reward_label

    return ([AnalyticPolicy("topk", f"topk:{k}", None, k) for k in sweep.get("topk", DEFAULTS["topk"])]
            + [AnalyticPolicy(SWEEP_FAMILY, f"wlr:{t:g}", None, t) for t in sweep["thresholds"]]
            + [AnalyticPolicy("myopic", "myopic:" + reward_label(w, 0.0), w, w)
               for w, t in sweep["ppo_runs"] if not t])


#: compare's words for this family (see :class:`~hlm_gym.harness.family.EnvFamily`).
COMPARE_LABELS: dict[str, str] = {
    "title": "learned PPO vs analytic expert selection",
    "sweep_point": "WLR",
    "front": "WLR front",
    "front_long": "weight-to-latency ratio front",
    "rules": "gate top-k, weight-to-latency ratio, myopic channel-aware",
    "all_rules": "gate top-k, weight-to-latency ratio thresholds, myopic channel-aware",
    "reference": "Reference: the best weight-to-latency ratio sweep point (`wlr:T`) whose {risk} is within 10% "
                 "(relative) of the PPO point's; if there is none, the WLR front (upper envelope of the sweep) "
                 "linearly interpolated at the PPO point's {risk}.",
    "axis:quality_loss": "quality loss (dropped experts' error per (token, layer) decision)",
}
#: compare's Pareto plot: (analytic family, colour, marker, legend label), in drawing order.
PLOT_STYLES: tuple[tuple[str, str, str, str], ...] = (
    (SWEEP_FAMILY, "tab:blue", "o", "weight-to-latency ratio sweep (wlr:T)"),
    ("topk", "tab:green", "^", "gate top-k"),
    ("myopic", "tab:purple", "D", "myopic channel-aware rule"))
#: compare's results table: (metric, heading, significant digits, with interval); perplexity
#: (live mode only) is shown when the rows have it.
TABLE_COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    ("tokens_per_s", "tokens/s", 4, True), ("latency_per_token_s", "latency s/tok", 3, False),
    ("quality_loss", "quality loss", 3, True), ("experts_per_layer", "experts/layer", 3, False),
    ("energy_j_per_token", "energy J/tok", 3, False), ("perplexity", "perplexity", 4, True))


def shared_policy_context(traces: Any) -> dict[str, Any]:
    """Nothing is shared between the WDMoE rules."""
    return {}


def check_data(traces: Any, splits: tuple[str, ...] = ("train", "validation", "test")) -> None:
    """The WDMoE trace files of ``splits`` exist (``traces``: a folder; ``None``: the shipped set)."""
    from pathlib import Path

    from hlm_gym.traces.wdmoe import default_wdmoe_path

    flag = "" if traces is None else f"--traces {str(traces)!r}: "
    for split in splits:
        p = default_wdmoe_path(split) if traces is None else resolve_trace_path(traces, split)
        if not Path(p).is_file():
            raise TrainingError(f"{flag}no WDMoE {split} traces at {p}: build them with "
                                f"'hlm-gym moe traces --split {split} --out {p}' or pass --traces FOLDER")


# ------------------------------------------------------------------------------------ live evaluation
@functools.lru_cache(maxsize=1)
def load_live_moe(device: str = "cpu") -> Any:
    """The embedded SmolLM2-135M-Instruct as the shipped MoE (:mod:`hlm_gym.lm.moe`); the last one
    loaded is kept, so that live evaluations of many policies (``compare --live``) load it once."""
    from hlm_gym.lm.models import load_model
    from hlm_gym.lm.moe import load_moe_spec, moefy

    return moefy(load_model("embedded", device=device), load_moe_spec())


def evaluate_live(policy: Any, *, env_id: str, settings: EnvSettings, split: str, episodes: int, seed: int,
                  policy_context: Optional[Mapping[str, Any]] = None, reference: str = "live",
                  moe: Any = None, batch_size: int = 32, family: Any = None, progress: bool = False) -> Any:
    """Live mode (:mod:`hlm_gym.harness.wdmoe_live`): the policy's selections in the real MoE on the
    split's sequences, teacher-forced; the episode metrics of trace mode plus ``perplexity``.

    Episode ``j`` is sequence ``j mod n`` of the trace (each once before any repeats), with the
    channel drawn from generator ``seed + j``. ``moe``: a ready :class:`~hlm_gym.lm.moe.MoEModel`
    (default: :func:`load_live_moe`). ``reference`` is not used (the dense model is the reference);
    ``family``/``progress``: accepted for the harness's common call, not used."""
    from hlm_gym.harness.errors import EvaluationError
    from hlm_gym.harness.results import EvaluationResult, summarize_episodes
    from hlm_gym.harness.wdmoe_live import run_live, sequences_from_traces

    env = make_vector_env(env_id, 1, env_kwargs(settings, split))  # the spaces, context and simulation
    try:
        pol, ctx = WDMOE.policy_for(policy, env, env_id, seed=seed, traces=settings.traces, overrides=policy_context)
        sim = env.unwrapped.sim
    finally:
        env.close()
    seqs = sequences_from_traces(sim.traces)
    if not seqs:
        raise EvaluationError(f"the {split} trace has no sequences")
    chosen = [seqs[j % len(seqs)] for j in range(episodes)]
    if moe is None:
        moe = load_live_moe()
    run = run_live(moe, sim, pol, chosen, seed=seed, batch_size=batch_size)
    eps = [{"env": 0, "episode": j} | ep for j, ep in enumerate(run.episodes)]
    for ep in eps:
        ep["reward_per_step"] = math.nan  # live mode reports the measured loss, not the reward
    corr = _correlation(run.token_proxy, run.token_nll_increase)
    cfg = {"policy": policy if isinstance(policy, str) else repr(policy), "env_id": env_id,
           "scenario": settings.scenario, "split": split, "episodes": episodes, "seed": seed, "mode": "live",
           "risk_weight": ctx.risk_weight, "risk_target": ctx.risk_target, "latency_ref_s": ctx.latency_ref,
           "wall_s": round(run.wall_s, 3), "token_proxy_vs_nll_increase_pearson": corr}
    return EvaluationResult(config=cfg, episodes=eps, summary=summarize_episodes(eps, METRICS + ("nll_increase",
                                                                                                 "dense_perplexity")),
                            policy=pol.describe())


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two samples (NaN when either is constant or too short)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


WDMOE = EnvFamily(
    name="wdmoe",
    env_ids=WDMOE_ENV_IDS,
    metrics=METRICS,
    train_metrics=TRAIN_METRICS,
    env_kwargs=env_kwargs,
    make_vector_env=make_vector_env,
    make_train_env=make_train_env,
    policy_context=policy_context,
    send_action=send_action,
    episode_tracker=WDMoEEpisodes,
    reference_policy="topk:8",
    analytic_policies=analytic_policies,
    sweep_family=SWEEP_FAMILY,
    shared_policy_context=shared_policy_context,
    check_data=check_data,
    evaluate_live=evaluate_live,
    load_scenario=load_scenario,
    make_torch_env=make_torch_env,
    reward_defaults=reward_defaults,
    episode_info_metrics=("tokens_per_s", "latency_per_token_s", "quality_loss", "experts_per_layer", "empty_rate",
                          "energy_j_per_token"),
    per_token_sums={},
    risk_metric="quality_loss",
    error_metric=None,
    row_metrics=("tokens_per_s", "quality_loss", "latency_per_token_s", "experts_per_layer", "energy_j_per_token",
                 "perplexity"),
    ci_metrics=("tokens_per_s", "quality_loss", "perplexity"),
    compare_defaults=DEFAULTS,
    labels=COMPARE_LABELS,
    plot_styles=PLOT_STYLES,
    table_columns=TABLE_COLUMNS,
    live_metrics=("perplexity",),
)
