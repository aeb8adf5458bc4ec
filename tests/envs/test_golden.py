"""Golden trajectories: today's environments reproduce the ones recorded before the restructure.

``tests/data/golden/trajectories.npz`` was recorded with ``tests/data/golden/record.py`` on
commit 40101af (single env, numpy vector env and torch vector env on the CPU; both env ids;
seven option sets incl. ``verify="deferred"``, truncation and ``skip_window=100``). Each
trajectory is replayed with the same seeds and actions and must be identical bit for bit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


def _recorder():
    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REC = _recorder()
CASES = [(env_id, name) for env_id in REC.IDS for name, _, _ in REC.CONFIGS]


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "trajectories.npz")


def _compare(golden, prefix: str, got: dict) -> None:
    want = {k[len(prefix):]: golden[k] for k in golden.files if k.startswith(prefix)}
    assert want, f"no golden data under {prefix}"
    assert sorted(want) == sorted(got), f"{prefix}: recorded keys differ"
    for key, w in want.items():
        g = np.asarray(got[key])
        assert g.shape == w.shape, f"{prefix}{key}: shape {g.shape} != {w.shape}"
        assert np.array_equal(g, w, equal_nan=w.dtype.kind == "f"), f"{prefix}{key} differs"


@pytest.mark.parametrize("env_id,name", CASES)
def test_single_env_matches_golden(golden, env_id, name):
    kw = dict(next(c for c in REC.CONFIGS if c[0] == name)[1])
    _compare(golden, f"{env_id.split('/')[1]}/{name}/single/", REC.run_single(env_id, kw))


@pytest.mark.parametrize("env_id,name", [c for c in CASES if next(x for x in REC.CONFIGS if x[0] == c[1])[2]])
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_vector_envs_match_golden(golden, env_id, name, impl):
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    kw = dict(next(c for c in REC.CONFIGS if c[0] == name)[1])
    single_kw = {k: v for k, v in kw.items() if k != "max_episode_steps"}
    n_actions = int(gym.make(env_id, trace=str(REC.TRACE), **single_kw).action_space.n)
    if impl == "numpy":
        make = lambda: gym.make_vec(env_id, num_envs=REC.N_ENVS, vectorization_mode="vector_entry_point",  # noqa: E731
                                    trace=str(REC.TRACE), **kw)
    else:
        make = lambda: REC.make_torch_env("Compressed" in env_id, kw)  # noqa: E731
    _compare(golden, f"{env_id.split('/')[1]}/{name}/{impl}/", REC.run_vector(make, n_actions))
