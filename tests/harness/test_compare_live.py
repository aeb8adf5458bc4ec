"""``compare --live`` on the HybridLM family: every policy also run live (tiny pair), live columns merged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.harness.test_training import TINY
from tests.tiny_models import build_tiny_trace, tiny_pair

ROOT = Path(__file__).resolve().parents[2]


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
    # experiments/live_tables.py: the same episodes in trace mode beside live, and the headline table
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("live_tables", ROOT / "experiments" / "live_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    doc = json.loads(Path(res["files"]["json"]).read_text())
    trace = tables.paired_trace(doc, tiny_pair().tokenizer)
    entries = {e["policy"]: e for e in tables.table_rows(doc, trace)}
    assert {"always", "ppo:lambda=5", "threshold:1"} <= set(entries) and entries["ppo:lambda=5"]["seeds"] == 2
    assert entries["always"]["trace_transmission_rate"][0] == entries["always"]["live_transmission_rate"][0] == 1.0
    assert entries["always"]["trace_fidelity"][0] == pytest.approx(1.0)
    md, head = tables.headline_md(list(entries.values()), "cmd", 4)
    assert "45.93 %" in md and {h["policy"] for h in head} >= {"threshold:1", "ppo:lambda=5"}
    assert all(h["transmission_reduction"] == pytest.approx(1 - entries[h["policy"]]["live_transmission_rate"][0])
               for h in head)
    assert "live − trace" in tables.trace_vs_live_md(list(entries.values()), "cmd", 4, 20_000)
