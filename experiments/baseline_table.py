#!/usr/bin/env python
"""Every baseline policy on the default traces in two scenarios (test split): the README table.

    python experiments/baseline_table.py [--traces DIR] [--episodes 200] [--seed 0]
        [--scenarios static-good,cell-edge-fast-fading] [--lambda L] [--out docs/baseline_table.md]

Prints a Markdown table (mean over test episodes, 95% Student-t interval half-width for
throughput) and writes it to ``--out`` together with ``.csv`` and ``.json`` siblings (atomic).
The U-HLM fit uses the training split, Learn-then-Test calibrates on the validation split,
every policy is evaluated on the test split with the same seed (so the same prompts and
channel draws). Rand-HLM skips at the rate U-HLM (risk-averse) reached in that scenario (0.5 when
U-HLM is unavailable or skips nothing or everything).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

BASELINES = (
    ("HLM (always send)", "always"),
    ("SLM only (never send)", "never"),
    ("U-HLM risk-averse", "uhlm"),
    ("Rand-HLM (skip rate of U-HLM)", "random:{uhlm_skip}"),
    ("U-HLM risk-prone", "uhlm:prone"),
    ("BiLD fallback (alpha=0.6)", "bild:0.6"),
    ("CALM softmax (lambda=0.9, decaying)", "calm:0.9"),
    ("Learn-then-Test (delta=0.05, eps=0.1)", "ltt:delta=0.05,eps=0.1"),
    ("Learn-then-Test (delta=0.5, eps=0.1)", "ltt:delta=0.5,eps=0.1"),
    ("channel-aware (env lambda)", "channel-aware"),
    ("channel-aware, deferred-cost lookahead (env lambda)", "channel-aware:lookahead=1"),
)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _trace_label(traces) -> str:
    from hlm_gym.policies.data import resolve_trace_path
    from hlm_gym.traces.store import read_meta

    path = resolve_trace_path(traces, "test")
    meta = read_meta(path)
    try:
        path = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return (f"{path} (SLM {meta.get('slm_name')}, LLM {meta.get('llm_name')}, {len(meta['prompts'])} test prompts, "
            f"max {meta['max_new_tokens']} tokens)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traces", default=None, help="trace folder (default: the shipped traces)")
    p.add_argument("--split-from", default=None,
                   help="only one trace file exists: split its prompts 60/15/25 into train/validation/test "
                        "(seeded) and use those instead of --traces")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenarios", default="static-good,cell-edge-fast-fading")
    p.add_argument("--risk-weight", "--lambda", dest="risk_weight", type=float, default=None,
                   help="risk weight lambda of the reward (default: the env's)")
    p.add_argument("--out", default="docs/baseline_table.md")
    args = p.parse_args(argv)
    if args.split_from:
        from hlm_gym.policies.data import split_trace_file

        args.traces = str(split_trace_file(args.split_from, Path("runs/baseline_table/split_traces"), seed=args.seed))

    from hlm_gym.harness.evaluation import evaluate, make_eval_env
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.paths import atomic_write_text
    from hlm_gym.policies.data import trace_columns
    from hlm_gym.policies.fit import fit_uhlm
    from hlm_gym.policies.context import PolicyContext
    from hlm_gym.policies.registry import make_policy

    t0 = time.perf_counter()
    from hlm_gym.policies.base import PolicyError

    cols = trace_columns(args.traces, "train")
    try:
        fit = fit_uhlm(cols["u"], cols["beta"], cols.get("p_draft"), cols.get("q_draft"))
    except PolicyError as exc:  # e.g. a non-positive slope: the fitted rules are undefined
        fit, fit_error = None, str(exc)
    rows = []
    extra = {}
    for sc in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        env = make_eval_env(EnvSettings(scenario=sc, risk_weight=args.risk_weight, traces=args.traces), "test",
                            min(16, args.episodes))
        try:
            uhlm_skip = None
            for label, spec in BASELINES:
                if "{uhlm_skip}" in spec:
                    if uhlm_skip is None or not 0.01 <= uhlm_skip <= 0.99:
                        # U-HLM unavailable or degenerate (skips nothing / everything): a fixed rate
                        label, uhlm_skip = "Rand-HLM (skip rate 0.5)", 0.5
                    spec = spec.format(uhlm_skip=round(uhlm_skip, 4))
                try:
                    res = evaluate(spec, scenario=sc, split="test", episodes=args.episodes, seed=args.seed, env=env,
                                   traces=args.traces, policy_context={"fit": fit} if fit else None)
                except PolicyError as exc:
                    print(f"{sc}: {label}: not available ({exc})", file=sys.stderr)
                    rows.append({"scenario": sc, "policy": label, "spec": spec, "error": str(exc).split(";")[0]})
                    continue
                s = res.summary
                if spec == "uhlm":
                    uhlm_skip = s["skip_rate"]["mean"]
                pol = res.policy
                if spec.startswith("ltt"):
                    if spec not in extra:
                        extra[spec] = make_policy(spec, PolicyContext(traces=args.traces)).ltt.to_dict()
                    extra[spec][f"test_risk_{sc}"] = s["risk"]["mean"]
                row = {"scenario": sc, "policy": label, "spec": spec,
                       "param": pol.get("u_th", pol.get("rate", pol.get("alpha_fb", pol.get("risk_weight", "")))),
                       "tokens_per_s": s["tokens_per_s"]["mean"],
                       "tokens_per_s_ci": (s["tokens_per_s"]["ci_high"] - s["tokens_per_s"]["ci_low"]) / 2,
                       "transmission_rate": s["transmission_rate"]["mean"], "risk": s["risk"]["mean"],
                       "risk_ci": (s["risk"]["ci_high"] - s["risk"]["ci_low"]) / 2,
                       "error_rate": s["error_rate"]["mean"],
                       "uplink_kbit_per_token": s["uplink_bits_per_token"]["mean"] / 1e3,
                       "energy_mj_per_token": s["energy_j_per_token"]["mean"] * 1e3,
                       "reward_per_step": s["reward_per_step"]["mean"], "episodes": s["tokens_per_s"]["n"],
                       "risk_weight": res.config["risk_weight"]}
                rows.append(row)
                print(f"{sc:>24} {label:<40} {row['tokens_per_s']:8.2f} tok/s  TR {row['transmission_rate']:.3f}  "
                      f"risk {row['risk']:.4f}", file=sys.stderr)
        finally:
            env.close()

    def r4(x):
        return "none" if x is None else f"{x:.4f}"

    def f(x, nd=3):
        return "" if x == "" or x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    # the guarantee on held-out traces: random calibration / held-out splits of validation + test
    from hlm_gym.policies.ltt import holdout_check

    parts = [trace_columns(args.traces, sp) for sp in ("validation", "test")]
    u = np.concatenate([q["u"] for q in parts])
    beta = np.concatenate([q["beta"] for q in parts])
    ep = np.concatenate([q["prompt"] + i * 10**7 for i, q in enumerate(parts)])
    hold = holdout_check(u, beta, ep, delta=0.05, epsilon=0.1, reps=200, seed=args.seed)
    hold5 = holdout_check(u, beta, ep, delta=0.5, epsilon=0.1, reps=200, seed=args.seed)
    extra["ltt_holdout_check"] = {"delta=0.05": hold, "delta=0.5": hold5}
    ltt_d = extra.get("ltt:delta=0.05,eps=0.1", {})
    ltt5 = extra.get("ltt:delta=0.5,eps=0.1", {})
    risk_weight = next(r["risk_weight"] for r in rows if "risk_weight" in r)
    head = ["| scenario | policy | parameter | tokens/s (±95% CI) | transmission rate | risk (±95% CI) | error rate | "
            "uplink kbit/token | energy mJ/token | reward/step |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r['policy']} | n/a: {r['error']} |  |  |  |  |  |  |  |")
            continue
        param = r["param"]
        if isinstance(param, float) and param == float("-inf"):
            param = "none certified"
        lines.append(f"| {r['scenario']} | {r['policy']} | {f(param)} | {r['tokens_per_s']:.2f} ± "
                     f"{r['tokens_per_s_ci']:.2f} | {r['transmission_rate']:.3f} | {r['risk']:.4f} ± "
                     f"{r['risk_ci']:.4f} | {r['error_rate']:.4f} | {r['uplink_kbit_per_token']:.1f} | "
                     f"{r['energy_mj_per_token']:.1f} | {r['reward_per_step']:.3f} |")
    cmd = "python experiments/baseline_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    split_note = (f" The traces are the prompts of the single file {args.split_from} split 60/15/25 into "
                  f"train/validation/test (seed {args.seed}), because the shipped trace set was not available."
                  if args.split_from else "")
    note = (f"Traces: {_trace_label(args.traces)}.{split_note} Test split, {args.episodes} episodes per row, seed {args.seed}, "
            f"reward risk weight lambda = {risk_weight}. "
            + (f"U-HLM fit on the training split: a = {fit.a:.4f}, b = {fit.b:.4f}, r = {fit.r:.4f}, residual std = "
               f"{fit.residual_std:.4f}, n = {fit.n}, Delta = {fit.delta:.4f}. " if fit else
               f"U-HLM fit on the training split failed: {fit_error}. ") +
            f"Risk = mean rejection probability of the skipped tokens per episode (0 if none skipped); "
            f"error rate = skipped tokens that verification would have rejected / tokens. "
            f"Learn-then-Test (calibrated on the {ltt_d.get('n')} validation responses): delta = 0.05: threshold "
            f"{ltt_d.get('threshold')}, validation risk {r4(ltt_d.get('risk_hat_at_threshold'))}; delta = 0.5: threshold "
            f"{ltt5.get('threshold')}, validation risk {r4(ltt5.get('risk_hat_at_threshold'))}, test risk "
            + ", ".join(f"{k[10:]} {v:.4f}" for k, v in ltt5.items() if k.startswith("test_risk_")) + ". "
            f"Held-out check ({hold['reps']} random halves of validation+test, {hold['n_calibration']} calibration / "
            f"{hold['n_holdout']} held-out responses, epsilon = 0.1): delta = 0.05: held-out risk > delta in "
            f"{hold['violation_rate']:.3f} of splits, median threshold {hold['median_threshold']}, no threshold in "
            f"{hold['no_threshold_rate']:.3f}; delta = 0.5: held-out risk > delta in {hold5['violation_rate']:.3f}, "
            f"median threshold {hold5['median_threshold']}, no threshold in {hold5['no_threshold_rate']:.3f}. "
            f"Command: `{cmd.strip()}` ({time.perf_counter() - t0:.0f} s).")
    table = "\n".join(head + lines)
    text = table + "\n\n" + note + "\n"
    print(text)
    out = Path(args.out)
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".csv"), _csv_text([r for r in rows if "error" not in r]))
    atomic_write_text(out.with_suffix(".json"), json.dumps({"fit": fit.to_dict() if fit else None, "rows": rows, **extra,
                                                            "command": cmd.strip()}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
