"""Where do learned gains at matched risk come from: the channel, or a better uncertainty signal?

    python experiments/headroom.py [--scenarios pedestrian,vehicular,cell-edge-fast-fading]
                                   [--episodes 200] [--out runs/headroom]

Two hand-made ablations, each checked against the U-HLM ``u`` threshold sweep on the test split
by the same matched-risk rule as ``hlm-gym compare`` (:func:`hlm_gym.harness.compare.dominance`):

* **channel only** (``myopic:mu=M,target=R``): the myopic optimum of the risk-target reward
  (``hlm_gym.policies.channel_aware``), send iff ``mu * (E[beta | u] - R) > DeltaL / L_ref``,
  with the *empirical* ``E[beta | u]`` (mean over the training tokens in each 0.05-wide ``u``
  bin, not the linear fit) and the environment's true channel state;
* **signal only** (``bild:A``): BiLD's channel-unaware rule, send iff the SLM's top-1
  probability ``< A``. ``u`` is recorded on a 0.05 grid and 39% of tokens sit at ``u = 1``,
  where a ``u`` threshold cannot tell them apart; the top-1 probability can.

PPO observes both (``u``, entropy, top-1, margin and the channel), so these show which part
of its gain each ingredient can explain; neither is an upper bound on what a policy can do.
Writes ``headroom.json`` and ``headroom.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hlm_gym.harness.compare import ANALYTIC_FAMILY, DEFAULTS, dominance, format_dominance, result_row
from hlm_gym.harness.evaluation import evaluate, make_eval_env
from hlm_gym.harness.family import EnvSettings
from hlm_gym.paths import atomic_write_text
from hlm_gym.policies.channel_aware import ChannelAwareThreshold
from hlm_gym.policies.data import trace_columns
from hlm_gym.policies.fit import fit_from_traces

BIN = 0.05


def empirical_beta(n_bins: int = int(round(1 / BIN)) + 1) -> np.ndarray:
    """Mean beta of the training tokens per u bin (u is recorded on a 0.05 grid); empty bins copy the previous."""
    cols = trace_columns(None, "train")
    idx = np.clip(np.rint(cols["u"] / BIN).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    total = np.bincount(idx, cols["beta"], minlength=n_bins)
    table = np.zeros(n_bins)
    for i in range(n_bins):
        table[i] = total[i] / count[i] if count[i] else (table[i - 1] if i else 0.0)
    return table


class EmpiricalChannelAware(ChannelAwareThreshold):
    """The channel-aware rule with a risk target and the empirical ``E[beta | u]`` table."""

    def __init__(self, *args, table: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.table = table

    def beta_hat(self, u: np.ndarray) -> np.ndarray:
        return self.table[np.clip(np.rint(u / BIN).astype(int), 0, len(self.table) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="pedestrian,vehicular,cell-edge-fast-fading")
    ap.add_argument("--targets", default="0.1,0.2,0.3,0.35,0.4,0.45")
    ap.add_argument("--mus", default="3,10,30")
    ap.add_argument("--bild", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95", help="BiLD top-1 thresholds A")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("runs/headroom"))
    args = ap.parse_args()
    table = empirical_beta()
    fit = fit_from_traces(None, "train")
    rows = []
    for sc in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        env = make_eval_env(EnvSettings(scenario=sc, risk_weight=1.0), "test", 16)
        sim = env.unwrapped.sim
        ev = {"scenario": sc, "episodes": args.episodes, "seed": 20_000, "env": env}
        rows.append(result_row(sc, ANALYTIC_FAMILY, "always", evaluate("always", **ev)))
        for u in DEFAULTS["thresholds"]:
            rows.append(result_row(sc, ANALYTIC_FAMILY, f"threshold:{u:g}", evaluate(f"threshold:{u:g}", **ev)))
        for target in (float(t) for t in args.targets.split(",")):
            for mu in (float(m) for m in args.mus.split(",")):
                pol = EmpiricalChannelAware(sim.scenario, risk_weight=mu, latency_ref=sim.latency_ref, max_tokens=sim.max_tokens,
                                            fit=fit, vocab_size=sim.vocab_size, target=target, table=table)
                # family "ppo" so that compare's dominance check treats these points as the candidates
                rows.append(result_row(sc, "ppo", f"myopic:mu={mu:g},target={target:g}", evaluate(pol, **ev)))
        for a in (float(x) for x in args.bild.split(",")):
            rows.append(result_row(sc, "ppo", f"bild:{a:g}", evaluate(f"bild:{a:g}", **ev)))
        env.close()
        print(format_dominance(dominance(rows, sc)), flush=True)
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    dom = [d for sc in scenarios for d in dominance(rows, sc)]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "headroom.json", json.dumps({"beta_by_u": table.tolist(), "rows": rows,
                                                             "dominance": dom}, indent=2) + "\n")
    atomic_write_text(args.out / "headroom.md", "# Channel-only and signal-only ablations at matched risk\n\n"
                      "`python experiments/headroom.py`: `myopic:` rows use u and the true channel (the "
                      "myopic risk-target rule with the empirical E[beta | u]); `bild:` rows use the top-1 "
                      "probability and no channel. Test split; the PPO column holds these rules.\n\n" + format_dominance(dom, markdown=True) + "\n")
    print(f"wrote {args.out / 'headroom.json'} and {args.out / 'headroom.md'}")


if __name__ == "__main__":
    main()
