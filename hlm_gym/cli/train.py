"""``hlm-gym train``: train a Stable-Baselines3 agent on any env the harness knows.

Every flag and hyperparameter is checked before any work (:func:`hlm_gym.harness.training.prepare`);
the output folder is locked for the run and its files replaced only when the run completes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hlm_gym.cli.argtypes import (add_env_argument, add_risk_weight_argument, add_threads_argument, apply_threads,
                                  device, hyper_override, one_line_errors, positive_int, seed, unit_float)

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from hlm_gym.harness.training import TrainConfig, format_summary, train

    cfg = TrainConfig(algo=args.algo, env_id=args.env_id, scenario=args.scenario, risk_weight=args.risk_weight,
                      risk_target=args.risk_target, device=args.device, env_backend=args.env_backend,
                      n_envs=args.n_envs, timesteps=args.timesteps, seed=args.seed, out=args.out, traces=args.traces,
                      hyperparams=args.hyperparams, overrides=dict(args.overrides), eval_freq=args.eval_freq,
                      eval_episodes=args.eval_episodes, reference=not args.no_reference,
                      progress_bar=not args.no_progress and sys.stderr.isatty())
    apply_threads(args.threads)
    print(format_summary(train(cfg)))
    return 0


def register(subparsers: Any) -> None:
    """Add ``train`` to the ``hlm-gym`` sub-parsers."""
    p = one_line_errors(subparsers.add_parser(
        "train", help="train an SB3 agent (PPO by default) on an hlm-gym environment",
        description="Train a Stable-Baselines3 agent with hyperparameters from agents/<algo>.yml; TensorBoard logs, "
                    "validation evaluations, best and last checkpoints. The output folder is locked while the run "
                    "writes into it; its files are replaced only when the run completes."))
    p.add_argument("--algo", default="ppo", choices=("ppo", "a2c", "dqn"))
    add_env_argument(p)
    p.add_argument("--scenario", default="pedestrian", help="scenario name or YAML path (default pedestrian)")
    add_risk_weight_argument(p)
    p.add_argument("--risk-target", type=unit_float, default=None,
                   help="the env's risk_target R: a skip costs lambda * (beta - R), the Lagrangian of 'mean "
                        "rejection probability of skipped tokens <= R' (default 0: prices the error rate)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (the networks, and the "
                   "environments with --env-backend torch)")
    p.add_argument("--env-backend", choices=["numpy", "torch"], default="numpy",
                   help="batched environment implementation: numpy on the CPU, or torch on --device "
                        "(default %(default)s)")
    p.add_argument("--n-envs", type=positive_int, default=None, help="parallel environments (default: YAML)")
    p.add_argument("--timesteps", type=positive_int, default=None, help="training steps (default: YAML n_timesteps)")
    p.add_argument("--seed", type=seed, default=0, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--out", default="runs/train", help="output folder, locked for the run (default runs/train)")
    p.add_argument("--traces", default=None, help="trace folder/file (default: the shipped traces)")
    p.add_argument("--hyperparams", default=None, help="a zoo-style YAML (default: the shipped agents/<algo>.yml)")
    p.add_argument("--hp", dest="overrides", type=hyper_override, action="append", default=[],
                   metavar="KEY=VALUE", help="override one hyperparameter (repeatable), e.g. --hp n_steps=64")
    p.add_argument("--eval-freq", type=positive_int, default=None,
                   help="timesteps between validation evaluations (default: 5 per run)")
    p.add_argument("--eval-episodes", type=positive_int, default=64)
    p.add_argument("--no-reference", action="store_true",
                   help="do not log the env family's reference policy (U-HLM) as reference lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)
    p.set_defaults(func=_run)
