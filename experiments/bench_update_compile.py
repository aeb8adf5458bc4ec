"""One PPO update step of a population, eager against ``torch.compile`` (inductor), in one run.

    python experiments/bench_update_compile.py [--agents 72] [--batch 512] [--threads 2] [--repeats 10]

A step is what the population trainer does per minibatch: the PPO loss of every agent
(:func:`hlm_gym.harness.population.ppo_losses` over the stacked SB3 actor-critics), backward,
per-agent gradient clipping and Adam. Prints the compile time, the time per step of each and a
last line ``compiled speed-up: X.YYx`` (eager / compiled). Not used by the trainer: a measured
lead for the population trainer's speed (docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=72, help="agents in the population (default 72, compare's)")
    p.add_argument("--batch", type=int, default=512, help="minibatch per agent (default 512, agents/ppo.yml)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps of each (default 10)")
    args = p.parse_args()

    import gymnasium as gym
    import torch

    from hlm_gym.harness.population import clip_grad_norm_per_agent, ppo_losses
    from hlm_gym.harness.population_nets import ActorCritic, PopulationNets, sb3_policy

    torch.set_num_threads(args.threads)
    P, B = args.agents, args.batch
    obs_space = gym.spaces.Box(-np.inf, np.inf, (10,), np.float32)
    nets = PopulationNets([ActorCritic(sb3_policy(obs_space, gym.spaces.Discrete(2), {"net_arch": [64, 64]}, s))
                           for s in range(P)], "cpu")
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(P, B, 10, generator=g), "actions": torch.randint(0, 2, (P, B), generator=g),
             "old_log_prob": torch.randn(P, B, generator=g) * 0.1 - 0.7, "old_values": torch.randn(P, B, generator=g),
             "advantages": torch.randn(P, B, generator=g), "returns": torch.randn(P, B, generator=g),
             "mask": torch.ones(P, B, dtype=torch.bool)}
    optimizer = torch.optim.Adam(list(nets.params.values()), lr=1e-3, eps=1e-5)

    def loss_fn(params, data):
        loss, _ = ppo_losses(nets, data, 0.2, None, 0.003, 0.5, True, params=params)
        return loss.sum()

    def timed(fn) -> tuple[float, float]:
        def step():
            loss = fn(nets.params, batch)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            clip_grad_norm_per_agent(nets.params, 0.5)
            optimizer.step()

        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            step()
        return first, (time.perf_counter() - t0) / args.repeats

    _, eager = timed(loss_fn)
    first, compiled = timed(torch.compile(loss_fn))
    print(f"{P} agents x {B} samples, {args.threads} thread(s): eager {eager * 1e3:.1f} ms per step; compiled "
          f"{compiled * 1e3:.1f} ms per step after {first:.1f} s for the first (compiling) step")
    print(f"compiled speed-up: {eager / compiled:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
