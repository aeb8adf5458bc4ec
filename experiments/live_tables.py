"""Trace vs live, and U-HLM's headline table, from a ``hlm-gym compare --live`` run.

    hlm-gym compare --scenarios vehicular --risk-weights 2 --risk-targets 0.4,0.45 --thresholds 0.85,0.95 \\
        --ltt-deltas 0.1 --bild-alphas none --calm-lambdas none --live --live-episodes 60 --out runs/compare-live
    python experiments/live_tables.py runs/compare-live --out docs/live

compare's rows hold each policy's live metrics (the real pair in the loop, ``--live-episodes``
episodes of the test split at the evaluation seed). This script replays *the same episodes*
(same prompts, channel starts and seed) in trace mode (:func:`hlm_gym.harness.hybrid_lm_live.evaluate_trace_plan`,
with the fidelity of the trace response), and writes

* ``trace_vs_live.md``: tokens/s, transmission rate, risk, error rate and fidelity of each
  policy in trace and in live mode, side by side, and live minus trace;
* ``headline.md``: U-HLM's headline quantities on the embedded pair, live: the reduction of
  uplink transmissions (= LLM verifications) and the token-throughput gain over HLM without
  skipping (``always``), and fidelity, beside the paper's numbers;
* ``live_tables.json``: every number of both tables.

PPO points are the mean over their training seeds with a 95 % Student-t interval over seeds;
rules: means over episodes with 95 % Student-t intervals.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


PAPER = {"transmission_reduction": 0.4593, "throughput_gain": 2.54, "fidelity": 0.9754}
METRICS = ("tokens_per_s", "transmission_rate", "risk", "error_rate", "fidelity")
LIVE_COLUMN = {"tokens_per_s": "live_tokens_per_s", "transmission_rate": "live_transmission_rate", "risk": "live_risk",
               "error_rate": "live_error_rate", "fidelity": "fidelity"}


def _t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % Student-t half-width (NaN half-width for one value)."""
    from hlm_gym.harness.results import t_interval

    mean, _, high, _ = t_interval(values)
    return mean, high - mean


def _summary_ci(summary: dict, metric: str) -> tuple[float, float]:
    s = summary.get(metric)
    if not s:
        return math.nan, math.nan
    return float(s["mean"]), (float(s["ci_high"]) - float(s["ci_low"])) / 2


def paired_trace(doc: dict, tokenizer: Any) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """Per (scenario, policy) row of compare: the trace-mode metrics on the live episodes (PPO: per seed)."""
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.hybrid_lm import HYBRID_LM
    from hlm_gym.harness.hybrid_lm_live import evaluate_trace_plan

    cfg = doc["config"]
    rc = cfg["resolved"]
    seed, episodes = int(cfg["seed"]) + 20_000, int(rc["live_episodes"])
    shared = HYBRID_LM.shared_policy_context(cfg["traces"])
    models = {(r["scenario"], float(r["risk_weight"]), float(r["risk_target"]), int(r["seed"])): r["model"]
              for r in doc["runs"]}
    out = {}
    for row in doc["rows"]:
        if row["family"] == "ppo" or row.get("note") or not math.isfinite(row.get("live_tokens_per_s", math.nan)):
            continue
        if row["family"] == "ppo-seed":
            spec = "ppo:" + models[(row["scenario"], float(row["lambda"]), float(row["param"] or 0.0), int(row["seed"]))]
            ctx, weight = None, float(row["lambda"])
        else:
            spec, ctx, weight = row["policy"], shared, row.get("lambda")
        res = evaluate_trace_plan(spec, family=HYBRID_LM, env_id=cfg["env_id"],
                                  settings=EnvSettings(scenario=row["scenario"], risk_weight=weight, traces=cfg["traces"]),
                                  split="test", episodes=episodes, seed=seed, policy_context=ctx,
                                  decode=tokenizer.decode)
        out[(row["scenario"], row["policy"])] = {m: _summary_ci(res.summary, m) for m in METRICS}
        print(f"trace (live episodes) {row['scenario']} {row['policy']}: "
              + ", ".join(f"{m} {out[(row['scenario'], row['policy'])][m][0]:.4g}" for m in METRICS), flush=True)
    return out


def table_rows(doc: dict, trace: dict) -> list[dict[str, Any]]:
    """One entry per policy (PPO: one per reward setting, over its seeds): trace and live (mean, half-width)."""
    rows = []
    for row in doc["rows"]:
        if row["family"] == "ppo-seed" or row.get("note"):
            continue
        key = (row["scenario"], row["policy"])
        entry = {"scenario": row["scenario"], "family": row["family"], "policy": row["policy"]}
        if row["family"] == "ppo":
            seeds = [r for r in doc["rows"] if r["family"] == "ppo-seed" and r["scenario"] == row["scenario"]
                     and r["policy"].startswith(row["policy"] + "/")]
            if not seeds or any((r["scenario"], r["policy"]) not in trace for r in seeds):
                continue
            for m in METRICS:
                entry[f"trace_{m}"] = _t_interval([trace[(r["scenario"], r["policy"])][m][0] for r in seeds])
                entry[f"live_{m}"] = _t_interval([r.get(LIVE_COLUMN[m], math.nan) for r in seeds])
            entry["seeds"] = len(seeds)
        else:
            if key not in trace:
                continue
            for m in METRICS:
                entry[f"trace_{m}"] = trace[key][m]
                entry[f"live_{m}"] = (row.get(LIVE_COLUMN[m], math.nan), row.get(LIVE_COLUMN[m] + "_ci", math.nan))
        rows.append(entry)
    return rows


def _fmt(v: tuple[float, float], nd: int = 3) -> str:
    m, h = v
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{nd}g}" + (f" ± {h:.2g}" if math.isfinite(h) else "")


def _diff(a: tuple[float, float], b: tuple[float, float]) -> str:
    if not (math.isfinite(a[0]) and math.isfinite(b[0])):
        return "n/a"
    h = math.sqrt(sum(x * x for x in (a[1], b[1]) if math.isfinite(x)))
    return f"{b[0] - a[0]:+.3g} ± {h:.2g}"


def trace_vs_live_md(rows: list[dict[str, Any]], command: str, episodes: int, seed: int) -> str:
    lines = ["# Trace vs live on the same episodes", "",
             f"`{command}`", "",
             f"Each policy of the comparison on the same {episodes} test episodes (every test prompt once, channel "
             f"starts and seed {seed} as `compare --live`), replayed from the trace (trace) and decoded with the real "
             "SLM-LLM pair (live). Risk: mean rejection probability of the skipped drafts (live: exact, from the "
             "LLM's distribution at that position); error rate: skipped drafts the LLM would have rejected (live: "
             "the uniform a verification would have drawn) / tokens; fidelity: cosine similarity of the response's "
             "MiniLM embedding to the LLM-alone response (`--reference auto`: the trace's recorded always-send response, "
             "the live pair's LLM-alone sample when the trace was recorded with that pair). PPO: mean over training "
             "seeds ± 95 % t-interval over seeds; rules: ± 95 % t-interval over episodes; live − trace: difference of "
             "the means, ± the root sum of squares of the two half-widths (approximate: the episodes are paired, "
             "which this ignores).", ""]
    heads = ["scenario", "policy"]
    for m, name in (("tokens_per_s", "tokens/s"), ("transmission_rate", "TR"), ("risk", "risk"),
                    ("error_rate", "error rate"), ("fidelity", "fidelity")):
        heads += [f"{name} trace", f"{name} live", f"{name} live − trace"]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["scenario"], r["policy"]]
        for m in METRICS:
            cells += [_fmt(r[f"trace_{m}"]), _fmt(r[f"live_{m}"]), _diff(r[f"trace_{m}"], r[f"live_{m}"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_md(rows: list[dict[str, Any]], command: str, episodes: int) -> tuple[str, list[dict[str, Any]]]:
    out, lines = [], []
    for sc in sorted({r["scenario"] for r in rows}):
        base = next((r for r in rows if r["scenario"] == sc and r["policy"] == "always"), None)
        if base is None:
            continue
        tps0, tr0 = base["live_tokens_per_s"][0], base["live_transmission_rate"][0]
        for r in rows:
            if r["scenario"] != sc or r["policy"] == "always":
                continue
            out.append({"scenario": sc, "policy": r["policy"], "family": r["family"],
                        "transmission_reduction": 1 - r["live_transmission_rate"][0] / tr0,
                        "throughput_gain": r["live_tokens_per_s"][0] / tps0,
                        "throughput_gain_ci": r["live_tokens_per_s"][1] / tps0,
                        "fidelity": r["live_fidelity"][0], "fidelity_ci": r["live_fidelity"][1],
                        "risk": r["live_risk"][0], "error_rate": r["live_error_rate"][0]})
        lines += [f"HLM without skipping (`always`, live) in {sc}: {tps0:.4g} tokens/s, transmission rate {tr0:.3g}, "
                  f"fidelity {base['live_fidelity'][0]:.4g} ± {base['live_fidelity'][1]:.2g}.", ""]
    text = ["# U-HLM's headline on the embedded pair (live)", "", f"`{command}`", "",
            f"Live mode, {episodes} test episodes per policy; relative to HLM without skipping (`always`) on the same "
            "episodes. Transmission reduction = 1 − TR / TR(always) (each transmission is also one LLM verification); "
            "throughput gain = tokens/s / tokens/s(always) (± the policy's 95 % half-width / tokens/s(always); "
            "tokens/s is the suite's simulated clock, the scenario's channel and compute costs applied to the live "
            "tokens, not the wall time of this CPU); "
            "fidelity: cosine similarity of the response to the LLM-alone response (MiniLM embeddings); not "
            "comparable with the paper's accuracy ratio: at temperature 1 another sample of the LLM itself scores "
            "low too (`python experiments/llm_self_fidelity.py`, docs/live.md). The paper (TinyLlama-1.1B / "
            "Llama-2-7B, its own channel) "
            f"reports {PAPER['transmission_reduction'] * 100:.2f} % fewer transmissions, "
            f"{PAPER['throughput_gain']:.2f}x throughput and {PAPER['fidelity'] * 100:.2f} % of the LLM's accuracy.",
            "", *lines,
            "| scenario | policy | fewer transmissions | throughput gain | fidelity | live risk | live error rate |",
            "|---|---|---|---|---|---|---|",
            f"| (paper) | U-HLM | {PAPER['transmission_reduction'] * 100:.2f} % | {PAPER['throughput_gain']:.2f}x | "
            f"{PAPER['fidelity']:.4f} (accuracy ratio) | | |"]
    for h in out:
        text.append(f"| {h['scenario']} | {h['policy']} | {h['transmission_reduction'] * 100:.1f} % | "
                    f"{h['throughput_gain']:.2f}x ± {h['throughput_gain_ci']:.2f} | {h['fidelity']:.3f} ± "
                    f"{h['fidelity_ci']:.2g} | {h['risk']:.3f} | {h['error_rate']:.3f} |")
    return "\n".join(text) + "\n", out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare", type=Path, help="the --out folder of a hlm-gym compare --live run")
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables")
    args = ap.parse_args()
    doc = json.loads((args.compare / "compare.json").read_text())
    if not doc["config"].get("live"):
        raise SystemExit(f"{args.compare}: not a compare --live run")
    from hlm_gym.harness.compare import CompareConfig, command_line, config_from_saved
    from hlm_gym.lm.models import load_pair
    from hlm_gym.paths import atomic_write_text
    from hlm_gym.policies.data import resolve_trace_path
    from hlm_gym.traces.store import default_trace_path, load_traces

    config, rc = config_from_saved(dict(doc["config"]))
    assert isinstance(config, CompareConfig)
    command = command_line(config)
    meta = load_traces(default_trace_path("test") if config.traces is None else
                       resolve_trace_path(config.traces, "test")).meta
    tokenizer = load_pair(slm=meta.get("slm_spec"), llm=meta.get("llm_spec")).tokenizer  # the live pair's
    trace = paired_trace(doc, tokenizer)
    rows = table_rows(doc, trace)
    episodes, seed = int(rc["live_episodes"]), config.seed + 20_000
    me = f"python experiments/live_tables.py {args.compare} --out {args.out}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "trace_vs_live.md", trace_vs_live_md(rows, f"{command}` then `{me}", episodes, seed))
    head, head_rows = headline_md(rows, f"{command}` then `{me}", episodes)
    atomic_write_text(args.out / "headline.md", head)
    atomic_write_text(args.out / "live_tables.json", json.dumps({"command": command, "tables_command": me,
                                                                 "trace_vs_live": rows, "headline": head_rows,
                                                                 "paper": PAPER}, indent=2) + "\n")
    print(head)


if __name__ == "__main__":
    main()
