#!/usr/bin/env python
"""Reproduce U-HLM's figures on the embedded pair's traces.

1. ``uhlm_fit.png`` / ``uhlm_fit.csv`` / ``uhlm_fit.json``: uncertainty ``u`` vs rejection
   probability ``beta`` on the training split (jittered scatter, binned means) with the fitted
   line ``beta = a u + b`` and the risk-averse / risk-prone thresholds.
2. ``uhlm_sweep.png`` / ``uhlm_sweep.csv``: token throughput, risk and transmission rate of the
   rule "send iff u > u_th" as ``u_th`` sweeps [0, 1], per scenario, on the test split
   (mean and 95% t-interval over episodes, from :mod:`hlm_gym.harness.evaluation`).

Usage::

    python experiments/uhlm_figures.py [--traces DIR] [--out runs/uhlm_figures] [--episodes 200]
                                       [--scenarios static-good,pedestrian,...] [--step 0.05]

All files are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np


def _png(fig, path: Path) -> None:
    from hlm_gym.paths import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def fit_figure(traces, out: Path, seed: int = 0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hlm_gym.paths import atomic_write_text
    from hlm_gym.policies.data import trace_columns
    from hlm_gym.policies.fit import fit_uhlm

    cols = trace_columns(traces, "train")
    u, beta = cols["u"], cols["beta"]
    fit = fit_uhlm(u, beta, cols.get("p_draft"), cols.get("q_draft"))
    levels = np.unique(u)
    rows = [{"u": float(x), "count": int(np.sum(u == x)), "mean_beta": float(beta[u == x].mean()),
             "std_beta": float(beta[u == x].std()), "fitted_beta": float(fit.a * x + fit.b)} for x in levels]
    atomic_write_text(out / "uhlm_fit.csv", _csv_text(rows, list(rows[0])))
    atomic_write_text(out / "uhlm_fit.json", json.dumps(fit.to_dict(), indent=2) + "\n")
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    idx = rng.choice(u.size, size=min(u.size, 20000), replace=False)
    ax.scatter(u[idx] + rng.uniform(-0.012, 0.012, idx.size), beta[idx], s=3, alpha=0.15, color="tab:blue",
               label="tokens (jittered)")
    ax.plot([r["u"] for r in rows], [r["mean_beta"] for r in rows], "o", color="black", ms=4, label="mean per u")
    xs = np.linspace(0, 1, 101)
    ax.plot(xs, fit.a * xs + fit.b, "-", color="tab:red",
            label=f"fit beta = {fit.a:.3f} u {'+' if fit.b >= 0 else '-'} {abs(fit.b):.3f} (r = {fit.r:.3f})")
    if fit.a > 0:
        for th, name, st in ((fit.threshold("averse"), "risk-averse", "--"),
                             (fit.threshold("prone"), "risk-prone", ":")):
            if 0.0 <= th <= 1.0:
                ax.axvline(th, color="gray", ls=st, label=f"{name} u_th = {th:.3f}")
            else:  # outside [0, 1]: never / always skip; named in the legend only
                ax.plot([], [], color="gray", ls=st, label=f"{name} u_th = {th:.3f} (outside [0, 1])")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("uncertainty u (temperature perturbation, K = 20)")
    ax.set_ylabel("rejection probability beta")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"U-HLM fit on {fit.n} training tokens (Delta = {fit.delta:.3f})")
    ax.legend(fontsize=7, loc="upper left")
    _png(fig, out / "uhlm_fit.png")
    plt.close(fig)
    return fit


def sweep(traces, scenarios: list[str], thresholds: np.ndarray, episodes: int, seed: int, out: Path,
          risk_weight: float | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hlm_gym.harness.evaluation import evaluate, make_eval_env
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.paths import atomic_write_text
    from hlm_gym.policies.rules import UncertaintyThreshold

    rows = []
    for sc in scenarios:
        env = make_eval_env(EnvSettings(scenario=sc, risk_weight=risk_weight, traces=traces), "test", min(16, episodes))
        try:
            for th in thresholds:
                res = evaluate(UncertaintyThreshold(float(th)), scenario=sc, split="test", episodes=episodes,
                               seed=seed, env=env)
                row = {"scenario": sc, "u_th": round(float(th), 6)}
                for m in ("tokens_per_s", "risk", "transmission_rate", "error_rate", "uplink_bits_per_token",
                          "energy_j_per_token", "reward_per_step"):
                    s = res.summary[m]
                    row[m] = s["mean"]
                    row[m + "_ci_low"] = s["ci_low"]
                    row[m + "_ci_high"] = s["ci_high"]
                rows.append(row)
            print(f"swept {sc}", file=sys.stderr)
        finally:
            env.close()
    atomic_write_text(out / "uhlm_sweep.csv", _csv_text(rows, list(rows[0])))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for sc in scenarios:
        r = [x for x in rows if x["scenario"] == sc]
        x = [q["u_th"] for q in r]
        for ax, m in zip(axes, ("tokens_per_s", "risk", "transmission_rate")):
            ax.plot(x, [q[m] for q in r], "-o", ms=3, label=sc)
            ax.fill_between(x, [q[m + "_ci_low"] for q in r], [q[m + "_ci_high"] for q in r], alpha=0.15)
    for ax, lab in zip(axes, ("token throughput (tokens/s)", "risk (mean beta of skipped tokens)",
                              "transmission rate")):
        ax.set_xlabel("threshold u_th (send iff u > u_th)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"U-HLM threshold sweep, test split, {episodes} episodes per point (95% t-intervals)")
    _png(fig, out / "uhlm_sweep.png")
    plt.close(fig)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--traces", default=None, help="trace folder (default: the shipped traces)")
    p.add_argument("--split-from", default=None,
                   help="only one trace file exists: split its prompts 60/15/25 into train/validation/test "
                        "(seeded) and use those instead of --traces")
    p.add_argument("--out", default="runs/uhlm_figures")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--risk-weight", "--lambda", dest="risk_weight", type=float, default=None,
                   help="risk weight lambda of the reward (default: the env's)")
    p.add_argument("--scenarios", default="static-good,static-cell-edge,pedestrian,vehicular,cell-edge-fast-fading")
    args = p.parse_args(argv)
    if args.split_from:
        from hlm_gym.policies.data import split_trace_file

        args.traces = str(split_trace_file(args.split_from, Path(args.out) / "split_traces", seed=args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fit = fit_figure(args.traces, out, args.seed)
    d = fit.to_dict()
    print(f"fit: a = {fit.a:.4f}, b = {fit.b:.4f}, r = {fit.r:.4f}, residual std = {fit.residual_std:.4f}, "
          f"n = {fit.n}, Delta = {fit.delta:.4f}, u_th averse = {d['u_th_averse']}, prone = {d['u_th_prone']}")
    ths = np.round(np.arange(0.0, 1.0 + 1e-9, args.step), 6)
    sweep(args.traces, [s.strip() for s in args.scenarios.split(",") if s.strip()], ths, args.episodes, args.seed,
          out, args.risk_weight)
    print(f"wrote {out}/uhlm_fit.png, uhlm_fit.csv, uhlm_fit.json, uhlm_sweep.png, uhlm_sweep.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
