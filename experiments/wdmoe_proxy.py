"""How well the WDMoE trace proxy of quality predicts the true loss change, measured in live mode.

For each policy (the gate's top-k and the weight-to-latency ratio rule over its thresholds), on the test split's sequences in one fleet scenario, live mode
(:mod:`hlm_gym.harness.wdmoe_live`) runs the policy's selections in the real MoE and records,
per token, the proxy (the trace's quality loss of the chosen experts, averaged over the token's
layers) and the true increase of the next-token NLL over the dense model. Printed: per policy
the mean proxy, perplexity and NLL increase; the Pearson and Spearman correlations of proxy and
NLL increase over all tokens and over the policies' means; written with ``--json``.

    python experiments/wdmoe_proxy.py --scenario mixed-vehicular --json docs/wdmoe_proxy.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if len(x) > 2 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="mixed-vehicular")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--topk", default="4,5,6,7,8", help="top-k rules (the MoE is unusable below k = 4)")
    ap.add_argument("--thresholds", default="0.02,0.05,0.1,0.2,0.3", help="weight-to-latency ratio thresholds")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from hlm_gym.environments.wdmoe.config import WDMoEConfig
    from hlm_gym.environments.wdmoe.simulation import build_simulation
    from hlm_gym.harness.wdmoe import load_live_moe
    from hlm_gym.harness.wdmoe_live import run_live, sequences_from_traces
    from hlm_gym.policies.wdmoe_rules import GateTopK, WeightLatencyRatio

    sim = build_simulation(WDMoEConfig(scenario=args.scenario, split=args.split))
    E = sim.n_experts
    seqs = sequences_from_traces(sim.traces)
    t0 = time.perf_counter()
    moe = load_live_moe()
    policies = [(f"topk:{k}", GateTopK(int(k), E)) for k in args.topk.split(",")]
    policies += [(f"wlr:{t:g}", WeightLatencyRatio(float(t), E)) for t in map(float, args.thresholds.split(","))]
    rows, xs, ys = [], [], []
    for name, pol in policies:
        run = run_live(moe, sim, pol, seqs, seed=args.seed)
        eps = run.episodes
        row = {"policy": name, "quality_loss": float(np.mean([e["quality_loss"] for e in eps])),
               "experts_per_layer": float(np.mean([e["experts_per_layer"] for e in eps])),
               "latency_per_token_ms": 1e3 * float(np.mean([e["latency_per_token_s"] for e in eps])),
               "perplexity": float(np.exp(np.mean([math.log(e["perplexity"]) for e in eps]))),
               "dense_perplexity": float(np.exp(np.mean([math.log(e["dense_perplexity"]) for e in eps]))),
               "nll_increase": float(np.mean([e["nll_increase"] for e in eps])),
               "token_pearson": float(np.corrcoef(run.token_proxy, run.token_nll_increase)[0, 1])
               if np.std(run.token_proxy) > 0 else math.nan,
               "wall_s": round(run.wall_s, 1)}
        rows.append(row)
        xs.append(run.token_proxy)
        ys.append(run.token_nll_increase)
        print(f"{name:<10} experts {row['experts_per_layer']:.2f}  proxy {row['quality_loss']:.4f}  "
              f"ppl {row['perplexity']:.2f} (dense {row['dense_perplexity']:.2f})  dNLL {row['nll_increase']:+.4f}  "
              f"latency {row['latency_per_token_ms']:.2f} ms/token  [{row['wall_s']} s]", flush=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    means_x = np.array([r["quality_loss"] for r in rows])
    means_y = np.array([r["nll_increase"] for r in rows])
    out = {"scenario": args.scenario, "split": args.split, "seed": args.seed, "sequences": len(seqs),
           "tokens": int(len(x) / len(policies)), "rows": rows,
           "pooled_token_pearson": float(np.corrcoef(x, y)[0, 1]), "pooled_token_spearman": _spearman(x, y),
           "policy_means_pearson": float(np.corrcoef(means_x, means_y)[0, 1]),
           "policy_means_spearman": _spearman(means_x, means_y), "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"tokens x policies: {len(x)}; per token: Pearson {out['pooled_token_pearson']:.3f}, "
          f"Spearman {out['pooled_token_spearman']:.3f}; over the {len(rows)} policies' means: Pearson "
          f"{out['policy_means_pearson']:.3f}, Spearman {out['policy_means_spearman']:.3f}; {out['wall_s']} s")
    if args.json:
        from hlm_gym.paths import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
