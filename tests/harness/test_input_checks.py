"""Bad settings through the harness's API (TrainConfig, CompareConfig, evaluate, the hyperparameter
files): each refused before any work with the layer's error type and a message naming the culprit.
The command line's side of the same checks: tests/cli/test_cli.py."""

from __future__ import annotations

import math
import os

import pytest

from hlm_gym.errors import HLMGymError
from hlm_gym.harness.errors import (CompareError, DeviceError, EvaluationError, HarnessError, HyperparameterError,
                                    OutputPathError, TrainingError)
from tests.harness.helpers import TINY, make_traces


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return make_traces(tmp_path_factory.mktemp("check-traces"))


def test_error_types_are_user_facing():
    for cls in (HarnessError, TrainingError, HyperparameterError, CompareError, DeviceError, OutputPathError,
                EvaluationError):
        assert issubclass(cls, HLMGymError) and issubclass(cls, ValueError)
    from hlm_gym.harness.errors import RunFolderBusyError

    assert issubclass(RunFolderBusyError, HLMGymError)


# ------------------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("algo, key, value, allowed", [
    ("ppo", "batch_size", 1, "an integer >= 2"),
    ("ppo", "batch_size", "64x", "an integer >= 2"),
    ("ppo", "n_steps", 0, "an integer >= 1"),
    ("ppo", "n_steps", 16.5, "an integer >= 1"),
    ("ppo", "n_epochs", False, "an integer >= 1"),
    ("ppo", "gamma", 0, "a number in (0, 1]"),
    ("ppo", "gamma", 1.01, "a number in (0, 1]"),
    ("ppo", "gae_lambda", math.inf, "a number in (0, 1]"),
    ("ppo", "learning_rate", 0, "a number > 0"),
    ("ppo", "learning_rate", "lin_x", "(or lin_<such a number>)"),
    ("ppo", "clip_range", 0, "a number in (0, 1]"),
    ("ppo", "clip_range_vf", -1, "a number > 0 or null"),
    ("ppo", "ent_coef", -1e-9, "a number >= 0"),
    ("ppo", "vf_coef", None, "a number >= 0"),
    ("ppo", "max_grad_norm", 0, "a number > 0"),
    ("ppo", "normalize_advantage", "yes", "true or false"),
    ("ppo", "target_kl", 0, "a number > 0 or null"),
    ("ppo", "n_envs", 0, "an integer >= 1"),
    ("ppo", "n_timesteps", -5, "an integer >= 1"),
    ("ppo", "normalize", "dict(norm_obs=1)", "norm_obs = true or false"),
    ("ppo", "normalize", "dict(bogus=True)", "dict(...) of norm_obs"),
    ("ppo", "policy_kwargs", "[64, 64]", "dict(...)"),
    ("ppo", "policy_kwargs", "dict(net_arch=dict(pi=[64], qf=[8]))", "dict(pi=[...], vf=[...])"),
    ("a2c", "use_rms_prop", 1, "true or false"),
    ("dqn", "policy_kwargs", "dict(net_arch=dict(pi=[64], vf=[64]))", "a list of positive layer widths"),
    ("dqn", "tau", 0, "a number in (0, 1]"),
    ("dqn", "learning_starts", -1, "an integer >= 0"),
    ("dqn", "gradient_steps", 0, "an integer >= 1 or -1"),
    ("dqn", "target_update_interval", 0, "an integer >= 1"),
    ("dqn", "exploration_fraction", 1.5, "a number in [0, 1]"),
    ("dqn", "train_freq", [0, "step"], "[n, step]"),
])
def test_bad_hyperparameter_names_key_value_and_range(algo, key, value, allowed):
    from hlm_gym.harness.hyperparams import check_hyperparams

    with pytest.raises(HyperparameterError) as exc:
        check_hyperparams(algo, {key: value}, "--hp")
    msg = str(exc.value)
    assert msg.startswith(f"--hp {key}=") and allowed in msg and "\n" not in msg, msg


def test_good_hyperparameters_are_converted():
    from hlm_gym.harness.hyperparams import check_hyperparams

    hp = check_hyperparams("ppo", {"learning_rate": "3e-4", "n_steps": "1e3", "batch_size": 64.0, "gamma": 1,
                                   "clip_range": "lin_0.2", "clip_range_vf": None, "normalize": True,
                                   "policy_kwargs": "dict(net_arch=dict(pi=[32], vf=[32]))"}, "--hp")
    assert hp["learning_rate"] == pytest.approx(3e-4) and hp["n_steps"] == 1000 and isinstance(hp["n_steps"], int)
    assert hp["batch_size"] == 64 and isinstance(hp["batch_size"], int) and hp["clip_range"] == "lin_0.2"
    dqn = check_hyperparams("dqn", {"train_freq": [4, "step"], "gradient_steps": -1}, "--hp")
    assert dqn == {"train_freq": [4, "step"], "gradient_steps": -1}


def test_every_shipped_hyperparameter_file_passes_its_checks():
    from hlm_gym.harness.families import env_ids
    from hlm_gym.harness.hyperparams import ALGOS, load_hyperparams

    for algo in ALGOS:
        for env_id in env_ids():
            assert load_hyperparams(algo, env_id)["n_envs"] >= 1


def test_bad_value_in_a_hyperparameter_file_names_the_file_and_key(tmp_path):
    from hlm_gym.harness.hyperparams import load_hyperparams

    p = tmp_path / "bad.yml"
    p.write_text("hlm_gym/HybridLM-v0:\n  n_envs: 2\n  gamma: 5\n")
    with pytest.raises(HyperparameterError, match=r"^.*bad\.yml \[hlm_gym/HybridLM-v0\] gamma=5: expected a number "
                                                  r"in \(0, 1\]$"):
        load_hyperparams("ppo", "hlm_gym/HybridLM-v0", str(p))
    p.write_text("hlm_gym/HybridLM-v0:\n  n_timesteps: 1e5\n")  # YAML reads 1e5 as text: converted
    assert load_hyperparams("ppo", "hlm_gym/HybridLM-v0", str(p))["n_timesteps"] == 100_000
    p.write_text("hlm_gym/HybridLM-v0: [1, 2\n")
    with pytest.raises(TrainingError, match=r"bad\.yml: not valid YAML"):
        load_hyperparams("ppo", "hlm_gym/HybridLM-v0", str(p))


# ------------------------------------------------------------------------------ training settings
def _config(traces, out, **kw):
    from hlm_gym.harness.training import TrainConfig

    base = dict(algo="ppo", scenario="pedestrian", risk_weight=5.0, n_envs=4, timesteps=256, seed=3, out=str(out),
                traces=str(traces), overrides=dict(TINY), eval_freq=128, eval_episodes=8, reference=False)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("change, error, fragment", [
    ({"seed": -1}, TrainingError, "--seed -1: expected an integer in [0, 2147483647]"),
    ({"seed": True}, TrainingError, "--seed True"),
    ({"seed": 2**40}, TrainingError, "--seed 1099511627776"),
    ({"n_envs": 0}, TrainingError, "--n-envs 0: expected an integer >= 1"),
    ({"timesteps": 1.5}, TrainingError, "--timesteps 1.5"),
    ({"eval_freq": -3}, TrainingError, "--eval-freq -3"),
    ({"eval_episodes": 0}, TrainingError, "--eval-episodes 0"),
    ({"env_backend": "jax"}, TrainingError, "--env-backend 'jax': expected one of numpy, torch"),
    ({"risk_weight": math.nan}, TrainingError, "--risk-weight nan"),
    ({"risk_target": -0.1}, TrainingError, "--risk-target -0.1: expected a number in [0, 1]"),
    ({"algo": "sac"}, TrainingError, "--algo 'sac': unknown algorithm"),
    ({"device": "tpu"}, DeviceError, "--device 'tpu': expected cpu, cuda, cuda:N or auto"),
    ({"device": "cuda:999"}, DeviceError, "--device cuda:999"),
    ({"scenario": "nowhere"}, TrainingError, "--scenario: unknown scenario 'nowhere'"),
    ({"overrides": {"gamma": 5}}, HyperparameterError, "--hp gamma=5: expected a number in (0, 1]"),
    ({"overrides": {"n_steps": "abc"}}, HyperparameterError, "--hp n_steps=abc: expected an integer >= 1"),
    ({"overrides": {"n_steps": 1}, "n_envs": 1}, TrainingError, "n_steps 1 x --n-envs 1"),
    ({"hyperparams": "/nonexistent.yml"}, TrainingError, "--hyperparams '/nonexistent.yml': file not found"),
])
def test_bad_training_settings_are_refused_before_any_work(traces, tmp_path, change, error, fragment):
    from hlm_gym.harness.training import train

    out = tmp_path / "run"
    with pytest.raises(error) as exc:
        train(_config(traces, out, **change))
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()  # nothing created, not even the folder


def test_prepare_without_create_only_checks_the_output_folder(traces, tmp_path):
    from hlm_gym.harness.training import prepare

    plan = prepare(_config(traces, tmp_path / "a" / "b"), create_out=False)
    assert plan.out == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    assert plan.algo_kwargs["batch_size"] == 64 and plan.eval_freq == 128
    plan = prepare(_config(traces, tmp_path / "a" / "b", overrides={"n_steps": 8, "batch_size": 512}))
    assert (tmp_path / "a" / "b").is_dir() and plan.algo_kwargs["batch_size"] == 32  # clamped to one rollout


# ------------------------------------------------------------------------------ output folders and devices
def test_output_folder_checks(tmp_path):
    from hlm_gym.harness.checks import check_out_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="--out '.*file': .*file is a file, not a folder"):
        check_out_dir(blocker)
    with pytest.raises(OutputPathError, match="--out '.*file/a/b': .*file is a file, not a folder"):
        check_out_dir(blocker / "a" / "b", create=False)
    with pytest.raises(OutputPathError, match="expected a folder path"):
        check_out_dir("  ")
    assert check_out_dir(tmp_path / "new" / "deep").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_refused(tmp_path):
    from hlm_gym.harness.checks import check_out_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable|cannot write"):
            check_out_dir(locked / "sub", create=False)
        with pytest.raises(OutputPathError, match="is not writable|cannot write there"):
            check_out_dir(locked / "sub")
    finally:
        locked.chmod(0o700)


def test_device_checks():
    import torch

    from hlm_gym.harness.checks import check_device

    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    for bad in ("gpu", "cuda:", "cuda:-1", "CPU", "", None):
        with pytest.raises(DeviceError, match="expected cpu, cuda, cuda:N or auto"):
            check_device(bad)
    if torch.cuda.is_available():
        assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
        with pytest.raises(DeviceError, match=r"cuda:999: torch sees \d+ CUDA device"):
            check_device("cuda:999")
    else:
        with pytest.raises(DeviceError, match="--device cuda: torch sees no CUDA device"):
            check_device("cuda")


# ------------------------------------------------------------------------------ compare settings
def _compare_config(traces, out, **kw):
    from hlm_gym.harness.compare import CompareConfig

    base = dict(scenarios=("vehicular",), risk_weights=(5.0,), risk_targets=(), timesteps=64, thresholds=(0.0, 1.0),
                ltt_deltas=(0.1,), episodes=2, n_envs=2, traces=str(traces), out=str(out), eval_episodes=2,
                overrides=dict(TINY), jobs=1)
    return CompareConfig(**(base | kw))


@pytest.mark.parametrize("change, fragment", [
    ({"scenarios": ()}, "--scenarios: empty list"),
    ({"scenarios": ("vehicular", "")}, "--scenarios ''"),
    ({"scenarios": ("vehicular", "nope")}, "--scenarios: unknown scenario 'nope'"),
    ({"thresholds": ()}, "--thresholds: empty list; expected at least one number in [0, 1]"),
    ({"thresholds": (0.2, -0.1)}, "--thresholds -0.1: expected a number in [0, 1]"),
    ({"thresholds": (0.2, 0.2)}, "--thresholds: 0.2 is given twice"),
    ({"ltt_deltas": ()}, "--ltt-deltas: empty list"),
    ({"ltt_deltas": (0.5, 1.0)}, "--ltt-deltas 1: expected a number in (0, 1)"),
    ({"risk_weights": (math.inf,)}, "--risk-weights inf: expected a finite number >= 0"),
    ({"risk_weights": ("5",)}, "--risk-weights '5'"),
    ({"risk_targets": (0.2, 1.2)}, "--risk-targets 1.2: expected a number in [0, 1]"),
    ({"risk_weights": (), "risk_targets": ()}, "no PPO runs"),
    ({"risk_targets": (0.3,), "target_risk_weight": 0.0}, "--target-risk-weight 0: expected a finite number > 0"),
    ({"risk_weights": (0.1, 0.1000001)}, "are the same PPO run (folder 'lambda0.1')"),
    ({"timesteps": 0}, "--timesteps 0"),
    ({"episodes": -1}, "--episodes -1"),
    ({"eval_episodes": 0}, "--eval-episodes 0"),
    ({"n_envs": 0}, "--n-envs 0"),
    ({"jobs": -1}, "--jobs -1: expected an integer >= 0"),
    ({"seed": -2}, "--seed -2"),
    ({"algo": "sac"}, "--algo 'sac'"),
    ({"overrides": {"gamma": 2}}, "--hp gamma=2"),
    ({"device": "cuda:999"}, "--device cuda:999"),
    ({"device": "cuda:999", "trainer": "sb3"}, "--device cuda:999"),
    ({"overrides": {"gamma": 2}, "trainer": "sb3"}, "--hp gamma=2"),
    ({"seeds": 0}, "--seeds 0: expected an integer >= 1"),
    ({"bild_alphas": (0.5, 1.5)}, "--bild-alphas 1.5: expected a number in [0, 1]"),
    ({"calm_lambdas": (0.9, 0.9)}, "--calm-lambdas: 0.9 is given twice"),
    ({"trainer": "rllib"}, "--trainer 'rllib': expected one of population, sb3"),
    ({"algo": "a2c"}, "--trainer population trains PPO only, not --algo a2c"),
    ({"overrides": {"target_kl": 0.01}}, "target_kl=0.01: not supported by the population trainer"),
])
def test_bad_compare_settings_are_refused_before_any_work(traces, tmp_path, change, fragment):
    from hlm_gym.harness.compare import compare

    out = tmp_path / "cmp"
    with pytest.raises(HarnessError) as exc:
        compare(_compare_config(traces, out, **change))
    assert fragment in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    assert not out.exists()


# ------------------------------------------------------------------------------ evaluation settings
@pytest.mark.parametrize("change, fragment", [
    ({"seed": -1}, "--seed -1"),
    ({"episodes": 0}, "--episodes 0"),
    ({"num_envs": 0}, "--num-envs 0"),
    ({"split": "dev"}, "--split 'dev': expected one of train, validation, test"),
    ({"mode": "fast"}, "--mode 'fast'"),
    ({"reference": "none"}, "--reference 'none'"),
    ({"scenario": "nope"}, "--scenario: unknown scenario 'nope'"),
])
def test_bad_evaluation_settings(traces, change, fragment):
    from hlm_gym.harness.evaluation import evaluate

    kw = dict(scenario="vehicular", split="test", episodes=2, num_envs=2, traces=traces) | change
    with pytest.raises(EvaluationError) as exc:
        evaluate("always", **kw)
    assert fragment in str(exc.value)
