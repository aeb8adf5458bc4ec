"""How robust are the matched-risk gains of the risk-target PPO runs across training seeds?

    python experiments/seed_robustness.py [--seeds 0,1,2] [--timesteps 100000]
        [--scenarios vehicular,cell-edge-fast-fading] [--band 0.33,0.455] [--out runs/seeds]

For each seed, runs ``hlm-gym compare --scenarios ... --risk-weights none --seed S --timesteps T``
into ``--out/seed<S>`` (skipped when that folder already holds a ``dominance.csv``, so an
interrupted tally resumes), then counts, over the risk-target runs whose test risk lies in
``--band`` and whose 10% gain is attainable, how many are ahead of the U-HLM reference at
matched risk and how many by >= 10%. The seed also moves the test episodes. Prints a Markdown
table and writes ``seed_robustness.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from hlm_gym.harness.compare import CompareConfig, compare
from hlm_gym.paths import atomic_write_text


def tally(rows: list[dict], band: tuple[float, float]) -> dict:
    """Counts over the risk-check records of risk-target runs inside ``band``."""
    sel = [r for r in rows if r["metric"] == "risk" and "target=" in r["policy"] and r["gain"] != ""
           and band[0] <= float(r["risk"]) <= band[1] and r["attainable"] == "True"]
    gains = sorted(float(r["gain"]) for r in sel)
    return {"runs": len(sel), "ahead": sum(g > 0 for g in gains), "ahead_10pct": sum(g >= 0.10 for g in gains),
            "gains": gains}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--scenarios", default="vehicular,cell-edge-fast-fading")
    ap.add_argument("--band", default="0.33,0.455", help="test-risk band of the runs counted (lo,hi)")
    ap.add_argument("--jobs", type=int, default=0, help="training processes (0: auto)")
    ap.add_argument("--out", type=Path, default=Path("runs/seeds"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    lo, hi = (float(x) for x in args.band.split(","))
    rows: list[dict] = []
    for seed in seeds:
        run = args.out / f"seed{seed}"
        if not (run / "dominance.csv").is_file():
            compare(CompareConfig(scenarios=scenarios, risk_weights=(), seed=seed, timesteps=args.timesteps,
                                  jobs=args.jobs, out=str(run), progress=True))
        with open(run / "dominance.csv", newline="") as f:
            rows += [r | {"seed": seed} for r in csv.DictReader(f)]
    result = {"seeds": seeds, "timesteps": args.timesteps, "band": [lo, hi],
              "by_scenario": {sc: tally([r for r in rows if r["scenario"] == sc], (lo, hi)) for sc in scenarios}}
    result["all"] = tally([r for r in rows if r["scenario"] in scenarios], (lo, hi))
    print(f"risk-target runs with test risk in [{lo}, {hi}], seeds {args.seeds}, {args.timesteps} steps per run:\n")
    print("| scenario | runs | ahead of the U-HLM reference | >= 10% ahead | gains |")
    print("|---|---|---|---|---|")
    for name, t in list(result["by_scenario"].items()) + [("all", result["all"])]:
        gains = ", ".join(f"{100 * g:+.1f}%" for g in t["gains"])
        print(f"| {name} | {t['runs']} | {t['ahead']} | {t['ahead_10pct']} | {gains} |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "seed_robustness.json", json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out / 'seed_robustness.json'}")


if __name__ == "__main__":
    main()
