"""Train a Stable-Baselines3 agent on any env the harness knows (``hlm-gym train``).

Read :func:`train` top to bottom to follow a whole run::

    checks  -> :func:`prepare`: every flag, the hyperparameters (agents/<algo>.yml, the env id's
               entry; ``--hp`` overrides on top, each key typed and ranged, see
               :mod:`~hlm_gym.harness.hyperparams`), seed, device, scenario and output folder,
               refused in one line before any work
    folder  -> the output folder locked for this run, a fresh staging folder to write into
               (:mod:`~hlm_gym.harness.run_folder`)
    envs    -> the env family's training VecEnv (HybridLM: the batched env through the SB3
               adapter) (+ VecNormalize)
    model   -> PPO / A2C / DQN with TensorBoard logging
    callbacks -> domain scalars per rollout, evaluation on the validation split through the
                 evaluation harness (best checkpoint), the family's reference policy as lines
    learn   -> model.learn(...)
    save    -> model_last.zip, best_model.zip (self-contained: observation normalisation is
               baked into the saved policy), vecnormalize.pkl, summary.json
    summary -> one dict naming the settings, the files written with their sha256 and the final
               metrics, written last; then the staged files replace the folder's (``commit``)

An interrupted or failed run leaves the folder as it was (an earlier run's files intact); a
second run into a folder in use is refused (:class:`~hlm_gym.harness.errors.RunFolderBusyError`).

Saved models are plain SB3 zips that ``hlm-gym evaluate --policy ppo:PATH`` (and
``PPO.load``) use as they are: when the run normalised observations, the statistics are folded
into the saved policy as a fixed :class:`~hlm_gym.policies.sb3_model.NormalizedObsExtractor`, so no separate
``vecnormalize.pkl`` is needed to evaluate (it is still written, for rl-zoo style resuming).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from hlm_gym.harness.checks import (check_choice, check_device, check_int, check_number, check_out_dir,
                                    check_scenarios, check_seed)
from hlm_gym.harness.errors import TrainingError
from hlm_gym.harness.families import DEFAULT_ENV_ID, family_for
from hlm_gym.harness.family import EnvSettings
from hlm_gym.harness.hyperparams import (ALGO_KEYS, ALGOS, ZOO_KEYS, check_algo, check_hyperparams, check_keys,
                                         load_hyperparams, split_hyperparams)
from hlm_gym.harness.run_folder import RunFolder, sha256_file
from hlm_gym.paths import atomic_path, atomic_write_text

__all__ = ["TrainingError", "TrainConfig", "TrainResult", "TrainPlan", "ARTIFACTS", "prepare", "train", "save_model",
           "save_vecnormalize", "config_dict", "format_summary", "ALGOS", "ALGO_KEYS", "ZOO_KEYS", "load_hyperparams",
           "check_hyperparams", "check_keys", "split_hyperparams"]

#: The files a run writes into its folder (``summary.json`` last); TensorBoard logs go to ``tb/``.
ARTIFACTS = ("model_last.zip", "best_model.zip", "vecnormalize.pkl", "summary.json")


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


# ----------------------------------------------------------------------------------- models
@contextlib.contextmanager
def _exported_policy(model: Any, vecnorm: Any) -> Iterator[None]:
    """Inside the block ``model``'s policy carries ``vecnorm``'s observation statistics as a frozen
    :class:`~hlm_gym.policies.sb3_model.NormalizedObsExtractor` (restored afterwards)."""
    from hlm_gym.policies.sb3_model import NormalizedObsExtractor

    if vecnorm is None or not vecnorm.norm_obs:
        yield
        return
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
        yield
    finally:
        model.policy, model.policy_kwargs = orig_policy, orig_kwargs
        if hasattr(model, "q_net"):
            model.q_net, model.q_net_target = orig_policy.q_net, orig_policy.q_net_target


def save_model(model: Any, path: Path, vecnorm: Any = None) -> Path:
    """Save ``model`` as a self-contained SB3 zip (``vecnorm``'s observation statistics baked in),
    atomically through a unique temporary sibling."""
    path = Path(path)
    with _exported_policy(model, vecnorm), atomic_path(path, ".zip") as tmp:
        model.save(str(tmp))
    return path


def save_vecnormalize(vecnorm: Any, path: Path) -> Path:
    """Save the ``VecNormalize`` statistics (SB3's pickle) atomically."""
    path = Path(path)
    with atomic_path(path, ".pkl") as tmp:
        vecnorm.save(str(tmp))
    return path


def _algo_class(algo: str):
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


def _make_model(algo: str, env: Any, config: TrainConfig, plan: "TrainPlan") -> Any:
    """The SB3 model; a constructor's refusal of the hyperparameters is a one-line TrainingError."""
    try:
        return _algo_class(algo)(env=env, seed=config.seed, device=plan.device,
                                 tensorboard_log=str(plan.out / "tb"), verbose=config.verbose, **plan.algo_kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TrainingError(f"{algo} cannot be built from these hyperparameters ({type(exc).__name__}: {first})") \
            from None


# ----------------------------------------------------------------------------------- checks
@dataclass
class TrainPlan:
    """A checked run: what :func:`prepare` derives from a :class:`TrainConfig`."""

    algo: str
    hp: dict[str, Any]  # the checked hyperparameters (YAML with the overrides on top)
    run: dict[str, Any]  # n_envs, n_timesteps, normalize
    algo_kwargs: dict[str, Any]  # the algorithm's constructor arguments
    n_envs: int
    timesteps: int
    eval_freq: int
    device: str
    out: Path


def _optional_int(value: Any, flag: str) -> Optional[int]:
    """``value`` if it is a positive integer; None when unset (the YAML's value applies)."""
    return None if value is None else check_int(value, flag, 1, error=TrainingError)


def _check_reward(config: TrainConfig) -> None:
    """``--risk-weight`` finite >= 0 and ``--risk-target`` in [0, 1] (or unset)."""
    if config.risk_weight is not None:
        check_number(config.risk_weight, "--risk-weight", 0, error=TrainingError)
    if config.risk_target is not None:
        check_number(config.risk_target, "--risk-target", 0, 1, error=TrainingError)


def _check_rollout(algo: str, algo_kwargs: dict[str, Any], n_envs: int) -> None:
    """PPO normalises advantages over a rollout: it needs ``n_steps * n_envs >= 2``."""
    n_steps = algo_kwargs.get("n_steps", 2048)
    if algo == "ppo" and n_steps * n_envs < 2:
        raise TrainingError(f"n_steps {n_steps} x --n-envs {n_envs}: PPO needs a rollout of at least 2 steps "
                            "(raise n_steps or --n-envs)")


def prepare(config: TrainConfig, create_out: bool = True) -> TrainPlan:
    """Check every setting of ``config`` (flags, the hyperparameter file and ``overrides``, seed,
    device, scenario, output folder) before any work; one-line errors naming the culprit.
    ``create_out``: make the output folder (else only check that it can be made)."""
    family = family_for(config.env_id)
    algo = check_algo(config.algo)
    check_seed(config.seed, "--seed", TrainingError)
    hp = load_hyperparams(algo, config.env_id, config.hyperparams)
    if config.overrides:
        hp.update(check_hyperparams(algo, config.overrides, "--hp"))
    run, algo_kwargs = split_hyperparams(algo, hp)
    n_envs = _optional_int(config.n_envs, "--n-envs") or run["n_envs"]
    timesteps = _optional_int(config.timesteps, "--timesteps") or run["n_timesteps"]
    eval_freq = _optional_int(config.eval_freq, "--eval-freq") or max(timesteps // 5, 1)
    check_int(config.eval_episodes, "--eval-episodes", 1, error=TrainingError)
    check_choice(config.env_backend, "--env-backend", ("numpy", "torch"), TrainingError)
    _check_reward(config)
    _check_rollout(algo, algo_kwargs, n_envs)
    if "n_steps" in algo_kwargs and "batch_size" in algo_kwargs:  # keep minibatches within one rollout
        algo_kwargs["batch_size"] = int(min(algo_kwargs["batch_size"], algo_kwargs["n_steps"] * n_envs))
    device = check_device(config.device)
    check_scenarios([config.scenario], "--scenario", TrainingError, family.load_scenario)
    family.check_data(config.traces, ("train", "validation"))  # (a run trains and validates)
    out = check_out_dir(config.out, "--out", create=create_out)
    return TrainPlan(algo=algo, hp=hp, run=run, algo_kwargs=algo_kwargs, n_envs=n_envs, timesteps=timesteps,
                     eval_freq=eval_freq, device=device, out=out)


# ----------------------------------------------------------------------------------- the run
def train(config: TrainConfig) -> TrainResult:
    """One training run (see the module docstring for the order of things): every setting checked
    first, then the run folder locked and the run written into a staging folder, moved into place
    (``summary.json`` last) only when the run completes."""
    plan = prepare(config)
    with RunFolder(plan.out, ARTIFACTS) as folder:
        return _run(config, plan, folder)


def _make_env(config: TrainConfig, plan: TrainPlan, family: Any) -> tuple[Any, Any]:
    """``(env, vecnorm)``: the family's training VecEnv, wrapped in VecNormalize if the YAML says so."""
    from stable_baselines3.common.vec_env import VecNormalize

    env = family.make_train_env(config.env_id, plan.n_envs, config.seed,
                                family.env_kwargs(config.env_settings(), "train"), config.env_backend, plan.device)
    if plan.run["normalize"] is None:
        return env, None
    nk = {"norm_obs": True, "norm_reward": True} | dict(plan.run["normalize"])
    nk.setdefault("gamma", plan.algo_kwargs.get("gamma", 0.99))
    vecnorm = VecNormalize(env, **nk)
    return vecnorm, vecnorm


def _run(config: TrainConfig, plan: TrainPlan, folder: RunFolder) -> TrainResult:
    """Train, save into ``folder``'s staging area, write the summary, commit."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed

    from hlm_gym.harness.callbacks import DomainScalarsCallback, HarnessEvalCallback

    t_start = time.perf_counter()
    family = family_for(config.env_id)
    set_random_seed(config.seed)
    env, vecnorm = _make_env(config, plan, family)
    eval_cb = None
    try:
        model = _make_model(plan.algo, env, config, plan)
        eval_cb = HarnessEvalCallback(config.env_id, config.env_settings(), out=folder.staging, eval_freq=plan.eval_freq,
                                      keys=family.train_metrics, vecnorm=vecnorm, episodes=config.eval_episodes,
                                      seed=config.seed, save=save_model,
                                      reference=family.reference_policy if config.reference else None)
        callbacks = CallbackList([DomainScalarsCallback(family.train_metrics), eval_cb])
        progress = config.progress_bar and _progress_bar_available()
        model.learn(total_timesteps=plan.timesteps, callback=callbacks, tb_log_name=_run_name(config, plan.algo),
                    progress_bar=progress)
        eval_cb.final_evaluation()  # the last model, if the last periodic evaluation was not at the end
        files = _save_artifacts(model, vecnorm, eval_cb, folder)
        wall = time.perf_counter() - t_start
        summary = _summary(config, plan, model, eval_cb, files, folder, wall)
        atomic_write_text(folder.staged("summary.json"), json.dumps(summary, indent=2, default=_json_default) + "\n")
        folder.commit()
    finally:
        if eval_cb is not None:
            eval_cb.close()
        env.close()
    return TrainResult(out=plan.out, files=files, summary=summary)


def _run_name(config: TrainConfig, algo: str) -> str:
    """The TensorBoard name of a run (``--run-name`` or algo, scenario, reward and seed)."""
    target = f"-target{config.risk_target:g}" if config.risk_target else ""
    weight = config.risk_weight if config.risk_weight is not None else "default"
    return config.run_name or f"{algo}-{config.scenario}-lambda{weight}{target}-seed{config.seed}"


def _save_artifacts(model: Any, vecnorm: Any, eval_cb: Any, folder: RunFolder) -> dict[str, Path]:
    """Save the last model and the VecNormalize statistics into the staging folder; the final paths
    of every artifact (the best checkpoint was saved there by the callback)."""
    save_model(model, folder.staged("model_last.zip"), vecnorm)
    files: dict[str, Path] = {"model_last": folder.final("model_last.zip")}
    if eval_cb.best_path is not None:
        files["model_best"] = folder.final("best_model.zip")
    if vecnorm is not None:
        save_vecnormalize(vecnorm, folder.staged("vecnormalize.pkl"))
        files["vecnormalize"] = folder.final("vecnormalize.pkl")
    files["tensorboard"] = Path(model.logger.get_dir() or folder.final("tb"))
    files["summary"] = folder.final("summary.json")
    return files


def _summary(config: TrainConfig, plan: TrainPlan, model: Any, eval_cb: Any, files: dict[str, Path],
             folder: RunFolder, wall: float) -> dict[str, Any]:
    """``summary.json``: the settings, metrics, files and the sha256 of each artifact."""
    artifacts = {key: {"file": path.name, "sha256": sha256_file(folder.staged(path.name))}
                 for key, path in files.items() if key in ("model_last", "model_best", "vecnormalize")}
    return {"algo": plan.algo, "env_id": config.env_id, "scenario": config.scenario,
            "risk_weight": config.risk_weight, "risk_target": config.risk_target, "config": config_dict(config),
            "seed": config.seed, "device": str(model.device), "env_backend": config.env_backend,
            "n_envs": plan.n_envs, "timesteps": int(model.num_timesteps),
            "wall_s": round(wall, 2), "steps_per_s": round(model.num_timesteps / wall, 1),
            "hyperparams": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v))
                            for k, v in plan.hp.items()},
            "best": eval_cb.best, "last": eval_cb.last, "reference_policy": eval_cb.reference_spec,
            "reference": eval_cb.reference, "reference_error": eval_cb.reference_error,
            "evaluations": eval_cb.history, "files": {k: str(v) for k, v in files.items()},
            "artifacts": artifacts}


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
