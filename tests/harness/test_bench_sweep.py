"""experiments/bench_sweep.py: the sweep and jobs its flags resolve to (the timing itself is a benchmark)."""

import importlib.util
from pathlib import Path

import pytest

from hlm_gym.harness.compare_defaults import DEFAULTS

BENCH = Path(__file__).resolve().parents[2] / "experiments" / "bench_sweep.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(bench, *argv):
    return bench._resolve(bench._parser().parse_args(list(argv)))


def test_default_sweep_is_compares(bench):
    a = _args(bench)
    assert a.timesteps == DEFAULTS["timesteps"]
    assert a.risk_weights == list(DEFAULTS["risk_weights"]) and a.risk_targets == list(DEFAULTS["risk_targets"])
    assert len(bench._settings(a)) == 8


def test_full_is_compare_fulls_sweep_and_explicit_flags_win(bench):
    a = _args(bench, "--full")
    assert a.timesteps == DEFAULTS["full_timesteps"]
    assert a.risk_weights == list(DEFAULTS["full_risk_weights"])
    assert a.risk_targets == list(DEFAULTS["full_risk_targets"])
    assert len(bench._settings(a)) == 17  # 3 scenarios x 17 x 3 seeds = compare --full's 153 runs
    b = _args(bench, "--full", "--timesteps", "5000", "--risk-targets", "none")
    assert b.timesteps == 5000 and b.risk_targets == [] and b.risk_weights == list(DEFAULTS["full_risk_weights"])


def test_population_on_a_gpu_is_one_population(bench):
    assert _args(bench, "--device", "cuda").population_jobs == 1
    assert _args(bench, "--device", "cuda:1", "--population-jobs", "3").population_jobs == 3
    cpu = _args(bench)
    assert 1 <= cpu.population_jobs <= 4 and cpu.sb3_jobs == cpu.population_jobs
