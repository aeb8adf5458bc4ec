"""HybridLM-v0 / HybridLMCompressed-v0: API checks, semantics, errors, live mode agreement."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import hlm_gym  # noqa: F401
from hlm_gym.environments.hybrid_lm.config import EnvConfigError
from hlm_gym.wireless.cost import CostModel
from hlm_gym.wireless.rate import effective_rates
from hlm_gym.environments.hybrid_lm.env import HybridLMEnv
from hlm_gym.traces.store import SCHEMA_VERSION, TraceError, load_traces
from tests.tiny_models import build_tiny_trace, tiny_pair

torch.set_num_threads(1)
IDS = ["hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return str(build_tiny_trace(tmp_path_factory.mktemp("env") / "tiny.parquet"))


def run_episode(env, policy, seed):
    obs, info = env.reset(seed=seed)
    traj = [obs]
    infos = []
    while True:
        obs, r, term, trunc, info = env.step(policy(obs))
        traj.append((obs, r, term, trunc))
        infos.append(info)
        if term or trunc:
            return traj, infos


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("verify", ["none", "deferred"])
def test_check_env_gymnasium_and_sb3(trace_file, env_id, verify):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, trace=trace_file, verify=verify)
    check_env(env.unwrapped)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_reset_is_deterministic(trace_file, env_id):
    def policy_from(rng):
        return lambda obs: int(rng.integers(0, n))

    e1, e2 = gym.make(env_id, trace=trace_file), gym.make(env_id, trace=trace_file, scenario="pedestrian")
    n = e1.action_space.n
    for seed in (0, 7):
        t1, _ = run_episode(e1, policy_from(np.random.default_rng(seed)), seed)
        t2, _ = run_episode(e2, policy_from(np.random.default_rng(seed)), seed)
        assert np.array_equal(t1[0], t2[0])
        for a, b in zip(t1[1:], t2[1:]):
            assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    o_a, _ = e1.reset(seed=3)
    o_b, _ = e1.reset(seed=4)
    o_c, _ = e1.reset(seed=3)
    assert np.array_equal(o_a, o_c)


def test_observation_layout_and_step_info(trace_file):
    env = gym.make("hlm_gym/HybridLM-v0", trace=trace_file, render_mode="ansi")
    obs, info = env.reset(seed=1)
    assert obs.shape == (10,) and obs.dtype == np.float32
    assert obs[7] == 0 and obs[8] == 0 and obs[9] == 0
    u = env.unwrapped
    ref = u.sim.latency_ref
    obs, r, term, trunc, info = env.step(0)  # skip
    for key in ("latency_s", "uplink_bits", "sent", "rejected", "beta", "snr_db", "rate_bps", "energy_j"):
        assert key in info
    assert info["sent"] is False and info["uplink_bits"] == 0.0
    assert math.isclose(r, -info["latency_s"] / ref - 1.0 * info["beta"], rel_tol=1e-12)
    assert obs[7] > 0 and obs[9] == pytest.approx(1 / 16)
    obs, r, term, trunc, info = env.step(1)  # send with one pending token
    assert info["sent"] is True and info["uplink_bits"] > 0
    assert math.isclose(r, -info["latency_s"] / ref, rel_tol=1e-12)
    assert obs[7] == 0
    while not (term or trunc):
        obs, r, term, trunc, info = env.step(1)
    for key in ("tokens_per_s", "transmission_rate", "skip_rate", "risk", "error_rate"):
        assert key in info
    assert info["skip_rate"] == pytest.approx(1 / info["tokens"])
    text = env.render()
    assert "[" in text and "prompt" in text


def test_trace_replay_semantics(trace_file):
    tr = load_traces(trace_file)
    c = tr.columns
    env = HybridLMEnv(trace=trace_file)
    for seed in range(4):
        _, infos = run_episode(env, lambda o: 1, seed)
        p = env._prompt
        rows = slice(tr.offsets[p], tr.offsets[p + 1])
        assert env.output_tokens == c["token"][rows].tolist()  # always send: the recorded response
        assert infos[-1]["transmission_rate"] == 1.0 and infos[-1]["error_rate"] == 0.0
        assert [i["rejected"] for i in infos] == (~c["accepted"][rows]).tolist()
        _, infos = run_episode(env, lambda o: 0, seed)
        assert env.output_tokens == c["draft"][rows].tolist()  # never send: the drafts
        assert infos[-1]["error_rate"] == pytest.approx(np.mean(~c["accepted"][rows]))
        assert infos[-1]["risk"] == pytest.approx(np.mean(c["beta"][rows].astype(np.float64)))


def test_deferred_verification_is_exact(trace_file):
    tr = load_traces(trace_file)
    env = HybridLMEnv(trace=trace_file, verify="deferred")
    rng = np.random.default_rng(0)
    rewinds = 0
    for seed in range(6):
        _, infos = run_episode(env, lambda o: int(rng.integers(0, 2)), seed)
        p = env._prompt
        rows = slice(tr.offsets[p], tr.offsets[p + 1])
        # whatever the policy, the final response is the recorded (LLM-exact) one
        assert env.output_tokens == tr.columns["token"][rows].tolist()
        assert infos[-1]["error_rate"] == 0.0
        rewinds += sum(i["rejected"] and i["sent"] for i in infos)
        assert len(infos) >= infos[-1]["tokens"]
    assert rewinds > 0


def test_risk_error_option(trace_file):
    env = HybridLMEnv(trace=trace_file, risk="error", risk_weight=2.0)
    env.reset(seed=0)
    _, r, _, _, info = env.step(0)
    assert r == pytest.approx(-info["latency_s"] / env.sim.latency_ref - 2.0 * float(info["error"]))


def test_compressed_payload_and_acceptance(trace_file):
    from hlm_gym.wireless.cost import distribution_bits, token_id_bits

    env = gym.make("hlm_gym/HybridLMCompressed-v0", trace=trace_file)
    u = env.unwrapped
    assert u.sim.topk == (4, 16, 64) and env.action_space.n == 4
    tr = load_traces(trace_file)
    env.reset(seed=2)
    row = u._kernel.row
    _, _, _, _, info = env.step(1)  # send the top-4
    pay = u.sim.scenario.payload
    expected = float(distribution_bits(pay, np.array([4]), 64)[0]) + token_id_bits(64) + pay.uplink_header_bits
    assert info["uplink_bits"] == expected
    assert info["rejected"] == (not tr.columns["accepted_k4"][row])
    assert info["beta"] == pytest.approx(float(tr.columns["beta_k4"][row]))


def test_cost_model_matches_latency_module():
    from hlm_gym.wireless.cost import token_cost
    from hlm_gym.wireless.scenarios import load_scenario

    sc = load_scenario("pedestrian")
    V = 49152
    cm = CostModel.build(sc, V, (64, V), deferred=False)
    up = np.array([0.0, 1e6, 5e7, 2e8])
    dl = np.array([3e7, 0.0, 5e7, 1e9])
    uw, ui = effective_rates(sc, up, sc.link.bandwidth_hz)
    dw, di = effective_rates(sc, dl, sc.downlink_bandwidth_hz)
    for o, k in enumerate((64, V)):
        for pend in (0, 3):
            ref = token_cost(sc, sent=np.ones(4, bool), pending=pend, topk=np.full(4, k), vocab_size=V,
                             up_rate_bps=up, down_rate_bps=dl)
            for i in range(4):
                lat, bits, en = cm.send(o, pend, float(uw[i]), float(ui[i]), float(dw[i]), float(cm.dl_bits * di[i]))
                assert lat == pytest.approx(ref.latency_s[i], rel=1e-12)
                assert bits == ref.uplink_bits[i]
                assert en == pytest.approx(ref.energy_j[i], rel=1e-12)
    skip = token_cost(sc, sent=np.zeros(1, bool), vocab_size=V)
    assert cm.skip_latency == pytest.approx(skip.latency_s[0], rel=1e-12)
    assert cm.skip_energy == pytest.approx(skip.energy_j[0], rel=1e-12)


def test_risk_target_shifts_only_skip_rewards(trace_file):
    """risk_target R adds exactly lambda * R to every skip's reward and leaves sends alone."""
    lam, target = 2.5, 0.3
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 2, 400)
    rewards = {}
    for r in (0.0, target):
        env = gym.make("hlm_gym/HybridLM-v0", trace=trace_file, scenario="vehicular", risk_weight=lam, risk_target=r)
        env.reset(seed=4)
        got = []
        for a in actions:
            _, rew, term, trunc, info = env.step(int(a))
            got.append((rew, info["sent"]))
            if term or trunc:
                env.reset()
        rewards[r] = got
    skips = 0
    for (r0, sent0), (r1, sent1) in zip(rewards[0.0], rewards[target]):
        assert sent0 == sent1
        assert r1 == pytest.approx(r0 + (0.0 if sent0 else lam * target), abs=1e-12)
        skips += not sent0
    assert 0 < skips < len(actions)


# ----------------------------------------------------------------------------- bad input
def test_unknown_kwarg(trace_file):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'lambda_'.*allowed: .*risk_weight"):
        gym.make("hlm_gym/HybridLM-v0", trace=trace_file, lambda_=1.0)


@pytest.mark.parametrize("kw, msg", [({"risk": "huge"}, "bad option risk='huge'"),
                                     ({"verify": "later"}, "bad option verify='later'"),
                                     ({"risk_weight": -1.0}, "bad option risk_weight=-1.0"),
                                     ({"risk_target": 1.5}, r"bad option risk_target=1.5: expected a number in \[0, 1\]"),
                                     ({"k_choices": (5,)}, "5 was not recorded")])
def test_bad_option_values(trace_file, kw, msg):
    with pytest.raises(EnvConfigError, match=msg):
        gym.make("hlm_gym/HybridLMCompressed-v0", trace=trace_file, **kw)


def test_bad_scenario_override(trace_file):
    from hlm_gym.wireless.scenarios import ScenarioError

    with pytest.raises(ScenarioError):
        gym.make("hlm_gym/HybridLM-v0", trace=trace_file, **{"link.no_such_key": 1.0})


@pytest.mark.parametrize("action", [2, -1, 0.5, "send", np.array([0, 1]), True])
def test_action_outside_space(trace_file, action):
    env = HybridLMEnv(trace=trace_file)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action .*expected an integer in 0\.\.1"):
        env.step(action)


def test_missing_and_corrupt_and_future_trace(tmp_path, trace_file):
    with pytest.raises(TraceError, match="trace file not found"):
        gym.make("hlm_gym/HybridLM-v0", trace=str(tmp_path / "missing.parquet"))
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(TraceError, match="not a valid Parquet file"):
        gym.make("hlm_gym/HybridLM-v0", trace=str(bad))
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(trace_file)
    meta = json.loads(table.schema.metadata[b"hlm_gym"])
    meta["schema_version"] = SCHEMA_VERSION + 5
    future = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata({b"hlm_gym": json.dumps(meta).encode()}), future)
    with pytest.raises(TraceError, match="newer than the supported version"):
        gym.make("hlm_gym/HybridLM-v0", trace=str(future))


def test_step_before_reset(trace_file):
    env = HybridLMEnv(trace=trace_file)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


# ----------------------------------------------------------------------------- live mode
def test_live_mode_agrees_with_trace_mode(trace_file):
    trace_env = HybridLMEnv(trace=trace_file)
    live_env = HybridLMEnv(trace=trace_file, mode="live", pair=tiny_pair(), render_mode="ansi")
    assert live_env.observation_space == trace_env.observation_space
    assert live_env.action_space == trace_env.action_space
    matched = 0
    for seed in range(6):
        _, ti = run_episode(trace_env, lambda o: 1, seed)
        _, li = run_episode(live_env, lambda o: 1, seed)
        assert live_env._prompt == trace_env._prompt
        same = live_env.output_tokens == trace_env.output_tokens
        matched += same
        if same:
            for key in ("tokens_per_s", "transmission_rate", "error_rate", "tokens", "time_s"):
                assert li[-1][key] == ti[-1][key], key
            assert [i["rejected"] for i in li] == [i["rejected"] for i in ti]
    assert matched >= 5  # float-level flips of batched vs single-prompt matmuls are rare
    assert "prompt" in live_env.render()
    # skipping in live mode: the draft is kept, its beta is the LLM's (the trace's at the first position)
    _, i0 = live_env.reset(seed=0)
    _, _, _, _, info = live_env.step(0)
    r0 = live_env.sim.tables.starts[i0["prompt"]]
    assert info["sent"] is False and info["beta"] == pytest.approx(live_env.sim.tables.beta_full[r0], abs=1e-5)


def test_live_mode_rejects_deferred(trace_file):
    with pytest.raises(EnvConfigError, match="deferred verification is only available in trace mode"):
        HybridLMEnv(trace=trace_file, mode="live", verify="deferred", pair=tiny_pair())


@pytest.mark.slow
def test_live_mode_real_models(tmp_path):
    """One small check with the real embedded LLM and a 2-layer early-exit SLM."""
    from hlm_gym.lm.decoding import DecoderConfig
    from hlm_gym.lm.models import load_pair
    from hlm_gym.traces.builder import build_traces, sharegpt_trace_prompts

    try:
        pair = load_pair(slm="early-exit:2")
    except Exception as exc:  # pragma: no cover - the model package is missing
        pytest.skip(f"embedded model unavailable: {exc}")
    prompts = sharegpt_trace_prompts(pair.tokenizer, "validation", 2, seed=5)
    out = build_traces(pair, prompts, DecoderConfig(max_new_tokens=6), tmp_path / "real.parquet", batch_size=2,
                       measure=False, extra_meta={"slm_spec": "early-exit:2", "llm_spec": "embedded"})
    trace_env = HybridLMEnv(trace=str(out))
    live_env = HybridLMEnv(trace=str(out), mode="live", pair=pair)
    for seed in range(2):
        _, ti = run_episode(trace_env, lambda o: 1, seed)
        _, li = run_episode(live_env, lambda o: 1, seed)
        assert live_env.output_tokens == trace_env.output_tokens
        for key in ("tokens_per_s", "transmission_rate", "error_rate"):
            assert li[-1][key] == ti[-1][key]


def test_shipped_traces_default():
    """The default (shipped) trace set, when present: every split loads and makes an env."""
    from hlm_gym.traces.store import default_trace_path

    if not default_trace_path("train").is_file():
        with pytest.raises(TraceError, match="shipped trace file .* is missing"):
            gym.make("hlm_gym/HybridLM-v0")
        return
    for split in ("train", "validation", "test"):
        tr = load_traces(default_trace_path(split))
        assert {p["split"] for p in tr.meta["prompts"]} == {split}
    env = gym.make("hlm_gym/HybridLM-v0", split="test")
    _, infos = run_episode(env, lambda o: int(o[0] > 0.3), 0)
    assert infos[-1]["tokens"] >= 1


def test_live_mode_warns_on_a_different_model(trace_file):
    pair = tiny_pair()
    pair.slm_fingerprint = "another-slm"
    with pytest.warns(UserWarning, match="live mode: the SLM .* is not the one the trace"):
        HybridLMEnv(trace=trace_file, mode="live", pair=pair)
