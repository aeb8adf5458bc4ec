"""Train a Stable-Baselines3 agent on any env the harness knows (``hlm-gym train``).

Read :func:`train` top to bottom to follow a whole run::

    config  -> hyperparameters (agents/<algo>.yml, the env id's entry; CLI overrides on top)
    envs    -> the env family's training VecEnv (HybridLM: the batched env through the SB3
               adapter) (+ VecNormalize)
    model   -> PPO / A2C / DQN with TensorBoard logging
    callbacks -> domain scalars per rollout, evaluation on the validation split through the
                 evaluation harness (best checkpoint), the family's reference policy as lines
    learn   -> model.learn(...)
    save    -> model_last.zip, best_model.zip (self-contained: observation normalisation is
               baked into the saved policy), vecnormalize.pkl, summary.json
    summary -> one dict naming the files written and the final metrics

Saved models are plain SB3 zips that ``hlm-gym evaluate --policy ppo:PATH`` (and
``PPO.load``) use as they are: when the run normalised observations, the statistics are folded
into the saved policy as a fixed :class:`~hlm_gym.policies.sb3_model.NormalizedObsExtractor`, so no separate
``vecnormalize.pkl`` is needed to evaluate (it is still written, for rl-zoo style resuming).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hlm_gym.harness.errors import TrainingError
from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.family import EnvSettings
from hlm_gym.paths import atomic_write_text

__all__ = ["TrainingError", "TrainConfig", "TrainResult", "load_hyperparams", "train", "save_model", "ALGOS",
           "config_dict", "format_summary"]

ALGOS = ("ppo", "a2c", "dqn")

# Keys a zoo YAML may hold besides the algorithm's constructor arguments (zoo pops these).
ZOO_KEYS = ("n_envs", "n_timesteps", "policy", "policy_kwargs", "normalize")
ALGO_KEYS = {
    "ppo": ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
            "clip_range_vf", "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm", "use_sde",
            "sde_sample_freq", "target_kl", "stats_window_size"),
    "a2c": ("learning_rate", "n_steps", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm",
            "rms_prop_eps", "use_rms_prop", "use_sde", "sde_sample_freq", "normalize_advantage",
            "stats_window_size"),
    "dqn": ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
            "gradient_steps", "target_update_interval", "exploration_fraction", "exploration_initial_eps",
            "exploration_final_eps", "max_grad_norm", "stats_window_size"),
}


# ----------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything one training run needs (the CLI flags of ``hlm-gym train``)."""

    algo: str = "ppo"
    env_id: str = DEFAULT_ENV_ID
    scenario: str = "pedestrian"
    risk_weight: Optional[float] = None  # lambda of the reward (None: the environment's default)
    risk_target: Optional[float] = None  # the env's risk_target R (None: its default 0, error-rate pricing)
    device: str = "cpu"
    env_backend: str = "numpy"  # "numpy" (CPU) or "torch" (the batched torch env, on `device`)
    n_envs: Optional[int] = None  # None: the YAML's
    timesteps: Optional[int] = None  # None: the YAML's n_timesteps
    seed: int = 0
    out: str = "runs/train"
    traces: Optional[str] = None  # trace folder/file (None: the shipped default traces)
    hyperparams: Optional[str] = None  # a YAML path (None: the shipped agents/<algo>.yml)
    overrides: dict[str, Any] = field(default_factory=dict)  # hyperparameter overrides
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra environment options
    eval_freq: Optional[int] = None  # timesteps between evaluations (None: 5 evaluations per run)
    eval_episodes: int = 64
    reference: bool = True  # log the env family's reference policy (HybridLM: U-HLM) as reference lines
    progress_bar: bool = False
    verbose: int = 0
    run_name: Optional[str] = None

    def env_settings(self) -> EnvSettings:
        """The run's environment options (the env family turns them into env kwargs per split)."""
        return EnvSettings(scenario=self.scenario, risk_weight=self.risk_weight, risk_target=self.risk_target,
                           traces=self.traces, env_kwargs=dict(self.env_kwargs))


@dataclass
class TrainResult:
    """What a run wrote and its final validation metrics."""

    out: Path
    files: dict[str, Path]
    summary: dict[str, Any]


def _yaml_source(algo: str, path: Optional[str]) -> tuple[str, str]:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TrainingError(f"hyperparameter file {str(p)!r} not found")
        return str(p), p.read_text()
    res = resources.files("hlm_gym._agents").joinpath(f"{algo}.yml")
    if not res.is_file():
        raise TrainingError(f"no shipped hyperparameters for algo {algo!r} (agents/{algo}.yml); pass --hyperparams")
    return f"agents/{algo}.yml", res.read_text()


def load_hyperparams(algo: str, env_id: str, path: Optional[str] = None) -> dict[str, Any]:
    """The hyperparameters of ``env_id`` in an rl-zoo style YAML (checked key by key)."""
    import yaml

    algo = algo.lower()
    if algo not in ALGOS:
        raise TrainingError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    where, text = _yaml_source(algo, path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainingError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise TrainingError(f"{where}: expected a mapping of environment ids")
    if env_id not in doc:
        raise TrainingError(f"{where}: no entry for env id {env_id!r} (has: {', '.join(map(str, doc))})")
    hp = doc[env_id]
    if not isinstance(hp, dict):
        raise TrainingError(f"{where}: entry {env_id!r} must be a mapping")
    check_keys(algo, hp, f"{where} [{env_id}]")
    return dict(hp)


def check_keys(algo: str, hp: dict[str, Any], where: str) -> None:
    allowed = set(ZOO_KEYS) | set(ALGO_KEYS[algo])
    for key in hp:
        if key not in allowed:
            raise TrainingError(f"{where}: unknown key {key!r} for {algo}; allowed: {', '.join(sorted(allowed))}")


def _eval_expr(text: Any, what: str) -> Any:
    """zoo's string-valued settings (``"dict(net_arch=[64, 64])"``) in a small namespace."""
    if not isinstance(text, str):
        return text
    import torch

    try:
        return eval(text, {"__builtins__": {}}, {"dict": dict, "nn": torch.nn, "list": list, "True": True,
                                                 "False": False, "None": None})
    except Exception as exc:  # noqa: BLE001 - user text
        raise TrainingError(f"bad {what} {text!r}: {type(exc).__name__}: {exc}") from None


def _schedule(value: Any, what: str) -> Any:
    """zoo's ``lin_3e-4`` linear schedules; numbers as they are."""
    if isinstance(value, str):
        if value.startswith("lin_"):
            start = float(value[4:])
            return lambda progress_remaining: progress_remaining * start
        try:
            return float(value)
        except ValueError:
            raise TrainingError(f"bad {what} {value!r}: expected a number or lin_<number>") from None
    return value


def split_hyperparams(algo: str, hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run settings, algorithm kwargs)``: n_envs/n_timesteps/normalize apart, the rest for the constructor."""
    hp = dict(hp)
    run = {"n_envs": int(hp.pop("n_envs", 1)), "n_timesteps": int(float(hp.pop("n_timesteps", 1e5)))}
    norm = hp.pop("normalize", False)
    if isinstance(norm, str):
        norm_kwargs = _eval_expr(norm, "normalize")
        if not isinstance(norm_kwargs, dict):
            raise TrainingError(f"bad normalize {norm!r}: expected true/false or dict(...)")
        run["normalize"] = norm_kwargs
    else:
        run["normalize"] = {} if norm else None
    kwargs = {"policy": hp.pop("policy", "MlpPolicy")}
    if "policy_kwargs" in hp:
        pk = _eval_expr(hp.pop("policy_kwargs"), "policy_kwargs")
        if not isinstance(pk, dict):
            raise TrainingError("policy_kwargs must be a dict(...)")
        kwargs["policy_kwargs"] = pk
    for key in ("learning_rate", "clip_range"):
        if key in hp:
            hp[key] = _schedule(hp[key], key)
    kwargs.update(hp)
    return run, kwargs


# ----------------------------------------------------------------------------------- models
def save_model(model: Any, path: Path, vecnorm: Any = None) -> Path:
    """Save ``model`` as a self-contained SB3 zip (``vecnorm``'s observation statistics baked in)."""
    from hlm_gym.policies.sb3_model import NormalizedObsExtractor

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.zip")
    if vecnorm is None or not vecnorm.norm_obs:
        model.save(str(tmp))
    else:
        pk = dict(model.policy_kwargs)
        pk["features_extractor_class"] = NormalizedObsExtractor
        pk["features_extractor_kwargs"] = {"mean": vecnorm.obs_rms.mean.tolist(), "var": vecnorm.obs_rms.var.tolist(),
                                           "epsilon": float(vecnorm.epsilon), "clip_obs": float(vecnorm.clip_obs)}
        lr = getattr(model, "lr_schedule", lambda _: 0.0)
        exported = model.policy_class(model.observation_space, model.action_space, lr, **pk).to(model.device)
        missing, unexpected = exported.load_state_dict(model.policy.state_dict(), strict=False)
        bad = [k for k in missing if not k.endswith((".mean", ".std"))]
        if bad or unexpected:  # pragma: no cover - an SB3 layout we do not know
            raise TrainingError(f"cannot export the policy with normalisation (missing {bad}, unexpected {unexpected})")
        orig_policy, orig_kwargs = model.policy, model.policy_kwargs
        try:
            model.policy, model.policy_kwargs = exported, pk
            if hasattr(model, "q_net"):  # DQN keeps aliases of its networks
                model.q_net, model.q_net_target = exported.q_net, exported.q_net_target
            model.save(str(tmp))
        finally:
            model.policy, model.policy_kwargs = orig_policy, orig_kwargs
            if hasattr(model, "q_net"):
                model.q_net, model.q_net_target = orig_policy.q_net, orig_policy.q_net_target
    tmp.replace(path)
    return path


def _algo_class(algo: str):
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


def resolve_device(device: str) -> str:
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise TrainingError(f"bad device {device!r}: expected cpu, cuda, cuda:N or auto")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise TrainingError(f"device {device!r} requested but torch sees no CUDA device")
    return device


# ----------------------------------------------------------------------------------- the run
def train(config: TrainConfig) -> TrainResult:
    """One training run (see the module docstring for the order of things)."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import VecNormalize

    from hlm_gym.harness.callbacks import DomainScalarsCallback, HarnessEvalCallback

    t_start = time.perf_counter()
    family = family_for(config.env_id)
    algo = config.algo.lower()
    # 1. config: YAML hyperparameters, CLI overrides on top
    hp = load_hyperparams(algo, config.env_id, config.hyperparams)
    if config.overrides:
        check_keys(algo, config.overrides, "overrides")
        hp.update(config.overrides)
    run, algo_kwargs = split_hyperparams(algo, hp)
    n_envs = int(config.n_envs or run["n_envs"])
    timesteps = int(config.timesteps or run["n_timesteps"])
    if n_envs < 1 or timesteps < 1:
        raise TrainingError(f"n_envs and timesteps must be positive (got {n_envs}, {timesteps})")
    if "n_steps" in algo_kwargs and "batch_size" in algo_kwargs:  # keep minibatches within one rollout
        algo_kwargs["batch_size"] = int(min(algo_kwargs["batch_size"], algo_kwargs["n_steps"] * n_envs))
    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    target = f"-target{config.risk_target:g}" if config.risk_target else ""
    weight = config.risk_weight if config.risk_weight is not None else "default"
    run_name = config.run_name or f"{algo}-{config.scenario}-lambda{weight}{target}-seed{config.seed}"
    set_random_seed(config.seed)

    # 2. envs: the family's training VecEnv, observation normalisation if the YAML says so
    settings = config.env_settings()
    env = family.make_train_env(config.env_id, n_envs, config.seed, family.env_kwargs(settings, "train"),
                                config.env_backend, device)
    vecnorm = None
    if run["normalize"] is not None:
        nk = {"norm_obs": True, "norm_reward": True} | dict(run["normalize"])
        nk.setdefault("gamma", algo_kwargs.get("gamma", 0.99))
        env = vecnorm = VecNormalize(env, **nk)

    # 3. model
    model = _algo_class(algo)(env=env, seed=config.seed, device=device, tensorboard_log=str(out / "tb"),
                              verbose=config.verbose, **algo_kwargs)

    # 4. callbacks: domain scalars per rollout; evaluation on the validation split (+ reference)
    eval_freq = int(config.eval_freq or max(timesteps // 5, 1))
    eval_cb = HarnessEvalCallback(config.env_id, settings, out=out, eval_freq=eval_freq, keys=family.train_metrics,
                                  vecnorm=vecnorm, episodes=config.eval_episodes, seed=config.seed, save=save_model,
                                  reference=family.reference_policy if config.reference else None)
    callbacks = CallbackList([DomainScalarsCallback(family.train_metrics), eval_cb])

    # 5. learn
    progress = config.progress_bar and _progress_bar_available()
    model.learn(total_timesteps=timesteps, callback=callbacks, tb_log_name=run_name, progress_bar=progress)
    eval_cb.final_evaluation()  # the last model, if the last periodic evaluation was not at the end
    eval_cb.close()

    # 6. save
    files: dict[str, Path] = {"model_last": save_model(model, out / "model_last.zip", vecnorm)}
    if eval_cb.best_path is not None:
        files["model_best"] = eval_cb.best_path
    if vecnorm is not None:
        vn_path = out / "vecnormalize.pkl"
        vecnorm.save(str(vn_path))
        files["vecnormalize"] = vn_path
    files["tensorboard"] = Path(model.logger.get_dir() or out / "tb")
    wall = time.perf_counter() - t_start

    # 7. summary
    summary = {"algo": algo, "env_id": config.env_id, "scenario": config.scenario, "risk_weight": config.risk_weight,
               "risk_target": config.risk_target, "config": config_dict(config),
               "seed": config.seed, "device": str(model.device), "env_backend": config.env_backend, "n_envs": n_envs, "timesteps": int(model.num_timesteps),
               "wall_s": round(wall, 2), "steps_per_s": round(model.num_timesteps / wall, 1),
               "hyperparams": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v))
                               for k, v in hp.items()},
               "best": eval_cb.best, "last": eval_cb.last, "reference_policy": eval_cb.reference_spec,
               "reference": eval_cb.reference, "reference_error": eval_cb.reference_error,
               "evaluations": eval_cb.history, "files": {k: str(v) for k, v in files.items()}}
    files["summary"] = out / "summary.json"
    summary["files"]["summary"] = str(files["summary"])
    atomic_write_text(files["summary"], json.dumps(summary, indent=2, default=_json_default) + "\n")
    env.close()
    return TrainResult(out=out, files=files, summary=summary)


def _progress_bar_available() -> bool:
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def format_summary(result: TrainResult) -> str:
    """The end-of-run summary printed by ``hlm-gym train``."""
    s = result.summary
    target = f" risk target {s['risk_target']:g}" if s.get("risk_target") else ""
    lines = [f"trained {s['algo']} on {s['env_id']} scenario {s['scenario']} lambda {s['risk_weight']}{target} "
             f"seed {s['seed']}: "
             f"{s['timesteps']} steps in {s['wall_s']:.1f} s ({s['steps_per_s']:.0f} steps/s, {s['device']})"]

    def row(label: str, m: Optional[dict]) -> None:
        if not m:
            return
        lines.append(f"  {label:<22} tokens/s {_f(m.get('tokens_per_s'))}  skip rate {_f(m.get('skip_rate'))}  "
                     f"risk {_f(m.get('risk'))}  error rate {_f(m.get('error_rate'))}  "
                     f"reward/step {_f(m.get('reward_per_step'))}")

    row("best (validation)", s.get("best"))
    row("last (validation)", s.get("last"))
    ref = s.get("reference_policy")
    row(f"{ref} ref (validation)", s.get("reference"))
    if s.get("reference_error"):
        lines.append(f"  no {ref} reference line: {s['reference_error']}")
    lines.append("files written:")
    for k, v in s["files"].items():
        lines.append(f"  {k:<12} {v}")
    return "\n".join(lines)


def _f(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4g}"


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The settings that determine a run's result, as JSON values (``summary.json``'s ``config``;
    ``hlm-gym compare --resume`` reuses a run whose recorded config equals this)."""
    d = asdict(config)
    for key in ("progress_bar", "verbose"):
        d.pop(key)
    return json.loads(json.dumps(d, default=str))
