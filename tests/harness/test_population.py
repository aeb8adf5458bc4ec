"""The population PPO trainer (:mod:`hlm_gym.harness.population`): its loss and gradient against a
plain PPO reference on SB3's own policy, GAE over masked reset steps, the per-agent normalisation
statistics against SB3's ``RunningMeanStd``, independence of the agents, the export to SB3 zips
and a smoke run (TensorBoard scalars, a ``ppo:`` spec through the evaluation harness).

Small synthetic traces (tests/harness/test_evaluation.py's writer), a few hundred steps per agent.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.harness.test_evaluation import write_synthetic_trace

torch.set_num_threads(1)

TINY = {"n_steps": 32, "batch_size": 64, "n_epochs": 2}
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (10,), np.float32)
ACT_SPACE = gym.spaces.Discrete(2)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("population-traces")
    for i, (split, n) in enumerate((("train", 24), ("validation", 8), ("test", 8))):
        write_synthetic_trace(d / f"embedded-{split}.parquet", n_prompts=n, split=split, seed=i)
    return d


def _config(traces, out, agents, **kw):
    from hlm_gym.harness.population import PopulationConfig

    base = dict(agents=agents, scenario="pedestrian", n_envs=4, timesteps=256, out=str(out), traces=str(traces),
                overrides=dict(TINY), eval_episodes=8)
    return PopulationConfig(**(base | kw))


# ----------------------------------------------------------------------------------- (a) the loss
def _reference_ppo_loss(policy, obs, actions, old_log_prob, advantages, returns, clip, ent_coef, vf_coef):
    """PPO's clipped loss as SB3 writes it (PPO.train), on SB3's own policy: no masks, no vmap."""
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    values = values.flatten()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = torch.exp(log_prob - old_log_prob)
    policy_loss = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
    value_loss = torch.nn.functional.mse_loss(returns, values)
    entropy_loss = -torch.mean(entropy)
    return policy_loss + ent_coef * entropy_loss + vf_coef * value_loss


@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradient_equal_a_plain_ppo_reference(masked):
    """P = 1 on a fixed batch: the trainer's loss and gradient are the reference's (on the valid
    samples only when some are masked out)."""
    from hlm_gym.harness.population import ActorCritic, PopulationNets, sb3_policy, ppo_losses

    policy = sb3_policy(OBS_SPACE, ACT_SPACE, {"net_arch": [64, 64]}, seed=7)
    nets = PopulationNets([ActorCritic(policy)], "cpu")
    g = torch.Generator().manual_seed(0)
    B = 96
    obs = torch.randn(B, 10, generator=g)
    actions = torch.randint(0, 2, (B,), generator=g)
    with torch.no_grad():
        _, lp, _ = policy.evaluate_actions(obs, actions)
    old_log_prob = lp + 0.3 * torch.randn(B, generator=g)  # ratios away from 1: the clip is active
    advantages = 2.0 * torch.randn(B, generator=g) + 0.5
    returns = torch.randn(B, generator=g)
    mask = torch.rand(B, generator=g) > 0.25 if masked else torch.ones(B, dtype=torch.bool)
    batch = {"obs": obs[None], "actions": actions[None], "old_log_prob": old_log_prob[None],
             "old_values": torch.zeros(1, B), "advantages": advantages[None], "returns": returns[None],
             "mask": mask[None]}
    loss, stats = ppo_losses(nets, batch, clip_range=0.2, clip_range_vf=None, ent_coef=0.003, vf_coef=0.5)
    loss.sum().backward()

    ref = _reference_ppo_loss(policy, obs[mask], actions[mask], old_log_prob[mask], advantages[mask], returns[mask],
                              0.2, 0.003, 0.5)
    policy.zero_grad()
    ref.backward()
    assert loss.shape == (1,)
    torch.testing.assert_close(loss[0], ref, rtol=1e-5, atol=1e-6)
    ref_grads = dict(policy.named_parameters())
    assert set(nets.params) <= set(ref_grads)
    for name, p in nets.params.items():
        torch.testing.assert_close(p.grad[0], ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert float(stats["clip_fraction"][0]) > 0  # the batch exercised the clip


def test_gradient_clipping_is_per_agent():
    """Each agent's gradient is scaled by its own norm (torch's clip_grad_norm_ on its slice)."""
    from hlm_gym.harness.population import clip_grad_norm_per_agent

    g = torch.Generator().manual_seed(1)
    params = {"a": torch.zeros(3, 4, 5, requires_grad=True), "b": torch.zeros(3, 2, requires_grad=True)}
    params["a"].grad = torch.randn(3, 4, 5, generator=g) * torch.tensor([0.01, 1.0, 10.0]).reshape(3, 1, 1)
    params["b"].grad = torch.randn(3, 2, generator=g)
    expect = []
    for p in range(3):
        single = [torch.nn.Parameter(torch.zeros(4, 5)), torch.nn.Parameter(torch.zeros(2))]
        single[0].grad, single[1].grad = params["a"].grad[p].clone(), params["b"].grad[p].clone()
        torch.nn.utils.clip_grad_norm_(single, 0.5)
        expect.append(single)
    clip_grad_norm_per_agent(params, 0.5)
    for p in range(3):
        torch.testing.assert_close(params["a"].grad[p], expect[p][0].grad)
        torch.testing.assert_close(params["b"].grad[p], expect[p][1].grad)


def test_gae_matches_sb3_and_does_not_cross_a_reset_step():
    """compute_gae equals SB3's RolloutBuffer on a rollout with episode ends, and the advantage of
    the step that ends an episode ignores whatever follows it (the masked reset step)."""
    from stable_baselines3.common.buffers import RolloutBuffer

    from hlm_gym.harness.population import compute_gae

    T, n = 12, 3
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(T, n, generator=g), torch.randn(T, n, generator=g)
    dones = (torch.rand(T, n, generator=g) < 0.2).float()
    last_values = torch.randn(n, generator=g)
    adv, ret = compute_gae(rewards, values, dones, last_values, 0.99, 0.95)

    buf = RolloutBuffer(T, OBS_SPACE, ACT_SPACE, device="cpu", gae_lambda=0.95, gamma=0.99, n_envs=n)
    starts = torch.cat([torch.zeros(1, n), dones[:-1]])  # SB3: episode_starts[t + 1] = dones[t]
    for t in range(T):
        buf.add(np.zeros((n, 10), np.float32), np.zeros((n, 1)), rewards[t].numpy(), starts[t].numpy(),
                values[t].unsqueeze(1), torch.zeros(n))
    buf.compute_returns_and_advantage(last_values.unsqueeze(1), dones[-1].numpy())
    np.testing.assert_allclose(adv.numpy(), buf.advantages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), buf.returns, rtol=1e-5, atol=1e-6)

    dones2 = dones.clone()
    dones2[4, 0] = 1.0  # step 4 of env 0 ends an episode: step 5 is a reset step
    a1, _ = compute_gae(rewards, values, dones2, last_values, 0.99, 0.95)
    values2, rewards2 = values.clone(), rewards.clone()
    values2[5:, 0] += 100.0
    rewards2[5:, 0] -= 50.0
    a2, _ = compute_gae(rewards2, values2, dones2, last_values, 0.99, 0.95)
    torch.testing.assert_close(a1[:5, 0], a2[:5, 0])
    assert not torch.allclose(a1[5:, 0], a2[5:, 0])


def test_running_stats_match_sb3_running_mean_std():
    """Per-agent masked statistics = SB3's RunningMeanStd fed each agent's valid rows."""
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from hlm_gym.harness.population import RunningStats

    g = np.random.default_rng(3)
    P, B, d = 3, 16, 4
    stats = RunningStats(P, (d,), torch.device("cpu"))
    refs = [RunningMeanStd(shape=(d,)) for _ in range(P)]
    for _ in range(5):
        x = g.normal(2.0, 3.0, (P, B, d))
        mask = g.random((P, B)) > 0.3
        mask[2] = False if _ == 1 else mask[2]  # an agent with no valid rows in one batch: unchanged
        stats.update(torch.as_tensor(x), torch.as_tensor(mask))
        for p in range(P):
            if mask[p].any():
                refs[p].update(x[p][mask[p]])
    for p in range(P):
        np.testing.assert_allclose(stats.mean[p].numpy(), refs[p].mean, rtol=1e-10)
        np.testing.assert_allclose(stats.var[p].numpy(), refs[p].var, rtol=1e-10)
        assert float(stats.count[p]) == pytest.approx(refs[p].count)


# ----------------------------------------------------------------------------------- (b) independence
def _agent_params(out, agent) -> dict[str, torch.Tensor]:
    from stable_baselines3 import PPO

    model = PPO.load(str(Path(out) / agent.folder / "model_last.zip"), device="cpu")
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_agents_learn_independently(traces, tmp_path):
    """P = 3: changing agent 2's reward setting leaves agents 0 and 1 bit-identical (parameters and
    baked-in observation statistics), while agent 2 itself changes."""
    from hlm_gym.harness.population import AgentSpec, train_population

    a0, a1 = AgentSpec(1.0, None, 0), AgentSpec(5.0, 0.3, 1)
    runs = []
    for i, third in enumerate((AgentSpec(2.0, None, 2), AgentSpec(20.0, 0.45, 2))):
        out = tmp_path / f"run{i}"
        train_population(_config(traces, out, [a0, a1, third], eval_episodes=4, tensorboard=False))
        runs.append({a.name: _agent_params(out, a) for a in (a0, a1, third)})
    (first, second) = runs
    for agent in (a0, a1):
        for k, v in first[agent.name].items():
            assert torch.equal(v, second[agent.name][k]), (agent.name, k)
    w2a, w2b = first["lambda2-seed2"], second["lambda20-target0.45-seed2"]
    assert any(not torch.equal(w2a[k], w2b[k]) for k in w2a)  # agent 2 did change
    assert any(not torch.equal(first[a0.name][k], first[a1.name][k]) for k in w2a)  # agents differ


# ----------------------------------------------------------------------------------- (c) smoke + export
@pytest.fixture(scope="module")
def smoke_run(traces, tmp_path_factory):
    from hlm_gym.harness.population import population_agents, train_population

    out = tmp_path_factory.mktemp("population-run")
    return train_population(_config(traces, out, population_agents([1.0, 10.0], [None], [0])))


def test_smoke_run_writes_tensorboard_domain_scalars(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(smoke_run.summaries) == 2
    for s in smoke_run.summaries:
        tb = Path(s["files"]["tensorboard"])
        assert tb == smoke_run.out / s["agent"] / "tb" / f"{s['agent']}_1"
        assert list(tb.glob("events.out.tfevents.*")), tb
        ea = EventAccumulator(str(tb))
        ea.Reload()
        tags = set(ea.Tags()["scalars"])
        for k in ("rollout/ep_rew_mean", "rollout/ep_len_mean", "domain/tokens_per_s", "domain/transmission_rate",
                  "domain/risk", "train/policy_gradient_loss", "train/value_loss", "train/entropy_loss",
                  "train/approx_kl", "train/clip_fraction", "train/learning_rate"):
            assert k in tags, (s["agent"], k)
        steps = [e.step for e in ea.Scalars("train/value_loss")]
        assert steps == [128, 256]  # n_steps 32 x 4 envs per iteration, per agent


def test_smoke_run_summaries_and_exported_models_evaluate(smoke_run, traces):
    from hlm_gym.harness.evaluation import evaluate

    out = smoke_run.out
    for agent, s in zip(smoke_run.agents, smoke_run.summaries):
        folder = out / agent.name
        on_disk = json.loads((folder / "summary.json").read_text())
        assert on_disk["agent"] == agent.name and on_disk["trainer"] == "population"
        assert on_disk["timesteps"] == 256 and on_disk["risk_weight"] == agent.risk_weight
        assert on_disk["wall_s"] > 0 and np.isfinite(on_disk["last"]["reward_per_step"])
        res = evaluate(f"ppo:{folder / 'model_last.zip'}", scenario="pedestrian", split="validation", episodes=8,
                       seed=10_000 + agent.seed, risk_weight=agent.risk_weight, traces=str(traces))
        # the summary's validation metrics are this evaluation's (same episodes, same model)
        assert res.summary["reward_per_step"]["mean"] == pytest.approx(on_disk["last"]["reward_per_step"])
        assert res.summary["tokens_per_s"]["mean"] > 0


def test_export_is_the_trained_policy_with_its_normalisation():
    """An exported zip, loaded by the ``ppo:`` loader, gives the trainer's action probabilities on
    raw observations (the agent's observation statistics baked in)."""
    import tempfile

    from hlm_gym.harness.population import (ActorCritic, AgentSpec, PopulationNets, _export, _Normalizer,
                                            sb3_policy)
    from hlm_gym.policies.sb3_model import load_sb3_policy

    P, n = 2, 5
    nets = PopulationNets([ActorCritic(sb3_policy(OBS_SPACE, ACT_SPACE, {"net_arch": [64, 64]}, s))
                           for s in (0, 1)], "cpu")
    norm = _Normalizer(P, n, 10, {"norm_obs": True, "norm_reward": True, "clip_obs": 10.0}, torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        norm.obs(torch.randn(P, n, 10, generator=g) * 3 + 1, torch.ones(P, n, dtype=torch.bool))

    class _Env:
        single_observation_space, single_action_space = OBS_SPACE, ACT_SPACE

    raw = torch.randn(P, 7, 10, generator=g) * 3 + 1
    with torch.no_grad():
        logits, _ = nets(norm.normalize_obs(raw))
    ppo = {"learning_rate": 1e-3, "n_steps": 8, "batch_size": 8, "n_epochs": 1}
    with tempfile.TemporaryDirectory() as d:
        for p in range(P):
            path = _export(nets, norm, p, _Env(), ppo, {"net_arch": [64, 64]}, AgentSpec(seed=p),
                           64, Path(d) / f"a{p}.zip")
            pol = load_sb3_policy(str(path))
            obs_t, _ = pol.model.policy.obs_to_tensor(raw[p].numpy())
            with torch.no_grad():
                probs = pol.model.policy.get_distribution(obs_t).distribution.probs
            torch.testing.assert_close(probs, torch.softmax(logits[p], -1), rtol=1e-5, atol=1e-6)


def test_population_agents_and_bad_settings():
    from hlm_gym.harness.errors import TrainingError
    from hlm_gym.harness.population import AgentSpec, PopulationConfig, population_agents, prepare_population

    assert [a.name for a in population_agents([1, 2], [None, 0.3], [0])] == [
        "lambda1-seed0", "lambda1-target0.3-seed0", "lambda2-seed0", "lambda2-target0.3-seed0"]
    assert population_agents([1, 2], [0.2, 0.4], [5], combine="zip") == [AgentSpec(1, 0.2, 5), AgentSpec(2, 0.4, 5)]
    with pytest.raises(TrainingError, match="--risk-weights: 2 values"):
        population_agents([1, 2], [0.1, 0.2, 0.3], [0], combine="zip")
    with pytest.raises(TrainingError, match="same agent twice"):
        prepare_population(PopulationConfig(agents=[AgentSpec(1, None, 0), AgentSpec(1, None, 0)]), create_out=False)
    with pytest.raises(TrainingError, match="--risk-targets"):
        prepare_population(PopulationConfig(agents=[AgentSpec(1, 1.5, 0)]), create_out=False)
    with pytest.raises(TrainingError, match="target_kl"):
        prepare_population(PopulationConfig(overrides={"target_kl": 0.02}), create_out=False)


# ----------------------------------------------------------------------------------- CLI
def test_cli_population_run_writes_one_folder_per_agent(traces, tmp_path, capsys):
    from hlm_gym.cli.main import main

    out = tmp_path / "pop"
    rc = main(["train", "--trainer", "population", "--risk-weights", "1,5", "--risk-targets", "0.3", "--seeds", "0",
               "--n-envs", "2", "--timesteps", "64", "--eval-episodes", "2", "--hp", "n_steps=16", "--hp",
               "batch_size=16", "--hp", "n_epochs=1", "--traces", str(traces), "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("lambda1-target0.3-seed0", "lambda5-target0.3-seed0"):
        assert (out / name / "model_last.zip").is_file() and (out / name / "summary.json").is_file()
        assert name in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "lambda1-target0.3-seed0", "lambda5-target0.3-seed0"]


def test_cli_population_of_several_scenarios(traces, tmp_path, capsys):
    from hlm_gym.cli.main import main

    out = tmp_path / "pop"
    rc = main(["train", "--trainer", "population", "--scenarios", "vehicular,pedestrian", "--risk-weights", "2",
               "--n-envs", "2", "--timesteps", "32", "--eval-episodes", "2", "--hp", "n_steps=16", "--hp",
               "batch_size=16", "--hp", "n_epochs=1", "--traces", str(traces), "--out", str(out), "--no-progress"])
    assert rc == 0 and "(vehicular, pedestrian)" in capsys.readouterr().out
    for sc in ("vehicular", "pedestrian"):
        summary = json.loads((out / sc / "lambda2-seed0" / "summary.json").read_text())
        assert summary["scenario"] == sc and (out / sc / "lambda2-seed0" / "model_last.zip").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--risk-weights", "1,2"], "--risk-weights defines a population: it needs --trainer population"),
    (["--trainer", "population", "--algo", "a2c"], "population trains PPO only"),
    (["--trainer", "population", "--seed", "1", "--seeds", "1,2"], "--seed and --seeds both given"),
    (["--trainer", "population", "--env-backend", "numpy"], "--env-backend numpy"),
    (["--trainer", "population", "--risk-weights", "1,-2"], "--risk-weights"),
    (["--trainer", "population", "--risk-weights", "1,1"], "same agent twice"),
    (["--trainer", "population", "--combine", "zip", "--risk-weights", "1,2", "--seeds", "0,1,2"], "--combine zip"),
    (["--trainer", "population", "--seeds", "1,x"], "--seeds"),
    (["--trainer", "population", "--eval-freq", "100"], "--eval-freq"),
    (["--trainer", "population", "--scenario", "vehicular", "--scenarios", "pedestrian"], "--scenario and --scenarios"),
    (["--trainer", "population", "--scenarios", "vehicular,nope"], "unknown scenario 'nope'"),
    (["--scenarios", "vehicular"], "--scenarios defines a population: it needs --trainer population"),
])
def test_cli_population_flags_refused_in_one_line_before_any_work(traces, tmp_path, capsys, flags, message):
    from hlm_gym.cli.main import main

    out = tmp_path / "never"
    rc = main(["train", *flags, "--traces", str(traces), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------------- rollout: NEXT_STEP, truncation
class _ScriptedEnv:
    """``P * n`` sub-envs with NEXT_STEP autoreset and scripted episode ends: ``ends[(t, i)] =
    "term" | "trunc"`` ends env i at step t (step t + 1 is then its reset step: reward 0, no flags).
    Observations are random; the reward of a decision step is ``1 + t``."""

    def __init__(self, num_envs: int, ends: dict) -> None:
        self.num_envs, self.ends, self.t = num_envs, ends, 0
        self.needs_reset = torch.zeros(num_envs, dtype=torch.bool)
        self.g = torch.Generator().manual_seed(5)
        self.returned: list[torch.Tensor] = []

    def step(self, actions):
        assert actions.shape == (self.num_envs,)
        rew = torch.full((self.num_envs,), 1.0 + self.t, dtype=torch.float64)
        term = torch.zeros(self.num_envs, dtype=torch.bool)
        trunc = torch.zeros(self.num_envs, dtype=torch.bool)
        for (t, i), kind in self.ends.items():
            if t == self.t:
                (term if kind == "term" else trunc)[i] = True
        rew[self.needs_reset] = 0.0
        term[self.needs_reset] = False
        trunc[self.needs_reset] = False
        self.needs_reset = term | trunc
        obs = torch.randn(self.num_envs, 10, generator=self.g)
        self.returned.append(obs)
        self.t += 1
        info = {"energy_j": torch.zeros(self.num_envs), "uplink_bits": torch.zeros(self.num_envs)}
        return obs, rew, term, trunc, info


def test_rollout_masks_reset_steps_and_bootstraps_truncation():
    """``_collect`` on a scripted env: the step after an episode end is masked out, a truncated
    step's reward gets gamma * V(terminal observation) (the next step's input, or the rollout's
    last value), a terminated one does not, and the returns of ended episodes are counted."""
    from hlm_gym.harness.hybrid_lm import HYBRID_LM
    from hlm_gym.harness.population import (ActorCritic, PopulationNets, _collect, _EpisodeSums, _Normalizer,
                                            sb3_policy)

    P, n, T, gamma = 2, 2, 6, 0.9
    ends = {(2, 0): "trunc", (4, 1): "term", (T - 1, 2): "trunc", (1, 3): "term"}
    env = _ScriptedEnv(P * n, ends)
    nets = PopulationNets([ActorCritic(sb3_policy(OBS_SPACE, ACT_SPACE, {"net_arch": [64, 64]}, s))
                           for s in range(P)], "cpu")
    norm = _Normalizer(P, n, 10, None, torch.device("cpu"))  # identity: rewards as the env gives them
    obs0 = torch.randn(P, n, 10, generator=torch.Generator().manual_seed(6))
    state = {"obs": obs0, "needs_reset": torch.zeros(P, n, dtype=torch.bool),
             "episodes": _EpisodeSums(P, n, torch.device("cpu"), HYBRID_LM.episode_info_metrics,
                                      dict(HYBRID_LM.per_token_sums))}
    u = torch.rand(T, P, n, generator=torch.Generator().manual_seed(7))
    buf = _collect(env, nets, norm, state, T, P, n, u, gamma)

    valid = buf["valid"].reshape(T, P * n)
    expected_valid = torch.ones(T, P * n, dtype=torch.bool)
    for (t, i) in ends:
        if t + 1 < T:
            expected_valid[t + 1, i] = False
    assert torch.equal(valid, expected_valid)
    dones = buf["dones"].reshape(T, P * n)
    assert {tuple(ti) for ti in torch.nonzero(dones).tolist()} == set(ends)
    assert torch.equal(state["needs_reset"].reshape(-1), torch.tensor([False, False, True, False]))

    with torch.no_grad():
        v_next = {t: nets(env.returned[t].reshape(P, n, 10))[1].reshape(-1) for t in range(T)}
    rewards = buf["rewards"].reshape(T, P * n)
    for t in range(T):
        for i in range(P * n):
            raw = 0.0 if not expected_valid[t, i] else 1.0 + t
            boot = gamma * float(v_next[t][i]) if ends.get((t, i)) == "trunc" else 0.0
            assert float(rewards[t, i]) == pytest.approx(raw + boot, rel=1e-5, abs=1e-6), (t, i)
    torch.testing.assert_close(buf["last_values"].reshape(-1), v_next[T - 1])
    # ended episodes' raw returns, per agent: env 0 ended at 2 (1+2+3), env 1 at 4 (1+...+5); agent 1:
    # env 2 at T-1 (1+...+6), env 3 at 1 (1+2)
    acc = state["episodes"].totals
    assert acc["episodes"].tolist() == [2.0, 2.0]
    assert acc["return"].tolist() == [6.0 + 15.0, 21.0 + 3.0]
    assert acc["length"].tolist() == [3.0 + 5.0, 6.0 + 2.0]


# ----------------------------------------------------------------------------------- scenarios
def test_agents_of_several_scenarios_train_in_one_run_independently(traces, tmp_path):
    """Agents with different scenarios share one run (one env per scenario, one batch of networks):
    changing another agent's scenario leaves a pedestrian agent bit-identical; each agent's folder is
    ``<scenario>/<name>`` and its validation metrics are ``evaluate``'s on its scenario."""
    from hlm_gym.harness.evaluation import evaluate
    from hlm_gym.harness.population import AgentSpec, population_agents, train_population

    ped = AgentSpec(2.0, None, 0, "pedestrian")
    same = [AgentSpec(5.0, 0.3, 1, "pedestrian"), ped, AgentSpec(2.0, None, 0, "cell-edge-fast-fading")]
    one = train_population(_config(traces, tmp_path / "one", same, eval_episodes=4, tensorboard=False))
    agents = [AgentSpec(5.0, 0.3, 1, "vehicular"), ped, AgentSpec(2.0, None, 0, "vehicular")]
    both = train_population(_config(traces, tmp_path / "both", agents, eval_episodes=4, tensorboard=False))
    assert [s["scenario"] for s in both.summaries] == ["vehicular", "pedestrian", "vehicular"]  # the given order
    a = _agent_params(tmp_path / "one", ped)
    b = _agent_params(tmp_path / "both", ped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert one.summaries[1]["last"] == both.summaries[1]["last"]
    for agent, s in zip(agents, both.summaries):
        model = tmp_path / "both" / agent.scenario / agent.name / "model_last.zip"
        assert Path(s["files"]["model_last"]) == model
        res = evaluate(f"ppo:{model}", scenario=agent.scenario, split="validation", episodes=4,
                       seed=10_000 + agent.seed, risk_weight=agent.risk_weight, risk_target=agent.risk_target,
                       traces=str(traces))
        for k, v in res.summary.items():
            assert s["last"][k] == pytest.approx(v["mean"], rel=1e-9, abs=1e-12), (agent, k)
    assert population_agents([1.0], [None], [0, 1], scenarios=["vehicular", "pedestrian"]) == [
        AgentSpec(1.0, None, 0, "vehicular"), AgentSpec(1.0, None, 1, "vehicular"),
        AgentSpec(1.0, None, 0, "pedestrian"), AgentSpec(1.0, None, 1, "pedestrian")]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_direct_batched_forward_is_the_vmapped_forward_bit_for_bit(activation):
    """PopulationNets' direct batched matrix products give vmap(functional_call)'s outputs and
    gradients exactly (SB3's MLP with tanh or relu)."""
    from hlm_gym.harness.population import ActorCritic, PopulationNets, sb3_policy

    pk = {"net_arch": [64, 64], "activation_fn": torch.nn.Tanh if activation == "tanh" else torch.nn.ReLU}
    nets = PopulationNets([ActorCritic(sb3_policy(OBS_SPACE, ACT_SPACE, pk, s)) for s in range(5)], "cpu")
    assert nets._plan is not None
    x = torch.randn(5, 37, 10, generator=torch.Generator().manual_seed(0))
    grads = []
    for forward in (nets, nets.vmapped):
        logits, values = forward(x)
        for v in nets.params.values():
            v.grad = None
        (logits.square().sum() + values.sum()).backward()
        grads.append(({k: v.grad.clone() for k, v in nets.params.items()}, logits.detach(), values.detach()))
    (g1, l1, v1), (g2, l2, v2) = grads
    assert torch.equal(l1, l2) and torch.equal(v1, v2)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_interrupted_population_commits_no_agent_and_keeps_a_finished_one(traces, tmp_path):
    """Ctrl-C during a population run (raised from the iteration hook): no agent folder gets a
    model or summary, the staging folders are removed and the locks are free; an interrupted
    re-run into finished folders leaves their files byte-identical."""
    from hlm_gym.harness.population import AgentSpec, train_population
    from hlm_gym.harness.run_folder import STAGING_PREFIX, FolderLock

    agents = [AgentSpec(1.0, None, 0), AgentSpec(5.0, None, 1)]

    def interrupt(i, n):
        if i == 2:
            raise KeyboardInterrupt

    out = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        train_population(_config(traces, out, agents, timesteps=1024, on_iteration=interrupt))
    for a in agents:
        folder = out / a.folder
        assert not (folder / "model_last.zip").exists() and not (folder / "summary.json").exists()
        assert not list(folder.glob(f"{STAGING_PREFIX}*"))
        with FolderLock(folder):
            pass
    done = tmp_path / "done"
    train_population(_config(traces, done, agents, tensorboard=False))
    before = {p: p.read_bytes() for a in agents for p in (done / a.folder).glob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        train_population(_config(traces, done, agents, timesteps=1024, on_iteration=interrupt))
    assert {p: p.read_bytes() for a in agents for p in (done / a.folder).glob("*") if p.is_file()} == before


def test_train_forward_is_the_tanh_forward_up_to_rounding_and_frozen_forward_equals_it():
    """The trainer's forward (tanh as 2 sigmoid(2z) - 1, folded into the weights) gives the exact
    forward's outputs and gradients up to float rounding; the rollout's frozen forward gives the
    trainer's forward bit for bit; a relu MLP has no folded path (its trainer forward is the exact one)."""
    from hlm_gym.harness.population import ActorCritic, PopulationNets, sb3_policy

    nets = PopulationNets([ActorCritic(sb3_policy(OBS_SPACE, ACT_SPACE, {"net_arch": [64, 64]}, s))
                           for s in range(4)], "cpu")
    assert nets._tanh_plan is not None
    x = 3.0 * torch.randn(4, 53, 10, generator=torch.Generator().manual_seed(3))
    grads = []
    for forward in (nets, nets.train_forward):
        logits, values = forward(x)
        for v in nets.params.values():
            v.grad = None
        (logits.square().sum() + values.square().sum()).backward()
        grads.append(({k: v.grad.clone() for k, v in nets.params.items()}, logits.detach(), values.detach()))
    (g1, l1, v1), (g2, l2, v2) = grads
    assert not torch.equal(l1, l2)  # a different computation ...
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)  # ... of the same function
    torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-6)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-5, msg=k)
    with torch.no_grad():
        lt, vt = nets.train_forward(x)
        lf, vf = nets.frozen_forward()(x)
    assert torch.equal(lt, lf) and torch.equal(vt, vf)

    relu = PopulationNets([ActorCritic(sb3_policy(OBS_SPACE, ACT_SPACE, {"net_arch": [64, 64],
                                                                         "activation_fn": torch.nn.ReLU}, s))
                           for s in range(2)], "cpu")
    assert relu._tanh_plan is None
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(relu.train_forward(x[:2]), relu(x[:2])))


def test_keep_freed_memory_sets_the_glibc_heap_on_linux():
    import sys

    from hlm_gym.harness.heap import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")
