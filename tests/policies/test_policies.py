"""Each policy behaves as its rule says on crafted observations; spec strings; bad input."""

from __future__ import annotations

import math
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from hlm_gym.environments.hybrid_lm.observation import OBS_INDEX, OBS_NAMES, SEND, SKIP
from hlm_gym.errors import HLMGymError
from hlm_gym.policies import (AlwaysSend, BiLDFallback, CALMSoftmax, ChannelAwareThreshold, NeverSend, PolicyContext,
                              PolicyError, RandomSkip, UncertaintyThreshold, as_draft_policy, draft_observation,
                              make_policy)
from hlm_gym.policies.fit import fit_uhlm
from hlm_gym.policies.rules import calm_threshold

MAX_TOKENS = 100


def obs(n: int = 1, **values) -> np.ndarray:
    """``n`` observations with a good channel and the given entries (scalars or arrays)."""
    o = np.zeros((n, len(OBS_NAMES)))
    o[:, OBS_INDEX["top1_prob"]] = 0.9
    o[:, OBS_INDEX["margin"]] = 0.8
    o[:, OBS_INDEX["snr_db"]] = 20.0
    o[:, OBS_INDEX["log_rate"]] = 8.0
    for k, v in values.items():
        o[:, OBS_INDEX[k]] = v
    return o


def synthetic_fit():
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, 4000)
    return fit_uhlm(u, np.clip(0.8 * u - 0.06 + rng.normal(0, 0.03, u.size), 0, 1))


def test_always_never_shapes_and_predict():
    o = obs(5)
    np.testing.assert_array_equal(AlwaysSend().act(o), [SEND] * 5)
    np.testing.assert_array_equal(NeverSend().act(o), [SKIP] * 5)
    a = AlwaysSend().act(o[0])
    assert a.shape == (1,) and a.dtype == np.int64
    act, state = NeverSend().predict(o[0])
    assert act.shape == () and int(act) == SKIP and state is None
    act, _ = AlwaysSend().predict(o, episode_start=np.ones(5, bool))
    assert act.shape == (5,)
    with pytest.raises(PolicyError):
        AlwaysSend().act(np.zeros((2, 3)))


def test_uncertainty_threshold_rule():
    u = np.array([0.0, 0.05, 0.1, 0.1000001, 0.5, 1.0])
    np.testing.assert_array_equal(UncertaintyThreshold(0.1).act(obs(6, u=u)), [SKIP, SKIP, SKIP, SEND, SEND, SEND])
    assert (UncertaintyThreshold(-np.inf).act(obs(6, u=u)) == SEND).all()
    assert (UncertaintyThreshold(1.0).act(obs(6, u=u)) == SKIP).all()


def test_random_skip_rate_and_seed():
    o = obs(20000)
    a = RandomSkip(0.3, seed=7).act(o)
    assert np.mean(a == SKIP) == pytest.approx(0.3, abs=0.02)
    np.testing.assert_array_equal(RandomSkip(0.3, seed=7).act(o), a)
    np.testing.assert_array_equal(RandomSkip(0.3, rng=np.random.default_rng(7)).act(o), a)
    assert not np.array_equal(RandomSkip(0.3, seed=8).act(o), a)
    assert (RandomSkip(0.0, seed=1).act(o) == SEND).all() and (RandomSkip(1.0, seed=1).act(o) == SKIP).all()
    p = RandomSkip(0.5, seed=3)
    first = p.act(o[:50])
    p.reseed(3)
    np.testing.assert_array_equal(p.act(o[:50]), first)


def test_bild_fallback_rule():
    top1 = np.array([0.2, 0.59, 0.6, 0.95])
    np.testing.assert_array_equal(BiLDFallback().act(obs(4, top1_prob=top1)), [SEND, SEND, SKIP, SKIP])
    np.testing.assert_array_equal(BiLDFallback(0.3).act(obs(4, top1_prob=top1)), [SEND, SKIP, SKIP, SKIP])
    forced = BiLDFallback(0.6, max_small_steps=10, max_tokens=MAX_TOKENS)
    np.testing.assert_array_equal(forced.act(obs(2, top1_prob=0.9, pending=np.array([0.09, 0.10]))), [SKIP, SEND])


def test_calm_decaying_threshold():
    pol = CALMSoftmax(0.9, max_tokens=MAX_TOKENS)
    assert pol.threshold(0) == pytest.approx(0.9)
    assert pol.threshold(MAX_TOKENS) == pytest.approx(0.81 + 0.09 * math.exp(-4))
    assert calm_threshold(0.5, 25, 100) == pytest.approx(0.45 + 0.05 * math.exp(-1))
    # a margin of 0.85 is not confident at t = 0 (lambda = 0.9) but is at t = 50 (lambda ~ 0.822)
    o = obs(2, margin=0.85, position=np.array([0.0, 0.5]))
    np.testing.assert_array_equal(pol.act(o), [SEND, SKIP])
    np.testing.assert_array_equal(CALMSoftmax(0.9, MAX_TOKENS, decay=False).act(o), [SEND, SEND])
    np.testing.assert_array_equal(pol.act(obs(2, margin=np.array([0.95, 0.1]))), [SKIP, SEND])


def test_channel_aware_threshold_rises_with_uplink_cost():
    from hlm_gym.wireless.scenarios import load_scenario

    sc = load_scenario("pedestrian")
    fit = synthetic_fit()
    pol = ChannelAwareThreshold(sc, risk_weight=1.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit)
    rates = np.array([1e6, 1e7, 1e8, 1e10])
    th = pol.threshold(rates, 0)
    assert np.all(np.diff(th) < 0)  # slower uplink -> higher threshold
    # the threshold is exactly where lambda * beta_hat(u) equals the normalised send cost
    cost = pol.send_cost_s(rates, 0) / 0.1
    np.testing.assert_allclose(pol.risk_weight * (fit.a * th + fit.b), cost)
    # very fast, cheap link: tends to the risk-averse threshold
    assert th[-1] > fit.u_th_averse
    # the rule agrees with the threshold on crafted observations
    log_rate = np.log10(1 + 1e7)
    u_th = float(pol.threshold(1e7, 0)[0])
    o = obs(2, log_rate=log_rate, u=np.array([u_th - 0.02, u_th + 0.02]))
    np.testing.assert_array_equal(pol.act(o), [SKIP, SEND])
    # a larger lambda (risk is dearer) lowers the threshold
    dear = ChannelAwareThreshold(sc, risk_weight=10.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit)
    assert dear.threshold(1e7, 0)[0] < u_th
    # pending tokens make the upload dearer
    assert pol.threshold(1e7, 20)[0] > u_th
    look = ChannelAwareThreshold(sc, risk_weight=1.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit, lookahead=True)
    assert look.threshold(1e7, 0)[0] < u_th  # deferred catch-up makes skipping less attractive
    # a risk target R shifts the threshold up by R / a (tokens safer than R are worth skipping)
    tgt = ChannelAwareThreshold(sc, risk_weight=1.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit, target=0.3)
    np.testing.assert_allclose(tgt.threshold(rates, 0), th + 0.3 / fit.a)
    fast = np.log10(1 + 1e9)  # a link where u_th ~ 0.4, inside the unclipped part of beta_hat
    u_fast = float(pol.threshold(1e9, 0)[0])
    u_tgt = u_fast + 0.3 / fit.a
    assert 0 < u_fast < u_tgt - 0.05 and u_tgt + 0.05 < 1
    o = obs(3, log_rate=fast, u=np.array([u_fast + 0.02, u_tgt - 0.02, u_tgt + 0.02]))
    np.testing.assert_array_equal(pol.act(o), [SEND, SEND, SEND])
    np.testing.assert_array_equal(tgt.act(o), [SKIP, SKIP, SEND])
    with pytest.raises(PolicyError):
        ChannelAwareThreshold(sc, risk_weight=0.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit)
    with pytest.raises(PolicyError, match="risk target"):
        ChannelAwareThreshold(sc, risk_weight=1.0, latency_ref=0.1, max_tokens=MAX_TOKENS, fit=fit, target=1.5)


def test_specs_build_the_right_rules():
    fit = synthetic_fit()
    ctx = PolicyContext(max_tokens=MAX_TOKENS, seed=0, fit=fit)
    assert isinstance(make_policy("always", ctx), AlwaysSend)
    assert isinstance(make_policy("HLM", ctx), AlwaysSend)
    assert isinstance(make_policy("never", ctx), NeverSend)
    assert make_policy("random:0.3", ctx).rate == 0.3
    assert make_policy("threshold:0.1", ctx).u_th == 0.1
    assert make_policy("uhlm", ctx).u_th == pytest.approx(fit.threshold("averse"))
    assert make_policy("uhlm:prone", ctx).u_th == pytest.approx(fit.threshold("prone"))
    assert make_policy("bild", ctx).alpha_fb == 0.6 and make_policy("bild:0.4", ctx).alpha_fb == 0.4
    calm = make_policy("calm:0.8", ctx)
    assert calm.lam == 0.8 and calm.max_tokens == MAX_TOKENS
    from hlm_gym.wireless.scenarios import load_scenario

    env_ctx = ctx.replace(scenario=load_scenario("static-good"), latency_ref=0.1)
    ca = make_policy("channel-aware:lambda=2", env_ctx)
    assert isinstance(ca, ChannelAwareThreshold) and ca.risk_weight == 2.0 and ca.target == 0.0
    ca = make_policy("channel-aware:lambda=10,target=0.3", env_ctx)
    assert ca.risk_weight == 10.0 and ca.target == 0.3
    # lambda and the risk target default to the environment's
    ca = make_policy("channel-aware", env_ctx.replace(risk_weight=3.0, risk_target=0.2))
    assert ca.risk_weight == 3.0 and ca.target == 0.2
    with pytest.raises(PolicyError, match="channel-aware needs lambda > 0"):
        make_policy("channel-aware", env_ctx)
    with pytest.raises(PolicyError, match="target must be in"):
        make_policy("channel-aware:lambda=10,target=2", env_ctx)


def test_ltt_spec_calibrates_on_given_columns():
    rng = np.random.default_rng(0)
    n, t = 300, 30
    u = rng.binomial(20, rng.beta(0.6, 3.0, size=(n, t))) / 20.0
    beta = np.clip(0.8 * u - 0.06 + rng.normal(0, 0.05, u.shape), 0, 1)
    cols = {"u": u.ravel(), "beta": beta.ravel(), "prompt": np.repeat(np.arange(n), t)}
    pol = make_policy("ltt:delta=0.05,eps=0.1", PolicyContext(calibration=cols, max_tokens=MAX_TOKENS))
    assert isinstance(pol, UncertaintyThreshold) and 0.0 <= pol.u_th <= 1.0
    assert pol.ltt.threshold == pol.u_th and pol.ltt.risk_hat_at_threshold <= 0.05
    strict = make_policy("ltt:delta=0.001,eps=0.1", PolicyContext(calibration=cols))
    assert strict.u_th == -np.inf  # nothing certifiable: never skip


@pytest.mark.parametrize("spec", ["nonsense", "threshold:1.5", "threshold:-0.1", "threshold:abc", "random:2",
                                  "random", "bild:x", "calm:1.2", "uhlm:maybe", "ltt:delta=2", "ltt:foo=1",
                                  "ltt:delta=0.05,eps=0", "always:1", "", "ppo:"])
def test_bad_specs_raise_one_line_policy_error(spec):
    with pytest.raises(PolicyError) as exc:
        make_policy(spec, PolicyContext(max_tokens=MAX_TOKENS, fit=synthetic_fit()))
    msg = str(exc.value)
    assert "\n" not in msg and "valid forms" in msg and repr(spec) in msg
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, HLMGymError)


def test_model_file_that_is_not_a_policy(tmp_path):
    bad = tmp_path / "model.zip"
    bad.write_text("not a zip")
    with pytest.raises(PolicyError, match="not a Stable-Baselines3 model"):
        make_policy(f"ppo:{bad}")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(PolicyError, match="not a Stable-Baselines3 model"):
        make_policy(f"ppo:{other}")
    with pytest.raises(PolicyError, match="not found"):
        make_policy(f"ppo:{tmp_path / 'missing.zip'}")
    corrupt = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(corrupt, "w") as zf:
        zf.writestr("data", "{}")
        zf.writestr("policy.pth", b"garbage")
    with pytest.raises(PolicyError, match="could not be loaded"):
        make_policy(f"ppo:{corrupt}")


def test_saved_ppo_model_loads_as_policy(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import gymnasium as gym
    from stable_baselines3 import PPO

    from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW

    class Dummy(gym.Env):
        observation_space = gym.spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return np.zeros(len(OBS_NAMES), np.float32), {}

        def step(self, action):
            return np.zeros(len(OBS_NAMES), np.float32), 0.0, True, False, {}

    model = PPO("MlpPolicy", Dummy(), n_steps=8, batch_size=8, device="cpu", policy_kwargs={"net_arch": [4]})
    model.save(tmp_path / "ppo_model.zip")
    pol = make_policy(f"ppo:{tmp_path / 'ppo_model.zip'}")
    a = pol.act(obs(3))
    assert a.shape == (3,) and set(a.tolist()) <= {0, 1}
    np.testing.assert_array_equal(pol.act(obs(3)), a)  # deterministic


def test_draft_adapter_builds_the_env_observation():
    signals = {"u": 0.3, "entropy": math.log(1000) / 2, "top1_prob": 0.5, "margin": 0.2, "saturation": float("nan")}
    o = draft_observation(signals, position=10, pending=2, max_tokens=MAX_TOKENS, vocab_size=1000, snr_db=5.0,
                          rate_bps=1e6)
    assert o[OBS_INDEX["u"]] == 0.3 and o[OBS_INDEX["entropy"]] == pytest.approx(0.5)
    assert o[OBS_INDEX["saturation"]] == 0.0 and o[OBS_INDEX["position"]] == pytest.approx(0.1)
    assert o[OBS_INDEX["pending"]] == pytest.approx(0.02) and o[OBS_INDEX["log_rate"]] == pytest.approx(6.0, abs=1e-6)

    class Q:
        shape = (1000,)

    decide = as_draft_policy(UncertaintyThreshold(0.25), max_tokens=MAX_TOKENS)
    draft = SimpleNamespace(signals=signals, position=0, pending=0, q_probs=Q())
    assert decide(draft) is True
    draft.signals = dict(signals, u=0.1)
    assert decide(draft) is False


@pytest.mark.parametrize("spec", ["nonsense", "threshold:1.5", "random:x", "ltt:eps=0", "calm:7", "uhlm:x"])
def test_validate_spec_rejects_without_building(spec):
    from hlm_gym.policies.registry import validate_spec

    with pytest.raises(PolicyError):
        validate_spec(spec)


@pytest.mark.parametrize("spec", ["always", "never", "random:0.3", "threshold:0.1", "uhlm", "uhlm:prone", "bild",
                                  "calm:0.9", "ltt:delta=0.05,eps=0.1", "channel-aware:lambda=2"])
def test_validate_spec_accepts_valid_forms(spec):
    from hlm_gym.policies.registry import validate_spec

    parsed = validate_spec(spec)
    assert parsed.text == spec and parsed.kind == spec.partition(":")[0]


def test_make_draft_policy_for_the_decoder():
    from hlm_gym.policies.registry import make_draft_policy

    class Q:
        shape = (1000,)

    decide = make_draft_policy("threshold:0.2", max_tokens=MAX_TOKENS)
    base = {"u": 0.5, "entropy": 1.0, "top1_prob": 0.5, "margin": 0.1, "saturation": 0.9}
    assert decide(SimpleNamespace(signals=base, position=0, pending=0, q_probs=Q())) is True
    assert decide(SimpleNamespace(signals=dict(base, u=0.1), position=1, pending=0, q_probs=Q())) is False


@pytest.mark.slow
def test_draft_policy_drives_the_live_decoder():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from hlm_gym.lm.decoding import DecoderConfig, HybridDecoder
    from hlm_gym.lm.models import load_pair
    from hlm_gym.policies.registry import make_draft_policy
    from hlm_gym.lm.prompts import chat_input_ids

    pair = load_pair(slm="early-exit:8", llm="embedded")
    ids = chat_input_ids(pair.tokenizer, "Name three colours.")
    res = HybridDecoder(pair, DecoderConfig(max_new_tokens=12)).generate(
        ids, make_draft_policy("threshold:0.3", max_tokens=12), seed=0)
    for r in res.records:
        assert r.sent == (r.signals["u"] > 0.3)


def test_sb3_model_with_the_wrong_spaces_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import gymnasium as gym
    from stable_baselines3 import PPO

    class Other(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, shape=(3,), dtype=np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return np.zeros(3, np.float32), {}

        def step(self, action):
            return np.zeros(3, np.float32), 0.0, True, False, {}

    PPO("MlpPolicy", Other(), n_steps=8, batch_size=8, device="cpu", policy_kwargs={"net_arch": [4]}).save(
        tmp_path / "other.zip")
    with pytest.raises(PolicyError, match="shape"):
        make_policy(f"ppo:{tmp_path / 'other.zip'}")


# ------------------------------------------------------------------------------ the registry
def test_validation_is_parsing_into_typed_arguments():
    from hlm_gym.policies.hybrid_lm_kinds import ChannelAwareArgs, LTTArgs, ThresholdArgs, UHLMArgs
    from hlm_gym.policies.registry import validate_spec

    assert validate_spec("ltt:delta=0.1,cal=train").args == LTTArgs(delta=0.1, epsilon=0.1, risk="skipped", cal="train")
    assert validate_spec("channel:lambda=2,lookahead=1").args == ChannelAwareArgs(2.0, None, True)
    assert validate_spec("u-hlm:risk-prone").args == UHLMArgs("prone")
    assert validate_spec("threshold:0.25").args == ThresholdArgs(0.25)
    # parsing fits nothing: uhlm on a trace folder that does not exist parses, and only building fails
    assert validate_spec("uhlm").kind == "uhlm"
    with pytest.raises(ValueError, match="not found"):  # TraceError
        make_policy("uhlm", PolicyContext(traces="/nonexistent/traces"))


def test_a_new_env_family_registers_its_own_kinds():
    from dataclasses import dataclass

    from hlm_gym.policies.kind import PolicyKind, SpecArgumentError, number
    from hlm_gym.policies.registry import REGISTRY

    @dataclass(frozen=True)
    class ExpertArgs:
        k: float

    class TopK(NeverSend):
        n_actions = 4

        def __init__(self, k):
            self.k = k

    def parse(arg):
        if not arg:
            raise SpecArgumentError("experts needs a count, e.g. experts:2")
        return ExpertArgs(number(arg, "expert count", unit=False))

    kind = PolicyKind("experts", "experts:K", parse, lambda s, c: TopK(s.args.k), env_ids=("toy/Experts-v0",))
    reg = REGISTRY.extended([kind])
    toy = PolicyContext(env_id="toy/Experts-v0", n_actions=4, send_action=3)
    assert reg.build("experts:2", toy).k == 2.0
    assert "experts:K" in reg.valid_forms("toy/Experts-v0") and "threshold:U" not in reg.valid_forms("toy/Experts-v0")
    assert "experts" not in REGISTRY.valid_forms()  # the shipped table is not changed
    with pytest.raises(PolicyError, match="experts needs a count.*valid forms"):
        reg.parse("experts")
    with pytest.raises(PolicyError, match="threshold does not apply to toy/Experts-v0"):
        reg.build("threshold:0.3", toy)
    with pytest.raises(PolicyError, match="does not apply to hlm_gym/HybridLM-v0"):
        reg.build("experts:2")
    with pytest.raises(ValueError, match="registered twice"):
        REGISTRY.extended([kind, kind])


def test_binary_rules_map_onto_the_compressed_action_space():
    ctx = PolicyContext(env_id="hlm_gym/HybridLMCompressed-v0", n_actions=3, send_action=2, max_tokens=MAX_TOKENS)
    pol = make_policy("threshold:0.5", ctx)
    assert pol.n_actions == 3
    np.testing.assert_array_equal(pol.act(obs(3, u=np.array([0.1, 0.6, 0.9]))), [0, 2, 2])
    assert make_policy("always", ctx).act(obs(2)).tolist() == [2, 2]
    assert make_policy("never", ctx).act(obs(2)).tolist() == [0, 0]
    assert make_policy("threshold:0.5").n_actions == 2  # the binary env: unchanged


def test_policy_context_is_typed():
    ctx = PolicyContext(max_tokens=MAX_TOKENS)
    assert ctx.replace(risk_weight=2.0).risk_weight == 2.0 and ctx.risk_weight is None
    with pytest.raises(PolicyError, match="unknown policy context field.*lambda_"):
        ctx.replace(lambda_=2.0)
    with pytest.raises(Exception):
        ctx.max_tokens = 3  # frozen


def _dummy_env_class(n_actions: int):
    import gymnasium as gym

    from hlm_gym.environments.hybrid_lm.observation import OBS_HIGH, OBS_LOW

    class Dummy(gym.Env):
        observation_space = gym.spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        action_space = gym.spaces.Discrete(n_actions)

        def reset(self, *, seed=None, options=None):
            return np.zeros(len(OBS_NAMES), np.float32), {}

        def step(self, action):
            return np.zeros(len(OBS_NAMES), np.float32), 0.0, True, False, {}

    return Dummy


def test_sb3_model_action_space_is_checked_against_the_env(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from stable_baselines3 import PPO

    from hlm_gym.policies.registry import make_draft_policy

    PPO("MlpPolicy", _dummy_env_class(3)(), n_steps=8, batch_size=8, device="cpu",
        policy_kwargs={"net_arch": [4]}).save(tmp_path / "cu.zip")
    spec = f"ppo:{tmp_path / 'cu.zip'}"
    pol = make_policy(spec, PolicyContext(env_id="hlm_gym/HybridLMCompressed-v0", n_actions=3, send_action=2))
    assert pol.n_actions == 3 and set(pol.act(obs(4)).tolist()) <= {0, 1, 2}
    with pytest.raises(PolicyError, match="has 3 actions; hlm_gym/HybridLM-v0 has 2"):
        make_policy(spec)
    with pytest.raises(PolicyError, match="has 3 actions"):
        make_draft_policy(spec, max_tokens=MAX_TOKENS)


def test_zips_of_the_old_layout_load(tmp_path, monkeypatch):
    """A zip whose policy_kwargs name hlm_gym.training.NormalizedObsExtractor (the layout before the
    package was layered) loads, with the normalisation it was saved with."""
    import sys
    import types

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from stable_baselines3 import PPO

    from hlm_gym.policies.sb3_model import NormalizedObsExtractor, load_sb3_policy

    old = types.ModuleType("hlm_gym.training")
    legacy = type("NormalizedObsExtractor", (NormalizedObsExtractor,), {"__module__": "hlm_gym.training"})
    old.NormalizedObsExtractor = legacy
    monkeypatch.setitem(sys.modules, "hlm_gym.training", old)
    mean, var = np.linspace(0, 1, len(OBS_NAMES)), np.linspace(1, 4, len(OBS_NAMES))
    pk = {"net_arch": [4], "features_extractor_class": legacy,
          "features_extractor_kwargs": {"mean": mean.tolist(), "var": var.tolist(), "epsilon": 1e-8, "clip_obs": 5.0}}
    model = PPO("MlpPolicy", _dummy_env_class(2)(), n_steps=8, batch_size=8, device="cpu", policy_kwargs=pk, seed=0)
    model.save(tmp_path / "old.zip")
    monkeypatch.delitem(sys.modules, "hlm_gym.training")  # the old module is gone, as in the new layout
    with pytest.raises(ModuleNotFoundError, match="hlm_gym.training"):
        PPO.load(tmp_path / "old.zip", device="cpu")  # plain SB3 cannot resolve the old class path
    pol = load_sb3_policy(str(tmp_path / "old.zip"))
    ext = pol.model.policy.features_extractor
    assert type(ext) is NormalizedObsExtractor and ext.clip_obs == 5.0
    np.testing.assert_allclose(ext.mean.numpy(), mean, rtol=1e-6)
    o = obs(5, u=np.linspace(0, 1, 5))
    np.testing.assert_array_equal(pol.act(o), model.predict(o.astype(np.float32), deterministic=True)[0])
