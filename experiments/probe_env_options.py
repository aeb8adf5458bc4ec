"""Probe the HybridLM environments with bad options, reset options and sizes; print one JSON line each.

    python experiments/probe_env_options.py [CHECKOUT]     (default: this checkout)

Each line is ``[env, options, outcome]``: ``accepted``, ``clear error: <type>: <message>`` (an
hlm_gym error) or ``raw exception: ...``. Run on two checkouts to compare them (the "before"
column of docs/reliability.md is this script run on commit 40101af).
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(HERE))
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import hlm_gym  # noqa: E402,F401

T = str(HERE / "tests" / "data" / "golden" / "trace.parquet")
B, C = "hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0"
probes = [
 (B, {"latency_ref_s": math.inf}), (B, {"latency_ref_s": "fast"}), (B, {"channel_dt_s": math.inf}), (B, {"channel_dt_s": math.nan}),
 (B, {"prompts": []}), (B, {"prompts": [0, -1]}), (B, {"prompts": [0, 1.5]}), (B, {"channel_seed": "abc"}), (B, {"channel_seed": -1}),
 (B, {"channel_bank_size": 2.5}), (B, {"channel_bank_size": True}), (B, {"channel_bank_points": 100.0}),
 (B, {"risk_weight": True}), (B, {"risk_weight": np.float32(2)}), (B, {"risk_weight": "1"}), (B, {"risk_target": np.bool_(True)}),
 (B, {"skip_window": 2.5}), (B, {"skip_window": True}), (B, {"skip_window": 100}), (B, {"device": ""}),
 (C, {"k_choices": (8, 8)}), (C, {"k_choices": (8.5,)}), (C, {"k_choices": (50000, 60000)}), (B, {"k_choices": (8,)}),
 (B, {"risk_wieght": 2.0}),
]


def outcome(f):
    try:
        f(); return "accepted"
    except Exception as e:
        mod = type(e).__module__
        kind = "clear error" if mod.startswith("hlm_gym") else "raw exception"
        return f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:90]}"


for env_id, kw in probes:
    print(json.dumps([env_id.split("/")[1], repr(kw), outcome(lambda: gym.make(env_id, trace=T, **kw))]))
e = gym.make(B, trace=T)
for opt in ({"promt": 0}, {"prompt": 1.5}, {"prompt": True}):
    print(json.dumps(["reset", repr(opt), outcome(lambda: e.reset(seed=0, options=opt))]))
for kw in ({"num_envs": 2.5}, {"num_envs": 2, "max_episode_steps": 0}, {"num_envs": 2, "skip_window": 100}):
    print(json.dumps(["vector", repr(kw), outcome(lambda: gym.make_vec(B, vectorization_mode="vector_entry_point", trace=T, **kw))]))
