"""``hlm-gym compare`` over env families: WDMoE-v0 end to end on a synthetic trace (its defaults,
columns, quality-loss dominance against the weight-to-latency ratio front, its plot), flags that do
not apply to a family refused, ``--live`` merging a family's live metrics, and the shipped HybridLM
comparison re-rendering byte for byte."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

import hlm_gym.environments.wdmoe.simulation as simulation
import hlm_gym.harness.families as families
from hlm_gym.harness.compare import (COLUMNS, CompareConfig, check_config, columns_for, command_line, compare,
                                     config_from_saved, dominance_checks, format_dominance, format_table,
                                     render_outputs, result_row)
from hlm_gym.harness.errors import CompareError
from hlm_gym.harness.hybrid_lm import HYBRID_LM
from hlm_gym.harness.results import EvaluationResult
from hlm_gym.harness.wdmoe import WDMOE
from tests.envs.test_wdmoe_env import synthetic

WDMOE_ID = "hlm_gym/WDMoE-v0"
TINY = {"n_steps": 32, "batch_size": 64, "n_epochs": 1}
BANK = {"channel_bank_size": 2, "channel_bank_points": 1024}  # a small channel bank: fast envs
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ fixtures
def _stat(mean: float, half: float = 0.5, n: int = 4) -> dict:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


@pytest.fixture
def live_calls():
    return []


@pytest.fixture
def wdmoe(monkeypatch, live_calls):
    """WDMoE-v0 on a synthetic trace (every split), its data check passed, a small channel bank,
    and a fake live evaluation that records its calls and reports a perplexity per policy."""
    tr = synthetic(tokens=(6, 5, 7, 4, 6, 5), layers=3)
    monkeypatch.setattr(simulation, "read_traces", lambda source: tr)

    def fake_live(policy, *, env_id, settings, split, episodes, seed, policy_context=None, reference="auto", **_):
        live_calls.append({"policy": policy, "env_id": env_id, "scenario": settings.scenario,
                           "risk_weight": settings.risk_weight, "split": split, "episodes": episodes, "seed": seed})
        ppl = 10.0 + len(live_calls)  # a distinct value per call
        return EvaluationResult(config={}, episodes=[], policy={},
                                summary={"perplexity": _stat(ppl, 0.25, episodes), "tokens_per_s": _stat(1.0)})

    fam = dataclasses.replace(WDMOE, check_data=lambda traces, splits=None: None, evaluate_live=fake_live,
                              env_kwargs=lambda settings, split: WDMOE.env_kwargs(settings, split) | BANK)
    monkeypatch.setattr(families, "FAMILIES", (HYBRID_LM, fam))
    return fam


def _wdmoe_config(out: Path, **kw) -> CompareConfig:
    base = dict(env_id=WDMOE_ID, risk_weights=(2.0,), timesteps=128, thresholds=(0.0, 0.5, 1.0), topk=(1, 8),
                episodes=4, n_envs=4, eval_episodes=4, seeds=2, out=str(out), overrides=dict(TINY), jobs=1)
    return CompareConfig(**(base | kw))


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# ------------------------------------------------------------------------------ WDMoE end to end
def test_wdmoe_compare_end_to_end_population_with_live(wdmoe, live_calls, tmp_path, capsys):
    """Population trainer, 2 fleets, 2 seeds, --live with a fake live evaluation: WDMoE columns,
    quality-loss dominance against the wlr front, no error-rate check, perplexity merged per seed
    and averaged over seeds."""
    res = compare(_wdmoe_config(tmp_path, live=True, live_episodes=3))
    out = capsys.readouterr().out
    rows = res["rows"]
    assert {r["family"] for r in rows} == {"ppo", "ppo-seed", "wlr", "topk", "myopic"}
    assert {r["scenario"] for r in rows} == {"close-static", "mixed-vehicular"}
    assert {r["policy"] for r in rows if r["family"] == "wlr"} == {"wlr:0", "wlr:0.5", "wlr:1"}
    assert {r["policy"] for r in rows if r["family"] == "topk"} == {"topk:1", "topk:8"}
    for r in rows:
        if r["family"] in ("ppo", "ppo-seed", "wlr", "topk", "myopic"):
            assert {"quality_loss", "quality_loss_ci", "latency_per_token_s", "experts_per_layer"} <= set(r)
            assert "risk" not in r and "error_rate" not in r
    # the dominance check: quality loss against the weight-to-latency ratio front, no secondary check
    assert res["dominance_error_rate"] == []
    dom = res["dominance"]
    assert [(d["scenario"], d["policy"]) for d in dom] == [("close-static", "ppo:lambda=2"),
                                                           ("mixed-vehicular", "ppo:lambda=2")]
    for d in dom:
        assert d["metric"] == "quality_loss"
        ppo = next(r for r in rows if r["family"] == "ppo" and r["scenario"] == d["scenario"])
        assert d["risk"] == ppo["quality_loss"] and d["tokens_per_s"] == ppo["tokens_per_s"]
        assert all(p.startswith("wlr:") for p in d["matched_points"].split(";") if p)
    # live: every policy (each PPO seed's model) once per fleet on the test split, the merged perplexity
    n_analytic = 3 + 2 + 1  # wlr x3, topk x2, myopic at the PPO run's reward
    assert len(live_calls) == 2 * (2 + n_analytic)
    assert {(c["split"], c["episodes"], c["seed"], c["env_id"]) for c in live_calls} == {("test", 3, 20_000, WDMOE_ID)}
    assert {c["risk_weight"] for c in live_calls if c["policy"].startswith("ppo:")} == {2.0}
    assert all(c["policy"].endswith("model_last.zip") for c in live_calls if c["policy"].startswith("ppo:"))
    per_seed = [r for r in rows if r["family"] == "ppo-seed"]
    assert all(r["perplexity"] > 10 and r["perplexity_ci"] == 0.25 and r["live_episodes"] == 3 for r in per_seed)
    for r in (r for r in rows if r["family"] == "ppo"):
        mine = [x["perplexity"] for x in per_seed if x["scenario"] == r["scenario"]]
        assert r["seeds"] == 2 and r["perplexity"] == pytest.approx(np.mean(mine))
        assert r["quality_loss"] == pytest.approx(np.mean([x["quality_loss"] for x in per_seed
                                                           if x["scenario"] == r["scenario"]]))
    assert all(math.isfinite(r["perplexity"]) for r in rows if r["family"] in ("wlr", "topk", "myopic"))
    # the files: WDMoE columns, words and plots
    files = res["files"]
    csv_rows = _csv_rows(Path(files["results_csv"]))
    assert tuple(csv_rows[0]) == columns_for(WDMOE_ID)
    assert {"quality_loss", "perplexity", "perplexity_ci", "latency_per_token_s"} <= set(csv_rows[0])
    assert _csv_rows(Path(files["dominance_csv"]))[0]["metric"] == "quality_loss"
    md = Path(files["results_md"]).read_text()
    assert md.startswith("# hlm-gym compare: learned PPO vs analytic expert selection")
    assert "| scenario | policy | tokens/s | latency s/tok | quality loss | experts/layer | energy J/tok | perplexity |" in md
    assert "## Dominance at matched quality loss" in md and "weight-to-latency ratio front" in md
    assert "`hlm-gym compare --env hlm_gym/WDMoE-v0 " in md and " --topk 1,8 " in md and "--live" in md
    assert "hlm-gym evaluate --env hlm_gym/WDMoE-v0 --split test" in md
    assert "U-HLM" not in md and "error rate" not in md and "Secondary check" not in md
    assert "Live mode (perplexity)" in md
    for sc in ("close-static", "mixed-vehicular"):
        assert Path(files[f"pareto_{sc}"]).read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(Path(files["json"]).read_text())
    assert doc["config"]["topk"] == [1, 8] and doc["config"]["live"] is True
    assert set(doc["config"]["resolved"]) >= {"thresholds", "topk", "live_episodes"}
    assert not {"ltt_deltas", "bild_alphas", "calm_lambdas"} & set(doc["config"]["resolved"])
    # the terminal report says the same
    assert "dominance at matched quality loss (learned vs the analytic weight-to-latency ratio front" in out
    assert "matched error rate" not in out
    # and compare.json reads back into the same settings
    config, rc = config_from_saved(dict(doc["config"]))
    assert config.env_id == WDMOE_ID and config.topk == (1, 8) and config.live and config.live_episodes == 3
    line = command_line(config)
    assert line.startswith("hlm-gym compare --env hlm_gym/WDMoE-v0 --risk-weights 2") and "--live-episodes 3" in line


def test_wdmoe_compare_end_to_end_sb3_through_the_cli(wdmoe, tmp_path, capsys):
    """hlm-gym compare --env hlm_gym/WDMoE-v0 with the SB3 trainer, one seed, no live mode: the
    family's default risk targets (none), the perplexity column left out of the table."""
    from hlm_gym.cli.main import main

    rc = main(["compare", "--env", WDMOE_ID, "--trainer", "sb3", "--seeds", "1", "--scenarios", "mixed-vehicular",
               "--risk-weights", "2", "--timesteps", "128", "--thresholds", "0,0.5,1", "--topk", "1,8",
               "--episodes", "4", "--n-envs", "4", "--jobs", "1", "--out", str(tmp_path),
               *[f"--hp={k}={v}" for k, v in TINY.items()]])
    capsys.readouterr()
    assert rc == 0
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert doc["config"]["env_id"] == WDMOE_ID and doc["config"]["resolved"]["risk_targets"] == []
    assert {r["family"] for r in doc["rows"]} == {"ppo", "ppo-seed", "wlr", "topk", "myopic"}
    assert [d["metric"] for d in doc["dominance"]] == ["quality_loss"]
    summary = json.loads((tmp_path / "runs" / "mixed-vehicular" / "lambda2-seed0" / "summary.json").read_text())
    assert summary["env_id"] == WDMOE_ID and summary.get("trainer", "sb3") == "sb3"
    md = (tmp_path / "results.md").read_text()
    assert "| quality loss |" in md and "perplexity" not in md


# ------------------------------------------------------------------------------ defaults and flags
def test_wdmoe_defaults_come_from_its_family():
    config = CompareConfig(env_id=WDMOE_ID)
    rc = config.resolved()
    d = WDMOE.compare_defaults
    assert config.scenarios == rc["scenarios"] == tuple(d["scenarios"])
    assert rc["risk_weights"] == tuple(d["risk_weights"]) and rc["risk_targets"] == ()
    assert rc["thresholds"] == tuple(d["thresholds"]) and rc["topk"] == tuple(d["topk"])
    assert not {"ltt_deltas", "bild_alphas", "calm_lambdas"} & set(rc)
    assert rc["ppo_runs"] == tuple((float(w), 0.0) for w in d["risk_weights"])
    full = CompareConfig(env_id=WDMOE_ID, full=True).resolved()
    assert full["risk_weights"] == tuple(d["full_risk_weights"]) and full["risk_targets"] == ()
    assert command_line(config) == "hlm-gym compare --env hlm_gym/WDMoE-v0"
    assert "--scenarios close-static" in command_line(CompareConfig(env_id=WDMOE_ID, scenarios=("close-static",)))
    # the HybridLM family keeps compare's own defaults and keys
    hybrid = CompareConfig().resolved()
    assert list(hybrid) == ["scenarios", "risk_weights", "risk_targets", "target_risk_weight", "ppo_runs", "seeds",
                            "timesteps", "thresholds", "ltt_deltas", "bild_alphas", "calm_lambdas", "episodes"]
    assert CompareConfig().scenarios == ("pedestrian", "vehicular", "cell-edge-fast-fading")
    assert command_line(CompareConfig()) == "hlm-gym compare"
    assert columns_for() == COLUMNS


@pytest.mark.parametrize("env_id, change, fragment", [
    (WDMOE_ID, {"ltt_deltas": (0.1,)}, "--ltt-deltas does not apply to hlm_gym/WDMoE-v0"),
    (WDMOE_ID, {"bild_alphas": (0.6,)}, "--bild-alphas does not apply to hlm_gym/WDMoE-v0"),
    (WDMOE_ID, {"calm_lambdas": ()}, "--calm-lambdas does not apply to hlm_gym/WDMoE-v0"),
    ("hlm_gym/HybridLM-v0", {"topk": (1, 2)}, "--topk does not apply to hlm_gym/HybridLM-v0"),
    ("hlm_gym/HybridLMCompressed-v0", {"topk": (1,)}, "--topk does not apply to hlm_gym/HybridLMCompressed-v0"),
    (WDMOE_ID, {"live_episodes": 5}, "--live-episodes needs --live"),
    (WDMOE_ID, {"topk": (2.5,)}, "--topk: expected whole numbers of experts >= 1, got 2.5"),
    (WDMOE_ID, {"topk": ()}, "--topk: empty list"),
    (WDMOE_ID, {"scenarios": ("pedestrian",)}, "--scenarios: unknown fleet 'pedestrian'"),
])
def test_flags_that_do_not_apply_are_refused_in_one_line(env_id, change, fragment, tmp_path):
    with pytest.raises(CompareError) as err:
        check_config(CompareConfig(env_id=env_id, out=str(tmp_path / "out"), **change))
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_live_without_an_evaluate_live_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(families, "FAMILIES", (HYBRID_LM, dataclasses.replace(WDMOE, evaluate_live=None)))
    with pytest.raises(CompareError, match="--live: compare has no live mode for hlm_gym/WDMoE-v0: its family "
                                           "has no live evaluation yet"):
        check_config(CompareConfig(env_id=WDMOE_ID, live=True, out=str(tmp_path)))


@pytest.mark.parametrize("argv, fragment", [
    (["--env", WDMOE_ID, "--ltt-deltas", "0.1"], "--ltt-deltas does not apply to hlm_gym/WDMoE-v0"),
    (["--calm-lambdas", "none", "--env", WDMOE_ID], "--calm-lambdas does not apply"),
    (["--topk", "1,2"], "--topk does not apply to hlm_gym/HybridLM-v0"),
    (["--topk", "1,x"], "expected comma-separated"),
])
def test_the_cli_refuses_inapplicable_flags(argv, fragment, tmp_path, capsys):
    from hlm_gym.cli.main import main

    rc = main(["compare", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and fragment in err and "\n" not in err


# ------------------------------------------------------------------------------ rows, tables, plots
def _wdmoe_rows(scenario: str = "s") -> list[dict]:
    def row(family, policy, q, tps, **kw):
        return {"scenario": scenario, "family": family, "policy": policy, "lambda": None, "param": None,
                "tokens_per_s": tps, "tokens_per_s_ci": 1.0, "quality_loss": q, "quality_loss_ci": 0.01,
                "latency_per_token_s": 1 / tps, "experts_per_layer": 4.0, "energy_j_per_token": 0.01,
                "perplexity": math.nan, "perplexity_ci": math.nan, "episodes": 4} | kw

    rows = [row("wlr", f"wlr:{t:g}", q, tps) for t, q, tps in ((0.0, 0.0, 40.0), (0.5, 0.3, 60.0), (1.0, 0.9, 90.0))]
    rows += [row("topk", "topk:2", 0.32, 75.0), row("myopic", "myopic:lambda=2", 0.2, 58.0)]
    rows += [row("ppo", "ppo:lambda=2", 0.31, 70.0, seeds=2), row("ppo-seed", "ppo:lambda=2/seed0", 0.31, 99.0)]
    return rows


def test_wdmoe_dominance_table_and_plot_speak_its_words():
    rows = _wdmoe_rows()
    main, second = dominance_checks(rows, ("s",), WDMOE_ID)
    assert second == [] and len(main) == 1
    d = main[0]
    assert d["metric"] == "quality_loss" and d["best_matched_policy"] == "wlr:0.5"  # 0.3 is within 10% of 0.31
    assert d["gain"] == pytest.approx(70 / 60 - 1)  # the reference: the wlr sweep only
    assert d["best_rule_policy"] == "topk:2" and d["gain_vs_best_rule"] == pytest.approx(70 / 75 - 1)  # every rule
    text = format_dominance(main, env_id=WDMOE_ID)
    assert text.startswith("dominance at matched quality loss (learned vs the analytic weight-to-latency ratio front")
    assert "best WLR point within 10% quality loss" in text and "WLR front (interpolated)" in text
    assert "(gate top-k, weight-to-latency ratio, myopic channel-aware)" in text
    table = format_table(rows, markdown=True, env_id=WDMOE_ID)
    assert table.splitlines()[0] == ("| scenario | policy | tokens/s | latency s/tok | quality loss | experts/layer "
                                     "| energy J/tok |")  # no live values: no perplexity column
    assert "| s | ppo:lambda=2 | 70 ± 1 | 0.0143 | 0.31 ± 0.01 | 4 | 0.01 |" in table
    assert "/seed0" not in table
    rows[-2] |= {"perplexity": 12.5, "perplexity_ci": 0.5}
    assert "| perplexity |" in format_table(rows, markdown=True, env_id=WDMOE_ID)
    assert "12.5 ± 0.5" in format_table(rows, markdown=True, env_id=WDMOE_ID)

    from hlm_gym.harness.compare_plot import pareto_figure

    fig = pareto_figure(rows, "s", WDMOE_ID)
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in axes] == ["quality loss (dropped experts' error per (token, layer) decision)"]
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["weight-to-latency ratio sweep (wlr:T)", "gate top-k", "myopic channel-aware rule",
                      "PPO (λ and risk-target R sweeps; numbers: see key)"]
    assert len(axes[0].lines) >= 2  # the wlr front and the PPO front


def test_result_row_and_seed_means_take_the_family_metrics():
    from hlm_gym.harness.seeds import aggregate_seeds, seed_row

    def res(q):
        return EvaluationResult(config={}, episodes=[], policy={}, summary={
            "tokens_per_s": _stat(50.0 + q), "quality_loss": _stat(q, 0.1), "latency_per_token_s": _stat(0.02),
            "experts_per_layer": _stat(3.0), "energy_j_per_token": _stat(0.01)})

    metrics = {"metrics": WDMOE.row_metrics, "ci": WDMOE.ci_metrics}
    row = result_row("s", "wlr", "wlr:0.5", res(0.2), None, 0.5, **metrics)
    assert list(row)[5:] == ["tokens_per_s", "tokens_per_s_ci", "quality_loss", "quality_loss_ci",
                             "latency_per_token_s", "experts_per_layer", "energy_j_per_token", "perplexity",
                             "perplexity_ci", "episodes"]
    assert row["quality_loss_ci"] == pytest.approx(0.1) and math.isnan(row["perplexity"])
    seeds = [seed_row(result_row("s", "ppo", "ppo:lambda=2", res(q), 2.0, 0.0, **metrics), i)
             for i, q in enumerate((0.2, 0.4))]
    agg = aggregate_seeds(seeds, metrics=WDMOE.row_metrics, with_ci=WDMOE.ci_metrics)[0]
    assert agg["quality_loss"] == pytest.approx(0.3) and agg["quality_loss_ci"] > 0
    assert agg["experts_per_layer"] == 3.0 and math.isnan(agg["perplexity"]) and "risk" not in agg
    # the default is still the HybridLM family's
    hybrid = result_row("s", "uhlm-threshold", "always", res(0.2))
    assert {"risk", "risk_ci", "error_rate", "skip_rate"} <= set(hybrid) and "quality_loss" not in hybrid


# ------------------------------------------------------------------------------ HybridLM unchanged
@pytest.mark.parametrize("folder", ["compare"])
def test_the_shipped_hybrid_lm_comparison_renders_byte_for_byte(folder, monkeypatch):
    """Re-rendering docs/compare from its compare.json gives its results.md, results.csv,
    dominance.csv and compare.json byte for byte (the plots are compared when the comparison is
    re-rendered by hand: experiments/render_compare.py; here they are stubbed for speed)."""
    import hlm_gym.harness.compare as cmp

    src = ROOT / "docs" / folder
    doc = json.loads((src / "compare.json").read_text())
    config, rc = config_from_saved(dict(doc["config"]))
    main, second = dominance_checks(doc["rows"], rc["scenarios"], config.env_id)
    monkeypatch.setattr(cmp, "pareto_png", lambda rows, scenario: b"")
    contents = render_outputs(doc["rows"], main + second, doc["runs"], rc, config, float(doc["wall_s"]))
    for key in ("results_md", "results_csv", "dominance_csv", "json"):
        name, data = contents[key]
        assert data == (src / name).read_bytes(), name
