"""Training (``hlm-gym train``), TensorBoard domain scalars, saved models through ``hlm-gym evaluate``,
hyperparameter files (rl-zoo layout) and the compare job's dominance arithmetic.

Everything runs on a small synthetic trace set (tests/test_evaluation.py's writer) and a few
hundred PPO steps, so it does not need the shipped default traces.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.harness.test_evaluation import write_synthetic_trace

torch.set_num_threads(1)

TINY = {"n_steps": 32, "batch_size": 64, "n_epochs": 2}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-traces")
    for i, (split, n) in enumerate((("train", 24), ("validation", 8), ("test", 8))):
        write_synthetic_trace(d / f"embedded-{split}.parquet", n_prompts=n, split=split, seed=i)
    return d


def _config(traces, out, **kw):
    from hlm_gym.harness.training import TrainConfig

    base = dict(algo="ppo", scenario="pedestrian", risk_weight=5.0, n_envs=4, timesteps=256, seed=3, out=str(out),
                traces=str(traces), overrides=dict(TINY), eval_freq=128, eval_episodes=8)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def tiny_run(traces, tmp_path_factory):
    from hlm_gym.harness.training import train

    return train(_config(traces, tmp_path_factory.mktemp("run")))


def test_smoke_run_writes_tensorboard_domain_scalars(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tiny_run.files["tensorboard"]
    assert list(Path(tb).glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(tb))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for k in ("tokens_per_s", "skip_rate", "transmission_rate", "risk", "error_rate", "energy_j_per_token"):
        assert f"domain/{k}" in tags, k
        assert f"eval/{k}" in tags, k
        assert f"reference/uhlm/{k}" in tags, k
    assert "rollout/ep_rew_mean" in tags and "train/value_loss" in tags  # SB3's own curves
    tps = [e.value for e in ea.Scalars("domain/tokens_per_s")]
    assert tps and all(np.isfinite(tps)) and all(v > 0 for v in tps)
    ref = [e.value for e in ea.Scalars("reference/uhlm/tokens_per_s")]
    assert len(ref) >= 2 and len(set(ref)) == 1  # a flat reference line
    for key in ("model_last", "model_best", "vecnormalize", "summary"):
        assert Path(tiny_run.files[key]).is_file(), key
    summary = json.loads(Path(tiny_run.files["summary"]).read_text())
    assert summary["timesteps"] >= 256 and summary["best"]["tokens_per_s"] > 0


def test_saved_model_evaluates_through_hlm_gym_evaluate(tiny_run, traces, tmp_path, capsys):
    from hlm_gym.cli.main import main
    from hlm_gym.harness.evaluation import evaluate

    model = tiny_run.files["model_best"]
    rc = main(["evaluate", "--policy", f"ppo:{model}", "--scenario", "pedestrian", "--split", "validation",
               "--episodes", "8", "--seed", "10003", "--traces", str(traces), "--risk-weight", "5",
               "--num-envs", "8", "--out", str(tmp_path)])
    assert rc == 0
    assert "tokens/s" in capsys.readouterr().out
    res = json.loads((tmp_path / "result.json").read_text())
    # the saved zip carries the run's observation normalisation: same numbers as the in-run evaluation
    best = tiny_run.summary["best"]
    assert res["summary"]["tokens_per_s"]["mean"] == pytest.approx(best["tokens_per_s"], rel=1e-6)
    assert res["summary"]["reward_per_step"]["mean"] == pytest.approx(best["reward_per_step"], rel=1e-6)
    again = evaluate(f"ppo:{model}", scenario="pedestrian", split="test", episodes=4, traces=traces, num_envs=4)
    assert np.isfinite(again.summary["risk"]["mean"])


def test_same_seed_same_final_metrics(tiny_run, traces, tmp_path):
    from hlm_gym.harness.training import train

    again = train(_config(traces, tmp_path / "again"))
    assert again.summary["last"] == tiny_run.summary["last"]
    assert again.summary["best"] == tiny_run.summary["best"]


def test_torch_env_backend_trains_identically_on_cpu(tiny_run, traces, tmp_path):
    from hlm_gym.harness.training import train

    again = train(_config(traces, tmp_path / "torch", env_backend="torch"))
    assert again.summary["env_backend"] == "torch"
    assert again.summary["last"] == tiny_run.summary["last"]


# ------------------------------------------------------------------------------ hyperparameter files
def test_shipped_yaml_has_zoo_layout():
    from importlib import resources

    from hlm_gym.environments.registration import ENV_IDS
    from hlm_gym.harness.training import ALGO_KEYS, ZOO_KEYS, load_hyperparams, split_hyperparams

    doc = yaml.safe_load(resources.files("hlm_gym._agents").joinpath("ppo.yml").read_text())
    assert set(doc) == set(ENV_IDS)
    for env_id in ENV_IDS:
        hp = doc[env_id]
        assert {"n_envs", "n_timesteps", "policy", "policy_kwargs", "normalize"} <= set(hp)
        assert isinstance(hp["policy_kwargs"], str) and hp["policy_kwargs"].startswith("dict(")
        assert set(hp) <= set(ZOO_KEYS) | set(ALGO_KEYS["ppo"])
        run, kwargs = split_hyperparams("ppo", load_hyperparams("ppo", env_id))
        assert kwargs["policy_kwargs"] == {"net_arch": [64, 64]} and run["normalize"]["norm_obs"] is True and run["normalize"]["norm_reward"] is True
    from hlm_gym.harness.families import env_ids

    for algo in ("ppo", "a2c", "dqn"):  # every algorithm can train on every env id the harness knows
        for env_id in env_ids():
            load_hyperparams(algo, env_id)


def test_import_registers_env_ids():
    import gymnasium as gym

    import hlm_gym  # noqa: F401 - rl-zoo's --gym-packages hlm_gym does exactly this

    assert "hlm_gym/HybridLM-v0" in gym.registry and "hlm_gym/HybridLMCompressed-v0" in gym.registry


def test_bad_yaml_key_is_a_clear_error(tmp_path):
    from hlm_gym.harness.training import TrainingError, load_hyperparams

    p = tmp_path / "bad.yml"
    p.write_text("hlm_gym/HybridLM-v0:\n  n_envs: 2\n  n_stepz: 16\n")
    with pytest.raises(TrainingError, match=r"bad\.yml.*'n_stepz'"):
        load_hyperparams("ppo", "hlm_gym/HybridLM-v0", str(p))
    with pytest.raises(TrainingError, match="no entry for env id 'hlm_gym/Nope-v0'"):
        load_hyperparams("ppo", "hlm_gym/Nope-v0", str(p))


def test_cli_errors_are_one_line(tmp_path, capsys, traces):
    from hlm_gym.cli.main import main

    rc = main(["train", "--env", "hlm_gym/Nope-v0", "--traces", str(traces), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("hlm-gym: error:") and "Nope-v0" in err and "\n" not in err
    p = tmp_path / "bad.yml"
    p.write_text("hlm_gym/HybridLM-v0:\n  learning_rat: 0.1\n")
    rc = main(["train", "--hyperparams", str(p), "--traces", str(traces), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "learning_rat" in err and "\n" not in err
    rc = main(["train", "--risk-target", "1.5", "--traces", str(traces), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--risk-target: expected a number in [0, 1], got 1.5" in err and "\n" not in err
    rc = main(["compare", "--risk-targets", "0.2,x", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "expected comma-separated numbers" in err and "\n" not in err
    rc = main(["compare", "--risk-weights", "none", "--risk-targets", "none", "--traces", str(traces),
               "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no PPO runs" in err and "\n" not in err


# ------------------------------------------------------------------------------ compare's arithmetic
def test_dominance_matches_risk_and_computes_gain():
    from hlm_gym.harness.compare import analytic_front, dominance, front_at

    rows = [{"scenario": "s", "family": "uhlm-threshold", "policy": f"threshold:{u}", "risk": r, "tokens_per_s": t}
            for u, r, t in ((0.0, 0.01, 20.0), (0.1, 0.02, 24.0), (0.2, 0.04, 28.0), (0.3, 0.05, 27.0))]
    rows += [{"scenario": "s", "family": "ppo", "policy": "ppo:lambda=5", "lambda": 5.0, "risk": 0.03,
              "tokens_per_s": 30.0},
             {"scenario": "s", "family": "ppo", "policy": "ppo:lambda=1", "lambda": 1.0, "risk": 0.5,
              "tokens_per_s": 40.0}]
    front = analytic_front([(r["risk"], r["tokens_per_s"]) for r in rows if r["family"] != "ppo"])
    assert front == [(0.01, 20.0), (0.02, 24.0), (0.04, 28.0)]  # 0.05/27 is dominated
    assert front_at(front, 0.03) == pytest.approx(26.0)
    d = {x["policy"]: x for x in dominance(rows, "s")}
    assert d["ppo:lambda=5"]["gain"] == pytest.approx(30 / 26 - 1)
    assert d["ppo:lambda=5"]["dominates_10pct"] is True
    assert d["ppo:lambda=5"]["matched_points"] == ""  # nothing within 10% of 0.03
    assert d["ppo:lambda=1"]["in_range"] is False and d["ppo:lambda=1"]["gain"] is None
    assert d["ppo:lambda=5"]["on_learned_front"] and d["ppo:lambda=1"]["on_learned_front"]
    rows.append({"scenario": "s", "family": "ppo", "policy": "ppo:lambda=3", "lambda": 3.0, "risk": 0.035,
                 "tokens_per_s": 29.0})  # more risk and fewer tokens/s than lambda=5: dominated by PPO itself
    d = {x["policy"]: x for x in dominance(rows, "s")}
    assert not d["ppo:lambda=3"]["on_learned_front"] and d["ppo:lambda=5"]["on_learned_front"]
    # the ceiling is the fastest policy evaluated (40 tokens/s): a reference above 40 / 1.1 cannot be beaten by 10%
    assert d["ppo:lambda=5"]["attainable"] is True
    rows.append({"scenario": "s", "family": "uhlm-threshold", "policy": "threshold:1", "risk": 0.5, "tokens_per_s": 38.0})
    d = {x["policy"]: x for x in dominance(rows, "s")}
    assert d["ppo:lambda=1"]["analytic_tokens_per_s"] == 38.0 and d["ppo:lambda=1"]["attainable"] is False
    # the gain at the lower end of the point's tokens/s interval (seed interval for a mean over seeds)
    next(r for r in rows if r["policy"] == "ppo:lambda=5")["tokens_per_s_ci"] = 1.0  # 30 +- 1 against 26
    d = {x["policy"]: x for x in dominance(rows, "s")}
    assert d["ppo:lambda=5"]["gain_at_ci_low"] == pytest.approx(29 / 26 - 1)
    assert d["ppo:lambda=5"]["dominates_10pct_at_ci_low"] is True
    assert d["ppo:lambda=3"]["gain_at_ci_low"] is None  # no interval recorded


def test_dominance_against_the_best_of_every_analytic_rule():
    """Besides the U-HLM sweep, each PPO point is compared with the best of all analytic rules
    within 10% risk (here a BiLD point the U-HLM sweep does not reach), or their interpolated front."""
    from hlm_gym.harness.compare import dominance, format_dominance

    rows = [{"scenario": "s", "family": "uhlm-threshold", "policy": f"threshold:{u}", "risk": r, "tokens_per_s": t}
            for u, r, t in ((0.0, 0.01, 20.0), (0.2, 0.04, 28.0))]
    rows += [{"scenario": "s", "family": "bild", "policy": "bild:0.6", "risk": 0.031, "tokens_per_s": 29.0},
             {"scenario": "s", "family": "calm", "policy": "calm:0.9", "risk": 0.011, "tokens_per_s": 21.0},
             {"scenario": "s", "family": "ltt", "policy": "ltt:delta=0.1", "risk": math.nan, "tokens_per_s": math.nan,
              "note": "undefined: no threshold"},
             {"scenario": "s", "family": "ppo-seed", "policy": "ppo:lambda=5/seed0", "risk": 0.03, "tokens_per_s": 99.0},
             {"scenario": "s", "family": "ppo", "policy": "ppo:lambda=5", "lambda": 5.0, "risk": 0.03,
              "tokens_per_s": 30.0},
             {"scenario": "s", "family": "ppo", "policy": "ppo:lambda=9", "lambda": 9.0, "risk": 0.02,
              "tokens_per_s": 25.0}]
    d = {x["policy"]: x for x in dominance(rows, "s")}
    five, nine = d["ppo:lambda=5"], d["ppo:lambda=9"]
    assert five["gain"] == pytest.approx(30 / (20 + 8 * 2 / 3) - 1)  # against the U-HLM front, interpolated
    assert five["best_rule_policy"] == "bild:0.6" and five["best_rule_tokens_per_s"] == 29.0
    assert five["gain_vs_best_rule"] == pytest.approx(30 / 29 - 1) and five["beats_best_rule_10pct"] is False
    # no rule within 10% of risk 0.02: the front of all rules (calm 0.011/21, bild 0.031/29) interpolated
    assert nine["best_rule_policy"] == "front of all rules"
    assert nine["best_rule_tokens_per_s"] == pytest.approx(21 + (0.02 - 0.011) / (0.031 - 0.011) * 8)
    text = format_dominance(dominance(rows, "s"))
    assert "bild:0.6 (29)" in text and "against the best analytic rule at matched risk" in text
    assert "0/2 PPO points >= 10% ahead" in text


@pytest.mark.parametrize("trainer, seeds", [("population", 2), ("sb3", 1)])
def test_compare_end_to_end_tiny(traces, tmp_path, capsys, trainer, seeds):
    from hlm_gym.harness.compare import CompareConfig, compare

    cfg = CompareConfig(scenarios=("vehicular",), risk_weights=(5.0,), risk_targets=(0.3,), timesteps=256,
                        thresholds=(0.0, 0.3, 1.0), ltt_deltas=(0.1,), episodes=8, n_envs=4, traces=str(traces),
                        out=str(tmp_path), eval_episodes=8, overrides=dict(TINY), jobs=1, trainer=trainer, seeds=seeds,
                        bild_alphas=(0.6,), calm_lambdas=(0.9,))
    res = compare(cfg)
    out = capsys.readouterr().out
    assert "dominance at matched risk" in out and "files written" in out
    for key in ("results_csv", "results_md", "dominance_csv", "json", "pareto_vehicular"):
        assert Path(res["files"][key]).is_file() and Path(res["files"][key]).stat().st_size > 0, key
    families = {r["family"] for r in res["rows"]}
    assert families == {"ppo", "ppo-seed", "uhlm-threshold", "uhlm", "ltt", "bild", "calm", "channel-aware"}
    assert all(d["gain_vs_best_rule"] is not None or d["best_rule_tokens_per_s"] is None for d in res["dominance"])
    assert [d["policy"] for d in res["dominance"]] == ["ppo:lambda=5", "ppo:lambda=10,target=0.3"]
    assert {r["policy"] for r in res["rows"] if r["family"] == "channel-aware"} == {
        "channel-aware:lambda=5", "channel-aware:lambda=10,target=0.3"}
    per_seed = [r for r in res["rows"] if r["family"] == "ppo-seed"]
    assert sorted(r["policy"] for r in per_seed) == sorted(
        f"ppo:{label}/seed{s}" for label in ("lambda=5", "lambda=10,target=0.3") for s in range(seeds))
    for r in (r for r in res["rows"] if r["family"] == "ppo"):  # each PPO point: the mean over its seeds
        mine = [x for x in per_seed if x["policy"].startswith(r["policy"] + "/")]
        assert r["seeds"] == seeds == len(mine)
        assert r["tokens_per_s"] == pytest.approx(np.mean([x["tokens_per_s"] for x in mine]))
    for s in range(seeds):
        summary = json.loads((tmp_path / "runs" / "vehicular" / f"lambda10-target0.3-seed{s}" / "summary.json")
                             .read_text())
        assert summary["risk_target"] == 0.3 and summary["risk_weight"] == 10.0 and summary["seed"] == s
        assert summary.get("trainer", "sb3") == trainer
    assert Path(res["files"]["pareto_vehicular"]).read_bytes()[:4] == b"\x89PNG"
    md = Path(res["files"]["results_md"]).read_text()
    assert "`hlm-gym compare --scenarios vehicular --risk-weights 5 --risk-targets 0.3 --thresholds 0,0.3,1" in md
    assert "/seed0" not in md  # the tables show the means over seeds
    assert "learned-front points where a 10% gain is attainable" in out


def test_parallel_training_equals_sequential(traces, tmp_path):
    """compare --jobs N trains in worker processes with the same results as one at a time."""
    from hlm_gym.harness.compare import _train_all

    def configs(root):
        return [_config(traces, tmp_path / root / str(i), risk_target=t, timesteps=128, eval_freq=128)
                for i, t in enumerate((None, 0.3))]

    seq = _train_all(configs("seq"), 1, None)
    par = _train_all(configs("par"), 2, None)
    for a, b in zip(seq, par):
        sa = json.loads((Path(a["model"]).parent / "summary.json").read_text())
        sb = json.loads((Path(b["model"]).parent / "summary.json").read_text())
        assert sa["last"] == sb["last"] and sa["timesteps"] == sb["timesteps"] == 128


def test_compare_resume_reuses_finished_runs(traces, tmp_path, monkeypatch, capsys):
    """--resume trains only the runs whose summary.json does not record the same settings."""
    import hlm_gym.harness.training as training
    from hlm_gym.harness.compare import CompareConfig, compare

    cfg = dict(scenarios=("vehicular",), risk_weights=(5.0,), risk_targets=(0.3,), timesteps=256, thresholds=(0.0, 1.0),
               ltt_deltas=(0.1,), episodes=8, n_envs=4, traces=str(traces), out=str(tmp_path), eval_episodes=8,
               overrides=dict(TINY), jobs=1, trainer="sb3", seeds=1)
    first = compare(CompareConfig(**cfg))
    assert [r["reused"] for r in first["runs"]] == [False, False]

    def no_training(config):
        raise AssertionError(f"trained {config.out} again")

    monkeypatch.setattr(training, "train", no_training)
    again = compare(CompareConfig(**cfg, resume=True))
    assert [r["reused"] for r in again["runs"]] == [True, True]
    assert [r["tokens_per_s"] for r in again["rows"]] == [r["tokens_per_s"] for r in first["rows"]]
    with pytest.raises(AssertionError, match="trained .* again"):  # other settings: retrained
        compare(CompareConfig(**(cfg | {"timesteps": 128}), resume=True))
    capsys.readouterr()


def test_compare_resume_reuses_finished_population_agents(traces, tmp_path, monkeypatch, capsys):
    """--resume with the population trainer trains only the agents not finished with the same settings."""
    import hlm_gym.harness.population as population
    from hlm_gym.harness.compare import CompareConfig, compare

    cfg = dict(scenarios=("vehicular",), risk_weights=(5.0,), risk_targets=(0.3,), timesteps=256, thresholds=(0.0, 1.0),
               ltt_deltas=(0.1,), episodes=8, n_envs=4, traces=str(traces), out=str(tmp_path), eval_episodes=8,
               overrides=dict(TINY), seeds=2)
    first = compare(CompareConfig(**cfg))
    assert [r["reused"] for r in first["runs"]] == [False] * 4
    trained = []
    real = population.train_population

    def record(config):
        trained.append([a.folder for a in config.agents])
        return real(config)

    monkeypatch.setattr(population, "train_population", record)
    again = compare(CompareConfig(**cfg, resume=True))
    assert trained == [] and [r["reused"] for r in again["runs"]] == [True] * 4
    assert [r["tokens_per_s"] for r in again["rows"]] == [r["tokens_per_s"] for r in first["rows"]]
    (tmp_path / "runs" / "vehicular" / "lambda5-seed1" / "model_last.zip").write_bytes(b"damaged")
    compare(CompareConfig(**cfg, resume=True))
    assert trained == [["vehicular/lambda5-seed1"]]  # only the damaged agent, as a population of one
    out = capsys.readouterr().out
    assert "retrain" in out and "lambda5-seed1" in out
    # a finished run copied into another output folder is reused there (docs/live.md does this)
    other = tmp_path.parent / (tmp_path.name + "-copy")
    shutil.copytree(tmp_path / "runs", other / "runs")
    trained.clear()
    copied = compare(CompareConfig(**(cfg | {"out": str(other)}), resume=True))
    assert trained == [] and [r["reused"] for r in copied["runs"]] == [True] * 4
    assert [r["tokens_per_s"] for r in copied["rows"]] == [r["tokens_per_s"] for r in first["rows"]]
    capsys.readouterr()


# ------------------------------------------------------------------------------ the compressed env, end to end
COMPRESSED = "hlm_gym/HybridLMCompressed-v0"


def test_compressed_env_trains_and_its_model_evaluates_through_the_cli(traces, tmp_path, capsys):
    """hlm-gym train --env HybridLMCompressed-v0 trains, validates and saves a model whose top-k
    actions hlm-gym evaluate --env ... reproduces; the binary env refuses it."""
    from hlm_gym.cli.main import main
    from hlm_gym.policies import PolicyContext, make_policy

    tiny = [f"--hp={k}={v}" for k, v in TINY.items()]
    rc = main(["train", "--env", COMPRESSED, "--scenario", "vehicular", "--risk-weight", "5", "--n-envs", "4",
               "--timesteps", "256", "--eval-freq", "128", "--eval-episodes", "8", "--seed", "3", "--no-progress",
               "--traces", str(traces), "--out", str(tmp_path / "run"), *tiny])
    assert rc == 0 and "trained ppo on hlm_gym/HybridLMCompressed-v0" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["env_id"] == COMPRESSED and summary["timesteps"] >= 256 and len(summary["evaluations"]) >= 2
    assert summary["reference_policy"] == "uhlm" and summary["reference"]["tokens_per_s"] > 0
    model = summary["files"]["model_best"]
    pol = make_policy(f"ppo:{model}", PolicyContext(env_id=COMPRESSED, n_actions=3, send_action=2))
    assert pol.n_actions == 3  # Discrete(1 + len(k_choices)): skip, top-8, full distribution
    rc = main(["evaluate", "--env", COMPRESSED, "--policy", f"ppo:{model}", "--scenario", "vehicular",
               "--split", "validation", "--episodes", "8", "--seed", "10003", "--traces", str(traces),
               "--risk-weight", "5", "--num-envs", "8", "--out", str(tmp_path / "eval")])
    assert rc == 0
    res = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert res["config"]["env_id"] == COMPRESSED
    for key in ("tokens_per_s", "reward_per_step", "uplink_bits_per_token"):
        assert res["summary"][key]["mean"] == pytest.approx(summary["best"][key], rel=1e-6), key
    capsys.readouterr()
    rc = main(["evaluate", "--policy", f"ppo:{model}", "--scenario", "vehicular", "--episodes", "2",
               "--traces", str(traces)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "has 3 actions; hlm_gym/HybridLM-v0 has 2" in err and "\n" not in err


def test_binary_rules_send_the_full_distribution_in_the_compressed_env(traces):
    """A binary rule's SEND is the compressed env's last action (the full distribution): the same
    episodes as in the binary env."""
    from hlm_gym.harness.evaluation import evaluate

    kw = dict(scenario="vehicular", split="test", episodes=8, seed=1, traces=traces, num_envs=4)
    for spec in ("always", "threshold:0.3"):
        binary = evaluate(spec, **kw)
        compressed = evaluate(spec, env_id=COMPRESSED, **kw)
        assert compressed.config["env_id"] == COMPRESSED and compressed.policy["actions"] == [0, 2]
        for key in ("tokens_per_s", "uplink_bits_per_token", "risk", "skip_rate"):
            assert compressed.summary[key]["mean"] == pytest.approx(binary.summary[key]["mean"], rel=1e-9), (spec, key)


def test_compare_runs_on_the_compressed_env(traces, tmp_path, capsys):
    from hlm_gym.cli.main import main

    rc = main(["compare", "--env", COMPRESSED, "--scenarios", "vehicular", "--risk-weights", "5", "--risk-targets",
               "none", "--timesteps", "128", "--thresholds", "0,1", "--ltt-deltas", "0.1", "--episodes", "8",
               "--n-envs", "4", "--traces", str(traces), "--jobs", "1", "--out", str(tmp_path), "--bild-alphas", "0.6",
               "--calm-lambdas", "none",
               *[f"--hp={k}={v}" for k, v in TINY.items()]])
    assert rc == 0
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert doc["config"]["env_id"] == COMPRESSED
    assert {r["family"] for r in doc["rows"]} == {"ppo", "ppo-seed", "uhlm-threshold", "uhlm", "ltt", "bild",
                                                  "channel-aware"}
    assert (tmp_path / "runs" / "vehicular" / "lambda5-seed0" / "summary.json").is_file()
    assert "--env hlm_gym/HybridLMCompressed-v0" in (tmp_path / "results.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("command", [["train"], ["evaluate", "--policy", "always"], ["compare"]])
def test_unknown_env_id_is_a_one_line_error_listing_the_known_ones(command, tmp_path, capsys):
    from hlm_gym.cli.main import main

    rc = main([*command, "--env", "hlm_gym/Nope-v0", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "unknown env id 'hlm_gym/Nope-v0'; known: hlm_gym/HybridLM-v0, hlm_gym/HybridLMCompressed-v0" in err
