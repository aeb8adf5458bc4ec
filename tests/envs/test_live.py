"""Live mode: batched decoding, exact risk of skipped drafts, agreement with trace mode (tiny pair)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hlm_gym.environments.hybrid_lm.env import HybridLMEnv
from hlm_gym.environments.hybrid_lm.live import LiveBatch
from hlm_gym.lm.batch_decoding import BatchedSession
from hlm_gym.lm.decoding import DecoderConfig, HybridSession
from tests.tiny_models import build_tiny_trace, tiny_pair, tiny_prompts


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return str(build_tiny_trace(tmp_path_factory.mktemp("live") / "tiny.parquet"))


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    return tiny_pair()


def _episode(env, prompt, action):
    obs, _ = env.reset(seed=prompt, options={"prompt": prompt})
    infos = []
    while True:
        obs, _, term, _, info = env.step(action(obs, len(infos)))
        infos.append(info)
        if term:
            return infos


def test_batched_session_equals_single_sessions_for_the_same_decisions(pair):
    """Same seeds and decisions: the batch decodes the tokens HybridSession decodes one prompt at a time
    (the LLM at every position does not change the draws), skips included."""
    prompts = tiny_prompts(5)
    cfg = DecoderConfig(max_new_tokens=16)
    decide = lambda b, pos: (b + pos) % 3 != 0  # noqa: E731  (a mix of sends and skip runs)
    batch = BatchedSession(pair, [p.ids for p in prompts], [p.seed for p in prompts], cfg)
    while not batch.done:
        rows = batch.drafts().rows
        batch.commit([decide(int(b), len(batch.outputs[b])) for b in rows])
    for b, p in enumerate(prompts):
        s = HybridSession(pair, torch.tensor(p.ids), cfg, p.seed)
        while not s.done:
            s.commit(decide(b, len(s.output)))
        assert s.output == batch.outputs[b]


def test_never_send_live_has_the_traces_beta_and_verdict_until_the_first_rejection(trace_file, pair):
    """Never-send keeps the SLM's drafts. Up to the trace's first rejected row the prefixes are the same,
    so each skipped draft's exact beta is the trace's and its realised error (the uniform a verification
    would have drawn) is the trace's rejection."""
    env = HybridLMEnv(trace=trace_file, mode="live", pair=pair)
    t = env.sim.tables
    checked = 0
    for p in range(env.sim.traces.n_prompts):
        infos = _episode(env, p, lambda o, i: 0)
        assert all(math.isfinite(i["beta"]) for i in infos)
        assert math.isfinite(infos[-1]["risk"]) and math.isfinite(infos[-1]["error_rate"])
        rows = range(t.starts[p], t.stops[p])
        for info, r in zip(infos, rows):
            assert info["beta"] == pytest.approx(t.beta_full[r], abs=1e-5)
            assert info["error"] == (not t.accepted_full[r])
            checked += 1
            if not t.accepted_full[r]:
                break
        n = len(infos)
        assert infos[-1]["risk"] == pytest.approx(np.mean([i["beta"] for i in infos]))
        assert infos[-1]["error_rate"] == pytest.approx(sum(i["error"] for i in infos) / n)
    assert checked >= 15  # 12 prompts: each first rejection and the accepted rows before it


def test_live_errors_of_skips_are_bernoulli_beta(trace_file, pair):
    """The realised error of a skipped draft is drawn with probability beta: over many skips the error
    rate matches the mean beta (within 4 standard errors)."""
    env = HybridLMEnv(trace=trace_file, mode="live", pair=pair)
    betas, errors = [], []
    for p in range(env.sim.traces.n_prompts):
        for i in _episode(env, p, lambda o, j: int(j % 4 == 3)):  # mostly skips, sends reset the prefix
            if not i["sent"]:
                betas.append(i["beta"])
                errors.append(i["error"])
    b, e = np.array(betas), np.array(errors, dtype=float)
    se = math.sqrt(np.sum(b * (1 - b))) / len(b)
    assert len(b) > 150 and 0.05 < b.mean() < 0.95
    assert abs(e.mean() - b.mean()) < 4 * se


def test_live_batch_equals_the_single_env(trace_file, pair):
    """LiveBatch (what hlm-gym evaluate --mode live runs) gives each episode the single live env's
    tokens, rewards and end-of-episode metrics for the same prompt, channel start and policy."""
    single = HybridLMEnv(trace=trace_file, mode="live", pair=pair)
    policy = lambda obs: (obs[..., 0] > 0.97).astype(np.int64)  # noqa: E731  (U-HLM style rule on u)
    prompts, starts, expected = [], [], []
    for p in range(6):
        obs, _ = single.reset(seed=10 + p, options={"prompt": p})
        starts.append((int(single._kernel.brow), int(single._kernel.j0)))
        rewards = []
        while True:
            obs, r, term, _, info = single.step(int(policy(obs)))
            rewards.append(r)
            if term:
                break
        prompts.append(p)
        expected.append((single.output_tokens, rewards, info))
    live = LiveBatch(single.sim, pair, compressed=False)
    obs = live.reset(prompts, [s[0] for s in starts], [s[1] for s in starts])
    got_rewards = [[] for _ in prompts]
    while not live.done:
        running = live.running.copy()
        obs, rew, ended, info = live.step(policy(obs))
        for i in np.flatnonzero(running):
            got_rewards[i].append(rew[i])
    for i, (tokens, rewards, info) in enumerate(expected):
        assert live.output_tokens(i) == tokens
        assert np.allclose(got_rewards[i], rewards)
        for key in ("tokens_per_s", "transmission_rate", "risk", "error_rate", "tokens"):
            assert live.final[i][key] == pytest.approx(info[key]), key
    assert any(0 < live.final[i]["transmission_rate"] < 1 for i in range(len(prompts)))


def test_evaluate_live_reports_finite_risk_and_fidelity(trace_file, pair):
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.hybrid_lm import HYBRID_LM
    from hlm_gym.harness.hybrid_lm_live import evaluate_live

    settings = EnvSettings(scenario="static-good", traces=trace_file)
    kw = dict(family=HYBRID_LM, env_id="hlm_gym/HybridLM-v0", settings=settings, split="test", seed=3, pair=pair)
    always = evaluate_live("always", episodes=8, batch_size=3, **kw)
    assert [e["episode"] for e in always.episodes] == list(range(8))
    assert all(e["fidelity"] == pytest.approx(1.0, abs=1e-5) for e in always.episodes)
    assert always.summary["risk"]["mean"] == 0.0
    never = evaluate_live("never", episodes=8, batch_size=8, **kw)
    assert never.summary["transmission_rate"]["mean"] == 0.0
    assert 0 < never.summary["risk"]["mean"] < 1 and math.isfinite(never.summary["error_rate"]["mean"])
    # batching does not change the episodes; the trace reference is the live one for always-send
    again = evaluate_live("never", episodes=8, batch_size=2, reference="trace", **kw)
    for a, b in zip(never.episodes, again.episodes):
        for key in ("prompt", "tokens", "risk", "error_rate", "tokens_per_s", "fidelity"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_trace_plan_runs_the_live_episodes_in_trace_mode(trace_file, pair):
    """evaluate_trace_plan replays the episodes evaluate_live decodes (same prompts, channel starts):
    always-send agrees with live mode, the trace response of always-send is its own reference."""
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.hybrid_lm import HYBRID_LM
    from hlm_gym.harness.hybrid_lm_live import evaluate_live, evaluate_trace_plan

    settings = EnvSettings(scenario="vehicular", traces=trace_file)
    kw = dict(family=HYBRID_LM, env_id="hlm_gym/HybridLM-v0", settings=settings, split="test", episodes=10, seed=7)
    trace = evaluate_trace_plan("always", **kw)
    live = evaluate_live("always", pair=pair, **kw)
    assert [e["prompt"] for e in trace.episodes] == [e["prompt"] for e in live.episodes]
    same = [a["tokens_per_s"] == pytest.approx(b["tokens_per_s"]) for a, b in zip(trace.episodes, live.episodes)]
    assert sum(same) >= 9  # the same channel and tokens (a float-level flip of the batch is rare)
    assert all(e["fidelity"] == pytest.approx(1.0) for e in trace.episodes)
    never = evaluate_trace_plan("never", **kw)
    assert never.summary["transmission_rate"]["mean"] == 0 and 0 < never.summary["risk"]["mean"] < 1
    assert never.summary["fidelity"]["mean"] < 1


def test_live_batch_refuses_bad_actions(trace_file, pair):
    single = HybridLMEnv(trace=trace_file)
    live = LiveBatch(single.sim, pair, compressed=False)
    live.reset([0, 1], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="action 2 out of range: expected 0..1"):
        live.step(np.array([1, 2]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        live.step(np.array([1]))


@pytest.mark.parametrize("argv, fragment", [
    (["--batch-size", "4"], "--device and --batch-size are live-mode options"),
    (["--device", "cuda:0"], "--device and --batch-size are live-mode options"),
    (["--mode", "live", "--env", "hlm_gym/WDMoE-v0", "--policy", "topk:2", "--device", "cuda"],
     "--device is a live option of the HybridLM envs"),
])
def test_evaluate_live_flags_are_checked_before_any_work(argv, fragment, capsys):
    from hlm_gym.cli.main import main

    args = ["evaluate", *argv] + ([] if "--policy" in argv else ["--policy", "always"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err
