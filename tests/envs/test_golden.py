"""Golden trajectories: today's environments reproduce the ones recorded before the restructure.

``tests/data/golden/trajectories.npz`` was recorded with ``tests/data/golden/record.py`` on
commit 40101af (single env, numpy vector env and torch vector env on the CPU; both env ids;
seven option sets incl. ``verify="deferred"``, truncation and ``skip_window=100``). Each
trajectory is replayed with the same seeds and actions and must be identical: integer and boolean
arrays exactly, floating-point arrays to 1e-12 relative. On the CPU type they were recorded on
they are equal bit for bit; another CPU's vectorised math library rounds the channel's rates in
the last bit or two (up to 5e-16 relative, measured on an Intel Xeon with AVX-512), so exact
float equality would test the machine, not the code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
#: relative tolerance of floating-point arrays (about 4500 ULPs of float64: far below any change
#: of the dynamics, far above libm rounding differences between CPUs)
RTOL = 1e-12


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
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=0.0, equal_nan=True, err_msg=f"{prefix}{key} differs")
        else:
            assert np.array_equal(g, w), f"{prefix}{key} differs"


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
