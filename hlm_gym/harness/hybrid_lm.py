"""The HybridLM env family as the harness sees it (:data:`HYBRID_LM`): both env ids, their
options, metrics, episode accounting, analytic policies and action mapping.

* ``hlm_gym/HybridLM-v0``: ``Discrete(2)`` (skip/send);
* ``hlm_gym/HybridLMCompressed-v0``: ``Discrete(1 + len(k_choices))``, the full distribution
  last, so a binary rule's SEND becomes the last action (an upload of the full distribution,
  what the rule's analysis assumes).

Metrics per episode (mean and a Student-t interval over episodes in the evaluation harness):

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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hlm_gym.harness.errors import TrainingError
from hlm_gym.harness.family import AnalyticPolicy, EnvFamily, EnvSettings
from hlm_gym.harness.hybrid_lm_live import evaluate_live
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.hybrid_lm_kinds import HYBRID_LM_ENV_IDS

__all__ = ["HYBRID_LM", "METRICS", "TRAIN_METRICS", "SWEEP_FAMILY", "HybridLMEpisodes", "reward_label"]

METRICS: tuple[str, ...] = ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate",
                            "uplink_bits_per_token", "energy_j_per_token", "reward_per_step", "fidelity")
#: What finished episodes report during training (the ``domain/`` scalars).
TRAIN_METRICS: tuple[str, ...] = ("tokens_per_s", "skip_rate", "transmission_rate", "risk", "error_rate",
                                  "energy_j_per_token", "uplink_bits_per_token")
#: The U-HLM threshold sweep (``always`` = u_th -inf, ``threshold:U``): compare's reference front.
SWEEP_FAMILY = "uhlm-threshold"
_STEP_SUMS = ("latency_s", "uplink_bits", "energy_j", "sent", "rejected", "beta_skipped", "error_skipped", "reward")


# ------------------------------------------------------------------------------------ options and envs
def env_kwargs(settings: EnvSettings, split: str) -> dict[str, Any]:
    """The environment options of a run for ``split`` (scenario, risk weight and target, trace file)."""
    kw: dict[str, Any] = {"scenario": settings.scenario, "split": split}
    if settings.risk_weight is not None:
        kw["risk_weight"] = float(settings.risk_weight)
    if settings.risk_target is not None:
        kw["risk_target"] = float(settings.risk_target)
    if settings.traces is not None:
        from hlm_gym.policies.data import resolve_trace_path

        kw["trace"] = str(resolve_trace_path(settings.traces, split))
    kw.update(settings.env_kwargs)
    return kw


def make_vector_env(env_id: str, num_envs: int, kwargs: dict[str, Any]) -> Any:
    """The numpy batched env (trace mode) through Gymnasium's ``make_vec``."""
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def make_env(env_id: str, kwargs: dict[str, Any]) -> Any:
    """One environment (live mode)."""
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    return gym.make(env_id, **kwargs)


def make_train_env(env_id: str, n_envs: int, seed: int, kwargs: dict[str, Any], backend: str = "numpy",
                   device: str = "cpu") -> Any:
    """The SB3 ``VecEnv`` of ``n_envs`` batched environments (energy and uplink bits per token in
    finished episodes' infos). ``backend="torch"`` steps the batched torch env on ``device``."""
    from hlm_gym.environments.hybrid_lm.sb3 import BACKENDS, HybridLMSB3VecEnv

    if backend not in BACKENDS:
        raise TrainingError(f"bad env backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    extra: dict[str, Any] = {"backend": backend}
    if backend == "torch":
        extra["device"] = None if device == "auto" else device  # None: the torch env picks CUDA when there is one
    venv = HybridLMSB3VecEnv(num_envs=n_envs, compressed=env_id.endswith("Compressed-v0"), **extra, **kwargs)
    venv.seed(seed)
    return venv


def make_torch_env(env_id: str, num_envs: int, device: Any, kwargs: dict[str, Any], risk_weights: Any,
                   risk_targets: Any) -> Any:
    """The torch batched env with per-env reward settings (the population trainer's)."""
    from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv

    return HybridLMTorchVectorEnv(num_envs=num_envs, device=device, compressed=env_id.endswith("Compressed-v0"),
                                  risk_weights=risk_weights, risk_targets=risk_targets, **kwargs)


def reward_defaults(kwargs: Mapping[str, Any]) -> tuple[float, float]:
    """The risk weight and target of a HybridLM env made with ``kwargs``."""
    from hlm_gym.environments.hybrid_lm.config import make_config

    config, _ = make_config(dict(kwargs))
    return config.risk_weight, config.risk_target


def load_scenario(name: Any) -> Any:
    """The scenario of a name or YAML path (:func:`hlm_gym.wireless.scenarios.load_scenario`)."""
    from hlm_gym.wireless.scenarios import load_scenario as load

    return load(name)


def policy_context(env: Any) -> PolicyContext:
    """What spec strings need from a HybridLM env (``env.sim``): max_tokens, latency_ref, risk
    weight and target, scenario, vocabulary size."""
    base = getattr(env, "unwrapped", env)
    sim = getattr(base, "sim", None)
    if sim is None:
        return PolicyContext()
    return PolicyContext(max_tokens=int(sim.max_tokens), latency_ref=float(sim.latency_ref),
                         risk_weight=float(sim.config.risk_weight), risk_target=float(sim.config.risk_target),
                         scenario=sim.scenario, vocab_size=int(sim.vocab_size))


def send_action(n_actions: int) -> int:
    """SEND of a binary rule: the last action (the full distribution in the compressed env)."""
    return n_actions - 1


# ------------------------------------------------------------------------------------ episodes
def _column(info: dict, key: str, n: int) -> np.ndarray:
    """``info[key]`` as a float array of length ``n`` with NaN where its ``_key`` mask is False."""
    if key not in info:
        return np.full(n, np.nan)
    v = np.broadcast_to(np.asarray(info[key], dtype=np.float64), (n,)).copy()
    mask = info.get("_" + key)
    if mask is not None:
        v[~np.asarray(mask, dtype=bool)] = np.nan
    return v


def _info_value(info: dict, key: str, i: int) -> float | None:
    if key not in info:
        return None
    mask = info.get("_" + key)
    if mask is not None and not bool(np.asarray(mask)[i]):
        return None
    v = np.asarray(info[key])
    return float(v[i]) if v.ndim else float(v)


def episode_metrics(acc: Mapping[str, float], final: Mapping[str, float]) -> dict[str, float]:
    """Metrics of one finished episode: the env's end-of-episode info where it has them, else
    computed from the per-step sums ``acc``."""
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


class HybridLMEpisodes:
    """Per-step sums of ``latency_s``, ``uplink_bits``, ``energy_j``, ``sent`` (an action != 0 when
    the info has none), and ``beta``/``error`` of skipped tokens; end-of-episode infos override
    the metrics computed from them."""

    KEYS = _STEP_SUMS + ("tokens",)

    def __init__(self, n: int) -> None:
        self.n = n
        self.acc = {k: np.zeros(n) for k in self.KEYS}

    def step(self, actions: np.ndarray, rewards: np.ndarray, info: dict, valid: np.ndarray) -> None:
        n, acc = self.n, self.acc
        sent = _column(info, "sent", n)
        sent = np.where(np.isnan(sent), (np.asarray(actions) != 0).astype(float), sent)
        skipped = valid & (sent == 0)
        acc["tokens"] += valid
        acc["reward"] += np.where(valid, np.asarray(rewards, dtype=np.float64), 0.0)
        acc["sent"] += np.where(valid, sent, 0.0)
        for key in ("latency_s", "uplink_bits", "energy_j"):
            acc[key] += np.where(valid, np.nan_to_num(_column(info, key, n)), 0.0)
        acc["beta_skipped"] += np.where(skipped, np.nan_to_num(_column(info, "beta", n)), 0.0)
        acc["error_skipped"] += np.where(skipped, np.nan_to_num(_column(info, "error", n)), 0.0)

    def finish(self, i: int, info: dict) -> dict[str, float]:
        final = {k: _info_value(info, k, i) for k in METRICS + ("tokens",)}
        final = {k: v for k, v in final.items() if v is not None}
        return episode_metrics({k: float(self.acc[k][i]) for k in self.KEYS}, final)

    def clear(self, i: int) -> None:
        for k in self.KEYS:
            self.acc[k][i] = 0.0


# ------------------------------------------------------------------------------------ compare
def reward_label(risk_weight: float, target: float) -> str:
    """``lambda=L`` or ``lambda=L,target=R``: the reward a PPO run (or channel-aware rule) optimises."""
    return f"lambda={risk_weight:g}" + (f",target={target:g}" if target else "")


def analytic_policies(sweep: Mapping[str, Any]) -> list[AnalyticPolicy]:
    """The U-HLM threshold sweep (``always`` as u_th = -inf, ``threshold:U``), the fitted U-HLM
    thresholds, Learn-then-Test at each delta, the BiLD fallback and CALM softmax-margin sweeps and
    the channel-aware rule at each PPO run's reward (``sweep``: compare's resolved settings
    ``thresholds``, ``ltt_deltas``, ``bild_alphas``, ``calm_lambdas``, ``ppo_runs``)."""
    return ([AnalyticPolicy(SWEEP_FAMILY, "always", None, -math.inf)]
            + [AnalyticPolicy(SWEEP_FAMILY, f"threshold:{u:g}", None, u) for u in sweep["thresholds"]]
            + [AnalyticPolicy("uhlm", "uhlm:averse", None, "averse"), AnalyticPolicy("uhlm", "uhlm:prone", None, "prone")]
            + [AnalyticPolicy("ltt", f"ltt:delta={d:g},eps=0.1", None, d) for d in sweep["ltt_deltas"]]
            + [AnalyticPolicy("bild", f"bild:{a:g}", None, a) for a in sweep.get("bild_alphas", ())]
            + [AnalyticPolicy("calm", f"calm:{c:g}", None, c) for c in sweep.get("calm_lambdas", ())]
            + [AnalyticPolicy("channel-aware", "channel-aware:" + reward_label(w, t), w, t)
               for w, t in sweep["ppo_runs"] if w > 0])


#: compare's words for this family (see :class:`~hlm_gym.harness.family.EnvFamily`).
COMPARE_LABELS: dict[str, str] = {
    "title": "learned PPO vs analytic thresholds",
    "sweep_point": "u_th",
    "front": "U-HLM front",
    "front_long": "U-HLM threshold front",
    "rules": "U-HLM, Learn-then-Test, BiLD, CALM, channel-aware",
    "all_rules": "U-HLM thresholds, fitted U-HLM, Learn-then-Test, BiLD, CALM, channel-aware",
    "reference": "Reference: the best U-HLM sweep point (`always` = u_th -inf, `threshold:U`) whose {risk} is within "
                 "10% (relative) of the PPO point's; if there is none, the U-HLM front (upper envelope of the sweep) "
                 "linearly interpolated at the PPO point's {risk}.",
    "axis:risk": "risk (mean rejection probability of skipped tokens)",
    "axis:error_rate": "error rate (skipped tokens that would be rejected / tokens)",
    "name:live_tokens_per_s": "live tokens/s",
    "name:live_transmission_rate": "live transmission rate",
    "name:live_risk": "live risk",
    "name:live_error_rate": "live error rate",
}
#: compare --live: the row's live columns and the live evaluation's metric each comes from.
LIVE_SOURCES: dict[str, str] = {"live_tokens_per_s": "tokens_per_s", "live_transmission_rate": "transmission_rate",
                                "live_risk": "risk", "live_error_rate": "error_rate", "fidelity": "fidelity"}
#: compare's Pareto plot: (analytic family, colour, marker, legend label), in drawing order.
PLOT_STYLES: tuple[tuple[str, str, str, str], ...] = (
    (SWEEP_FAMILY, "tab:blue", "o", "U-HLM threshold sweep (u_th; always = -inf)"),
    ("uhlm", "tab:cyan", "s", "U-HLM fitted (averse/prone)"),
    ("ltt", "tab:green", "^", "Learn-then-Test"),
    ("bild", "tab:orange", "v", "BiLD fallback sweep"),
    ("calm", "tab:olive", "P", "CALM softmax-margin sweep"),
    ("channel-aware", "tab:purple", "D", "channel-aware rule"))
#: compare's results table: (metric, heading, significant digits, with interval).
TABLE_COLUMNS: tuple[tuple[str, str, int, bool], ...] = (
    ("tokens_per_s", "tokens/s", 4, True), ("risk", "risk", 3, True), ("error_rate", "error rate", 3, False),
    ("skip_rate", "skip rate", 3, False), ("energy_j_per_token", "energy J/tok", 3, False),
    ("live_tokens_per_s", "live tokens/s", 4, True), ("live_transmission_rate", "live TR", 3, False),
    ("live_risk", "live risk", 3, True), ("live_error_rate", "live error rate", 3, False),
    ("fidelity", "fidelity", 3, True))


def shared_policy_context(traces: Any) -> dict[str, Any]:
    """The U-HLM fit on the training split, once for every analytic policy of a comparison."""
    from hlm_gym.policies.fit import fit_from_traces

    return {"fit": fit_from_traces(traces, "train")}


def check_data(traces: Any, splits: tuple[str, ...] = ("train", "validation", "test")) -> None:
    """The trace files of ``splits`` exist (``traces``: a folder; ``None``: the shipped set)."""
    from hlm_gym.policies.data import resolve_trace_path

    flag = "" if traces is None else f"--traces {str(traces)!r}: "
    for split in splits:
        try:
            p = resolve_trace_path(traces, split)
        except ValueError as exc:
            raise TrainingError(f"{flag}{str(exc).splitlines()[0]}") from None
        if not Path(p).is_file():
            raise TrainingError(f"{flag}no {split} traces at {p}: build the default trace set "
                                f"(hlm-gym traces build ...) or pass --traces FOLDER")


HYBRID_LM = EnvFamily(
    name="hybrid_lm",
    env_ids=HYBRID_LM_ENV_IDS,
    metrics=METRICS,
    train_metrics=TRAIN_METRICS,
    env_kwargs=env_kwargs,
    make_vector_env=make_vector_env,
    make_train_env=make_train_env,
    policy_context=policy_context,
    send_action=send_action,
    episode_tracker=HybridLMEpisodes,
    reference_policy="uhlm",
    analytic_policies=analytic_policies,
    sweep_family=SWEEP_FAMILY,
    shared_policy_context=shared_policy_context,
    check_data=check_data,
    evaluate_live=evaluate_live,
    load_scenario=load_scenario,
    make_torch_env=make_torch_env,
    reward_defaults=reward_defaults,
    episode_info_metrics=("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate"),
    per_token_sums={"energy_j_per_token": "energy_j", "uplink_bits_per_token": "uplink_bits"},
    risk_metric="risk",
    error_metric="error_rate",
    row_metrics=("tokens_per_s", "risk", "error_rate", "skip_rate", "transmission_rate", "energy_j_per_token")
    + tuple(LIVE_SOURCES),
    ci_metrics=("tokens_per_s", "risk", "error_rate", "live_tokens_per_s", "live_risk", "live_error_rate", "fidelity"),
    live_metrics=tuple(LIVE_SOURCES),
    live_sources=LIVE_SOURCES,
    labels=COMPARE_LABELS,
    plot_styles=PLOT_STYLES,
    table_columns=TABLE_COLUMNS,
)
