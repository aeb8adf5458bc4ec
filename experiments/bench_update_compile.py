"""One PPO update step of a population, eager against ``torch.compile`` (inductor) and against the
floor of its matrix products, in one run.

    python experiments/bench_update_compile.py [--agents 72] [--batch 512] [--threads 2] [--repeats 10]
        [--no-compile]

A step is what the population trainer does per minibatch: the PPO loss of every agent
(:func:`hlm_gym.harness.population.ppo_losses` over the stacked SB3 actor-critics), backward,
per-agent gradient clipping and Adam. The *floor* is the part no implementation of the same
algorithm avoids: the forward and backward of the networks' batched matrix products alone (every
linear map of the pi and vf MLPs and the heads, no activation, loss or optimizer), and the same with
the hidden layers' activations. Prints the time per step of each, ``update / matmul floor: X.YYx``
and, unless ``--no-compile``, the compile time and a last line ``compiled speed-up: X.YYx``
(eager / compiled). Not used by the trainer: measured leads and limits for the population trainer's
speed (docs/training.md).
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
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C++ compiler)")
    args = p.parse_args()

    import gymnasium as gym
    import torch

    from hlm_gym.harness.population import clip_grad_norm_per_agent, ppo_losses
    from hlm_gym.harness.population_nets import ActorCritic, PopulationNets, _linear, sb3_policy

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

    def seconds(step) -> tuple[float, float]:
        """Seconds of ``step``'s first call, and per call over ``--repeats`` after two more warm-ups."""
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            step()
        return first, (time.perf_counter() - t0) / args.repeats

    def timed(fn) -> tuple[float, float]:
        def step():
            loss = fn(nets.params, batch)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            clip_grad_norm_per_agent(nets.params, 0.5)
            optimizer.step()

        return seconds(step)

    pi, vf = nets._tanh_plan  # the linear maps of SB3's pi and vf MLPs

    def products(act) -> float:
        """Seconds per forward + backward of the matrix products (``act`` between hidden layers)."""
        def step():
            h, g = batch["obs"], batch["obs"]
            for name in pi:
                h = act(_linear(h, nets.params, name))
            for name in vf:
                g = act(_linear(g, nets.params, name))
            (_linear(h, nets.params, "action_net").sum() + _linear(g, nets.params, "value_net").sum()).backward()

        return seconds(step)[1]

    _, eager = timed(loss_fn)
    floor = products(lambda z: z)
    floor_act = products(torch.sigmoid)
    print(f"{P} agents x {B} samples, {args.threads} thread(s): update step {eager * 1e3:.1f} ms; its matrix "
          f"products alone {floor * 1e3:.1f} ms, with the hidden activations {floor_act * 1e3:.1f} ms")
    print(f"update / matmul floor: {eager / floor:.2f}x; update / (matmuls + activations): {eager / floor_act:.2f}x")
    if args.no_compile:
        return 0
    first, compiled = timed(torch.compile(loss_fn))
    print(f"compiled: {compiled * 1e3:.1f} ms per step after {first:.1f} s for the first (compiling) step")
    print(f"compiled speed-up: {eager / compiled:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
