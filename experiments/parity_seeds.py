"""One reward setting trained with both PPO trainers over more seeds than ``bench_sweep.py`` uses:
is a gap between them the trainers or the seeds?

    python experiments/parity_seeds.py [--scenario pedestrian] [--risk-weight 1] [--risk-target R]
                                       [--seeds 3-10] [--timesteps 100000] [--eval-episodes 48]

The population trainer trains the seeds' agents as one population (one torch thread); the SB3
trainer one run per seed, one after another (one torch thread; no periodic evaluation, no
reference line), as in ``bench_sweep.py``. Both validate each final model on the same 48
validation episodes (reset seed + 10000). Prints each seed's validation reward per step under
both, the means, Welch's t-test and the Mann-Whitney U test p-values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="pedestrian")
    p.add_argument("--risk-weight", type=float, default=1.0)
    p.add_argument("--risk-target", type=float, default=None)
    p.add_argument("--seeds", type=_seeds, default=list(range(3, 11)), help="e.g. 3-10 or 0,1,2 (default 3-10)")
    p.add_argument("--timesteps", type=int, default=100_000)
    p.add_argument("--eval-episodes", type=int, default=48)
    args = p.parse_args(argv)

    import torch
    from scipy.stats import mannwhitneyu, ttest_ind

    from hlm_gym.harness.population import AgentSpec, PopulationConfig, train_population
    from hlm_gym.harness.training import TrainConfig, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        agents = [AgentSpec(args.risk_weight, args.risk_target, s, args.scenario) for s in args.seeds]
        pop = train_population(PopulationConfig(agents=agents, scenario=args.scenario, timesteps=args.timesteps,
                                                out=f"{tmp}/population", eval_episodes=args.eval_episodes,
                                                tensorboard=False))
        population = [s["last"]["reward_per_step"] for s in pop.summaries]
        sb3 = [train(TrainConfig(scenario=args.scenario, risk_weight=args.risk_weight, risk_target=args.risk_target,
                                 seed=s, timesteps=args.timesteps, out=f"{tmp}/sb3-{s}", eval_freq=2**40,
                                 eval_episodes=args.eval_episodes, reference=False)).summary["last"]["reward_per_step"]
               for s in args.seeds]
    print(f"{args.scenario}, lambda {args.risk_weight:g}, R {args.risk_target or 0:g}, {args.timesteps} steps: "
          "validation reward per step")
    print(f"{'seed':>5} {'SB3':>9} {'population':>11}")
    for s, a, b in zip(args.seeds, sb3, population):
        print(f"{s:>5} {a:>9.4f} {b:>11.4f}")
    print(f"{'mean':>5} {np.mean(sb3):>9.4f} {np.mean(population):>11.4f}")
    print(f"Welch p {ttest_ind(sb3, population, equal_var=False).pvalue:.3f}, "
          f"Mann-Whitney p {mannwhitneyu(sb3, population).pvalue:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
