"""Artifacts written atomically under unique temporary names (model zips, VecNormalize statistics,
evaluate's and compare's tables), and compare's results replaced only as a whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.helpers import snapshot


class FakeModel:
    """Records the paths SB3's ``save`` is given; writes ``payload`` there (or fails)."""

    def __init__(self, payload: bytes = b"zip", fail: bool = False) -> None:
        self.payload, self.fail, self.paths = payload, fail, []

    def save(self, path: str) -> None:
        self.paths.append(path)
        Path(path).write_bytes(self.payload[:2])  # a half-written file
        if self.fail:
            raise KeyboardInterrupt
        Path(path).write_bytes(self.payload)


def test_model_zips_go_through_unique_temporary_names(tmp_path):
    from hlm_gym.harness.training import save_model

    target = tmp_path / "best_model.zip"
    a, b = FakeModel(b"first"), FakeModel(b"second")
    save_model(a, target)
    save_model(b, target)
    assert target.read_bytes() == b"second"
    names = [Path(p).name for p in a.paths + b.paths]
    assert names[0] != names[1] and all(n.startswith("best_model.zip.") and n.endswith(".zip") for n in names)
    assert "best_model.tmp.zip" not in names  # the old fixed name runs sharing a folder collided on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.zip"]


def test_a_failed_model_save_leaves_the_old_zip(tmp_path):
    from hlm_gym.harness.training import save_model

    target = tmp_path / "model_last.zip"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        save_model(FakeModel(b"new", fail=True), target)
    assert snapshot(tmp_path) == {"model_last.zip": b"old"}


def test_vecnormalize_statistics_are_written_atomically(tmp_path):
    from hlm_gym.harness.training import save_vecnormalize

    target = tmp_path / "vecnormalize.pkl"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        save_vecnormalize(FakeModel(b"new", fail=True), target)
    assert snapshot(tmp_path) == {"vecnormalize.pkl": b"old"}
    stats = FakeModel(b"new")
    save_vecnormalize(stats, target)
    assert target.read_bytes() == b"new" and Path(stats.paths[0]).name != target.name
    assert Path(stats.paths[0]).name.endswith(".pkl")


def test_a_real_vecnormalize_round_trips(tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import gymnasium as gym

    from hlm_gym.harness.training import save_vecnormalize

    venv = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    save_vecnormalize(venv, tmp_path / "vecnormalize.pkl")
    loaded = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    assert loaded.obs_rms.mean.shape == venv.obs_rms.mean.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vecnormalize.pkl"]


# ------------------------------------------------------------------------------ evaluate's outputs
def _result(note: str = "ok"):
    from hlm_gym.harness.results import EvaluationResult, summarize_episodes

    eps = [{"env": 0, "episode": i, "tokens_per_s": 10.0 + i, "risk": 0.1} for i in range(3)]
    return EvaluationResult(config={"policy": "always", "note": note}, episodes=eps,
                            summary=summarize_episodes(eps, ("tokens_per_s", "risk")))


def test_evaluate_outputs_replace_all_three_or_none(tmp_path, monkeypatch):
    from hlm_gym.harness import evaluation

    paths = evaluation.write_outputs(_result(), tmp_path)
    before = snapshot(tmp_path)
    assert set(before) == {"summary.csv", "episodes.csv", "result.json"}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(evaluation.json, "dumps", broken)  # rendering fails after the CSVs are rendered
    with pytest.raises(OSError):
        evaluation.write_outputs(_result("second"), tmp_path)
    assert snapshot(tmp_path) == before and json.loads(paths["json"].read_text())["config"]["note"] == "ok"


# ------------------------------------------------------------------------------ compare's outputs
def _rows(scenario: str):
    rows = []
    for family, policy, risk, tps in (("uhlm-threshold", "threshold:0.5", 0.1, 10.0), ("ppo", "ppo:lambda=5", 0.1, 12.0)):
        rows.append({"scenario": scenario, "family": family, "policy": policy, "lambda": 5.0, "param": None,
                     "tokens_per_s": tps, "tokens_per_s_ci": 0.5, "risk": risk, "risk_ci": 0.01, "error_rate": 0.05,
                     "error_rate_ci": 0.01, "skip_rate": 0.3, "transmission_rate": 0.7, "energy_j_per_token": 0.1,
                     "episodes": 4})
    return rows


def _write(out: Path, scenarios: tuple[str, ...]):
    from hlm_gym.harness.compare import CompareConfig, dominance, write_outputs

    config = CompareConfig(scenarios=scenarios, risk_weights=(5.0,), risk_targets=())
    rc = config.resolved()
    rows = [r for sc in scenarios for r in _rows(sc)]
    dom = [d for m in ("risk", "error_rate") for sc in scenarios for d in dominance(rows, sc, m)]
    return write_outputs(out, rows, dom, [], rc, config, 1.0)


def test_compare_outputs_are_one_comparisons_set(tmp_path):
    files = _write(tmp_path, ("vehicular", "pedestrian"))
    assert {p.name for p in tmp_path.iterdir()} == {"results.csv", "dominance.csv", "results.md", "compare.json",
                                                     "pareto-vehicular.png", "pareto-pedestrian.png"}
    files = _write(tmp_path, ("vehicular",))  # another comparison into the same folder: no stale plot left
    assert {p.name for p in tmp_path.iterdir()} == {"results.csv", "dominance.csv", "results.md", "compare.json",
                                                     "pareto-vehicular.png"}
    assert json.loads(files["json"].read_text())["config"]["scenarios"] == ["vehicular"]
    assert files["pareto_vehicular"].read_bytes()[:4] == b"\x89PNG"


def test_compare_outputs_are_untouched_when_rendering_fails(tmp_path, monkeypatch):
    from hlm_gym.harness import compare

    _write(tmp_path, ("vehicular", "pedestrian"))
    before = snapshot(tmp_path)

    def broken(rows, scenario):
        if scenario == "pedestrian":
            raise RuntimeError("matplotlib failed")
        return b"\x89PNG"

    monkeypatch.setattr(compare, "pareto_png", broken)  # fails on the second plot, after the CSVs
    with pytest.raises(RuntimeError):
        _write(tmp_path, ("vehicular", "pedestrian"))
    assert snapshot(tmp_path) == before
