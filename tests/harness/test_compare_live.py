"""``compare --live`` on the HybridLM family: every policy also run live (tiny pair), live columns merged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.harness.test_training import TINY
from tests.tiny_models import build_tiny_trace, tiny_pair


@pytest.fixture(scope="module")
def tiny_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-live-traces")
    for i, split in enumerate(("train", "validation", "test")):
        build_tiny_trace(d / f"embedded-{split}.parquet", n_prompts=12 if split == "train" else 6, seed=100 * i)
    return d


def test_compare_live_merges_live_columns(tiny_traces, tmp_path, monkeypatch, capsys):
    import hlm_gym.lm.models as models
    from hlm_gym.harness.compare import CompareConfig, compare

    monkeypatch.setattr(models, "load_pair", lambda **kw: tiny_pair())  # the traces' "tiny" specs
    cfg = CompareConfig(scenarios=("vehicular",), risk_weights=(5.0,), risk_targets=(), timesteps=256,
                        thresholds=(0.0, 1.0), ltt_deltas=(0.1,), episodes=6, n_envs=4, traces=str(tiny_traces),
                        out=str(tmp_path), eval_episodes=6, overrides=dict(TINY), jobs=1, trainer="population",
                        seeds=2, bild_alphas=(), calm_lambdas=(), live=True, live_episodes=4)
    res = compare(cfg)
    rows = {r["policy"]: r for r in res["rows"]}
    always = rows["always"]
    assert always["live_transmission_rate"] == 1.0 and always["live_risk"] == 0.0
    assert always["fidelity"] == pytest.approx(1.0, abs=1e-5) and always["live_episodes"] == 4
    for r in res["rows"]:
        if r.get("note"):
            continue
        assert math.isfinite(r["live_tokens_per_s"]) and math.isfinite(r["live_risk"]), r["policy"]
        assert 0 <= r["live_transmission_rate"] <= 1 and -1 <= r["fidelity"] <= 1.0 + 1e-6
    # the PPO point: the mean of its seeds' live metrics, with an interval over seeds
    ppo = rows["ppo:lambda=5"]
    seeds = [r for r in res["rows"] if r["family"] == "ppo-seed"]
    assert len(seeds) == 2 and ppo["live_risk"] == pytest.approx(sum(r["live_risk"] for r in seeds) / 2)
    md = Path(res["files"]["results_md"]).read_text()
    assert "live tokens/s" in md and "fidelity" in md and "--live" in md
    assert "live tokens/s" in capsys.readouterr().out
