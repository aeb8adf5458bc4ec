"""PPO against the WDMoE rules at matched *live perplexity*, from a ``compare --env hlm_gym/WDMoE-v0 --live`` run.

``hlm-gym compare`` checks the learned points at matched *trace quality loss* (the env's own risk
axis). This script repeats the check with the live mode's held-out perplexity as the matched
axis: for each PPO point (mean over its seeds), the best weight-to-latency-ratio point whose
perplexity is within 10 % (else the WLR front interpolated), and the best of every analytic rule
the same way; the same code as compare's dominance check (:func:`hlm_gym.harness.compare.dominance`).

    python experiments/wdmoe_matched.py runs/wdmoe-compare/compare.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="compare.json of a WDMoE compare with --live")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    from hlm_gym.harness.compare import dominance, format_dominance
    from hlm_gym.harness.families import family_for

    doc = json.loads(args.json.read_text())
    env_id = doc["config"]["env_id"]
    rows = [r for r in doc["rows"] if isinstance(r.get("perplexity"), (int, float)) and math.isfinite(r["perplexity"])]
    if not rows:
        raise SystemExit(f"{args.json}: no rows with a live perplexity (run compare with --live)")
    sweep = family_for(env_id).sweep_family
    dom = [d for sc in doc["config"]["resolved"]["scenarios"] for d in dominance(rows, sc, "perplexity", sweep)]
    print(format_dominance(dom, markdown=args.markdown, env_id=env_id))


if __name__ == "__main__":
    main()
