"""Bad environment options, reset options and actions: one clear error naming the culprit, before any work."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import hlm_gym  # noqa: F401
from hlm_gym.environments.hybrid_lm.config import EnvConfigError, UnknownOptionError
from hlm_gym.environments.hybrid_lm.vector import HybridLMVectorEnv
from hlm_gym.errors import HLMGymError
from hlm_gym.traces.store import TraceError
from hlm_gym.wireless.scenarios import ScenarioError

GOLDEN_TRACE = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "golden" / "trace.parquet")
BINARY, COMPRESSED = "hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0"

BAD_OPTIONS = [
    ("latency_ref_s", math.inf), ("latency_ref_s", 0.0), ("latency_ref_s", -1.0), ("latency_ref_s", "fast"),
    ("channel_dt_s", math.inf), ("channel_dt_s", 0.0), ("channel_dt_s", math.nan),
    ("prompts", []), ("prompts", [0, -1]), ("prompts", ["a"]), ("prompts", 3), ("prompts", [0, 1.5]),
    ("channel_seed", "abc"), ("channel_seed", -1), ("channel_seed", 1.5), ("channel_seed", True),
    ("channel_bank_size", 2.5), ("channel_bank_size", 0), ("channel_bank_size", True),
    ("channel_bank_points", 1), ("channel_bank_points", 100.0),
    ("risk_weight", True), ("risk_weight", -1.0), ("risk_weight", math.nan), ("risk_weight", math.inf),
    ("risk_weight", "1"), ("risk_target", 1.5), ("risk_target", -0.1), ("risk_target", np.bool_(True)),
    ("skip_window", 0), ("skip_window", 2.5), ("skip_window", True),
    ("split", "dev"), ("risk", "loss"), ("verify", "later"), ("mode", "replay"),
    ("trace", 3), ("device", ""),
]


@pytest.mark.parametrize("name, value", BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_bad_option_is_one_clear_error(name, value):
    kw = {"trace": GOLDEN_TRACE} | {name: value}
    with pytest.raises(EnvConfigError) as err:
        gym.make(BINARY, **kw)
    msg = str(err.value)
    assert isinstance(err.value, HLMGymError) and len(msg.splitlines()) == 1
    assert f"{name}=" in msg and "expected" in msg


@pytest.mark.parametrize("name, value", [("risk_weight", np.float32(2.0)), ("risk_weight", np.int64(3)),
                                         ("risk_target", np.float64(0.3)), ("skip_window", np.int32(8)),
                                         ("channel_seed", np.uint8(4)), ("prompts", np.arange(3)),
                                         ("latency_ref_s", 1)])
def test_numpy_and_integer_numbers_are_accepted(name, value):
    env = gym.make(BINARY, trace=GOLDEN_TRACE, **{name: value})
    got = getattr(env.unwrapped.config, name)
    assert type(got) in (int, float, tuple) and np.array_equal(np.asarray(got), np.asarray(value))


def test_prompt_index_out_of_range_names_the_range():
    with pytest.raises(EnvConfigError, match=r"prompts: indices \[999\] out of range"):
        gym.make(BINARY, trace=GOLDEN_TRACE, prompts=[0, 999])


@pytest.mark.parametrize("k_choices, why", [((8, 8), "distinct"), ((8.5,), "8.5"), ((), "non-empty"),
                                            ((0,), ">= 1"), ((7,), "was not recorded"),
                                            ((50000, 60000), "full distribution")])
def test_bad_k_choices(k_choices, why):
    with pytest.raises(EnvConfigError, match="k_choices") as err:
        gym.make(COMPRESSED, trace=GOLDEN_TRACE, k_choices=k_choices)
    assert why in str(err.value)


def test_k_choices_on_the_binary_env_is_refused():
    with pytest.raises(EnvConfigError, match="only the compressed env"):
        gym.make(BINARY, trace=GOLDEN_TRACE, k_choices=(8,))


def test_unknown_option_names_it_and_the_allowed_ones():
    with pytest.raises(UnknownOptionError, match="'risk_wieght'") as err:
        gym.make(BINARY, trace=GOLDEN_TRACE, risk_wieght=2.0)
    assert isinstance(err.value, TypeError) and "risk_weight" in str(err.value)


@pytest.mark.parametrize("options, culprit", [({"promt": 0}, "'promt'"), ({"prompt": -1}, "prompt=-1"),
                                              ({"prompt": 1.5}, "prompt=1.5"), ({"prompt": True}, "prompt=True"),
                                              ({"prompt": 10_000}, "prompt=10000")])
def test_bad_reset_options(options, culprit):
    env = gym.make(BINARY, trace=GOLDEN_TRACE)
    with pytest.raises(EnvConfigError) as err:
        env.reset(seed=0, options=options)
    assert culprit in str(err.value)
    obs, info = env.reset(seed=0, options={"prompt": 2})  # a good option still works
    assert info["prompt"] == 2


def test_vector_env_refuses_reset_options_and_bad_sizes():
    venv = HybridLMVectorEnv(num_envs=2, trace=GOLDEN_TRACE)
    with pytest.raises(EnvConfigError, match="'prompt'"):
        venv.reset(seed=0, options={"prompt": 0})
    for kw, name in (({"num_envs": 0}, "num_envs"), ({"num_envs": 2.5}, "num_envs"),
                     ({"num_envs": 2, "max_episode_steps": 0}, "max_episode_steps")):
        with pytest.raises(EnvConfigError, match=name):
            HybridLMVectorEnv(trace=GOLDEN_TRACE, **kw)


def test_bad_scenario_and_missing_trace_name_the_culprit(tmp_path):
    with pytest.raises(ScenarioError, match="nowhere"):
        gym.make(BINARY, trace=GOLDEN_TRACE, scenario="nowhere")
    with pytest.raises(ScenarioError, match="link.mean_snr"):
        gym.make(BINARY, trace=GOLDEN_TRACE, **{"link.mean_snr": 3.0})
    with pytest.raises(TraceError, match="missing.parquet"):
        gym.make(BINARY, trace=str(tmp_path / "missing.parquet"))


@pytest.mark.parametrize("action", [2, -1, 1.0, True, "1", np.array([0, 1]), None])
def test_bad_action_names_the_action_and_the_range(action):
    env = gym.make(BINARY, trace=GOLDEN_TRACE)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action .*expected an integer in 0\.\.1"):
        env.unwrapped.step(action)
